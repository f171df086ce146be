//! The WeChat-facing routes (CONTRACT §6): official-account / mini-program server URLs, WeCom
//! callbacks, and the Open Platform component's event URL, authorisation redirect and callback.
//! They are authenticated by WeChat's signatures, never by `server.api_key`.
//!
//! Thin handlers: look up the account, hand the query and body to `callback` (window, verify,
//! decrypt, claim in the seen-request memory) or `component` (the dance), render. Any refusal
//! (unknown account, account without a callback token, a `timestamp` outside
//! `wechat.callback_window_secs`, bad signature, a message that does not decrypt under the
//! account's key with its own receive id) is a bare 401 with nothing stored; the reason goes to
//! the log. A verified callback seen before (a replay, or WeChat's retry of a message already
//! handled) is answered `success` and neither applied nor forwarded again.

use super::{Context, Incoming, Method, Reply};
use crate::core::accounts;
use crate::core::component::{self, AuthorizeLink};
use crate::core::error::{Error, Refusal};
use crate::core::push::{self, Forwarded, Message, Rejected};
use crate::crypto::MsgCrypt;

const TEXT: &str = "text/plain; charset=utf-8";
const XML: &str = "application/xml; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// A refusal: 401, nothing stored, the reason in the log only.
fn refuse(what: &str, why: &dyn std::fmt::Display) -> Reply {
    log::warn!("callback {what} refused: {why}");
    Reply::text(401, TEXT, "unauthorized")
}

fn success() -> Reply {
    Reply::text(200, TEXT, "success")
}

/// The query parameters a callback is signed with (missing ones are empty, and fail the check).
struct Signed {
    signature: String,
    msg_signature: String,
    timestamp: String,
    nonce: String,
    echostr: Option<String>,
}

impl Signed {
    /// The timestamp, if it is within `wechat.callback_window_secs` of now. Checked before the
    /// signature: a stale request is refused whoever signed it.
    fn fresh(&self, w: &Context) -> Result<i64, Rejected> {
        push::fresh_timestamp(&self.timestamp, crate::ids::now(), window(w))
    }

    fn from(rq: &Incoming) -> Signed {
        let p = |k| rq.query_param(k).unwrap_or_default();
        Signed {
            signature: p("signature"),
            msg_signature: p("msg_signature"),
            timestamp: p("timestamp"),
            nonce: p("nonce"),
            echostr: rq.query_param("echostr"),
        }
    }
}

fn crypt(
    token: &str,
    aes_key: Option<&str>,
    prev: Option<&str>,
    receive_id: &str,
) -> Result<MsgCrypt, Rejected> {
    let key = aes_key.ok_or(Rejected::Malformed("no EncodingAESKey is configured"))?;
    MsgCrypt::new(token, key, prev, receive_id).map_err(Rejected::Crypto)
}

/// `/wechat/mp/{appid}`: plain GET verification; POST in safe mode when the app has an
/// EncodingAESKey, else plain.
pub fn mp(w: &mut Context, rq: &Incoming) -> Reply {
    let appid = rq.param(0);
    let app = match accounts::app(&w.db, appid) {
        Ok(a) => a,
        Err(Error::NoApp) => return refuse("mp", &"unknown app"),
        Err(e) => return db_error(e),
    };
    let Some(token) = app.token.as_ref().map(|t| t.expose().to_string()) else {
        return refuse("mp", &"the app has no callback token");
    };
    let s = Signed::from(rq);
    let ts = match s.fresh(w) {
        Ok(ts) => ts,
        Err(e) => return refuse("mp", &e),
    };
    if rq.method == Method::Get {
        if !push::plain_signature_ok(&token, &s.timestamp, &s.nonce, &s.signature) {
            return refuse("mp", &Rejected::Signature);
        }
        return Reply::text(200, TEXT, s.echostr.unwrap_or_default());
    }
    // The account decides the mode, never the request: with an EncodingAESKey only an
    // encrypted, `msg_signature`-verified message is accepted (the plain `signature` does not
    // cover the body, so a downgraded POST could carry anything).
    let opened = if app.aes_key.is_some() {
        crypt(
            &token,
            app.aes_key.as_ref().map(|k| k.expose()),
            app.prev_aes_key.as_ref().map(|k| k.expose()),
            appid,
        )
        .and_then(|c| {
            push::open_encrypted(&c, &s.msg_signature, &s.timestamp, &s.nonce, &rq.body)
                .map(|m| (m, Some(c)))
        })
    } else {
        push::open_plain(&token, &s.signature, &s.timestamp, &s.nonce, &rq.body).map(|m| (m, None))
    };
    match opened {
        Ok((m, c)) => {
            // The seen-request memory keys on the signature that was verified.
            let signature = if c.is_some() {
                &s.msg_signature
            } else {
                &s.signature
            };
            let account = format!("mp/{appid}");
            let keys = (account.as_str(), (signature.as_str(), ts, s.nonce.as_str()));
            relay(w, keys, &m, app.forward_url.as_deref(), c.as_ref(), &s)
        }
        Err(e) => refuse("mp", &e),
    }
}

