//! The Open Platform component (third-party platform): the verify ticket WeChat pushes, the
//! component token, pre-auth codes, the authorisation page, the exchange of an `auth_code`, the
//! authorisers and their tokens, and the events WeChat sends about them.
//!
//! Every parameter of the dance lives in SQLite (`components`, `authorizers`, `credentials`), so
//! a restart resumes where it stopped. The refresh token is the one thing that cannot be got back
//! without the merchant authorising again, so it is written before anything else is done with a
//! `query_auth` answer, and a rotated one is written as soon as WeChat hands it out. The tokens
//! themselves are hosted by `credential::Broker` (refresh ahead, single-flight), which also
//! holds their two fetchers; this module never caches a token itself and never names the token
//! endpoints. It may use `accounts` and `credential`; neither uses it.
//!
//! Recovery: a component token that failed with 61005/61006 (ticket expired or invalid) is not
//! remembered as a failure; the next request fetches again with whatever ticket is stored, so a
//! fresh `component_verify_ticket` push is all it takes.

pub use crate::core::credential::live_authorizer;
use crate::core::credential::{with_component_token, Broker, Key};
use crate::core::error::Error;
use crate::ids;
use crate::store::Db;
use crate::wechat::{urls, UpstreamError};
use serde_json::{json, Map, Value};

/// The authorisers of a registered component that have not revoked it, oldest first.
pub fn live_authorizers(
    db: &Db,
    component_appid: &str,
) -> Result<Vec<crate::store::Authorizer>, Error> {
    crate::core::accounts::component(db, component_appid)?;
    Ok(db.list_authorizers(component_appid)?)
}

/// A pre-auth code is not handed out for a new authorisation page once it has less than this
/// left: the merchant needs time on WeChat's page (codes live 600 to 1800 s).
pub const PRE_AUTH_MARGIN_SECS: i64 = 300;

/// The most `api_query_auth` calls that `/callback` (which anyone can request) may cause per
/// component in any 60 s (a sliding window: `Db::count_query_auth`); past it the callback
/// answers 429. WeChat's own `authorized`
/// events, which are signed, are not counted.
pub const QUERY_AUTH_PER_MINUTE: i64 = 60;

/// One pre-auth code fetch at a time in this process, so that a burst of page views makes one.
static PRE_AUTH_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The pre-auth code for an authorisation page. A code stays valid for page views until one
/// completed authorisation consumes it, so the stored one is reused until an `authorized`
/// event names it (or the browser callback completes one), or until it has less than
/// [`PRE_AUTH_MARGIN_SECS`] left: page views, which anyone can make, do not each cost an
/// upstream call.
pub fn pre_auth_code(broker: &Broker, db: &Db, component_appid: &str) -> Result<String, Error> {
    crate::core::accounts::component(db, component_appid)?;
    let _turn = PRE_AUTH_TURN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((code, expires_at)) = db.pre_auth_code(component_appid)? {
        if expires_at.saturating_sub(ids::now()) > PRE_AUTH_MARGIN_SECS {
            return Ok(code);
        }
    }
    let v = with_component_token(
        broker,
        db,
        component_appid,
        urls::CREATE_PREAUTHCODE,
        &json!({"component_appid": component_appid}),
        true,
    )?;
    let code = v
        .get("pre_auth_code")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(Error::Upstream(UpstreamError::Garbage))?;
    // WeChat documents 600 to 1800 s; anything outside is bounded rather than trusted.
    let expires_in = v
        .get("expires_in")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .clamp(0, 86_400);
    db.set_pre_auth_code(component_appid, code, ids::now() + expires_in)?;
    Ok(code.to_string())
}

