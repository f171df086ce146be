//! The WeChat API gateway (CONTRACT §9): a business server calls any WeChat server API through
//! wafer and never holds a token. The gateway checks the path, drops the caller's credential
//! parameters, adds the hosted one (from the broker), relays method, query, body and
//! `Content-Type` (`wechat::relay`), and hands back WeChat's status, `Content-Type`,
//! `Content-Disposition` and body bytes unchanged. When WeChat says the token is stale (per
//! product: `Errcode::stale_token`), the broker invalidates it if it is still the current one
//! (one refresh however many callers saw it) and the call is made once more; a renewal the
//! broker refuses leaves WeChat's first answer as the answer.
//!
//! It must not: relay a path that issues or resets credentials (`urls::CREDENTIAL_PATHS`), aim
//! anywhere but the configured hosts, log a query or a body (they carry tokens and user data),
//! or label metrics with a caller's path (`api_label` knows a fixed list of API families).
//! It runs where logins run (the upstream pool): it waits on WeChat.

use crate::config::GatewayConfig;
use crate::core::credential::{Broker, Key};
use crate::core::error::Error;
use crate::metrics::Metrics;
use crate::store::Db;
use crate::wechat::{urls, Errcode, RelayError, RelayRequest, Relayed, UpstreamError};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Whose credential a call carries, and so where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A mini program or official account: its `access_token`, on `wechat.api_base`.
    App { appid: String },
    /// A WeCom agent: its `access_token`, on `wechat.work_api_base`.
    WorkAgent { corpid: String, agentid: String },
    /// An account authorised to a component: the authoriser's `access_token`.
    Authorizer {
        component_appid: String,
        authorizer_appid: String,
    },
    /// The component itself: its `component_access_token`.
    Component { component_appid: String },
}

impl Target {
    /// The hosted credential the call carries.
    pub fn key(&self) -> Key {
        match self.clone() {
            Target::App { appid } => Key::AppToken { appid },
            Target::WorkAgent { corpid, agentid } => Key::WorkToken { corpid, agentid },
            Target::Authorizer {
                component_appid,
                authorizer_appid,
            } => Key::AuthorizerToken {
                component_appid,
                authorizer_appid,
            },
            Target::Component { component_appid } => Key::ComponentToken { component_appid },
        }
    }

    /// The query parameter WeChat reads the credential from.
    fn credential_param(&self) -> &'static str {
        match self {
            Target::Component { .. } => "component_access_token",
            _ => "access_token",
        }
    }

    /// The `target` label of `wafer_gateway_calls_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::App { .. } => "app",
            Target::WorkAgent { .. } => "work",
            Target::Authorizer { .. } => "authorizer",
            Target::Component { .. } => "component",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::App { appid } => write!(f, "app/{appid}"),
            Target::WorkAgent { corpid, agentid } => write!(f, "work/{corpid}/{agentid}"),
            Target::Authorizer {
                component_appid,
                authorizer_appid,
            } => write!(
                f,
                "component/{component_appid}/authorizer/{authorizer_appid}"
            ),
            Target::Component { component_appid } => write!(f, "component/{component_appid}"),
        }
    }
}

/// A gateway route's path (`/v1/…/wechat/{path}`, before any `?`) as its target and the
/// still-encoded `{path}` after `/wechat/`; `None` for any other path. The segments naming the
/// target are percent-decoded.
pub fn parse_route(path: &str) -> Option<(Target, &str)> {
    let rest = path.strip_prefix("/v1/")?;
    let (head, tail) = rest.split_once("/wechat/")?;
    let seg = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    let parts: Vec<&str> = head.split('/').collect();
    let target = match parts.as_slice() {
        ["apps", appid] => Target::App { appid: seg(appid)? },
        ["work", corpid, agentid] => Target::WorkAgent {
            corpid: seg(corpid)?,
            agentid: seg(agentid)?,
        },
        ["components", component, "authorizers", authorizer] => Target::Authorizer {
            component_appid: seg(component)?,
            authorizer_appid: seg(authorizer)?,
        },
        ["components", component] => Target::Component {
            component_appid: seg(component)?,
        },
        _ => return None,
    };
    Some((target, tail))
}