/// `/wechat/work/{corpid}/{agentid}`: encrypted echostr on GET; verify+decrypt on POST.
pub fn work(w: &mut Context, rq: &Incoming) -> Reply {
    let (corpid, agentid) = (rq.param(0), rq.param(1));
    let agent = match accounts::work_agent(&w.db, corpid, agentid) {
        Ok(a) => a,
        Err(Error::NotFound(_)) => return refuse("work", &"unknown agent"),
        Err(e) => return db_error(e),
    };
    let Some(token) = agent.token.as_ref() else {
        return refuse("work", &"the agent has no callback token");
    };
    let c = match crypt(
        token.expose(),
        agent.aes_key.as_ref().map(|k| k.expose()),
        agent.prev_aes_key.as_ref().map(|k| k.expose()),
        corpid,
    ) {
        Ok(c) => c,
        Err(e) => return refuse("work", &e),
    };
    let s = Signed::from(rq);
    let ts = match s.fresh(w) {
        Ok(ts) => ts,
        Err(e) => return refuse("work", &e),
    };
    if rq.method == Method::Get {
        let echostr = s.echostr.clone().unwrap_or_default();
        return match push::wecom_echo(&c, &s.msg_signature, &s.timestamp, &s.nonce, &echostr) {
            Ok(plain) => Reply::text(200, TEXT, plain),
            Err(e) => refuse("work", &e),
        };
    }
    match push::open_encrypted(&c, &s.msg_signature, &s.timestamp, &s.nonce, &rq.body) {
        Ok(m) => {
            let account = format!("work/{corpid}/{agentid}");
            let keys = (
                account.as_str(),
                (s.msg_signature.as_str(), ts, s.nonce.as_str()),
            );
            relay(w, keys, &m, agent.forward_url.as_deref(), Some(&c), &s)
        }
        Err(e) => refuse("work", &e),
    }
}

/// The account and the verified (signature, timestamp, nonce) a callback is remembered by.
type SeenAs<'a> = (&'a str, (&'a str, i64, &'a str));

fn window(w: &Context) -> i64 {
    i64::try_from(w.shared.config.wechat.callback_window_secs).unwrap_or(i64::MAX)
}

/// Claim a verified callback in the seen-request memory: `Err` carries the answer when it was
/// seen before (`success`, nothing applied or forwarded) or the database failed.
fn claim<'a>(
    w: &'a Context,
    (account, signed): SeenAs,
    m: &Message,
) -> Result<push::Claim<'a>, Reply> {
    let now = crate::ids::now();
    match push::claim(
        &w.db,
        push::seen_keys(account, signed, m, now, window(w)),
        now,
    ) {
        Ok(Some(claim)) => Ok(claim),
        Ok(None) => {
            log::info!("callback {account}: seen before; answered without applying it again");
            Err(success())
        }
        Err(e) => Err(db_error(e)),
    }
}

