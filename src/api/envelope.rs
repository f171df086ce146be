//! The Wafer wire protocol (CONTRACT §3): `POST /mina_auth/` with the `{version, componentName,
//! interface: {interfaceName, para}}` envelope, always answered HTTP 200 with
//! `{returnCode, returnMessage, returnData, version, componentName}` in that key order.
//! Unmodified Wafer server SDKs depend on every name, type and order here.

use super::json::{Json, Members};
use super::{credential, Context, Incoming, JsonWriter, Outcome, Reply, Wait};
use crate::core::accounts;
use crate::core::cos;
use crate::core::credential::{Credential, Key};
use crate::core::error::Error;
use crate::core::session::{self, Encrypted};
use crate::secret::Secret;
use crate::store::WorkAgent;
use serde_json::{json, Value};
use std::borrow::Cow;

/// A failure as the envelope reports it: `returnCode` and `returnMessage`.
pub struct EnvelopeError(pub i64, pub &'static str);

pub const REQUEST_IS_NOT_JSON: EnvelopeError = EnvelopeError(1009, "REQUEST_IS_NOT_JSON");
pub const NO_INTERFACENAME_PARA: EnvelopeError = EnvelopeError(1002, "NO_INTERFACENAME_PARA");
pub const NO_PARA: EnvelopeError = EnvelopeError(1011, "NO_PARA");
pub const INTERFACENAME_PARA_ERR: EnvelopeError = EnvelopeError(1010, "INTERFACENAME_PARA_ERR");
pub const PARA_ERR: EnvelopeError = EnvelopeError(1003, "PARA_ERR");
pub const AUTH_FAIL: EnvelopeError = EnvelopeError(60012, "AUTH_FAIL");

impl From<Error> for EnvelopeError {
    fn from(e: Error) -> EnvelopeError {
        if !matches!(
            e,
            Error::AuthFail
                | Error::DecryptFail
                | Error::BadRequest(_)
                | Error::NoApp
                | Error::Busy
        ) {
            log::warn!("mina_auth: {e}");
        }
        match e {
            Error::BadRequest(_) => PARA_ERR,
            Error::NoApp | Error::NotFound(_) => EnvelopeError(1012, "NO_APPID"),
            Error::AuthFail => AUTH_FAIL,
            Error::DecryptFail => EnvelopeError(60021, "DECRYPT_FAIL"),
            // Busy: the upstream pool is full, answered at once (CONTRACT §3).
            Error::Busy => EnvelopeError(1005, "WEIXIN_NET_ERR"),
            Error::Upstream(u) if u.is_transport() => EnvelopeError(1005, "WEIXIN_NET_ERR"),
            Error::Upstream(_) | Error::Refused(_) => EnvelopeError(1007, "WEIXIN_RETURN_ERR"),
            Error::CodeRejected(_) => EnvelopeError(40029, "WEIXIN_CODE_ERR"),
            Error::SessionWrite(_) => EnvelopeError(1006, "CHANGE_SESSION_ERR"),
            Error::Db(_) | Error::Internal(_) => EnvelopeError(1001, "DB_ERR"),
        }
    }
}

/// `returnData`: a value, or JSON text already written (the hot path, `qcloud.cam.auth`).
enum Data {
    Tree(Value),
    Text(Vec<u8>),
}

impl From<Value> for Data {
    fn from(v: Value) -> Data {
        Data::Tree(v)
    }
}

/// Answer an envelope. With [`Wait::Forbidden`] (on a worker), a login, or a credential not
/// usable from memory, answers [`Outcome::NeedsUpstream`], having written nothing: which
/// interfaces may wait is decided by the interface name, after the parse.
pub fn handle(w: &mut Context, rq: &Incoming, wait: Wait) -> Result<Outcome, Error> {
    Ok(match dispatch(w, rq, wait) {
        Ok(Some((message, data))) => render(0, message, data).into(),
        Ok(None) => Outcome::NeedsUpstream,
        Err(fail) => render_fail(fail).into(),
    })
}

/// A domain error as the envelope answers it.
pub fn render_error(e: Error) -> Reply {
    render_fail(EnvelopeError::from(e))
}

fn render_fail(EnvelopeError(code, message): EnvelopeError) -> Reply {
    render(code, message, Data::Text(b"\"\"".to_vec()))
}

fn render(code: i64, message: &str, data: Data) -> Reply {
    let envelope = JsonWriter::new()
        .int("returnCode", code)
        .str("returnMessage", message);
    let envelope = match &data {
        Data::Tree(v) => envelope.value("returnData", v),
        Data::Text(t) => envelope.raw("returnData", t),
    };
    envelope
        .int("version", 1)
        .str("componentName", "MA")
        .reply(200)
}

/// The `para` object with typed accessors. Optional fields that are `null` or `""` count as
/// absent (SDKs send both when the mini program gave no encrypted data).
pub struct Para<'a>(pub Members<'a>);

