//! The session core: mini-program login through `jscode2session`, session checks with absolute
//! and sliding expiry, decryption of `encryptedData`, user data, revocation. Written once; the
//! Wafer envelope, `/mina` and `/v1` are renderers over it.
//!
//! Invariants: the `session_key` never leaves this module in a result meant for a client; only a
//! hash of the `skey` is stored; a login that fails at any step writes nothing.

use crate::core::credential::{Broker, Key};
use crate::core::error::Error;
use crate::crypto;
use crate::ids;
use crate::store::{App, Db, LoginWrite, SessionRow};
use crate::wechat::{errcode, urls, Host, UpstreamError, WeChat};
use serde_json::Value;

/// `encryptedData` as a client sent it; `iv: None` is the legacy scheme (IV = key, no watermark).
#[derive(Clone, Copy)]
pub struct Encrypted<'a> {
    pub data: &'a str,
    pub iv: Option<&'a str>,
}

/// A successful login, ready for any dialect to render.
pub struct Login {
    pub id: String,
    pub skey: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub user_info: Value,
    /// Session lifetime in seconds: the sliding window, capped by the absolute one.
    pub duration: i64,
    /// When the session expires if it is not used again (unix seconds).
    pub expires_at: i64,
    pub is_new_user: bool,
}

/// A valid session, after a successful check.
pub struct Session {
    pub row: SessionRow,
}

impl Session {
    pub fn user_info(&self) -> Value {
        parse_stored(self.row.user_info.as_deref())
    }

    /// The same as [`Session::user_info`], as JSON text: the stored object as it is (this
    /// server wrote it from a parsed value), or `null` when it is missing or not a valid JSON
    /// object. Validated without building a tree, for the replies on the hot path.
    pub fn user_info_json(&self) -> &str {
        match self.row.user_info.as_deref() {
            Some(s) if is_json_object(s) => s.trim(),
            _ => "null",
        }
    }
}

impl Session {
    /// The user's phone number (`{phoneNumber, purePhoneNumber, countryCode}`) as JSON text,
    /// once known and valid; `None` otherwise.
    pub fn phone_info_json(&self) -> Option<&str> {
        self.row
            .phone_info
            .as_deref()
            .filter(|s| is_json_object(s))
            .map(str::trim)
    }

    /// The user's phone number as a value, once known.
    pub fn phone_info(&self) -> Option<Value> {
        Some(parse_stored(self.row.phone_info.as_deref())).filter(Value::is_object)
    }
}