/// Forward a verified message (once) when the account has a `forward_url`, and answer WeChat:
/// the business reply (sealed in safe mode), or `success`.
fn relay(
    w: &Context,
    seen_as: SeenAs,
    m: &Message,
    forward_url: Option<&str>,
    c: Option<&MsgCrypt>,
    s: &Signed,
) -> Reply {
    let claim = match claim(w, seen_as, m) {
        Ok(claim) => claim,
        Err(answer) => return answer,
    };
    let forwarded = match forward_url.filter(|u| !u.is_empty()) {
        Some(url) => push::forward(&w.shared.wechat, url, m),
        None => Forwarded::Nothing,
    };
    if forwarded != Forwarded::Failed {
        claim.handled();
    }
    let reply = match forwarded {
        Forwarded::Reply(r) => r,
        Forwarded::Nothing | Forwarded::Failed => return success(),
    };
    match c {
        None => Reply::text(200, XML, reply),
        Some(c) => match crate::ids::random_bytes::<16>() {
            Ok(random) => {
                let ts = if s.timestamp.is_empty() {
                    crate::ids::now().to_string()
                } else {
                    s.timestamp.clone()
                };
                Reply::text(200, XML, push::seal(c, &reply, &random, &ts, &s.nonce))
            }
            // No randomness: answering in clear text would leak, so say `success` instead.
            Err(_) => success(),
        },
    }
}

/// `POST /wechat/component/{appid}/events`: always encrypted, receive id = the component appid.
pub fn component_events(w: &mut Context, rq: &Incoming) -> Reply {
    let appid = rq.param(0);
    let comp = match accounts::component(&w.db, appid) {
        Ok(c) => c,
        Err(Error::NotFound(_)) => return refuse("component", &"unknown component"),
        Err(e) => return db_error(e),
    };
    let s = Signed::from(rq);
    let ts = match s.fresh(w) {
        Ok(ts) => ts,
        Err(e) => return refuse("component", &e),
    };
    let opened = MsgCrypt::new(
        comp.token.expose(),
        comp.aes_key.expose(),
        comp.prev_aes_key.as_ref().map(|k| k.expose()),
        appid,
    )
    .map_err(Rejected::Crypto)
    .and_then(|c| push::open_encrypted(&c, &s.msg_signature, &s.timestamp, &s.nonce, &rq.body));
    let m = match opened {
        Ok(m) => m,
        Err(e) => return refuse("component", &e),
    };
    let account = format!("component/{appid}");
    let claim = match claim(w, (&account, (&s.msg_signature, ts, &s.nonce)), &m) {
        Ok(claim) => claim,
        Err(answer) => return answer,
    };
    match component::handle_event(&w.shared.broker, &w.db, appid, &m.fields) {
        Ok(outcome) => {
            log::info!("component {appid} event: {outcome:?}");
            claim.handled();
            // Relayed once the event is applied, and at most once: the claim is already
            // handled, so neither a failed relay nor WeChat's retry relays it again.
            if let Some(url) = comp.forward_url.as_deref().filter(|u| !u.is_empty()) {
                if outcome.is_authorisation() {
                    push::forward(&w.shared.wechat, url, &m);
                }
            }
            success()
        }
        // Malformed events will not improve on a retry: acknowledge them.
        Err(e @ (Error::BadRequest(_) | Error::NotFound(_))) => {
            log::warn!("component {appid} event ignored: {e}");
            claim.handled();
            success()
        }
        // WeChat or the database failed: a non-success answer makes WeChat push it again, and
        // the claim is dropped so that the retry is applied.
        Err(e) => {
            log::error!("component {appid} event failed: {e}");
            Reply::text(503, TEXT, "retry")
        }
    }
}