impl Para<'_> {
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, EnvelopeError> {
        match self.0.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Str(s)) if s.is_empty() => Ok(None),
            Some(Json::Str(s)) => Ok(Some(s)),
            Some(_) => Err(PARA_ERR),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str, EnvelopeError> {
        self.opt_str(key)?.ok_or(PARA_ERR)
    }

    /// `force`: a boolean, 0/1, or "0"/"1"/"true"/"false".
    pub fn opt_bool(&self, key: &str) -> Result<bool, EnvelopeError> {
        match self.0.get(key) {
            None | Some(Json::Null) => Ok(false),
            Some(Json::Bool(b)) => Ok(*b),
            Some(Json::Number(n)) => Ok(n.as_i64().is_some_and(|n| n != 0)),
            Some(Json::Str(s)) => match s.as_ref() {
                "" | "0" | "false" => Ok(false),
                "1" | "true" => Ok(true),
                _ => Err(PARA_ERR),
            },
            Some(_) => Err(PARA_ERR),
        }
    }

    /// An identifier clients send as a string or a number (WeCom agentid, COS appid).
    pub fn ident(&self, key: &str) -> Result<String, EnvelopeError> {
        match self.0.get(key) {
            Some(Json::Number(n)) if n.is_u64() => Ok(n.to_string()),
            _ => self.str(key).map(str::to_string),
        }
    }

    /// A non-negative integer sent as a number or a string of digits.
    pub fn uint(&self, key: &str) -> Result<u64, EnvelopeError> {
        match self.0.get(key) {
            Some(Json::Number(n)) => n.as_u64().ok_or(PARA_ERR),
            Some(Json::Str(s)) => s.trim().parse().map_err(|_| PARA_ERR),
            _ => Err(PARA_ERR),
        }
    }

    fn encrypted(&self) -> Result<Option<Encrypted<'_>>, EnvelopeError> {
        let iv = self.opt_str("iv")?;
        Ok(self
            .opt_str("encrypt_data")?
            .map(|data| Encrypted { data, iv }))
    }
}

/// The envelope checks of CONTRACT §3, in their order (not JSON, no `interfaceName`, no `para`):
/// the interface name and its `para` object. Pure, so the fuzz target calls it directly.
pub fn parse_envelope(body: &[u8]) -> Result<(Cow<'_, str>, Para<'_>), EnvelopeError> {
    let mut body = match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(members)) => members,
        // JSON that is not an object has no `interface`: 1002, as the original server answers.
        Ok(_) => return Err(NO_INTERFACENAME_PARA),
        Err(_) => return Err(REQUEST_IS_NOT_JSON),
    };
    let mut interface = match body.take("interface") {
        Some(Json::Object(i)) => i,
        _ => Members::default(),
    };
    let name = match interface.take("interfaceName") {
        Some(Json::Str(n)) if !n.is_empty() => n,
        _ => return Err(NO_INTERFACENAME_PARA),
    };
    match interface.take("para") {
        Some(Json::Object(para)) => Ok((name, Para(para))),
        _ => Err(NO_PARA),
    }
}