/// Exchange an `auth_code` from the browser callback (`/callback`, which anyone can request):
/// at most [`QUERY_AUTH_PER_MINUTE`] exchanges in any 60 s per component (`Ok(None)` past it,
/// before any upstream call). A completed exchange retires the stored pre-auth code, which the
/// authorisation most likely used.
pub fn exchange_from_callback(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
    auth_code: &str,
) -> Result<Option<Authorised>, Error> {
    crate::core::accounts::component(db, component_appid)?;
    if !db.count_query_auth(component_appid, ids::now(), QUERY_AUTH_PER_MINUTE)? {
        return Ok(None);
    }
    let a = exchange_auth_code(broker, db, component_appid, auth_code)?;
    db.forget_pre_auth_code(component_appid, None)?;
    Ok(Some(a))
}

/// What an exchanged `auth_code` gave.
#[derive(Debug, Clone)]
pub struct Authorised {
    pub authorizer_appid: String,
    pub func_info: Value,
}

/// Exchange an `auth_code` (from the browser callback or an `authorized` event): persist the
/// authoriser and its refresh token first, then seed its access token into the broker's store.
pub fn exchange_auth_code(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
    auth_code: &str,
) -> Result<Authorised, Error> {
    crate::core::accounts::component(db, component_appid)?;
    let v = with_component_token(
        broker,
        db,
        component_appid,
        urls::QUERY_AUTH,
        &json!({"component_appid": component_appid, "authorization_code": auth_code}),
        true,
    )?;
    let info = v
        .get("authorization_info")
        .ok_or(Error::Upstream(UpstreamError::Garbage))?;
    let s = |k: &str| {
        info.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(authorizer_appid), Some(refresh)) =
        (s("authorizer_appid"), s("authorizer_refresh_token"))
    else {
        return Err(Error::Upstream(UpstreamError::Garbage));
    };
    let func_info = info.get("func_info").cloned().unwrap_or(json!([]));
    let now = ids::now();
    db.upsert_authorizer(
        component_appid,
        authorizer_appid,
        refresh,
        &func_info.to_string(),
        now,
    )?;
    // A re-authorisation replaces whatever the broker held for this authoriser.
    broker.forget(
        db,
        &Key::authorizer_prefix(component_appid, authorizer_appid),
    )?;
    if let (Some(access), Some(expires_in)) = (
        s("authorizer_access_token"),
        info.get("expires_in").and_then(Value::as_i64),
    ) {
        if expires_in > 0 {
            let key = Key::AuthorizerToken {
                component_appid: component_appid.to_string(),
                authorizer_appid: authorizer_appid.to_string(),
            };
            broker.seed(db, &key, access, expires_in)?;
        }
    }
    // The profile is a nicety: a failure to fetch it never fails the authorisation (the next
    // read of the authoriser tries again).
    if let Err(e) = fetch_authorizer_info(broker, db, component_appid, authorizer_appid) {
        log::warn!("component {component_appid}: authoriser info for {authorizer_appid}: {e}");
    }
    Ok(Authorised {
        authorizer_appid: authorizer_appid.to_string(),
        func_info,
    })
}

/// Fetch an authoriser's profile (`api_get_authorizer_info`'s `authorizer_info`) and store it
/// with the authoriser; answers it.
pub fn fetch_authorizer_info(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
    authorizer_appid: &str,
) -> Result<Value, Error> {
    let v = with_component_token(
        broker,
        db,
        component_appid,
        urls::GET_AUTHORIZER_INFO,
        &json!({"component_appid": component_appid, "authorizer_appid": authorizer_appid}),
        true,
    )?;
    let info = v
        .get("authorizer_info")
        .filter(|i| i.is_object())
        .ok_or(Error::Upstream(UpstreamError::Garbage))?;
    db.set_authorizer_info(component_appid, authorizer_appid, &info.to_string())?;
    Ok(info.clone())
}

/// A live authoriser with its profile (`None` while no fetch has succeeded).
pub struct AuthorizerView {
    pub authorizer: crate::store::Authorizer,
    pub info: Option<Value>,
}