/// `GET /wechat/component/{appid}/authorize[?mobile=1&auth_type=N&biz_appid=ID]`: a page on
/// wafer's own origin that links (and at once navigates) to WeChat's authorisation page. WeChat
/// shows that page only to a browser whose Referer is on the component's registered entry-page
/// domain; a bare 302 opened from a pasted link arrives with none.
pub fn authorize(w: &mut Context, rq: &Incoming) -> Reply {
    let appid = rq.param(0);
    let comp = match accounts::component(&w.db, appid) {
        Ok(c) => c,
        Err(Error::NotFound(_)) => {
            return page(404, "Unknown platform", "No such third-party platform.")
        }
        Err(e) => return db_error(e),
    };
    let auth_type = match rq.query_param("auth_type").as_deref() {
        None | Some("") => None,
        Some(t @ ("1" | "2" | "3")) => t.parse().ok(),
        Some(_) => return page(400, "Bad request", "auth_type must be 1, 2 or 3."),
    };
    let Some(redirect_uri) = redirect_uri(w, &comp) else {
        log::error!("component {appid}: no redirect_uri and no server.public_url");
        return page(
            500,
            "Not configured",
            "This platform has no redirect_uri and wafer has no server.public_url, so the \
             authorisation link cannot name a callback. Set one of them.",
        );
    };
    let pre_auth_code = match component::pre_auth_code(&w.shared.broker, &w.db, appid) {
        Ok(c) => c,
        Err(e) => return error_page(e),
    };
    let biz_appid = rq.query_param("biz_appid").filter(|b| !b.is_empty());
    let link = AuthorizeLink {
        component_appid: appid,
        pre_auth_code: &pre_auth_code,
        redirect_uri: &redirect_uri,
        mobile: matches!(rq.query_param("mobile").as_deref(), Some("1" | "true")),
        auth_type,
        biz_appid: biz_appid.as_deref(),
    };
    // The script reads the link's own (already parsed) href, so the URL is never put into
    // script text; the referrer policy is pinned so that a proxy's header cannot drop it.
    let mut r = Reply::text(
        200,
        HTML,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\">\
             <meta name=\"referrer\" content=\"strict-origin-when-cross-origin\">\
             <title>Authorise</title></head><body><h1>Authorise</h1>\
             <p><a id=\"go\" href=\"{}\">Continue to WeChat to authorise this platform</a></p>\
             <script>location.replace(document.getElementById(\"go\").href)</script>\
             </body></html>",
            html_escape(&link.url())
        ),
    );
    r.headers.push(("Cache-Control", "no-store".into()));
    r
}

/// Where WeChat sends the merchant back: the component's `redirect_uri`, else this server's
/// callback under `server.public_url`. From configuration only, never from the `Host` header,
/// which the client chooses.
fn redirect_uri(w: &Context, comp: &crate::store::Component) -> Option<String> {
    comp.redirect_uri
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            let base = w.shared.config.server.public_url.trim_end_matches('/');
            (!base.is_empty()).then(|| format!("{base}/wechat/component/{}/callback", comp.appid))
        })
}

/// `GET /wechat/component/{appid}/callback?auth_code=..&expires_in=..`.
pub fn component_callback(w: &mut Context, rq: &Incoming) -> Reply {
    let appid = rq.param(0);
    let Some(code) = rq.query_param("auth_code").filter(|c| !c.is_empty()) else {
        return page(400, "Bad request", "The authorisation code is missing.");
    };
    match component::exchange_from_callback(&w.shared.broker, &w.db, appid, &code) {
        Ok(Some(a)) => page(
            200,
            "Authorised",
            &format!(
                "Account {} has authorised this platform. You may close this page.",
                html_escape(&a.authorizer_appid)
            ),
        ),
        Ok(None) => {
            log::warn!("component {appid}: callback refused: too many this minute");
            let mut r = page(
                429,
                "Too many requests",
                "Too many authorisation callbacks this minute. Please try again in a minute.",
            );
            r.headers.push(("Retry-After", "60".into()));
            r
        }
        Err(e) => error_page(e),
    }
}

fn error_page(e: Error) -> Reply {
    log::warn!("component: {e}");
    match e {
        Error::NotFound(what) => page(404, "Not found", &format!("No such {what}.")),
        Error::Upstream(u) if !u.is_transport() => page(
            502,
            "WeChat refused",
            &format!(
                "WeChat answered an error (errcode {}). Please start the authorisation again.",
                u.errcode().map_or(0, |c| c.0)
            ),
        ),
        Error::Upstream(_) => page(
            502,
            "WeChat unavailable",
            "WeChat could not be reached. Please try again.",
        ),
        Error::Refused(Refusal::NoVerifyTicket) => page(
            503,
            "Not ready",
            "The platform has not received its verify ticket from WeChat yet. Please try again in a few minutes.",
        ),
        Error::Refused(Refusal::DailyQuota) => page(
            503,
            "Not available today",
            "WeChat's daily quota for this platform is used up. Please try again tomorrow.",
        ),
        Error::Refused(_) => page(
            503,
            "Not available",
            "The platform cannot get a new token from WeChat right now. Please try again later.",
        ),
        _ => page(500, "Error", "Something went wrong."),
    }
}

fn page(status: u16, title: &str, text: &str) -> Reply {
    Reply::text(
        status,
        HTML,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{text}</p></body></html>"
        ),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn db_error(e: impl std::fmt::Display) -> Reply {
    log::error!("callback: database: {e}");
    Reply::text(500, TEXT, "error")
}
