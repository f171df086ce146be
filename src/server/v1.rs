//! The clean `/v1` JSON API (CONTRACT §5). Every route requires `Authorization: Bearer
//! <server.api_key>` when a key is set. Errors are `{"error":CODE,"message":STR,"errcode"?}` with
//! a 4xx/5xx status; internal detail goes to the log only.

use super::{api_key_ok, Incoming, Method, Reply, Worker};
use crate::error::Error;
use crate::session::{self, Encrypted};
use serde_json::{json, Map, Value};

/// Render a domain error in the `/v1` shape.
pub fn error_reply(e: Error) -> Reply {
    let errcode = e.errcode();
    let (status, code, message): (u16, &str, String) = match &e {
        Error::BadRequest(m) => (400, "bad_request", m.clone()),
        Error::NoApp => (404, "unknown_app", "no such app".into()),
        Error::AuthFail => (
            401,
            "invalid_session",
            "invalid, expired or unknown session".into(),
        ),
        Error::DecryptFail => (
            400,
            "decrypt_failed",
            "encrypted data could not be decrypted".into(),
        ),
        Error::Upstream(u) if u.is_transport() => {
            (502, "wechat_unavailable", format!("WeChat: {u}"))
        }
        Error::Upstream(_) => (502, "wechat_error", "WeChat answered an error".into()),
        Error::CodeRejected(_) => (400, "invalid_code", "WeChat rejected the login code".into()),
        Error::NotFound(what) => (404, "not_found", format!("no such {what}")),
        Error::Refused(m) => (429, "refused", m.clone()),
        Error::Db(_) => (500, "db_error", "database error".into()),
        Error::SessionWrite(_) => (
            500,
            "session_write_failed",
            "the session could not be stored".into(),
        ),
        Error::Internal(_) => (500, "internal", "internal error".into()),
    };
    if status >= 500 {
        eprintln!("v1: {e}");
    }
    Reply::error(status, code, &message, errcode)
}

/// A JSON object body with typed accessors that fail as `bad_request` naming the field.
pub struct Body(pub Map<String, Value>);

impl Body {
    pub fn parse(rq: &Incoming) -> Result<Body, Error> {
        match serde_json::from_slice::<Value>(&rq.body) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(Error::BadRequest("the body must be a JSON object".into())),
            Err(_) => Err(Error::BadRequest("the body is not valid JSON".into())),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::BadRequest(format!("{key} must be a string"))),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str, Error> {
        self.opt_str(key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::BadRequest(format!("{key} is required")))
    }
}

pub fn route(w: &mut Worker, rq: &Incoming) -> (&'static str, Reply) {
    if !api_key_ok(w, rq) {
        return (
            "/v1",
            Reply::error(401, "unauthorized", "missing or wrong api key", None),
        );
    }
    let segs: Vec<&str> = rq.path.trim_start_matches("/v1/").split('/').collect();
    let (label, result): (&'static str, Result<Reply, Error>) = match (rq.method, segs.as_slice()) {
        (Method::Post, ["sessions"]) => ("/v1/sessions", create_session(w, rq)),
        (Method::Post, ["sessions", "check"]) => ("/v1/sessions/check", check_session(w, rq)),
        (Method::Post, ["sessions", "decrypt"]) => ("/v1/sessions/decrypt", decrypt(w, rq)),
        (Method::Post, ["sessions", "revoke"]) => ("/v1/sessions/revoke", revoke(w, rq)),
        _ => return ("-", super::not_found()),
    };
    (label, result.unwrap_or_else(error_reply))
}

fn create_session(w: &mut Worker, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let appid = b.str("appid")?;
    let code = b.str("code")?;
    let encrypted = match b.opt_str("encrypted_data")?.filter(|s| !s.is_empty()) {
        Some(data) => Some(Encrypted {
            data,
            iv: b.opt_str("iv")?.filter(|s| !s.is_empty()),
        }),
        None => None,
    };
    let app = session::resolve_app(&w.db, Some(appid))?;
    let l = session::login(
        &mut w.db,
        &w.shared.wechat,
        &app,
        code,
        encrypted,
        crate::ids::now(),
    )?;
    let mut v = json!({"id": l.id, "skey": l.skey, "openid": l.openid});
    if let Some(u) = l.unionid {
        v["unionid"] = json!(u);
    }
    v["user_info"] = l.user_info;
    v["expires_at"] = json!(l.expires_at);
    Ok(Reply::json(201, &v))
}

fn check_session(w: &mut Worker, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let s = session::check(&w.db, b.str("id")?, b.str("skey")?, None, crate::ids::now())?;
    let mut v = json!({"appid": s.row.appid, "openid": s.row.openid});
    if let Some(u) = &s.row.unionid {
        v["unionid"] = json!(u);
    }
    v["user_info"] = s.user_info();
    Ok(Reply::json(200, &v))
}

fn decrypt(w: &mut Worker, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let enc = Encrypted {
        data: b.str("encrypted_data")?,
        iv: Some(b.str("iv")?),
    };
    let (_, data) = session::decrypt(&w.db, b.str("id")?, b.str("skey")?, enc, crate::ids::now())?;
    Ok(Reply::json(200, &json!({"data": data})))
}

fn revoke(w: &mut Worker, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    session::revoke(&w.db, b.str("id")?, b.str("skey")?, crate::ids::now())?;
    Ok(Reply::no_content())
}