/// A live authoriser and its stored profile, without asking WeChat: `info` is `None` when none
/// is stored yet (then [`authorizer_view_fetching`] asks for it).
pub fn authorizer_view(
    db: &Db,
    component_appid: &str,
    authorizer_appid: &str,
) -> Result<AuthorizerView, Error> {
    let authorizer = live_authorizer(db, component_appid, authorizer_appid)?;
    let info = authorizer
        .info
        .as_deref()
        .and_then(|i| serde_json::from_str::<Value>(i).ok())
        .filter(Value::is_object);
    Ok(AuthorizerView { authorizer, info })
}

/// [`authorizer_view`], with the profile fetched from WeChat when none is stored (an authoriser
/// whose fetch failed, or stored before profiles were fetched). A failed fetch leaves `info`
/// `None`: it is tried again on the next read.
pub fn authorizer_view_fetching(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
    authorizer_appid: &str,
) -> Result<AuthorizerView, Error> {
    let mut view = authorizer_view(db, component_appid, authorizer_appid)?;
    if view.info.is_none() {
        match fetch_authorizer_info(broker, db, component_appid, authorizer_appid) {
            Ok(info) => view.info = Some(info),
            Err(Error::Busy) => return Err(Error::Busy),
            Err(e) => log::warn!(
                "component {component_appid}: authoriser info for {authorizer_appid}: {e}"
            ),
        }
    }
    Ok(view)
}

/// What an event did (for the log and the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    TicketStored,
    Authorised(String),
    /// An `authorized` event for a code the browser callback already exchanged.
    AlreadyAuthorised(String),
    Revoked(String),
    /// An event older than the state it would change (a late delivery): nothing changed.
    Outdated(String),
    Ignored(String),
}

impl EventOutcome {
    /// Did the event change (or confirm) an authorisation? Those are relayed to the component's
    /// `forward_url`, once.
    pub fn is_authorisation(&self) -> bool {
        matches!(
            self,
            EventOutcome::Authorised(_)
                | EventOutcome::AlreadyAuthorised(_)
                | EventOutcome::Revoked(_)
        )
    }
}

/// Handle one decrypted authorisation event (`InfoType`). An error means WeChat should retry
/// (answer non-`success`): only a failure to reach WeChat or the database is one.
///
/// Events apply in the order WeChat made them: one whose `CreateTime` is older than the state
/// it would change (a ticket older than the stored one, an `unauthorized` older than the
/// latest authorisation, an `authorized` older than the latest revocation or authorisation)
/// changes nothing; one of the same second is applied.
pub fn handle_event(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
    fields: &Map<String, Value>,
) -> Result<EventOutcome, Error> {
    let f = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let info_type = f("InfoType").unwrap_or("");
    let created = || {
        f("CreateTime")
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| Error::BadRequest("CreateTime missing".into()))
    };
    match info_type {
        "component_verify_ticket" => {
            let ticket = f("ComponentVerifyTicket")
                .ok_or_else(|| Error::BadRequest("ComponentVerifyTicket missing".into()))?;
            if db.set_verify_ticket(component_appid, ticket, created()?)? {
                return Ok(EventOutcome::TicketStored);
            }
            match db.component(component_appid)? {
                Some(_) => Ok(EventOutcome::Outdated(info_type.to_string())),
                None => Err(Error::NotFound("component")),
            }
        }
        "authorized" | "updateauthorized" => {
            let code = f("AuthorizationCode")
                .ok_or_else(|| Error::BadRequest("AuthorizationCode missing".into()))?;
            let created = created()?;
            // The pre-auth code this authorisation used is spent: the next page gets a new one.
            if let Some(used) = f("PreAuthCode") {
                db.forget_pre_auth_code(component_appid, Some(used))?;
            }
            if let Some(a) = db.authorizer(component_appid, f("AuthorizerAppid").unwrap_or(""))? {
                let latest = a.revoked_at.unwrap_or(a.authorized_at).max(a.authorized_at);
                if created < latest {
                    return Ok(EventOutcome::Outdated(a.authorizer_appid));
                }
            }
            match exchange_auth_code(broker, db, component_appid, code) {
                Ok(a) => Ok(EventOutcome::Authorised(a.authorizer_appid)),
                // The browser callback usually exchanges the same code first; WeChat then
                // refuses it here, and that is fine as long as the authorisation is stored.
                Err(Error::Upstream(UpstreamError::WeChat { errcode, .. })) => {
                    let who = f("AuthorizerAppid").unwrap_or("");
                    match db.authorizer(component_appid, who)? {
                        Some(a) if a.revoked_at.is_none() => {
                            Ok(EventOutcome::AlreadyAuthorised(who.to_string()))
                        }
                        _ => Err(Error::Upstream(UpstreamError::WeChat {
                            errcode,
                            errmsg: "api_query_auth refused the event's code".into(),
                        })),
                    }
                }
                Err(e) => Err(e),
            }
        }
        "unauthorized" => {
            let who = f("AuthorizerAppid")
                .ok_or_else(|| Error::BadRequest("AuthorizerAppid missing".into()))?;
            if !db.revoke_authorizer(component_appid, who, created()?, ids::now())? {
                // Never authorised, already revoked, or authorised again since: keep its tokens.
                return Ok(EventOutcome::Outdated(who.to_string()));
            }
            broker.forget(db, &Key::authorizer_prefix(component_appid, who))?;
            Ok(EventOutcome::Revoked(who.to_string()))
        }
        other => Ok(EventOutcome::Ignored(other.to_string())),
    }
}

