//! The clean `/v1` JSON API (CONTRACT §5). Every route requires `Authorization: Bearer
//! <server.api_key>` when a key is set, and a loopback `Host` when none is (`api::guard`). Errors are `{"error":CODE,"message":STR,"errcode"?}` with
//! a 4xx/5xx status; internal detail goes to the log only.

use super::json::{Json, Members};
use super::{credential, Context, Incoming, JsonWriter, Outcome, Refused, Reply, Wait};
use crate::core::accounts;
use crate::core::component;
use crate::core::credential::{self as credentials, Credential, Key};
use crate::core::error::Error;
use crate::core::session::{self, Encrypted};
use crate::wechat::UpstreamError;
use serde_json::{json, Value};

/// Render a domain error in the `/v1` shape.
pub fn error_reply(e: Error) -> Reply {
    if matches!(e, Error::Busy | Error::Upstream(UpstreamError::NotSent)) {
        return busy();
    }
    let errcode = e.errcode().map(|c| c.0);
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
        Error::Refused(r) => (429, "refused", r.to_string()),
        Error::Db(_) => (500, "db_error", "database error".into()),
        Error::SessionWrite(_) => (
            500,
            "session_write_failed",
            "the session could not be stored".into(),
        ),
        Error::Internal(_) => (500, "internal", "internal error".into()),
        Error::Busy => (503, "busy", "try again".into()),
    };
    if status >= 500 {
        log::error!("v1: {e}");
    }
    Reply::error(status, code, &message, errcode)
}

/// 503 `busy` with `Retry-After: 1`: the request would wait on WeChat and the upstream pool is
/// full (CONTRACT §5).
pub fn busy() -> Reply {
    let mut reply = Reply::error(
        503,
        "busy",
        "too many requests are waiting on WeChat; try again",
        None,
    );
    reply.headers.push(("Retry-After", "1".to_string()));
    reply
}

/// A JSON object body with typed accessors that fail as `bad_request` naming the field.
pub struct Body<'a>(pub Members<'a>);