fn is_json_object(s: &str) -> bool {
    s.trim_start().starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// Pick the app: by appid when given, else the only mini-program app. `NoApp` otherwise.
pub fn resolve_app(db: &Db, appid: Option<&str>) -> Result<App, Error> {
    let app = match appid {
        Some(a) => db.app_by_appid(a)?,
        None => db.sole_miniprogram_app()?,
    };
    app.ok_or(Error::NoApp)
}

/// Apps known to exist, for the credential routes, which need only that (the broker holds the
/// token itself in memory): a hit skips a read transaction. An app is remembered for `ttl` after
/// it was last read, so an app removed with the CLI (another process) stops being served within
/// `ttl`; unknown appids are never remembered, so they cannot grow the map.
pub struct KnownApps {
    ttl: std::time::Duration,
    seen: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl KnownApps {
    pub fn new(ttl: std::time::Duration) -> KnownApps {
        KnownApps {
            ttl,
            seen: Default::default(),
        }
    }

    /// Forget every app remembered (the accounts changed: `accounts::Watch`).
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// `Ok` when `appid` is a registered app (read from `db` at most once per `ttl`), else `NoApp`.
    pub fn check(&self, db: &Db, appid: &str) -> Result<(), Error> {
        let lock = || self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if lock().get(appid).is_some_and(|at| at.elapsed() < self.ttl) {
            return Ok(());
        }
        match db.app_by_appid(appid)? {
            Some(_) => {
                lock().insert(appid.to_string(), std::time::Instant::now());
                Ok(())
            }
            None => {
                lock().remove(appid);
                Err(Error::NoApp)
            }
        }
    }
}

/// Pick the app by the numeric id of the `/mina` dialect.
pub fn resolve_app_by_id(db: &Db, id: i64) -> Result<App, Error> {
    db.app_by_id(id)?.ok_or(Error::NoApp)
}

/// Log in: exchange the code, decrypt the data if any (before anything is written), then store
/// the user and a new session in one transaction.
pub fn login(
    db: &mut Db,
    wechat: &WeChat,
    app: &App,
    code: &str,
    encrypted: Option<Encrypted>,
    now: i64,
) -> Result<Login, Error> {
    if code.is_empty() {
        return Err(Error::BadRequest("code is empty".into()));
    }
    let c2s = wechat
        .jscode2session(&app.appid, app.secret.expose(), code)
        .map_err(|e| match e {
            UpstreamError::WeChat { errcode, .. } => Error::CodeRejected(errcode),
            other => other.into(),
        })?;
    let user_info = match encrypted {
        Some(enc) => Some(decrypt_for(&app.appid, c2s.session_key.expose(), enc)?.to_string()),
        None => None,
    };
    let skey = ids::random_hex32()?;
    let new_user_id = ids::random_hex32()?;
    let skey_hash = ids::skey_hash(&skey);
    let (duration, expires_at) = lifetimes(app, now);
    let written = db
        .record_login(&LoginWrite {
            app_pk: app.id,
            openid: &c2s.openid,
            unionid: c2s.unionid.as_deref(),
            session_key: c2s.session_key.expose(),
            user_info: user_info.as_deref(),
            new_user_id: &new_user_id,
            skey_hash: &skey_hash,
            now,
            expires_at: now.saturating_add(app.login_days.saturating_mul(86400)),
            idle_secs: app.session_secs,
        })
        .map_err(Error::SessionWrite)?;
    Ok(Login {
        id: written.user_id,
        skey,
        openid: c2s.openid,
        unionid: c2s.unionid,
        user_info: parse_stored(written.user_info.as_deref()),
        duration,
        expires_at,
        is_new_user: written.is_new_user,
    })
}

/// (duration, expires_at) of a session created now. Saturating: configured lifetimes are
/// bounded (`config::LOGIN_DAYS`), but an app stored before the bounds may hold any value.
fn lifetimes(app: &App, now: i64) -> (i64, i64) {
    let duration = app
        .session_secs
        .min(app.login_days.saturating_mul(86400))
        .max(0);
    (duration, now.saturating_add(duration))
}

/// Check a session: both ids well-formed, the session exists, belongs to `app` when one is
/// given, and is within both clocks. A success slides `last_visit`.
pub fn check(db: &Db, id: &str, skey: &str, app: Option<&App>, now: i64) -> Result<Session, Error> {
    if !ids::is_hex32(id) || !ids::is_hex32(skey) {
        return Err(Error::AuthFail);
    }
    let hash = ids::skey_hash(skey);
    let row = db.session(id, &hash)?.ok_or(Error::AuthFail)?;
    if app.is_some_and(|a| a.id != row.app_pk) {
        return Err(Error::AuthFail);
    }
    within_clocks(db, row, &hash, now)
}

/// `resolve_app(db, Some(appid))` then `check(.., Some(&app), ..)`, with the same answers, but
/// the app is looked up only on the way to a failure: a session of that app, found by the
/// session query (which joins the app), proves that the app exists. One read instead of two.
pub fn check_for_appid(
    db: &Db,
    id: &str,
    skey: &str,
    appid: &str,
    now: i64,
) -> Result<Session, Error> {
    if ids::is_hex32(id) && ids::is_hex32(skey) {
        let hash = ids::skey_hash(skey);
        if let Some(row) = db.session(id, &hash)? {
            if row.appid == appid {
                return within_clocks(db, row, &hash, now);
            }
        }
    }
    let app = resolve_app(db, Some(appid))?;
    check(db, id, skey, Some(&app), now)
}

/// The rest of a check once the row is found: both clocks, then the slide.
fn within_clocks(
    db: &Db,
    mut row: SessionRow,
    hash: &[u8; 32],
    now: i64,
) -> Result<Session, Error> {
    // Sliding in steps of a tenth of the window (at most a minute) keeps the expiry exact to
    // that step and most checks free of any write. A slide is recorded in memory and written
    // behind with the others (SQLite: `Db::slide_session`), so the last visit is the row's or
    // a newer one still pending, or a user active only in memory would be refused as idle.
    let step = (row.idle_secs / 10).clamp(1, 60);
    if now - row.last_visit >= step {
        if let Some(pending) = db.pending_slide(hash) {
            row.last_visit = row.last_visit.max(pending);
        }
    }
    if now > row.expires_at || now - row.last_visit > row.idle_secs {
        return Err(Error::AuthFail);
    }
    // A check never waits for a write: a slide that cannot be made now (too many pending; or,
    // written at once, someone else writing) is skipped, and the next check tries again.
    if now - row.last_visit >= step {
        db.slide_session(hash, row.seq, now)
            .map_err(Error::SessionWrite)?;
    }
    Ok(Session { row })
}

/// Check a session of the app `appid` names, else of the only mini-program app (the envelope's
/// `appid`, which may be left out while one mini-program app is registered).
pub fn check_in(
    db: &Db,
    id: &str,
    skey: &str,
    appid: Option<&str>,
    now: i64,
) -> Result<Session, Error> {
    match appid {
        Some(appid) => check_for_appid(db, id, skey, appid, now),
        None => {
            let app = resolve_app(db, None)?;
            check(db, id, skey, Some(&app), now)
        }
    }
}

/// The fields of WeChat's `phone_info` that are stored and answered (its `watermark` is checked,
/// not kept).
const PHONE_FIELDS: [&str; 3] = ["phoneNumber", "purePhoneNumber", "countryCode"];

/// The user's phone number from the `code` the mini program's `getPhoneNumber` gave: asked of
/// WeChat with the app's access token (a stale one renewed once), checked (the watermark must
/// name the session's app), stored on the user (sealed) and answered as
/// `{phoneNumber, purePhoneNumber, countryCode}`. A code WeChat refuses is `CodeRejected`.
pub fn phone_number(
    broker: &Broker,
    db: &Db,
    session: &Session,
    code: &str,
    now: i64,
) -> Result<Value, Error> {
    if code.is_empty() {
        return Err(Error::BadRequest("code is empty".into()));
    }
    let appid = &session.row.appid;
    let key = Key::AppToken {
        appid: appid.clone(),
    };
    let body = serde_json::json!({ "code": code });
    let answer = broker
        .with_token(db, &key, true, |wechat, token| {
            wechat.post(
                Host::Api,
                urls::GET_USER_PHONE_NUMBER,
                &[("access_token", token)],
                &body,
            )
        })
        .map_err(|e| match e.errcode() {
            Some(c @ errcode::INVALID_CODE) => Error::CodeRejected(c),
            _ => e,
        })?;
    let info = phone_info_of(&answer, appid)?;
    db.set_phone_info(&session.row.user_id, &info.to_string(), now)
        .map_err(Error::SessionWrite)?;
    Ok(info)
}

/// The stored `phone_info` from WeChat's answer, whose watermark must name `appid`.
fn phone_info_of(answer: &Value, appid: &str) -> Result<Value, Error> {
    let refuse = |what| Err(Error::Upstream(UpstreamError::Unexpected(what)));
    let Some(info) = answer.get("phone_info").and_then(Value::as_object) else {
        return refuse("getuserphonenumber without phone_info");
    };
    if info.get("watermark").and_then(|w| w.get("appid")) != Some(&Value::from(appid)) {
        return refuse("a phone number watermarked for another app");
    }
    let mut kept = serde_json::Map::new();
    for field in PHONE_FIELDS {
        match info.get(field) {
            Some(v @ (Value::String(_) | Value::Number(_))) => {
                kept.insert(field.to_string(), v.clone());
            }
            _ => return refuse("getuserphonenumber without a phone number"),
        }
    }
    Ok(Value::Object(kept))
}

/// Decrypt `encryptedData` with a valid session's key.
pub fn decrypt(
    db: &Db,
    id: &str,
    skey: &str,
    enc: Encrypted,
    now: i64,
) -> Result<(Session, Value), Error> {
    let session = check(db, id, skey, None, now)?;
    let value = decrypt_for(&session.row.appid, session.row.session_key.expose(), enc)?;
    Ok((session, value))
}

/// Decrypt and store as the user's data (`qcloud.cam.userinfo`).
pub fn set_user_info(
    db: &Db,
    id: &str,
    skey: &str,
    enc: Encrypted,
    now: i64,
) -> Result<(Session, Value), Error> {
    let (session, value) = decrypt(db, id, skey, enc, now)?;
    db.set_user_info(&session.row.user_id, &value.to_string(), now)
        .map_err(Error::SessionWrite)?;
    Ok((session, value))
}

/// Revoke one session (this device). `AuthFail` when there is no such session.
pub fn revoke(db: &Db, id: &str, skey: &str, now: i64) -> Result<(), Error> {
    check(db, id, skey, None, now)?;
    db.revoke_session(&ids::skey_hash(skey))
        .map_err(Error::SessionWrite)?;
    Ok(())
}

fn decrypt_for(appid: &str, session_key: &str, enc: Encrypted) -> Result<Value, Error> {
    let plain =
        crypto::decrypt_user_data(session_key, enc.data, enc.iv).map_err(|_| Error::DecryptFail)?;
    match enc.iv {
        Some(_) => crypto::check_watermark(&plain, appid),
        None => crypto::parse_user_data(&plain),
    }
    .map_err(|_| Error::DecryptFail)
}

/// Stored user data is a JSON object or NULL; anything else is treated as NULL.
fn parse_stored(s: Option<&str>) -> Value {
    s.and_then(|s| serde_json::from_str::<Value>(s).ok())
        .filter(Value::is_object)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_never_overflow() {
        let app = |login_days, session_secs| App {
            id: 1,
            appid: "wx1".into(),
            secret: crate::secret::Secret::new("s"),
            kind: "miniprogram".into(),
            title: String::new(),
            login_days,
            session_secs,
            token: None,
            aes_key: None,
            prev_aes_key: None,
            forward_url: None,
        };
        let now = 1_800_000_000;
        assert_eq!(lifetimes(&app(30, 3600), now), (3600, now + 3600));
        assert_eq!(lifetimes(&app(1, 999_999), now), (86400, now + 86400));
        for (days, secs) in [(106_751_991_167_302, i64::MAX), (i64::MAX, i64::MAX)] {
            let (duration, expires_at) = lifetimes(&app(days, secs), now);
            assert!(duration > 0 && expires_at >= now, "{days} {secs}");
        }
    }

    #[test]
    fn a_phone_number_is_kept_only_when_watermarked_for_the_app() {
        let answer = |appid: &str| {
            serde_json::json!({"errcode": 0, "phone_info": {"phoneNumber": "13800138000",
                "purePhoneNumber": "13800138000", "countryCode": "86",
                "watermark": {"appid": appid, "timestamp": 1}}})
        };
        assert_eq!(
            phone_info_of(&answer("wx1"), "wx1").unwrap(),
            serde_json::json!({"phoneNumber": "13800138000", "purePhoneNumber": "13800138000",
                "countryCode": "86"})
        );
        let mut no_number = answer("wx1");
        no_number["phone_info"]["purePhoneNumber"] = Value::Null;
        for bad in [
            answer("wx2"),
            answer(""),
            serde_json::json!({"errcode": 0}),
            serde_json::json!({"phone_info": {"phoneNumber": "1"}}),
            no_number,
        ] {
            let e = phone_info_of(&bad, "wx1").unwrap_err();
            assert!(
                matches!(e, Error::Upstream(UpstreamError::Unexpected(_))),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn stored_user_info_passes_through_only_as_a_valid_object() {
        assert!(is_json_object(r#"{"nickName":"中文","a":[1,{"b":null}]}"#));
        assert!(is_json_object(" {} "));
        for bad in [
            "",
            "null",
            "[1]",
            "\"x\"",
            "{",
            r#"{"a":1} trailing"#,
            r#"{"a":"\x"}"#,
            "{}{}",
        ] {
            assert!(!is_json_object(bad), "{bad:?}");
            assert_eq!(parse_stored(Some(bad)), Value::Null, "{bad:?}");
        }
    }
}