/// Where to send the merchant: WeChat's PC authorisation page, or the mobile one.
pub struct AuthorizeLink<'a> {
    pub component_appid: &'a str,
    pub pre_auth_code: &'a str,
    pub redirect_uri: &'a str,
    pub mobile: bool,
    /// 1 official accounts, 2 mini programs, 3 both (WeChat's default when absent).
    pub auth_type: Option<u8>,
    pub biz_appid: Option<&'a str>,
}

impl AuthorizeLink<'_> {
    pub fn url(&self) -> String {
        let mut q = format!(
            "component_appid={}&pre_auth_code={}&redirect_uri={}",
            url_encode(self.component_appid),
            url_encode(self.pre_auth_code),
            url_encode(self.redirect_uri)
        );
        if let Some(t) = self.auth_type {
            q.push_str(&format!("&auth_type={t}"));
        }
        if let Some(b) = self.biz_appid {
            q.push_str(&format!("&biz_appid={}", url_encode(b)));
        }
        if self.mobile {
            format!(
                "{}?action=bindcomponent&no_scan=1&{q}#wechat_redirect",
                urls::MOBILE_AUTHORIZE_PAGE
            )
        } else {
            format!("{}?{q}", urls::AUTHORIZE_PAGE)
        }
    }
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a link's query.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn url_encode(s: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_links() {
        let mut l = AuthorizeLink {
            component_appid: "wxc1",
            pre_auth_code: "preauthcode@@@x-y",
            redirect_uri: "https://a.example/cb?x=1&y=2",
            mobile: false,
            auth_type: None,
            biz_appid: None,
        };
        assert_eq!(
            l.url(),
            "https://mp.weixin.qq.com/cgi-bin/componentloginpage?component_appid=wxc1\
             &pre_auth_code=preauthcode%40%40%40x-y&redirect_uri=https%3A%2F%2Fa.example%2Fcb%3Fx%3D1%26y%3D2"
        );
        l.mobile = true;
        l.auth_type = Some(2);
        l.biz_appid = Some("wxbiz");
        assert_eq!(
            l.url(),
            "https://open.weixin.qq.com/wxaopen/safe/bindcomponent?action=bindcomponent&no_scan=1\
             &component_appid=wxc1&pre_auth_code=preauthcode%40%40%40x-y\
             &redirect_uri=https%3A%2F%2Fa.example%2Fcb%3Fx%3D1%26y%3D2&auth_type=2&biz_appid=wxbiz#wechat_redirect"
        );
    }
}