impl<'a> Body<'a> {
    pub fn parse(rq: &'a Incoming) -> Result<Body<'a>, Error> {
        if let Some(m) = Members::parse(&rq.body) {
            return Ok(Body(m));
        }
        // Only on the way to a refusal: which one, as a tree would say.
        match serde_json::from_slice::<Value>(&rq.body) {
            Ok(_) => Err(Error::BadRequest("the body must be a JSON object".into())),
            Err(_) => Err(Error::BadRequest("the body is not valid JSON".into())),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, Error> {
        match self.0.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Str(s)) => Ok(Some(s)),
            Some(_) => Err(Error::BadRequest(format!("{key} must be a string"))),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str, Error> {
        self.opt_str(key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::BadRequest(format!("{key} is required")))
    }
}

/// A request [`super::guard`] refused, in the `/v1` shape.
pub fn refused(why: Refused) -> Reply {
    match why {
        Refused::NoKey => super::unauthorized(),
        Refused::ForeignHost => Reply::error(
            403,
            "forbidden",
            "without server.api_key only a loopback Host is served",
            None,
        ),
    }
}

pub fn create_session(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
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

pub fn check_session(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let s = session::check(&w.db, b.str("id")?, b.str("skey")?, None, crate::ids::now())?;
    Ok(JsonWriter::new()
        .str("appid", &s.row.appid)
        .str("openid", &s.row.openid)
        .opt_str("unionid", s.row.unionid.as_deref())
        .raw("user_info", s.user_info_json().as_bytes())
        .opt_raw("phone_info", s.phone_info_json())
        .reply(200))
}

/// `POST /v1/sessions/phone_number` `{id, skey, code}` (on the upstream pool: it waits on
/// WeChat): `{phone_info}`, stored on the user.
pub fn phone_number(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let now = crate::ids::now();
    let s = session::check(&w.db, b.str("id")?, b.str("skey")?, None, now)?;
    let info = session::phone_number(&w.shared.broker, &w.db, &s, b.str("code")?, now)?;
    Ok(Reply::json(200, &json!({ "phone_info": info })))
}

pub fn decrypt(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let enc = Encrypted {
        data: b.str("encrypted_data")?,
        iv: Some(b.str("iv")?),
    };
    let (_, data) = session::decrypt(&w.db, b.str("id")?, b.str("skey")?, enc, crate::ids::now())?;
    Ok(Reply::json(200, &json!({"data": data})))
}

pub fn revoke(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    session::revoke(&w.db, b.str("id")?, b.str("skey")?, crate::ids::now())?;
    Ok(Reply::no_content())
}

/// A credential read on a worker or the upstream pool: `None` (not in memory, on a worker) is
/// for the upstream pool.
fn served(c: Option<Credential>, field: &str) -> Outcome {
    match c {
        Some(c) => credential_reply(&c, field).into(),
        None => Outcome::NeedsUpstream,
    }
}

fn credential_reply(c: &Credential, field: &str) -> Reply {
    JsonWriter::new()
        .str(field, c.value.expose())
        .int("expires_at", c.expires_at)
        .reply(200)
}

/// An app's token or ticket; unknown apps are 404 before anything is fetched.
fn app_credential(
    w: &mut Context,
    rq: &Incoming,
    key: Key,
    force: bool,
    field: &str,
    wait: Wait,
) -> Result<Outcome, Error> {
    w.shared.known_apps.check(&w.db, rq.param(0))?;
    Ok(served(credential(w, &key, force, wait)?, field))
}

pub fn app_token(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let force = matches!(rq.query_param("force").as_deref(), Some("1" | "true"));
    let key = Key::AppToken {
        appid: rq.param(0).to_string(),
    };
    app_credential(w, rq, key, force, "access_token", wait)
}

pub fn app_ticket(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let key = Key::AppTicket {
        appid: rq.param(0).to_string(),
    };
    app_credential(w, rq, key, false, "ticket", wait)
}

/// Always a refresh in practice (the caller holds a token WeChat refused): on the upstream pool.
pub fn invalidate(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let appid = rq.param(0);
    let b = Body::parse(rq)?;
    let stale = b.str("access_token")?;
    w.shared.known_apps.check(&w.db, appid)?;
    let c = w.shared.broker.invalidate(
        &w.db,
        &Key::AppToken {
            appid: appid.to_string(),
        },
        stale,
    )?;
    Ok(credential_reply(&c, "access_token"))
}

/// `noncestr` and `timestamp` as the caller gave them (timestamp may be a number or a string).
fn nonce_and_timestamp<'b>(b: &'b Body) -> Result<(Option<&'b str>, Option<String>), Error> {
    let ts = match b.0.get("timestamp") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(Json::Str(s)) if !s.is_empty() => Some(s.to_string()),
        Some(_) => {
            return Err(Error::BadRequest(
                "timestamp must be a number or a string".into(),
            ))
        }
    };
    Ok((b.opt_str("noncestr")?.filter(|s| !s.is_empty()), ts))
}

/// The timestamp as JSON: a number when it is one, else the caller's string.
fn timestamp_json(ts: &str) -> Value {
    ts.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| json!(ts))
}

pub fn app_signature(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let appid = rq.param(0);
    let b = Body::parse(rq)?;
    let url = b.str("url")?;
    let (nonce, ts) = nonce_and_timestamp(&b)?;
    w.shared.known_apps.check(&w.db, appid)?;
    let key = Key::AppTicket {
        appid: appid.to_string(),
    };
    let Some(ticket) = credential(w, &key, false, wait)? else {
        return Ok(Outcome::NeedsUpstream);
    };
    let (nonce, ts, sig) =
        credentials::js_signature(ticket.value.expose(), url, nonce, ts.as_deref())?;
    Ok(Reply::json(
        200,
        &json!({"appId": appid, "timestamp": timestamp_json(&ts), "nonceStr": nonce, "signature": sig}),
    )
    .into())
}

/// The key of one WeCom agent's credential named by the route's `{corpid}` and `{agentid}`.
fn work_key(rq: &Incoming, key: fn(String, String) -> Key) -> Key {
    key(rq.param(0).to_string(), rq.param(1).to_string())
}

fn work_credential(
    w: &mut Context,
    rq: &Incoming,
    key: &Key,
    field: &str,
    wait: Wait,
) -> Result<Outcome, Error> {
    accounts::work_agent(&w.db, rq.param(0), rq.param(1))?;
    Ok(served(credential(w, key, false, wait)?, field))
}

pub fn work_token(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let key = work_key(rq, |corpid, agentid| Key::WorkToken { corpid, agentid });
    work_credential(w, rq, &key, "access_token", wait)
}

pub fn work_corp_ticket(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let key = work_key(rq, |corpid, agentid| Key::WorkCorpTicket {
        corpid,
        agentid,
    });
    work_credential(w, rq, &key, "ticket", wait)
}

pub fn work_agent_ticket(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let key = work_key(rq, |corpid, agentid| Key::WorkAgentTicket {
        corpid,
        agentid,
    });
    work_credential(w, rq, &key, "ticket", wait)
}

pub fn work_signature(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let (corpid, agentid) = (rq.param(0), rq.param(1));
    let b = Body::parse(rq)?;
    let url = b.str("url")?;
    let agent = match b.0.get("agent") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(a)) => *a,
        Some(_) => return Err(Error::BadRequest("agent must be a boolean".into())),
    };
    let (nonce, ts) = nonce_and_timestamp(&b)?;
    accounts::work_agent(&w.db, corpid, agentid)?;
    let (c, a) = (corpid.to_string(), agentid.to_string());
    let key = if agent {
        Key::WorkAgentTicket {
            corpid: c,
            agentid: a,
        }
    } else {
        Key::WorkCorpTicket {
            corpid: c,
            agentid: a,
        }
    };
    let Some(ticket) = credential(w, &key, false, wait)? else {
        return Ok(Outcome::NeedsUpstream);
    };
    let (nonce, ts, sig) =
        credentials::js_signature(ticket.value.expose(), url, nonce, ts.as_deref())?;
    let mut v = json!({"corpid": corpid});
    if agent {
        v["agentid"] = json!(agentid);
    }
    v["timestamp"] = timestamp_json(&ts);
    v["nonceStr"] = json!(nonce);
    v["signature"] = json!(sig);
    Ok(Reply::json(200, &v).into())
}