/// The interface's answer; `None`: it must wait on WeChat and `wait` forbids it.
fn dispatch(
    w: &mut Context,
    rq: &Incoming,
    wait: Wait,
) -> Result<Option<(&'static str, Data)>, EnvelopeError> {
    let (name, p) = parse_envelope(&rq.body)?;
    // `qcloud.cam.auth` carrying `encrypt_data` is the decrypt call as Wafer-on-SCF documents
    // it: answered exactly as `qcloud.cam.decrypt` (CONTRACT §3, seed fidelity).
    let name = match name.as_ref() {
        "qcloud.cam.auth" if p.opt_str("encrypt_data")?.is_some() => "qcloud.cam.decrypt",
        other => other,
    };
    let now = crate::ids::now();
    if !SESSION_INTERFACES.contains(&name) && !CREDENTIAL_INTERFACES.contains(&name) {
        return Err(INTERFACENAME_PARA_ERR);
    }
    // Refused as the envelope refuses everything, with HTTP 200: a missing key and a foreign
    // `Host` alike are 60012 (`api::guard`).
    if CREDENTIAL_INTERFACES.contains(&name) && super::guard(w, rq).is_err() {
        return Err(AUTH_FAIL);
    }
    let answer = match name {
        "qcloud.cam.id_skey" => {
            // A login always waits on WeChat (`jscode2session`): on a worker, nothing more is
            // read here.
            if wait == Wait::Forbidden {
                return Ok(None);
            }
            let code = p.str("code")?;
            let encrypted = p.encrypted()?;
            let app = session::resolve_app(&w.db, p.opt_str("appid")?)?;
            let login = session::login(&mut w.db, &w.shared.wechat, &app, code, encrypted, now)?;
            let mut data = json!({
                "id": login.id,
                "skey": login.skey,
                "user_info": login.user_info,
                "duration": login.duration,
                "openid": login.openid,
            });
            if let Some(u) = login.unionid {
                data["unionid"] = json!(u);
            }
            let message = if login.is_new_user {
                "NEW_SESSION_SUCCESS"
            } else {
                "UPDATE_SESSION_SUCCESS"
            };
            Ok((message, data.into()))
        }
        "qcloud.cam.auth" => {
            let (id, skey) = (p.str("id")?, p.str("skey")?);
            let s = session::check_in(&w.db, id, skey, p.opt_str("appid")?, now)?;
            let data = JsonWriter::new()
                .raw("user_info", s.user_info_json().as_bytes())
                .opt_raw("phone_info", s.phone_info_json());
            Ok(("AUTH_SUCCESS", Data::Text(data.into_bytes())))
        }
        "qcloud.cam.phone" => {
            // Always waits on WeChat (`getuserphonenumber`): on a worker, nothing more is read.
            if wait == Wait::Forbidden {
                return Ok(None);
            }
            let (id, skey, code) = (p.str("id")?, p.str("skey")?, p.str("code")?);
            let s = session::check_in(&w.db, id, skey, p.opt_str("appid")?, now)?;
            let info = session::phone_number(&w.shared.broker, &w.db, &s, code, now)?;
            Ok(("PHONE_SUCCESS", json!({ "phone_info": info }).into()))
        }
        "qcloud.cam.decrypt" => {
            let (id, skey) = (p.str("id")?, p.str("skey")?);
            let enc = Encrypted {
                data: p.str("encrypt_data")?,
                iv: p.opt_str("iv")?,
            };
            let (_, value) = session::decrypt(&w.db, id, skey, enc, now)?;
            Ok(("DECRYPT_SUCCESS", value.into()))
        }
        "qcloud.cam.userinfo" => {
            let (id, skey) = (p.str("id")?, p.str("skey")?);
            let enc = Encrypted {
                data: p.str("encrypt_data")?,
                iv: Some(p.str("iv")?),
            };
            let (s, value) = session::set_user_info(&w.db, id, skey, enc, now)?;
            Ok((
                "UPDATE_USERINFO_SUCCESS",
                json!({"id": id, "skey": skey, "appid": s.row.appid, "user_info": value}).into(),
            ))
        }
        "qcloud.mimi.access_token" => {
            let appid = p.str("appid")?;
            let force = p.opt_bool("force")?;
            // Unknown apps stop here, so arbitrary appids never become broker entries.
            w.shared.known_apps.check(&w.db, appid)?;
            let key = Key::AppToken {
                appid: appid.into(),
            };
            let Some(c) = credential(w, &key, force, wait)? else {
                return Ok(None);
            };
            Ok((
                token_message(&c),
                json!({"appid": appid, "access_token": c.value.expose(), "exp": c.expires_at})
                    .into(),
            ))
        }
        "qcloud.work.initagent" => {
            let (corpid, agentid) = (p.str("corpid")?, p.ident("agentid")?);
            let agent = WorkAgent {
                corpid: corpid.into(),
                agentid: agentid.clone(),
                secret: Secret::new(p.str("agentsecret")?),
                remark: p.opt_str("remark")?.unwrap_or("").into(),
                token: None,
                aes_key: None,
                prev_aes_key: None,
                forward_url: None,
            };
            accounts::save_work_agent(&w.db, &w.shared.broker, &agent, now)?;
            Ok((
                "INIT_AGENT_SUCCESS",
                json!({"corpid": corpid, "agentid": agentid}).into(),
            ))
        }
        "qcloud.work.access_token" | "qcloud.work.ticket" | "qcloud.work.agent.ticket" => {
            let (corpid, agentid) = (p.str("corpid")?.to_string(), p.ident("agentid")?);
            let force = p.opt_bool("force")?;
            accounts::work_agent(&w.db, &corpid, &agentid)?;
            let (key, field) = match name {
                "qcloud.work.access_token" => (
                    Key::WorkToken {
                        corpid: corpid.clone(),
                        agentid: agentid.clone(),
                    },
                    "access_token",
                ),
                "qcloud.work.ticket" => (
                    Key::WorkCorpTicket {
                        corpid: corpid.clone(),
                        agentid: agentid.clone(),
                    },
                    "ticket",
                ),
                _ => (
                    Key::WorkAgentTicket {
                        corpid: corpid.clone(),
                        agentid: agentid.clone(),
                    },
                    "agent_ticket",
                ),
            };
            let Some(c) = credential(w, &key, force, wait)? else {
                return Ok(None);
            };
            let mut data = json!({"corpid": corpid});
            if field != "ticket" {
                data["agentid"] = json!(agentid);
            }
            data[field] = json!(c.value.expose());
            data["exp"] = json!(c.expires_at);
            Ok((token_message(&c), data.into()))
        }
        "qcloud.cos.auth.reusable" | "qcloud.cos.auth.nonreusable" => {
            let (appid, bucket) = (p.ident("appid")?, p.str("bucket")?);
            let (sid, skey) = (p.str("sid")?, p.str("skey")?);
            let now = now as u64;
            let sign = if name == "qcloud.cos.auth.reusable" {
                cos::v4_reusable(
                    &appid,
                    bucket,
                    sid,
                    skey,
                    p.opt_str("filepath")?,
                    p.uint("expiration")?,
                    now,
                    cos::v4_rand()?,
                )?
            } else {
                cos::v4_nonreusable(
                    &appid,
                    bucket,
                    sid,
                    skey,
                    p.opt_str("filepath")?.unwrap_or(""),
                    now,
                    cos::v4_rand()?,
                )
            };
            Ok(("COS_SIGN_SUCCESS", json!(sign).into()))
        }
        _ => Err(INTERFACENAME_PARA_ERR),
    };
    answer.map(Some)
}

const SESSION_INTERFACES: &[&str] = &[
    "qcloud.cam.id_skey",
    "qcloud.cam.auth",
    "qcloud.cam.decrypt",
    "qcloud.cam.userinfo",
    "qcloud.cam.phone",
];

/// The interfaces that require the api key when one is set, and a loopback `Host` when none is.
const CREDENTIAL_INTERFACES: &[&str] = &[
    "qcloud.mimi.access_token",
    "qcloud.work.initagent",
    "qcloud.work.access_token",
    "qcloud.work.ticket",
    "qcloud.work.agent.ticket",
    "qcloud.cos.auth.reusable",
    "qcloud.cos.auth.nonreusable",
];

fn token_message(c: &Credential) -> &'static str {
    if c.fresh {
        "NEW_TOKEN_SUCCESS"
    } else {
        "OLD_TOKEN_SUCCESS"
    }
}
