//! The clean `/v1` JSON API (CONTRACT §5). Every route requires `Authorization: Bearer
//! <server.api_key>` when a key is set, and a loopback `Host` when none is (`server::guard`). Errors are `{"error":CODE,"message":STR,"errcode"?}` with
//! a 4xx/5xx status; internal detail goes to the log only.

use super::json::{Json, Members};
use super::{guard, Incoming, JsonWriter, Method, Refused, Reply, Worker};
use crate::accounts;
use crate::component;
use crate::credential::{self, Credential, Key};
use crate::error::Error;
use crate::session::{self, Encrypted};
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
        // Replaced by the answer from the lane (`server::answer`); never sent.
        Error::Deferred | Error::Busy => (503, "busy", "try again".into()),
    };
    if status >= 500 && !matches!(e, Error::Deferred) {
        log::error!("v1: {e}");
    }
    Reply::error(status, code, &message, errcode)
}

/// 503 `busy` with `Retry-After: 1`: the request would wait on WeChat and the upstream pool (the
/// lane) is full (CONTRACT §5).
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

pub fn route(w: &mut Worker, rq: &Incoming) -> (&'static str, Reply) {
    match guard(w, rq) {
        Ok(()) => {}
        Err(Refused::NoKey) => return ("/v1", super::unauthorized()),
        Err(Refused::ForeignHost) => {
            return (
                "/v1",
                Reply::error(
                    403,
                    "forbidden",
                    "without server.api_key only a loopback Host is served",
                    None,
                ),
            )
        }
    }
    let segs: Vec<&str> = rq
        .path
        .strip_prefix("/v1/")
        .unwrap_or(rq.path)
        .split('/')
        .collect();
    let (label, result): (&'static str, Result<Reply, Error>) = match (rq.method, segs.as_slice()) {
        (Method::Post, ["sessions"]) => ("/v1/sessions", create_session(w, rq)),
        (Method::Post, ["sessions", "check"]) => ("/v1/sessions/check", check_session(w, rq)),
        (Method::Post, ["sessions", "decrypt"]) => ("/v1/sessions/decrypt", decrypt(w, rq)),
        (Method::Post, ["sessions", "revoke"]) => ("/v1/sessions/revoke", revoke(w, rq)),
        (Method::Get, ["apps", appid, "access_token"]) => {
            let force = matches!(rq.query_param("force").as_deref(), Some("1" | "true"));
            (
                "/v1/apps/{appid}/access_token",
                app_credential(
                    w,
                    appid,
                    Key::AppToken {
                        appid: appid.to_string(),
                    },
                    force,
                    "access_token",
                ),
            )
        }
        (Method::Post, ["apps", appid, "access_token", "invalidate"]) => (
            "/v1/apps/{appid}/access_token/invalidate",
            invalidate(w, rq, appid),
        ),
        (Method::Get, ["apps", appid, "jsapi_ticket"]) => (
            "/v1/apps/{appid}/jsapi_ticket",
            app_credential(
                w,
                appid,
                Key::AppTicket {
                    appid: appid.to_string(),
                },
                false,
                "ticket",
            ),
        ),
        (Method::Post, ["apps", appid, "jsapi_signature"]) => (
            "/v1/apps/{appid}/jsapi_signature",
            app_signature(w, rq, appid),
        ),
        (
            Method::Get,
            ["work", corpid, agentid, what @ ("access_token" | "jsapi_ticket" | "agent_ticket")],
        ) => {
            let (c, a) = (corpid.to_string(), agentid.to_string());
            let (key, field, label) = match *what {
                "access_token" => (
                    Key::WorkToken {
                        corpid: c,
                        agentid: a,
                    },
                    "access_token",
                    "/v1/work/{corpid}/{agentid}/access_token",
                ),
                "jsapi_ticket" => (
                    Key::WorkCorpTicket {
                        corpid: c,
                        agentid: a,
                    },
                    "ticket",
                    "/v1/work/{corpid}/{agentid}/jsapi_ticket",
                ),
                _ => (
                    Key::WorkAgentTicket {
                        corpid: c,
                        agentid: a,
                    },
                    "ticket",
                    "/v1/work/{corpid}/{agentid}/agent_ticket",
                ),
            };
            (label, work_credential(w, corpid, agentid, &key, field))
        }
        (Method::Post, ["work", corpid, agentid, "jsapi_signature"]) => (
            "/v1/work/{corpid}/{agentid}/jsapi_signature",
            work_signature(w, rq, corpid, agentid),
        ),
        (Method::Get, ["components", appid, "access_token"]) => (
            "/v1/components/{appid}/access_token",
            component_token(w, appid),
        ),
        (Method::Get, ["components", appid, "authorizers"]) => {
            ("/v1/components/{appid}/authorizers", authorizers(w, appid))
        }
        (Method::Get, ["components", appid, "authorizers", authorizer, "access_token"]) => (
            "/v1/components/{appid}/authorizers/{authorizer}/access_token",
            authorizer_token(w, appid, authorizer),
        ),
        (Method::Post, ["cos", "sign"]) => ("/v1/cos/sign", cos_sign(rq)),
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
    Ok(JsonWriter::new()
        .str("appid", &s.row.appid)
        .str("openid", &s.row.openid)
        .opt_str("unionid", s.row.unionid.as_deref())
        .raw("user_info", s.user_info_json().as_bytes())
        .reply(200))
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

fn credential_reply(c: &Credential, field: &str) -> Reply {
    JsonWriter::new()
        .str(field, c.value.expose())
        .int("expires_at", c.expires_at)
        .reply(200)
}

/// An app's token or ticket; unknown apps are 404 before anything is fetched.
fn app_credential(
    w: &mut Worker,
    appid: &str,
    key: Key,
    force: bool,
    field: &str,
) -> Result<Reply, Error> {
    w.shared.known_apps.check(&w.db, appid)?;
    let c = w.shared.broker.get(&w.db, &key, force)?;
    Ok(credential_reply(&c, field))
}

fn invalidate(w: &mut Worker, rq: &Incoming, appid: &str) -> Result<Reply, Error> {
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

fn app_signature(w: &mut Worker, rq: &Incoming, appid: &str) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let url = b.str("url")?;
    let (nonce, ts) = nonce_and_timestamp(&b)?;
    w.shared.known_apps.check(&w.db, appid)?;
    let ticket = w.shared.broker.get(
        &w.db,
        &Key::AppTicket {
            appid: appid.to_string(),
        },
        false,
    )?;
    let (nonce, ts, sig) =
        credential::js_signature(ticket.value.expose(), url, nonce, ts.as_deref())?;
    Ok(Reply::json(
        200,
        &json!({"appId": appid, "timestamp": timestamp_json(&ts), "nonceStr": nonce, "signature": sig}),
    ))
}

fn work_credential(
    w: &mut Worker,
    corpid: &str,
    agentid: &str,
    key: &Key,
    field: &str,
) -> Result<Reply, Error> {
    accounts::work_agent(&w.db, corpid, agentid)?;
    let c = w.shared.broker.get(&w.db, key, false)?;
    Ok(credential_reply(&c, field))
}

fn work_signature(
    w: &mut Worker,
    rq: &Incoming,
    corpid: &str,
    agentid: &str,
) -> Result<Reply, Error> {
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
    let ticket = w.shared.broker.get(&w.db, &key, false)?;
    let (nonce, ts, sig) =
        credential::js_signature(ticket.value.expose(), url, nonce, ts.as_deref())?;
    let mut v = json!({"corpid": corpid});
    if agent {
        v["agentid"] = json!(agentid);
    }
    v["timestamp"] = timestamp_json(&ts);
    v["nonceStr"] = json!(nonce);
    v["signature"] = json!(sig);
    Ok(Reply::json(200, &v))
}

fn component_token(w: &mut Worker, appid: &str) -> Result<Reply, Error> {
    accounts::component(&w.db, appid)?;
    let key = Key::ComponentToken {
        component_appid: appid.to_string(),
    };
    let c = w.shared.broker.get(&w.db, &key, false)?;
    Ok(credential_reply(&c, "access_token"))
}

/// The accounts that authorised a component and have not revoked it.
fn authorizers(w: &mut Worker, appid: &str) -> Result<Reply, Error> {
    let list: Vec<Value> = component::live_authorizers(&w.db, appid)?
        .into_iter()
        .map(|a| {
            json!({
                "authorizer_appid": a.authorizer_appid,
                "authorized_at": a.authorized_at,
                "func_info": serde_json::from_str::<Value>(&a.func_info).unwrap_or(json!([])),
            })
        })
        .collect();
    Ok(Reply::json(200, &Value::Array(list)))
}

fn authorizer_token(w: &mut Worker, appid: &str, authorizer: &str) -> Result<Reply, Error> {
    component::live_authorizer(&w.db, appid, authorizer)?;
    let key = Key::AuthorizerToken {
        component_appid: appid.to_string(),
        authorizer_appid: authorizer.to_string(),
    };
    let c = w.shared.broker.get(&w.db, &key, false)?;
    Ok(credential_reply(&c, "access_token"))
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

fn cos_sign(rq: &Incoming) -> Result<Reply, Error> {
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
        crate::cos::v5_key_time(b.opt_str("key_time")?, expires, crate::ids::now() as u64)?;
    let req = crate::crypto::CosV5Request {
        method,
        path,
        params: &params,
        headers: &headers,
    };
    Ok(Reply::json(
        200,
        &json!({"authorization": crate::cos::v5_authorization(id, key, &key_time, &req)}),
    ))
}