pub fn component_token(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let appid = rq.param(0);
    accounts::component(&w.db, appid)?;
    let key = Key::ComponentToken {
        component_appid: appid.to_string(),
    };
    Ok(served(credential(w, &key, false, wait)?, "access_token"))
}

/// The accounts that authorised a component and have not revoked it.
pub fn authorizers(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let appid = rq.param(0);
    let list: Vec<Value> = component::live_authorizers(&w.db, appid)?
        .iter()
        .map(authorizer_json)
        .collect();
    Ok(Reply::json(200, &Value::Array(list)))
}

/// `{authorizer_appid, authorized_at, func_info}` of an authoriser.
fn authorizer_json(a: &crate::store::Authorizer) -> Value {
    json!({
        "authorizer_appid": a.authorizer_appid,
        "authorized_at": a.authorized_at,
        "func_info": serde_json::from_str::<Value>(&a.func_info).unwrap_or(json!([])),
    })
}

/// `GET /v1/components/{appid}/authorizers/{authorizer}`: the authoriser with `info`, its
/// profile. On a worker when the profile is stored; a read without one goes to the upstream
/// pool, which asks WeChat for it (`info: null` when that fails too).
pub fn authorizer(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let (appid, authorizer) = (rq.param(0), rq.param(1));
    let view = match wait {
        Wait::Forbidden => {
            let view = component::authorizer_view(&w.db, appid, authorizer)?;
            if view.info.is_none() {
                return Ok(Outcome::NeedsUpstream);
            }
            view
        }
        Wait::Allowed => {
            component::authorizer_view_fetching(&w.shared.broker, &w.db, appid, authorizer)?
        }
    };
    let mut v = authorizer_json(&view.authorizer);
    v["info"] = view.info.unwrap_or(Value::Null);
    Ok(Reply::json(200, &v).into())
}

pub fn authorizer_token(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    let (appid, authorizer) = (rq.param(0), rq.param(1));
    component::live_authorizer(&w.db, appid, authorizer)?;
    let key = Key::AuthorizerToken {
        component_appid: appid.to_string(),
        authorizer_appid: authorizer.to_string(),
    };
    Ok(served(credential(w, &key, false, wait)?, "access_token"))
}

/// `params` / `headers` as a JSON object of strings (numbers are accepted and printed).
fn pairs(b: &Body, key: &str) -> Result<Vec<(String, String)>, Error> {
    match b.0.get(key) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Object(m)) => m
            .unique()
            .into_iter()
            .map(|(k, v)| match v {
                Json::Str(s) => Ok((k.to_string(), s.to_string())),
                Json::Number(n) => Ok((k.to_string(), n.to_string())),
                _ => Err(Error::BadRequest(format!("{key}.{k} must be a string"))),
            })
            .collect(),
        Some(_) => Err(Error::BadRequest(format!("{key} must be an object"))),
    }
}

pub fn cos_sign(_: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let (id, key) = (b.str("secret_id")?, b.str("secret_key")?);
    let (method, path) = (b.str("method")?, b.str("path")?);
    let (params, headers) = (pairs(&b, "params")?, pairs(&b, "headers")?);
    let expires =
        match b.0.get("expires_secs") {
            None | Some(Json::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                Error::BadRequest("expires_secs must be a positive integer".into())
            })?),
        };
    let key_time =
        crate::core::cos::v5_key_time(b.opt_str("key_time")?, expires, crate::ids::now() as u64)?;
    let req = crate::crypto::CosV5Request {
        method,
        path,
        params: &params,
        headers: &headers,
    };
    Ok(Reply::json(
        200,
        &json!({"authorization": crate::core::cos::v5_authorization(id, key, &key_time, &req)}),
    ))
}