/// Why the gateway answered a call itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400 `bad_path`: not a relative path of `[A-Za-z0-9_./-]` without `.`, `..` or empty
    /// segments (after percent-decoding).
    BadPath,
    /// 403 `credential_path`: a path that issues or resets credentials.
    CredentialPath,
    /// 413: the request body is over `gateway.max_body_bytes`.
    BodyTooLarge,
    /// 503 `busy`: the bodies in flight would pass `gateway.max_inflight_bytes`, or the
    /// upstream pool is full.
    Busy,
    /// 502 `upstream_too_large`: WeChat's answer is over `gateway.max_body_bytes`.
    UpstreamTooLarge,
    /// 502 `upstream_unreachable`: WeChat could not be reached, timed out or broke off.
    UpstreamUnreachable,
}

impl Refusal {
    /// (HTTP status, `error` code, message) of the `/v1` error answer.
    pub fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            Refusal::BadPath => (
                400,
                "bad_path",
                "the path must be relative, of [A-Za-z0-9_./-], without '.', '..' or empty segments",
            ),
            Refusal::CredentialPath => (
                403,
                "credential_path",
                "paths that issue or reset credentials are not relayed; wafer's own routes serve tokens and tickets",
            ),
            Refusal::BodyTooLarge => (413, "too_large", "the body is over gateway.max_body_bytes"),
            Refusal::Busy => (503, "busy", "too many calls are in flight; try again"),
            Refusal::UpstreamTooLarge => (
                502,
                "upstream_too_large",
                "WeChat's answer is over gateway.max_body_bytes",
            ),
            Refusal::UpstreamUnreachable => (
                502,
                "upstream_unreachable",
                "WeChat could not be reached or did not answer in time",
            ),
        }
    }
}

#[derive(Debug)]
pub enum GatewayError {
    /// The gateway's own answer.
    Refused(Refusal),
    /// The credential could not be had (unknown account, quota, WeChat refusing the secret):
    /// answered like the same error on `/v1`'s token routes.
    Core(Error),
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> Self {
        GatewayError::Refused(r)
    }
}

/// One call as the caller made it.
pub struct Call<'a> {
    pub target: &'a Target,
    /// The `{path}` after `/wechat/`, as sent (percent-encoded).
    pub path: &'a str,
    pub method: &'a str,
    /// The query string as sent (without `?`); may be empty.
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// WeChat's answer, to be given back unchanged.
#[derive(Debug)]
pub struct Answer {
    pub wechat: Relayed,
    /// The call was made again after a stale token (`Wafer-Retried: 1`).
    pub retried: bool,
    /// The bytes this call holds in the in-flight budget, until the answer is dropped.
    _held: Held,
}

/// Query parameters that carry a credential: a caller's are dropped, and wafer adds its own.
const CREDENTIAL_PARAMS: [&str; 2] = ["access_token", "component_access_token"];

/// WeChat's API families (the first two path segments) counted by name in
/// `wafer_gateway_calls_total`; any other path is `other`, so callers cannot grow the labels.
const API_FAMILIES: &[&str] = &[
    "cgi-bin/agent",
    "cgi-bin/appchat",
    "cgi-bin/batch",
    "cgi-bin/comment",
    "cgi-bin/component",
    "cgi-bin/customservice",
    "cgi-bin/department",
    "cgi-bin/externalcontact",
    "cgi-bin/freepublish",
    "cgi-bin/draft",
    "cgi-bin/kf",
    "cgi-bin/linkedcorp",
    "cgi-bin/material",
    "cgi-bin/media",
    "cgi-bin/menu",
    "cgi-bin/message",
    "cgi-bin/oa",
    "cgi-bin/openapi",
    "cgi-bin/qrcode",
    "cgi-bin/tags",
    "cgi-bin/template",
    "cgi-bin/user",
    "cgi-bin/wxaapp",
    "cgi-bin/wxopen",
    "datacube/getweanalysisappiddailysummarytrend",
    "wxa/business",
    "wxa/generatescheme",
    "wxa/generate_urllink",
    "wxa/genwxashortlink",
    "wxa/getwxacode",
    "wxa/getwxacodeunlimit",
    "wxa/img_sec_check",
    "wxa/media_check_async",
    "wxa/msg_sec_check",
    "wxa/sec",
    "wxaapi/newtmpl",
    "wxaapi/broadcast",
];

/// The `api` label of a checked path: its first two segments when they are a known family.
pub fn api_label(path: &str) -> &'static str {
    let mut segments = path.splitn(3, '/');
    let (Some(a), Some(b)) = (segments.next(), segments.next()) else {
        return "other";
    };
    API_FAMILIES
        .iter()
        .find(|f| f.split_once('/') == Some((a, b)))
        .copied()
        .unwrap_or("other")
}

/// The `{path}` as it is sent to WeChat: percent-decoded, then only `[A-Za-z0-9_./-]`, with no
/// empty, `.` or `..` segment (so `cgi-bin/./token` or `%2e%2e` cannot slip past the
/// credential paths or climb out of the host's root).
pub fn check_path(raw: &str) -> Result<String, Refusal> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Refusal::BadPath)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    if decoded.is_empty() || !decoded.chars().all(allowed) {
        return Err(Refusal::BadPath);
    }
    if decoded
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Refusal::BadPath);
    }
    Ok(decoded.into_owned())
}

/// Whether a checked path issues or resets credentials (compared without regard to case).
fn is_credential_path(path: &str) -> bool {
    urls::CREDENTIAL_PATHS
        .iter()
        .any(|p| p.trim_start_matches('/').eq_ignore_ascii_case(path))
}

/// The caller's query without its credential parameters (each other parameter as sent).
fn query_without_credentials(query: &str) -> String {
    query
        .split('&')
        .filter(|piece| {
            let key = form_urlencoded::parse(piece.as_bytes()).next();
            !piece.is_empty() && !key.is_some_and(|(k, _)| CREDENTIAL_PARAMS.contains(&k.as_ref()))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `query` with `param=token` appended.
fn with_credential(query: &str, param: &str, token: &str) -> String {
    let token: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    match query {
        "" => format!("{param}={token}"),
        q => format!("{q}&{param}={token}"),
    }
}

/// The largest answer searched for an errcode: WeChat's error answers are a few hundred bytes.
const ERRCODE_SCAN_MAX: usize = 64 << 10;

/// The non-zero `errcode` of a JSON answer, if it has one.
fn errcode_of(answer: &Relayed) -> Option<Errcode> {
    let body = &answer.body;
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body.len() > ERRCODE_SCAN_MAX || body[start] != b'{' {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("errcode")
        .and_then(serde_json::Value::as_i64)
        .filter(|c| *c != 0)
        .map(Errcode)
}

/// The bytes of bodies held by gateway calls (`gateway.max_inflight_bytes`).
struct Budget {
    max: u64,
    used: AtomicU64,
}

/// A call's share of the budget, given back when dropped.
#[derive(Debug)]
struct Held {
    budget: Arc<Budget>,
    bytes: u64,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.used.load(Ordering::Relaxed), self.max)
    }
}

impl Budget {
    /// Room for `bytes` more, or `None` when they would go past the budget.
    fn admit(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .ok()?;
        Some(Held {
            budget: Arc::clone(self),
            bytes,
        })
    }
}

impl Held {
    /// An answer's bytes, already read: counted whatever the total, so later calls wait.
    fn charge(&mut self, bytes: u64) {
        self.budget.used.fetch_add(bytes, Ordering::AcqRel);
        self.bytes += bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The gateway: its limits, its budget and its metrics. One per server.
pub struct Gateway {
    max_body: u64,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(cfg: &GatewayConfig, metrics: Arc<Metrics>) -> Gateway {
        Gateway {
            max_body: cfg.max_body_bytes,
            budget: Arc::new(Budget {
                max: cfg.max_inflight_bytes,
                used: AtomicU64::new(0),
            }),
            metrics,
        }
    }

    /// Relay one call with the hosted credential; see the module's documentation.
    pub fn call(&self, broker: &Broker, db: &Db, call: &Call) -> Result<Answer, GatewayError> {
        let started = Instant::now();
        let path = check_path(call.path)?;
        if is_credential_path(&path) {
            return Err(Refusal::CredentialPath.into());
        }
        if call.body.len() as u64 > self.max_body {
            return Err(Refusal::BodyTooLarge.into());
        }
        let mut held = self
            .budget
            .admit(call.body.len() as u64)
            .ok_or(Refusal::Busy)?;
        let key = call.target.key();
        let host = key.host();
        let param = call.target.credential_param();
        let query = query_without_credentials(call.query);
        let (mut attempts, mut stale, mut failure) = (0, None, None);
        let outcome = broker.with_token(db, &key, false, |wechat, token| {
            attempts += 1;
            let rq = RelayRequest {
                host,
                path: &path,
                query: &with_credential(&query, param, token),
                method: call.method,
                content_type: call.content_type,
                body: call.body,
                max_answer: self.max_body,
            };
            match wechat.relay(&rq) {
                Ok(answer) => match errcode_of(&answer) {
                    Some(errcode) if errcode.stale_token(host) => {
                        stale = Some(answer);
                        Err(UpstreamError::WeChat {
                            errcode,
                            errmsg: String::new(),
                        })
                    }
                    _ => Ok(answer),
                },
                Err(e) => {
                    failure = Some(e);
                    Err(UpstreamError::Net("relay failed".into()))
                }
            }
        });
        let relayed = match (outcome, failure, stale) {
            (Ok(answer), ..) => answer,
            (Err(_), Some(failure), _) => {
                let refusal = match failure {
                    RelayError::NotSent => Refusal::Busy,
                    RelayError::TooLarge => Refusal::UpstreamTooLarge,
                    RelayError::Unreachable(_) => Refusal::UpstreamUnreachable,
                };
                if refusal != Refusal::Busy {
                    self.record(call.target, &path, refusal.answer().0, -2, started);
                }
                return Err(refusal.into());
            }
            // Stale again after the retry, or the renewal was refused: WeChat's last answer.
            (Err(_), None, Some(answer)) => answer,
            (Err(e), None, None) => return Err(GatewayError::Core(e)),
        };
        held.charge(relayed.body.len() as u64);
        let errcode = match errcode_of(&relayed) {
            Some(c) => c.0,
            None if (200..300).contains(&relayed.status) => 0,
            // An error page rather than WeChat's JSON.
            None => -2,
        };
        self.record(call.target, &path, relayed.status, errcode, started);
        Ok(Answer {
            wechat: relayed,
            retried: attempts > 1,
            _held: held,
        })
    }

    /// The call's metric and its one log line (never the query or the body).
    fn record(&self, target: &Target, path: &str, status: u16, errcode: i64, started: Instant) {
        self.metrics
            .gateway_call(target.kind(), api_label(path), errcode);
        log::info!(
            "gateway {target} {path} {status} errcode={errcode} {}us",
            started.elapsed().as_micros()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_after_decoding() {
        for (raw, checked) in [
            (
                "cgi-bin/message/custom/send",
                Some("cgi-bin/message/custom/send"),
            ),
            ("wxa/getwxacodeunlimit", Some("wxa/getwxacodeunlimit")),
            ("cgi-bin%2Fmessage%2fsend", Some("cgi-bin/message/send")),
            ("a_b-c.d/e", Some("a_b-c.d/e")),
            ("cgi-bin/./token", None),
            ("cgi-bin/../token", None),
            ("cgi-bin/%2e%2e/token", None),
            ("cgi-bin/%2E/token", None),
            ("%2e%2e", None),
            ("cgi-bin//token", None),
            ("cgi-bin%2F%2Ftoken", None),
            ("/cgi-bin/token", None),
            ("cgi-bin/token/", None),
            ("", None),
            (".", None),
            ("a b", None),
            ("a%20b", None),
            ("a%00b", None),
            ("a\\b", None),
            ("a%5cb", None),
            ("a?b", None),
            ("a%3Fb", None),
            ("@evil.example/x", None),
            ("%ff", None),
            ("\u{4f60}", None),
        ] {
            assert_eq!(check_path(raw).ok().as_deref(), checked, "{raw:?}");
        }
    }

    #[test]
    fn credential_paths_are_known_whatever_their_case() {
        for path in [
            "cgi-bin/token",
            "cgi-bin/stable_token",
            "cgi-bin/gettoken",
            "cgi-bin/ticket/getticket",
            "cgi-bin/get_jsapi_ticket",
            "cgi-bin/ticket/get",
            "cgi-bin/component/api_component_token",
            "cgi-bin/component/api_authorizer_token",
            "cgi-bin/component/api_query_auth",
            "cgi-bin/clear_quota",
            "CGI-BIN/Token",
        ] {
            assert!(is_credential_path(path), "{path}");
        }
        for path in ["cgi-bin/message/custom/send", "cgi-bin/token2", "cgi-bin"] {
            assert!(!is_credential_path(path), "{path}");
        }
    }

    #[test]
    fn credential_parameters_are_dropped_and_replaced() {
        for (query, kept) in [
            ("", ""),
            ("access_token=evil", ""),
            ("a=1&access_token=evil&b=%E4%BD%A0", "a=1&b=%E4%BD%A0"),
            ("component_access_token=x&type=image", "type=image"),
            ("access%5Ftoken=evil&access_token", ""),
            ("&&a=1&", "a=1"),
            ("access_tokens=1", "access_tokens=1"),
        ] {
            assert_eq!(query_without_credentials(query), kept, "{query}");
        }
        assert_eq!(with_credential("", "access_token", "t"), "access_token=t");
        assert_eq!(
            with_credential("a=1", "component_access_token", "t+/="),
            "a=1&component_access_token=t%2B%2F%3D"
        );
    }

    #[test]
    fn api_labels_are_a_fixed_set() {
        for (path, label) in [
            ("cgi-bin/message/custom/send", "cgi-bin/message"),
            ("wxa/business/getuserphonenumber", "wxa/business"),
            ("wxa/getwxacodeunlimit", "wxa/getwxacodeunlimit"),
            ("cgi-bin/media/upload", "cgi-bin/media"),
            ("cgi-bin/random-9f3a/x", "other"),
            ("cgi-bin", "other"),
            ("x7/y8", "other"),
        ] {
            assert_eq!(api_label(path), label, "{path}");
        }
    }

    #[test]
    fn routes_name_their_target() {
        let app = |a: &str| Target::App { appid: a.into() };
        assert_eq!(
            parse_route("/v1/apps/wx1/wechat/cgi-bin/message/custom/send"),
            Some((app("wx1"), "cgi-bin/message/custom/send"))
        );
        assert_eq!(
            parse_route("/v1/work/ww1/1000002/wechat/cgi-bin/message/send"),
            Some((
                Target::WorkAgent {
                    corpid: "ww1".into(),
                    agentid: "1000002".into()
                },
                "cgi-bin/message/send"
            ))
        );
        assert_eq!(
            parse_route("/v1/components/wxc/authorizers/wxa/wechat/x"),
            Some((
                Target::Authorizer {
                    component_appid: "wxc".into(),
                    authorizer_appid: "wxa".into()
                },
                "x"
            ))
        );
        assert_eq!(
            parse_route("/v1/components/wxc/wechat/cgi-bin/component/api_get_authorizer_list"),
            Some((
                Target::Component {
                    component_appid: "wxc".into()
                },
                "cgi-bin/component/api_get_authorizer_list"
            ))
        );
        for other in [
            "/v1/apps/wx1/access_token",
            "/v1/apps/wx1/x/wechat/y",
            "/v1/sessions/check",
            "/mina_auth/",
            "/v1/wechat/x",
        ] {
            assert_eq!(parse_route(other), None, "{other}");
        }
    }

    #[test]
    fn the_budget_admits_up_to_its_bound_and_gives_back() {
        let budget = Arc::new(Budget {
            max: 100,
            used: AtomicU64::new(0),
        });
        let a = budget.admit(60).expect("room");
        assert!(budget.admit(41).is_none());
        let mut b = budget.admit(40).expect("exactly full");
        assert!(
            budget.admit(0).is_some(),
            "a bodiless call fits a full budget"
        );
        b.charge(30);
        assert!(budget.admit(0).is_none(), "past it: nothing");
        drop(a);
        drop(b);
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
        assert!(budget.admit(100).is_some());
    }
}
