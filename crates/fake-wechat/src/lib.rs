//! The fake WeChat: an in-process HTTP server that answers the upstream paths wafer calls on
//! `api.weixin.qq.com` and `qyapi.weixin.qq.com` (both on one address) with WeChat's own shapes
//! and errcodes, plus `/__mock__/*` control routes that let tests count calls, inject faults,
//! shorten token lifetimes and drive the Open Platform authorisation dance. It exists for the
//! integration tests, load tests, `wafer mock-wechat` and `wafer dev`. It must never be pointed
//! at by a production deployment and never be exposed beyond a developer's machine: any
//! `js_code` logs in, the control routes have no authentication, and nothing is persisted.
//!
//! Shape of the file: one route table (`ROUTES`) maps a path to a plain handler
//! `fn(&mut State, &Input, Instant) -> Result<Value, WxErr>`; every token, ticket and code lives
//! in one store (`Tokens`) keyed by value and by `(Family, owner)`, and a family's `Policy`
//! decides whether a new fetch reuses, supersedes or sits beside the previous one. Eight worker
//! threads share one `tiny_http::Server`; a request whose injected fault carries a delay is
//! handed to its own thread so a slow answer never holds up the others. Handlers never panic on
//! bad input (missing parameters and bad JSON become WeChat-style errcodes), and a panic that
//! slips through anyway is caught per request and answered with a 500.
//!
//! Input conventions (all documented so tests can aim at them):
//! - `js_code` prefixes: `bad…` → 40029, `used…` → 40163, `busy…` → -1, `risky…` → 40226,
//!   `limit…` → 45011, `union…` → success with a `unionid`.
//! - `appid`/`corpid`/`component_appid` starting `bad` → 40013; a secret starting `bad` → 40125
//!   (WeCom: 40001, which is what WeCom answers for a wrong secret).
//! - `component_verify_ticket` empty or `invalid…` → 61006, `expired…` → 61005.
//! - `POST /__mock__/push` and `/__mock__/component/push_ticket` deliver signed (and
//!   encrypted) callbacks to a URL the way WeChat does; see `push` below.
//! - `authorizer_refresh_token` unknown or not this authoriser's → 61023 "refresh_token is
//!   invalid"; known but the authoriser revoked the platform → 61003 "component is not
//!   authorized by this account".
//! - A few APIs called with a token, for wafer's gateway: `/cgi-bin/message/custom/send` and
//!   WeCom's `/cgi-bin/message/send` echo what they received (query, `Content-Type`, body),
//!   `/wxa/getwxacodeunlimit` answers PNG bytes (`wxacode_png`), `/cgi-bin/media/upload`
//!   reports the multipart file it received (size, type, name, SHA-1), and
//!   `/cgi-bin/component/api_get_authorizer_list` lists a component's authorisers.
//! - `/wxa/business/getuserphonenumber` (token checked) answers a phone number derived from the
//!   `code` (the same code, the same number), watermarked with the token's appid; codes `bad…`
//!   → 40029, `other…` → a watermark naming another app (`wxsomeoneelse0001`).
//! - `/cgi-bin/component/api_get_authorizer_info` answers a profile derived from the
//!   authoriser's appid (`nick_name` `Mock <appid>`, `user_name` `gh_…`) while it is authorised
//!   (else 61003).
//!   `POST /__mock__/revoke_token {access_token}` makes WeChat refuse a token at once.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use tiny_http::{Header, Request, Response, Server, StatusCode};

const WORKERS: usize = 8;
const DEFAULT_LIFETIME_SECS: u64 = 7200;
/// Ten years: longer lifetimes are surely a typo in a test.
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;
/// How long a superseded `/cgi-bin/token` token keeps working.
const SUPERSEDE_GRACE: Duration = Duration::from_secs(300);
const PRE_AUTH_CODE_SECS: u64 = 1800;
const AUTH_CODE_SECS: u64 = 3600;
/// Room for the gateway's largest relayed body (10 MiB by default) and then some.
const MAX_BODY: u64 = 16 << 20;
/// Session keys handed out are remembered in two generations of this many entries each, so a
/// load test of millions of logins does not grow the mock without bound.
const HANDED_OUT_GENERATION: usize = 100_000;
/// Above this many minted values, long-expired ones are dropped (at most once a minute).
const PRUNE_ABOVE: usize = 100_000;
const JSON_TYPE: &str = "application/json; charset=utf-8";
const HTML_TYPE: &str = "text/html; charset=utf-8";

/// A running fake WeChat. Dropping it (or calling [`MockHandle::shutdown`]) stops the workers.
pub struct MockHandle {
    /// The address actually bound (the port is real even when `listen` asked for port 0).
    pub addr: SocketAddr,
    server: Arc<Server>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl MockHandle {
    /// `http://IP:PORT`, usable as both the `api.weixin.qq.com` and `qyapi.weixin.qq.com` base
    /// URL. An unspecified listen address (`0.0.0.0`, `::`) is reported as loopback.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }

    /// Stops the workers and closes the listening socket. Requests already handed to a delay
    /// thread are still answered.
    pub fn shutdown(self) {}
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in &self.workers {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Starts the fake WeChat on `listen` (e.g. `127.0.0.1:0`) with a pool of worker threads.
pub fn start(listen: &str) -> io::Result<MockHandle> {
    let server = Server::http(listen).map_err(io::Error::other)?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("mock-wechat: not listening on an IP address"))?;
    let mut handle = MockHandle {
        addr,
        server: Arc::new(server),
        stopping: Arc::new(AtomicBool::new(false)),
        workers: Vec::with_capacity(WORKERS),
    };
    let state = Arc::new(Mutex::new(State::new()));
    for n in 0..WORKERS {
        let (server, stopping, state) = (
            Arc::clone(&handle.server),
            Arc::clone(&handle.stopping),
            Arc::clone(&state),
        );
        // On failure `handle` is dropped here, which stops the workers already running.
        let worker = thread::Builder::new()
            .name(format!("mock-wechat-{n}"))
            .spawn(move || work(&server, &state, &stopping))?;
        handle.workers.push(worker);
    }
    Ok(handle)
}

/// `wafer mock-wechat`: starts the fake WeChat, prints where, and serves until killed.
pub fn run_forever(listen: &str) -> io::Result<()> {
    let handle = start(listen)?;
    eprintln!("mock-wechat listening on {}", handle.base_url());
    loop {
        thread::park();
    }
}

// ---------------------------------------------------------------------------------------------
// Serving

fn work(server: &Server, state: &Arc<Mutex<State>>, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            // `serve` answers its own panics; this is a last line of defence that keeps the
            // worker alive (a dropped request is answered by tiny_http with an empty 500).
            Ok(rq) => {
                let _ = catch_unwind(AssertUnwindSafe(|| serve(state, rq)));
            }
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(_) => continue,
        }
    }
}

fn serve(state: &Arc<Mutex<State>>, mut rq: Request) {
    let mut body = Vec::new();
    let read = rq.as_reader().take(MAX_BODY + 1).read_to_end(&mut body);
    if read.is_err() || body.len() as u64 > MAX_BODY {
        // An unreadable or oversized body is answered like any other malformed JSON body.
        body.clear();
    }
    let url = rq.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let content_type = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_owned());
    let input = Input {
        query: parse_query(query),
        raw_query: query.to_owned(),
        content_type,
        body,
    };
    if let Some(handler) = outgoing_route(rq.method().as_str(), path) {
        // These call back into the server under test, which may call the mock in turn: they
        // run without the state lock (they need no state).
        let reply = match catch_unwind(AssertUnwindSafe(|| handler(&input))) {
            Ok(Ok(v)) => Reply::json(200, &v),
            Ok(Err(e)) => e.reply(),
            Err(_) => Reply::json(
                500,
                &json!({"errcode": -1, "errmsg": "mock: internal error"}),
            ),
        };
        return respond(rq, reply);
    }
    let Some(route) = find_route(rq.method().as_str(), path) else {
        let reply = Reply::json(404, &json!({"errcode": -1, "errmsg": "mock: unknown path"}));
        return respond(rq, reply);
    };
    let fault = if route.upstream {
        lock(state).record_call(route.path)
    } else {
        None
    };
    match fault.as_ref().and_then(|f| f.delay) {
        Some(delay) => {
            let state = Arc::clone(state);
            // If no thread can be spawned the request is dropped, which tiny_http answers
            // with an empty 500: an acceptable fault for a fault-injection path.
            let _ = thread::Builder::new()
                .name("mock-wechat-delay".into())
                .spawn(move || {
                    thread::sleep(delay);
                    respond(rq, answer(&state, route, &input, fault.as_ref()));
                });
        }
        None => respond(rq, answer(state, route, &input, fault.as_ref())),
    }
}

fn answer(state: &Mutex<State>, route: &Route, input: &Input, fault: Option<&Fault>) -> Reply {
    if let Some(reply) = fault.and_then(Fault::reply) {
        return reply;
    }
    let run = || match route.handler {
        Handler::Json(f) => {
            f(&mut lock(state), input, Instant::now()).map(|v| Reply::json(200, &v))
        }
        Handler::Raw(f) => f(&mut lock(state), input, Instant::now()),
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(reply)) => reply,
        Ok(Err(err)) => err.reply(),
        Err(_) => Reply::json(
            500,
            &json!({"errcode": -1, "errmsg": "mock: internal error"}),
        ),
    }
}

fn respond(rq: Request, reply: Reply) {
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    if let Ok(header) = Header::from_bytes("Content-Type", reply.content_type) {
        response.add_header(header);
    }
    let _ = rq.respond(response);
}

/// A poisoned lock only means some handler panicked mid-request; the state is still usable.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            content_type: JSON_TYPE,
            body: body.to_string().into_bytes(),
        }
    }

    /// What a reverse proxy in front of WeChat says when WeChat is unwell.
    fn html(status: u16) -> Reply {
        let reason = StatusCode(status).default_reason_phrase();
        let body = format!("<html><body>{status} {reason}</body></html>");
        Reply {
            status,
            content_type: HTML_TYPE,
            body: body.into_bytes(),
        }
    }
}

/// A WeChat-style error: `{"errcode":E,"errmsg":M}`, HTTP 200 for upstream paths (as WeChat
/// does) and 4xx for misuse of the control routes.
#[derive(Debug)]
struct WxErr {
    status: u16,
    errcode: i64,
    errmsg: String,
}

impl WxErr {
    fn reply(&self) -> Reply {
        Reply::json(
            self.status,
            &json!({"errcode": self.errcode, "errmsg": self.errmsg}),
        )
    }
}

fn wx(errcode: i64, errmsg: &str) -> WxErr {
    WxErr {
        status: 200,
        errcode,
        errmsg: errmsg.to_owned(),
    }
}

/// Misuse of a control route.
fn bad(errmsg: impl std::fmt::Display) -> WxErr {
    WxErr {
        status: 400,
        errcode: 40097,
        errmsg: format!("mock: {errmsg}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and parameters

type Params = Map<String, Value>;

struct Input {
    query: Params,
    /// The query string as sent, for the echoing APIs.
    raw_query: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Input {
    /// The body as a JSON object; anything else is WeChat's 47001.
    fn json(&self) -> Result<Params, WxErr> {
        match serde_json::from_slice(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(wx(47001, "data format error")),
        }
    }

    /// The body of a control route: a JSON object, or a 400.
    fn control_json(&self, allowed: &[&str]) -> Result<Params, WxErr> {
        let map = self.json().map_err(|_| bad("body must be a JSON object"))?;
        match map.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(key) => Err(bad(format!(
                "unknown field {key:?}; expected one of {allowed:?}"
            ))),
            None => Ok(map),
        }
    }
}

fn parse_query(query: &str) -> Params {
    let mut params = Params::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        params
            .entry(key.into_owned())
            .or_insert_with(|| Value::String(value.into_owned()));
    }
    params
}

/// A non-empty string parameter.
fn text<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A required string parameter; its absence is answered with `errcode`.
fn need<'a>(params: &'a Params, key: &str, errcode: i64, errmsg: &str) -> Result<&'a str, WxErr> {
    text(params, key).ok_or_else(|| wx(errcode, errmsg))
}

/// A required string field of a control route.
fn need_ctl<'a>(params: &'a Params, key: &str) -> Result<&'a str, WxErr> {
    text(params, key).ok_or_else(|| bad(format!("{key} missing")))
}

fn opt_u64(params: &Params, key: &str) -> Result<Option<u64>, WxErr> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{key} must be a whole number"))),
    }
}

fn flag(params: &Params, key: &str) -> bool {
    matches!(params.get(key), Some(Value::Bool(true))) || text(params, key) == Some("true")
}

fn check_grant(params: &Params, expected: &str) -> Result<(), WxErr> {
    match text(params, "grant_type") {
        Some(grant) if grant == expected => Ok(()),
        _ => Err(wx(40002, "invalid grant_type")),
    }
}

/// WeChat's answers to a wrong appid or secret, simulated by the `bad` prefix.
fn check_app(appid: &str, secret: &str) -> Result<(), WxErr> {
    if appid.starts_with("bad") {
        return Err(wx(40013, "invalid appid"));
    }
    if secret.starts_with("bad") {
        return Err(wx(40125, "invalid appsecret"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Routes

/// A handler: most answer JSON (HTTP 200, or WeChat's errcode); a few answer other bytes (an
/// image), or JSON with extra detail, in a reply of their own.
#[derive(Clone, Copy)]
enum Handler {
    Json(fn(&mut State, &Input, Instant) -> Result<Value, WxErr>),
    Raw(fn(&mut State, &Input, Instant) -> Result<Reply, WxErr>),
}

struct Route {
    /// `None` for upstream paths: WeChat does not care much, and neither does the mock.
    method: Option<&'static str>,
    path: &'static str,
    /// Upstream routes are counted and can be faulted; control routes are neither.
    upstream: bool,
    handler: Handler,
}

type JsonHandler = fn(&mut State, &Input, Instant) -> Result<Value, WxErr>;

const fn upstream(path: &'static str, handler: JsonHandler) -> Route {
    Route {
        method: None,
        path,
        upstream: true,
        handler: Handler::Json(handler),
    }
}

/// An upstream path whose handler answers bytes of its own (an image).
const fn upstream_raw(
    path: &'static str,
    handler: fn(&mut State, &Input, Instant) -> Result<Reply, WxErr>,
) -> Route {
    Route {
        method: None,
        path,
        upstream: true,
        handler: Handler::Raw(handler),
    }
}

const fn control(method: &'static str, path: &'static str, handler: JsonHandler) -> Route {
    Route {
        method: Some(method),
        path,
        upstream: false,
        handler: Handler::Json(handler),
    }
}

const ROUTES: &[Route] = &[
    upstream("/sns/jscode2session", jscode2session),
    upstream("/cgi-bin/token", access_token),
    upstream("/cgi-bin/stable_token", stable_token),
    upstream("/cgi-bin/ticket/getticket", |st, input, now| {
        ticket(st, input, now, &MP_TICKET)
    }),
    upstream("/cgi-bin/gettoken", wecom_token),
    upstream("/cgi-bin/get_jsapi_ticket", |st, input, now| {
        ticket(st, input, now, &WECOM_CORP_TICKET)
    }),
    upstream("/cgi-bin/ticket/get", |st, input, now| {
        ticket(st, input, now, &WECOM_AGENT_TICKET)
    }),
    upstream("/cgi-bin/component/api_component_token", component_token),
    upstream(
        "/cgi-bin/component/api_create_preauthcode",
        create_preauthcode,
    ),
    upstream("/cgi-bin/component/api_query_auth", query_auth),
    upstream("/cgi-bin/component/api_authorizer_token", authorizer_token),
    upstream(
        "/cgi-bin/component/api_get_authorizer_list",
        authorizer_list,
    ),
    upstream(
        "/cgi-bin/component/api_get_authorizer_info",
        authorizer_info,
    ),
    upstream("/wxa/business/getuserphonenumber", user_phone_number),
    upstream("/cgi-bin/message/custom/send", custom_send),
    upstream_raw("/wxa/getwxacodeunlimit", wxacode_unlimit),
    upstream("/cgi-bin/media/upload", media_upload),
    upstream("/cgi-bin/message/send", wecom_send),
    control("GET", "/__mock__/calls", calls),
    control("POST", "/__mock__/fail", fail),
    control("POST", "/__mock__/reset", reset),
    control("POST", "/__mock__/config", config),
    control("POST", "/__mock__/session_key", pin_session_key),
    control("GET", "/__mock__/session_key", handed_out_session_key),
    control("GET", "/__mock__/token_status", token_status),
    control("POST", "/__mock__/revoke_token", revoke_token),
    control("POST", "/__mock__/component/authorize", authorize),
    control("POST", "/__mock__/component/revoke", revoke),
];

fn find_route(method: &str, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method.is_none_or(|m| m == method))
}

// --- Mini-program login -----------------------------------------------------------------------

/// `js_code` prefixes that make WeChat refuse the login.
const CODE_ERRORS: &[(&str, i64, &str)] = &[
    ("bad", 40029, "invalid code"),
    ("used", 40163, "code been used"),
    ("busy", -1, "system error"),
    ("risky", 40226, "high risk user"),
    (
        "limit",
        45011,
        "api minute-quota reach limit mustslower retry next minute",
    ),
];

fn jscode2session(st: &mut State, input: &Input, _now: Instant) -> Result<Value, WxErr> {
    let q = &input.query;
    let appid = need(q, "appid", 41002, "appid missing")?;
    let secret = need(q, "secret", 41004, "appsecret missing")?;
    let code = need(q, "js_code", 41008, "missing code")?;
    if text(q, "grant_type").is_some_and(|g| g != "authorization_code") {
        return Err(wx(40002, "invalid grant_type"));
    }
    check_app(appid, secret)?;
    if let Some(&(_, errcode, errmsg)) = CODE_ERRORS.iter().find(|(p, ..)| code.starts_with(p)) {
        return Err(wx(errcode, errmsg));
    }
    let session_key = st.hand_out_session_key(appid, code);
    let mut body = json!({
        "session_key": session_key,
        "openid": derived_id("o", &format!("{appid}:{code}")),
    });
    if code.starts_with("union") {
        body["unionid"] = Value::String(derived_id("u", &format!("union:{code}")));
    }
    Ok(body)
}

/// A stable 28-character id: the same input always names the same user.
fn derived_id(prefix: &str, seed: &str) -> String {
    let digest = URL_SAFE_NO_PAD.encode(Sha1::digest(seed.as_bytes()));
    format!("{prefix}{}", &digest[..27])
}

// --- Access tokens ----------------------------------------------------------------------------

fn access_token(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let q = &input.query;
    check_grant(q, "client_credential")?;
    let appid = need(q, "appid", 41002, "appid missing")?;
    check_app(appid, need(q, "secret", 41004, "appsecret missing")?)?;
    let token = st.issue(Family::AccessToken, appid, "", false, now);
    Ok(json!({"access_token": token.value, "expires_in": token.expires_in}))
}

fn stable_token(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let body = input.json()?;
    check_grant(&body, "client_credential")?;
    let appid = need(&body, "appid", 41002, "appid missing")?;
    check_app(appid, need(&body, "secret", 41004, "appsecret missing")?)?;
    let force = flag(&body, "force_refresh");
    let token = st.issue(Family::StableToken, appid, "", force, now);
    Ok(json!({"access_token": token.value, "expires_in": token.expires_in}))
}

fn wecom_token(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let q = &input.query;
    let corpid = need(q, "corpid", 41002, "corpid missing")?;
    let secret = need(q, "corpsecret", 41004, "corpsecret missing")?;
    if corpid.starts_with("bad") {
        return Err(wx(40013, "invalid corpid"));
    }
    if secret.starts_with("bad") {
        return Err(wx(40001, "invalid credential"));
    }
    let token = st.issue(
        Family::WecomToken,
        &wecom_owner(corpid, secret),
        "",
        false,
        now,
    );
    Ok(json!({
        "errcode": 0,
        "errmsg": "ok",
        "access_token": token.value,
        "expires_in": token.expires_in,
    }))
}

/// WeCom tokens belong to one application of one corp: the secret names the application.
fn wecom_owner(corpid: &str, secret: &str) -> String {
    format!("{corpid}\n{secret}")
}

// --- Tickets ----------------------------------------------------------------------------------

struct TicketSpec {
    /// The token families allowed as `access_token`.
    accepts: &'static [Family],
    /// The `type` parameter the endpoint insists on, if any.
    kind: Option<&'static str>,
    family: Family,
    /// WeCom's corp ticket belongs to the corp, not to the application whose token asked.
    per_corp: bool,
}

fn ticket(st: &mut State, input: &Input, now: Instant, spec: &TicketSpec) -> Result<Value, WxErr> {
    let q = &input.query;
    let grant = st
        .tokens
        .check_param(q, "access_token", spec.accepts, now)?;
    if spec.kind.is_some_and(|kind| text(q, "type") != Some(kind)) {
        return Err(wx(40097, "invalid args"));
    }
    let owner = if spec.per_corp {
        grant.owner.split('\n').next().unwrap_or_default()
    } else {
        grant.owner.as_str()
    };
    let ticket = st.issue(spec.family, owner, "", false, now);
    Ok(json!({
        "errcode": 0,
        "errmsg": "ok",
        "ticket": ticket.value,
        "expires_in": ticket.expires_in,
    }))
}

const MP_TOKENS: &[Family] = &[
    Family::AccessToken,
    Family::StableToken,
    Family::AuthorizerToken,
];

/// `/cgi-bin/ticket/getticket?type=jsapi`: an app's or an authoriser's JS-SDK ticket.
const MP_TICKET: TicketSpec = TicketSpec {
    accepts: MP_TOKENS,
    kind: Some("jsapi"),
    family: Family::JsapiTicket,
    per_corp: false,
};

/// WeCom's `/cgi-bin/get_jsapi_ticket`: the corp's JS-SDK ticket.
const WECOM_CORP_TICKET: TicketSpec = TicketSpec {
    accepts: &[Family::WecomToken],
    kind: None,
    family: Family::WecomCorpTicket,
    per_corp: true,
};

/// WeCom's `/cgi-bin/ticket/get?type=agent_config`: an application's ticket.
const WECOM_AGENT_TICKET: TicketSpec = TicketSpec {
    accepts: &[Family::WecomToken],
    kind: Some("agent_config"),
    family: Family::WecomAgentTicket,
    per_corp: false,
};

// --- Open Platform component ------------------------------------------------------------------

fn component_token(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let body = input.json()?;
    let appid = need(&body, "component_appid", 41002, "component_appid missing")?;
    let secret = need(
        &body,
        "component_appsecret",
        41004,
        "component_appsecret missing",
    )?;
    check_app(appid, secret)?;
    match text(&body, "component_verify_ticket") {
        None => return Err(wx(61006, "component ticket is invalid")),
        Some(t) if t.starts_with("invalid") => {
            return Err(wx(61006, "component ticket is invalid"))
        }
        Some(t) if t.starts_with("expired") => {
            return Err(wx(61005, "component ticket is expired"))
        }
        Some(_) => {}
    }
    let token = st.issue(Family::ComponentToken, appid, "", false, now);
    Ok(json!({"component_access_token": token.value, "expires_in": token.expires_in}))
}

/// Checks `component_access_token` and that the body's `component_appid` is its owner.
fn component_call(st: &State, input: &Input, now: Instant) -> Result<(String, Params), WxErr> {
    let grant = st.tokens.check_param(
        &input.query,
        "component_access_token",
        &[Family::ComponentToken],
        now,
    )?;
    let body = input.json()?;
    let appid = need(&body, "component_appid", 41002, "component_appid missing")?;
    if appid != grant.owner {
        return Err(wx(
            40013,
            "invalid appid, component_appid does not own this token",
        ));
    }
    Ok((grant.owner, body))
}

fn create_preauthcode(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let (component, _) = component_call(st, input, now)?;
    let code = st.tokens.mint(
        Family::PreAuthCode,
        &component,
        "",
        secs(PRE_AUTH_CODE_SECS),
        now,
    );
    Ok(json!({"pre_auth_code": code.value, "expires_in": code.expires_in}))
}

fn query_auth(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let (component, body) = component_call(st, input, now)?;
    let code = need(
        &body,
        "authorization_code",
        41008,
        "missing authorization_code",
    )?;
    let authorizer = st.tokens.redeem(code, Family::AuthCode, &component, now)?;
    let (access, refresh) = st.authorizer_tokens(&component, &authorizer, now);
    Ok(json!({"authorization_info": {
        "authorizer_appid": authorizer,
        "authorizer_access_token": access.value,
        "expires_in": access.expires_in,
        "authorizer_refresh_token": refresh.value,
        "func_info": [
            {"funcscope_category": {"id": 1}},
            {"funcscope_category": {"id": 17}},
        ],
    }}))
}

fn authorizer_token(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let (component, body) = component_call(st, input, now)?;
    let authorizer = need(&body, "authorizer_appid", 41002, "authorizer_appid missing")?;
    let refresh = need(
        &body,
        "authorizer_refresh_token",
        61023,
        "refresh_token is invalid",
    )?;
    match st.tokens.by_value.get(refresh) {
        Some(m)
            if m.family == Family::RefreshToken
                && m.owner == component
                && m.subject == authorizer =>
        {
            if m.life == Life::Revoked {
                return Err(wx(61003, "component is not authorized by this account"));
            }
        }
        _ => return Err(wx(61023, "refresh_token is invalid")),
    }
    let (access, refresh) = st.authorizer_tokens(&component, authorizer, now);
    Ok(json!({
        "authorizer_access_token": access.value,
        "expires_in": access.expires_in,
        "authorizer_refresh_token": refresh.value,
    }))
}

// --- APIs called with a token -----------------------------------------------------------------
//
// A few of the many APIs a business calls with a hosted token (through wafer's gateway): a JSON
// one, a binary one, an upload and a WeCom one. Each checks its token the way WeChat does and
// reports what it received, so a test can see exactly what was relayed.

/// `/cgi-bin/message/custom/send?access_token=` (a customer-service message; stands for any JSON
/// API called with an app's or an authoriser's token): `{errcode: 0, errmsg, owner, query,
/// content_type, body}`: the token's owner (appid), the query string as sent, the request's
/// `Content-Type` and its body as text. Unknown or revoked token → 40001, expired → 42001.
fn custom_send(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let grant = st
        .tokens
        .check_param(&input.query, "access_token", MP_TOKENS, now)?;
    Ok(echo(&grant.owner, input))
}

/// WeCom's `/cgi-bin/message/send?access_token=`: the same echo (owner: the corpid). WeCom
/// answers an unknown token with 40014 (its 40001 is a wrong secret, at `gettoken`), an
/// expired one with 42001.
fn wecom_send(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let grant = st
        .tokens
        .check_param(&input.query, "access_token", &[Family::WecomToken], now)
        .map_err(|e| match e.errcode {
            40001 => wx(40014, "invalid access_token"),
            _ => e,
        })?;
    let corpid = grant.owner.split('\n').next().unwrap_or_default();
    Ok(echo(corpid, input))
}

fn echo(owner: &str, input: &Input) -> Value {
    json!({
        "errcode": 0,
        "errmsg": "ok",
        "owner": owner,
        "query": input.raw_query,
        "content_type": input.content_type,
        "body": String::from_utf8_lossy(&input.body),
    })
}

/// The bytes `/wxa/getwxacodeunlimit` answers for `scene`: a PNG signature, the scene, then
/// every byte value once (so a relay that treats them as text is caught).
pub fn wxacode_png(scene: &str) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(scene.as_bytes());
    png.extend(0..=255u8);
    png
}

/// `POST /wxa/getwxacodeunlimit?access_token=` `{scene, ...}`: an `image/png` answer
/// ([`wxacode_png`]); errors are JSON, as WeChat's are.
fn wxacode_unlimit(st: &mut State, input: &Input, now: Instant) -> Result<Reply, WxErr> {
    st.tokens
        .check_param(&input.query, "access_token", MP_TOKENS, now)?;
    let body = input.json()?;
    let scene = need(&body, "scene", 40169, "invalid length for scene")?;
    Ok(Reply {
        status: 200,
        content_type: "image/png",
        body: wxacode_png(scene),
    })
}

/// `POST /cgi-bin/media/upload?access_token=&type=image` with a `multipart/form-data` body whose
/// `media` part is the file: WeChat's `{type, media_id, created_at}` plus what arrived:
/// `received_bytes`, the part's `content_type` and `filename`, and the `sha1` of its bytes.
fn media_upload(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    st.tokens
        .check_param(&input.query, "access_token", MP_TOKENS, now)?;
    let kind = text(&input.query, "type")
        .filter(|t| ["image", "voice", "video", "thumb"].contains(t))
        .ok_or_else(|| wx(40004, "invalid media type"))?;
    let parts = input
        .content_type
        .as_deref()
        .and_then(|ct| multipart_parts(ct, &input.body))
        .ok_or_else(|| wx(41005, "media data missing"))?;
    let media = parts
        .iter()
        .find(|p| p.name == "media")
        .ok_or_else(|| wx(41005, "media data missing"))?;
    let created_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(json!({
        "type": kind,
        "media_id": format!("mock_media_{}", URL_SAFE_NO_PAD.encode(random_bytes::<12>())),
        "created_at": created_at,
        "received_bytes": media.data.len(),
        "content_type": media.content_type,
        "filename": media.filename,
        "sha1": wafer_crypto::hex(&Sha1::digest(media.data)),
    }))
}

/// One part of a `multipart/form-data` body.
struct Part<'a> {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: &'a [u8],
}

/// The parts of a `multipart/form-data` body (RFC 7578), or `None` when it is not one.
fn multipart_parts<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Part<'a>>> {
    let mut params = content_type.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let boundary = params
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let first = format!("--{boundary}");
    let next = format!("\r\n--{boundary}");
    let mut rest = &body[find(body, first.as_bytes())? + first.len()..];
    let mut parts = Vec::new();
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        let content = &rest[head_end + 4..];
        let end = find(content, next.as_bytes())?;
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            data: &content[..end],
        };
        for line in head.split("\r\n") {
            let (field, value) = line.split_once(':')?;
            if field.eq_ignore_ascii_case("Content-Type") {
                part.content_type = Some(value.trim().to_owned());
            } else if field.eq_ignore_ascii_case("Content-Disposition") {
                for param in value.split(';').map(str::trim) {
                    if let Some(v) = param.strip_prefix("name=") {
                        part.name = v.trim_matches('"').to_owned();
                    } else if let Some(v) = param.strip_prefix("filename=") {
                        part.filename = Some(v.trim_matches('"').to_owned());
                    }
                }
            }
        }
        parts.push(part);
        rest = &content[end + next.len()..];
    }
    Some(parts)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `POST /cgi-bin/component/api_get_authorizer_list?component_access_token=`
/// `{component_appid, offset, count}`: the accounts authorised to the component (those holding
/// a live refresh token), sorted.
fn authorizer_list(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let (component, _) = component_call(st, input, now)?;
    let authorizers: std::collections::BTreeSet<&str> = st
        .tokens
        .by_value
        .values()
        .filter(|m| {
            m.family == Family::RefreshToken && m.owner == component && m.life == Life::Live
        })
        .map(|m| m.subject.as_str())
        .collect();
    let list: Vec<Value> = authorizers
        .iter()
        .map(|a| json!({"authorizer_appid": a}))
        .collect();
    Ok(json!({"total_count": list.len(), "list": list}))
}

/// Does `component` hold a live refresh token for `authorizer` (it is authorised)?
fn authorised(st: &State, component: &str, authorizer: &str) -> bool {
    st.tokens.by_value.values().any(|m| {
        m.family == Family::RefreshToken
            && m.owner == component
            && m.subject == authorizer
            && m.life == Life::Live
    })
}

/// `POST /cgi-bin/component/api_get_authorizer_info?component_access_token=`
/// `{component_appid, authorizer_appid}`: WeChat's `{authorizer_info, authorization_info}` for an
/// account authorised to the component, its profile derived from its appid; else 61003.
fn authorizer_info(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let (component, body) = component_call(st, input, now)?;
    let authorizer = need(&body, "authorizer_appid", 41002, "authorizer_appid missing")?;
    if !authorised(st, &component, authorizer) {
        return Err(wx(61003, "component is not authorized by this account"));
    }
    Ok(json!({
        "authorizer_info": {
            "nick_name": format!("Mock {authorizer}"),
            "head_img": format!("https://mock.invalid/head/{authorizer}.png"),
            "service_type_info": {"id": 2},
            "verify_type_info": {"id": 0},
            "user_name": derived_id("gh_", authorizer),
            "principal_name": format!("Mock Company of {authorizer}"),
            "alias": "",
            "business_info": {"open_store": 0, "open_scan": 0, "open_pay": 0, "open_card": 0, "open_shake": 0},
            "qrcode_url": format!("https://mock.invalid/qrcode/{authorizer}.jpg"),
        },
        "authorization_info": {
            "authorizer_appid": authorizer,
            "func_info": [
                {"funcscope_category": {"id": 1}},
                {"funcscope_category": {"id": 17}},
            ],
        },
    }))
}

/// The app a phone number is watermarked for when the code starts `other`.
pub const FOREIGN_WATERMARK_APPID: &str = "wxsomeoneelse0001";

/// The 11-digit mainland number `/wxa/business/getuserphonenumber` answers for `code`.
pub fn phone_number_for(code: &str) -> String {
    let digest = Sha1::digest(code.as_bytes());
    let digits: String = digest
        .iter()
        .take(9)
        .map(|b| char::from(b'0' + b % 10))
        .collect();
    format!("13{digits}")
}

/// `POST /wxa/business/getuserphonenumber?access_token=` `{code}` (the code a mini program's
/// `getPhoneNumber` gave): `{errcode: 0, errmsg, phone_info: {phoneNumber, purePhoneNumber,
/// countryCode, watermark: {timestamp, appid}}}`, the number from [`phone_number_for`] and the
/// watermark naming the token's app. Codes `bad…` → 40029; `other…` → watermarked for
/// [`FOREIGN_WATERMARK_APPID`].
fn user_phone_number(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let grant = st
        .tokens
        .check_param(&input.query, "access_token", MP_TOKENS, now)?;
    let body = input.json()?;
    let code = need(&body, "code", 41008, "missing code")?;
    if code.starts_with("bad") {
        return Err(wx(40029, "invalid code"));
    }
    let appid = if code.starts_with("other") {
        FOREIGN_WATERMARK_APPID
    } else {
        grant.owner.as_str()
    };
    let number = phone_number_for(code);
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(json!({
        "errcode": 0,
        "errmsg": "ok",
        "phone_info": {
            "phoneNumber": number,
            "purePhoneNumber": number,
            "countryCode": "86",
            "watermark": {"timestamp": timestamp, "appid": appid},
        },
    }))
}

// --- Control routes ---------------------------------------------------------------------------

fn calls(st: &mut State, _input: &Input, _now: Instant) -> Result<Value, WxErr> {
    Ok(Value::Object(
        st.calls
            .iter()
            .map(|(path, n)| (path.to_string(), json!(n)))
            .collect(),
    ))
}

fn fail(st: &mut State, input: &Input, _now: Instant) -> Result<Value, WxErr> {
    let spec = input.control_json(&["path", "errcode", "status", "delay_ms", "times", "body"])?;
    let path = need_ctl(&spec, "path")?;
    let path = path.split('?').next().unwrap_or(path);
    let route = ROUTES
        .iter()
        .find(|r| r.upstream && r.path == path)
        .ok_or_else(|| bad(format!("{path:?} is not an upstream path")))?;
    let errcode = match spec.get("errcode") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| bad("errcode must be an integer"))?,
        ),
    };
    let status = match opt_u64(&spec, "status")? {
        None => None,
        Some(s @ 100..=599) => u16::try_from(s).ok(),
        Some(_) => return Err(bad("status must be between 100 and 599")),
    };
    let times = opt_u64(&spec, "times")?.unwrap_or(1);
    if times == 0 {
        return Err(bad("times must be at least 1"));
    }
    let body = match spec.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(raw.clone()),
        Some(other) => Some(other.to_string()),
    };
    let delay = opt_u64(&spec, "delay_ms")?.map(Duration::from_millis);
    let fault = Fault {
        delay,
        status,
        errcode,
        body,
        times,
    };
    st.faults.entry(route.path).or_default().push_back(fault);
    Ok(json!({"ok": true}))
}

fn reset(st: &mut State, _input: &Input, _now: Instant) -> Result<Value, WxErr> {
    *st = State::new();
    Ok(json!({"ok": true}))
}

fn config(st: &mut State, input: &Input, _now: Instant) -> Result<Value, WxErr> {
    let spec = input.control_json(&["token_lifetime_secs"])?;
    if let Some(lifetime) = opt_u64(&spec, "token_lifetime_secs")? {
        if lifetime > MAX_LIFETIME_SECS {
            return Err(bad(format!(
                "token_lifetime_secs must be at most {MAX_LIFETIME_SECS}"
            )));
        }
        st.lifetime_secs = lifetime;
    }
    Ok(json!({"ok": true, "token_lifetime_secs": st.lifetime_secs}))
}

fn pin_session_key(st: &mut State, input: &Input, _now: Instant) -> Result<Value, WxErr> {
    let spec = input.control_json(&["js_code", "session_key"])?;
    let code = need_ctl(&spec, "js_code")?;
    let key = need_ctl(&spec, "session_key")?;
    st.pinned.insert(code.to_owned(), key.to_owned());
    Ok(json!({"ok": true}))
}

fn handed_out_session_key(st: &mut State, input: &Input, _now: Instant) -> Result<Value, WxErr> {
    let code = need_ctl(&input.query, "js_code")?;
    let appid = text(&input.query, "appid").unwrap_or_default();
    match st.handed_out.get(appid, code) {
        Some(key) => Ok(json!({"session_key": key})),
        None => Err(WxErr {
            status: 404,
            errcode: 40029,
            errmsg: "mock: no session_key was handed out for that code".into(),
        }),
    }
}

/// `POST /__mock__/revoke_token {access_token}`: WeChat stops accepting that token at once (as
/// when another party resets it), so the next call with it answers 40001 (WeCom: 40014).
fn revoke_token(st: &mut State, input: &Input, _now: Instant) -> Result<Value, WxErr> {
    let spec = input.control_json(&["access_token"])?;
    let value = need_ctl(&spec, "access_token")?;
    match st.tokens.by_value.get_mut(value) {
        Some(m) => {
            m.life = Life::Revoked;
            Ok(json!({"ok": true}))
        }
        None => Err(bad("no such token")),
    }
}

fn token_status(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let value = need_ctl(&input.query, "access_token")?;
    let (valid, expires_in) = st.tokens.status(value, now);
    Ok(json!({"valid": valid, "expires_in": expires_in}))
}

fn authorize(st: &mut State, input: &Input, now: Instant) -> Result<Value, WxErr> {
    let spec = input.control_json(&["component_appid", "authorizer_appid", "pre_auth_code"])?;
    let component = need_ctl(&spec, "component_appid")?;
    let authorizer = need_ctl(&spec, "authorizer_appid")?;
    if let Some(pre_auth_code) = text(&spec, "pre_auth_code") {
        st.tokens
            .redeem(pre_auth_code, Family::PreAuthCode, component, now)
            .map_err(|e| WxErr { status: 400, ..e })?;
    }
    let code = st.tokens.mint(
        Family::AuthCode,
        component,
        authorizer,
        secs(AUTH_CODE_SECS),
        now,
    );
    Ok(json!({"auth_code": code.value, "expires_in": code.expires_in}))
}

fn revoke(st: &mut State, input: &Input, _now: Instant) -> Result<Value, WxErr> {
    let spec = input.control_json(&["component_appid", "authorizer_appid"])?;
    let component = need_ctl(&spec, "component_appid")?;
    let authorizer = need_ctl(&spec, "authorizer_appid")?;
    st.tokens.revoke_authorizer(component, authorizer);
    Ok(json!({"ok": true}))
}

// --- Pushing callbacks the way WeChat does ----------------------------------------------------

type Outgoing = fn(&Input) -> Result<Value, WxErr>;

/// Control routes that POST to the server under test rather than answer from state.
fn outgoing_route(method: &str, path: &str) -> Option<Outgoing> {
    match (method, path) {
        ("POST", "/__mock__/push") => Some(push),
        ("POST", "/__mock__/component/push_ticket") => Some(push_ticket),
        _ => None,
    }
}

/// `POST /__mock__/push {url, token, xml, aes_key?, receive_id?, plain?, kind?, timestamp?,
/// nonce?}`: deliver `xml` to `url` as WeChat would. Plain: `?signature=&timestamp=&nonce=` and
/// the XML as the body. Otherwise encrypted with `aes_key` for `receive_id`, signed
/// (`msg_signature`), in the envelope `<xml><ToUserName/><Encrypt/></xml>` (`kind: "component"`:
/// `<AppId/>`), with `encrypt_type=aes`. Answers `{status, body}` of the server's reply.
fn push(input: &Input) -> Result<Value, WxErr> {
    let spec = input.control_json(&[
        "url",
        "token",
        "xml",
        "aes_key",
        "receive_id",
        "plain",
        "kind",
        "timestamp",
        "nonce",
    ])?;
    deliver(&spec)
}

fn deliver(spec: &Params) -> Result<Value, WxErr> {
    let url = need_ctl(spec, "url")?;
    let token = need_ctl(spec, "token")?;
    let xml = need_ctl(spec, "xml")?;
    let timestamp = match text(spec, "timestamp") {
        Some(t) => t.to_owned(),
        None => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string(),
    };
    let nonce = match text(spec, "nonce") {
        Some(n) => n.to_owned(),
        None => u32::from_le_bytes(random_bytes::<4>()).to_string(),
    };
    let signature = wafer_crypto::sha1_sorted(&[token, &timestamp, &nonce]);
    let mut query = vec![
        ("signature", signature),
        ("timestamp", timestamp.clone()),
        ("nonce", nonce.clone()),
    ];
    let body = if flag(spec, "plain") {
        xml.to_owned()
    } else {
        let aes_key = need_ctl(spec, "aes_key")?;
        let receive_id = need_ctl(spec, "receive_id")?;
        let crypt = wafer_crypto::MsgCrypt::new(token, aes_key, None, receive_id)
            .map_err(|e| bad(format!("aes_key: {e}")))?;
        let encrypt = crypt.encrypt(xml, &random_bytes::<16>());
        query.push(("encrypt_type", "aes".into()));
        query.push((
            "msg_signature",
            crypt.signature(&timestamp, &nonce, &encrypt),
        ));
        let to = if text(spec, "kind") == Some("component") {
            "AppId"
        } else {
            "ToUserName"
        };
        format!("<xml><{to}><![CDATA[{receive_id}]]></{to}><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>")
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let sep = if url.contains('?') { '&' } else { '?' };
    let (status, answer) = http_post(&format!("{url}{sep}{query}"), &body)?;
    Ok(json!({"status": status, "body": answer}))
}

/// `POST /__mock__/component/push_ticket {url, component_appid, token, aes_key, ticket?}`: push
/// an encrypted `component_verify_ticket` event (a fresh ticket `api_component_token` accepts,
/// unless one is given). Answers `{status, body, ticket}`.
fn push_ticket(input: &Input) -> Result<Value, WxErr> {
    let spec = input.control_json(&["url", "component_appid", "token", "aes_key", "ticket"])?;
    let appid = need_ctl(&spec, "component_appid")?;
    let ticket = match text(&spec, "ticket") {
        Some(t) => t.to_owned(),
        None => format!("ticket@@@{}", URL_SAFE_NO_PAD.encode(random_bytes::<24>())),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let xml = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{now}</CreateTime>\
         <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
         <ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    );
    let mut push = spec.clone();
    push.remove("component_appid");
    push.remove("ticket");
    push.insert("receive_id".into(), json!(appid));
    push.insert("kind".into(), json!("component"));
    push.insert("xml".into(), json!(xml));
    let mut answer = deliver(&push)?;
    answer["ticket"] = json!(ticket);
    Ok(answer)
}

/// A minimal HTTP/1.1 POST over a plain socket (`http://` only): the mock stays free of an HTTP
/// client, and the server under test answers with a Content-Length body.
fn http_post(url: &str, body: &str) -> Result<(u16, String), WxErr> {
    use std::io::Write;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("url must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let unreachable = |e: io::Error| WxErr {
        status: 502,
        errcode: -1,
        errmsg: format!("mock: pushing to {authority}: {e}"),
    };
    let mut stream = std::net::TcpStream::connect(authority).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: text/xml\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, answer) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("the server's answer is not HTTP"))?;
    Ok((status, answer.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// State

struct State {
    /// Calls per upstream path, faulted ones included (the client did make them).
    calls: BTreeMap<&'static str, u64>,
    faults: HashMap<&'static str, VecDeque<Fault>>,
    tokens: Tokens,
    lifetime_secs: u64,
    /// Session keys pinned per `js_code` (any appid).
    pinned: HashMap<String, String>,
    handed_out: HandedOut,
}

impl State {
    fn new() -> State {
        State {
            calls: BTreeMap::new(),
            faults: HashMap::new(),
            tokens: Tokens::default(),
            lifetime_secs: DEFAULT_LIFETIME_SECS,
            pinned: HashMap::new(),
            handed_out: HandedOut::default(),
        }
    }

    /// Counts a call and takes the next queued fault for its path, if any.
    fn record_call(&mut self, path: &'static str) -> Option<Fault> {
        *self.calls.entry(path).or_default() += 1;
        let queue = self.faults.get_mut(path)?;
        let front = queue.front_mut()?;
        let fault = if front.times <= 1 {
            queue.pop_front()
        } else {
            front.times -= 1;
            Some(front.clone())
        };
        if queue.is_empty() {
            self.faults.remove(path);
        }
        fault
    }

    /// Issues a token or ticket with the configured lifetime.
    fn issue(
        &mut self,
        family: Family,
        owner: &str,
        subject: &str,
        force: bool,
        now: Instant,
    ) -> Issued {
        let lifetime = secs(self.lifetime_secs);
        self.tokens
            .issue(family, owner, subject, lifetime, force, now)
    }

    /// A fresh authorizer access token and a fresh refresh token (older ones stay valid).
    fn authorizer_tokens(
        &mut self,
        component: &str,
        authorizer: &str,
        now: Instant,
    ) -> (Issued, Issued) {
        let access = self.issue(Family::AuthorizerToken, authorizer, component, false, now);
        let refresh = self
            .tokens
            .mint(Family::RefreshToken, component, authorizer, None, now);
        (access, refresh)
    }

    fn hand_out_session_key(&mut self, appid: &str, code: &str) -> String {
        let key = match self.pinned.get(code) {
            Some(pinned) => pinned.clone(),
            None => STANDARD.encode(random_bytes::<16>()),
        };
        self.handed_out.remember(appid, code, &key);
        key
    }
}

#[derive(Clone, Debug)]
struct Fault {
    delay: Option<Duration>,
    status: Option<u16>,
    errcode: Option<i64>,
    body: Option<String>,
    times: u64,
}

impl Fault {
    /// The faulty answer, or `None` when the fault is only a delay.
    fn reply(&self) -> Option<Reply> {
        let raw = |status, body: &String| Reply {
            status,
            content_type: JSON_TYPE,
            body: body.clone().into_bytes(),
        };
        match (self.status, self.errcode, &self.body) {
            (Some(status), _, Some(body)) => Some(raw(status, body)),
            (Some(status), _, None) => Some(Reply::html(status)),
            (None, Some(errcode), _) => Some(Reply::json(
                200,
                &json!({"errcode": errcode, "errmsg": "mock fault"}),
            )),
            (None, None, Some(body)) => Some(raw(200, body)),
            (None, None, None) => None,
        }
    }
}

/// The session keys last handed out, per `(appid, js_code)` and per `("", js_code)`.
#[derive(Default)]
struct HandedOut {
    current: HashMap<(String, String), String>,
    previous: HashMap<(String, String), String>,
}

impl HandedOut {
    fn remember(&mut self, appid: &str, code: &str, key: &str) {
        if self.current.len() >= HANDED_OUT_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current
            .insert((appid.to_owned(), code.to_owned()), key.to_owned());
        self.current
            .insert((String::new(), code.to_owned()), key.to_owned());
    }

    fn get(&self, appid: &str, code: &str) -> Option<&String> {
        let key = (appid.to_owned(), code.to_owned());
        self.current.get(&key).or_else(|| self.previous.get(&key))
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens, tickets and codes

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    /// `/cgi-bin/token`; owner = appid.
    AccessToken,
    /// `/cgi-bin/stable_token`; owner = appid.
    StableToken,
    /// `/cgi-bin/ticket/getticket`; owner = appid.
    JsapiTicket,
    /// `/cgi-bin/gettoken`; owner = corpid + "\n" + corpsecret.
    WecomToken,
    /// `/cgi-bin/get_jsapi_ticket`; owner = corpid.
    WecomCorpTicket,
    /// `/cgi-bin/ticket/get`; owner = corpid + "\n" + corpsecret.
    WecomAgentTicket,
    /// `api_component_token`; owner = component appid.
    ComponentToken,
    /// `api_create_preauthcode`; owner = component appid.
    PreAuthCode,
    /// `/__mock__/component/authorize`; owner = component appid, subject = authoriser appid.
    AuthCode,
    /// An authoriser's access token; owner = authoriser appid, subject = component appid.
    AuthorizerToken,
    /// An authoriser's refresh token; owner = component appid, subject = authoriser appid.
    RefreshToken,
}

/// What a new fetch does to the previous value of the same `(family, owner)`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Returns the previous value while it is valid; `force` revokes it and mints anew.
    Reuse,
    /// Mints anew; the previous value keeps working for at most `SUPERSEDE_GRACE`.
    Supersede,
    /// Mints anew and leaves every earlier value alone.
    Independent,
}

impl Family {
    fn prefix(self) -> &'static str {
        match self {
            Family::AccessToken => "mock_at_",
            Family::StableToken => "mock_st_",
            Family::JsapiTicket => "mock_jt_",
            Family::WecomToken => "mock_wt_",
            Family::WecomCorpTicket => "mock_wct_",
            Family::WecomAgentTicket => "mock_wat_",
            Family::ComponentToken => "mock_ct_",
            Family::PreAuthCode => "preauthcode@@@",
            Family::AuthCode => "queryauthcode@@@",
            Family::AuthorizerToken => "mock_azt_",
            Family::RefreshToken => "refreshtoken@@@",
        }
    }

    fn policy(self) -> Policy {
        match self {
            // Stable tokens by design; WeCom answers the same token or ticket while it is valid.
            Family::StableToken
            | Family::WecomToken
            | Family::WecomCorpTicket
            | Family::WecomAgentTicket => Policy::Reuse,
            Family::AccessToken
            | Family::JsapiTicket
            | Family::ComponentToken
            | Family::AuthorizerToken => Policy::Supersede,
            Family::PreAuthCode | Family::AuthCode | Family::RefreshToken => Policy::Independent,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Live,
    /// A single-use code already redeemed.
    Used,
    /// Invalidated at once (forced stable refresh, revoked authoriser).
    Revoked,
}

struct Minted {
    family: Family,
    owner: String,
    subject: String,
    /// `None`: never expires (refresh tokens).
    expires_at: Option<Instant>,
    life: Life,
}

impl Minted {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whole seconds left, or `None` for values that never expire.
    fn remaining_secs(&self, now: Instant) -> Option<u64> {
        self.expires_at
            .map(|at| at.saturating_duration_since(now).as_secs())
    }
}

/// What an endpoint learns from a valid token.
struct Grant {
    owner: String,
}

struct Issued {
    value: String,
    expires_in: u64,
}

#[derive(Default)]
struct Tokens {
    by_value: HashMap<String, Minted>,
    /// The latest value per `(family, owner)` for the `Reuse` and `Supersede` families.
    current: HashMap<(Family, String), String>,
    last_prune: Option<Instant>,
}

impl Tokens {
    fn issue(
        &mut self,
        family: Family,
        owner: &str,
        subject: &str,
        lifetime: Option<Duration>,
        force: bool,
        now: Instant,
    ) -> Issued {
        let key = (family, owner.to_owned());
        let previous = self
            .current
            .get(&key)
            .and_then(|v| Some((v, self.by_value.get_mut(v)?)));
        if let Some((value, prev)) = previous {
            match family.policy() {
                Policy::Reuse if force => prev.life = Life::Revoked,
                Policy::Reuse => {
                    // Less than a second left counts as expired, so a caller never receives
                    // `expires_in: 0`.
                    let left = prev.remaining_secs(now).unwrap_or(u64::MAX);
                    // Like WeChat's stable token in normal mode: during the last five minutes
                    // (a quarter of a short test lifetime) a call gets a new token, and the old
                    // one stays valid until its own expiry. WeCom reuses until expiry.
                    let renew_window = match family {
                        Family::StableToken => lifetime.map_or(0, |l| (l.as_secs() / 4).min(300)),
                        _ => 0,
                    };
                    if prev.life == Life::Live && left >= 1 && left > renew_window {
                        return Issued {
                            value: value.clone(),
                            expires_in: left,
                        };
                    }
                }
                Policy::Supersede => {
                    let cap = now + SUPERSEDE_GRACE;
                    prev.expires_at = Some(prev.expires_at.map_or(cap, |at| at.min(cap)));
                }
                Policy::Independent => {}
            }
        }
        let issued = self.mint(family, owner, subject, lifetime, now);
        if family.policy() != Policy::Independent {
            self.current.insert(key, issued.value.clone());
        }
        issued
    }

    /// Mints a new value without looking at earlier ones.
    fn mint(
        &mut self,
        family: Family,
        owner: &str,
        subject: &str,
        lifetime: Option<Duration>,
        now: Instant,
    ) -> Issued {
        self.prune(now);
        let value = format!(
            "{}{}",
            family.prefix(),
            URL_SAFE_NO_PAD.encode(random_bytes::<24>())
        );
        let minted = Minted {
            family,
            owner: owner.to_owned(),
            subject: subject.to_owned(),
            expires_at: lifetime.and_then(|l| now.checked_add(l)),
            life: Life::Live,
        };
        self.by_value.insert(value.clone(), minted);
        Issued {
            value,
            expires_in: lifetime.map_or(0, |l| l.as_secs()),
        }
    }

    /// Validates the token in query parameter `key` the way WeChat does.
    fn check_param(
        &self,
        params: &Params,
        key: &str,
        accepts: &[Family],
        now: Instant,
    ) -> Result<Grant, WxErr> {
        let value = need(params, key, 41001, &format!("{key} missing"))?;
        match self.by_value.get(value) {
            Some(m) if accepts.contains(&m.family) && m.life == Life::Live => {
                if m.expired(now) {
                    return Err(wx(42001, "access_token expired"));
                }
                Ok(Grant {
                    owner: m.owner.clone(),
                })
            }
            _ => Err(wx(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )),
        }
    }

    /// Spends a single-use code of `family` issued to `owner`; returns its subject.
    fn redeem(
        &mut self,
        value: &str,
        family: Family,
        owner: &str,
        now: Instant,
    ) -> Result<String, WxErr> {
        match self.by_value.get_mut(value) {
            Some(m) if m.family == family && m.owner == owner => {
                if m.life != Life::Live || m.expired(now) {
                    return Err(wx(61010, "code is expired"));
                }
                m.life = Life::Used;
                Ok(m.subject.clone())
            }
            _ => Err(wx(40029, "invalid code")),
        }
    }

    /// The authoriser withdrew from the component: its refresh and access tokens die at once.
    fn revoke_authorizer(&mut self, component: &str, authorizer: &str) {
        for m in self.by_value.values_mut() {
            let refresh =
                m.family == Family::RefreshToken && m.owner == component && m.subject == authorizer;
            let access = m.family == Family::AuthorizerToken
                && m.owner == authorizer
                && m.subject == component;
            if refresh || access {
                m.life = Life::Revoked;
            }
        }
    }

    /// `(valid, expires_in)`; `expires_in` is -1 for values that never expire.
    fn status(&self, value: &str, now: Instant) -> (bool, i64) {
        match self.by_value.get(value) {
            Some(m) if m.life == Life::Live && !m.expired(now) => {
                let left = m
                    .remaining_secs(now)
                    .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX));
                (true, left)
            }
            _ => (false, 0),
        }
    }

    /// Drops values expired for over an hour once the store is large, so long load tests stay
    /// bounded. Pruned values then read as unknown (40001) rather than expired (42001).
    fn prune(&mut self, now: Instant) {
        let recently = self
            .last_prune
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(60));
        if self.by_value.len() <= PRUNE_ABOVE || recently {
            return;
        }
        self.last_prune = Some(now);
        let horizon = Duration::from_secs(3600);
        self.by_value
            .retain(|_, m| m.expires_at.is_none_or(|at| at + horizon > now));
        let by_value = &self.by_value;
        self.current.retain(|_, value| by_value.contains_key(value));
    }
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

/// Random bytes from the OS; should that ever fail, a hash of the clock and a counter, which
/// is unique if not secret (this is a mock).
fn random_bytes<const N: usize>() -> [u8; N] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut buf = [0u8; N];
    if getrandom::getrandom(&mut buf).is_err() {
        let seed = format!(
            "{:?}/{:?}/{}",
            SystemTime::now(),
            thread::current().id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let digest = Sha256::digest(seed.as_bytes());
        for (b, d) in buf.iter_mut().zip(digest.iter().cycle()) {
            *b = *d;
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        let cases = [
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("%E4%BD%A0", "你"),
            ("100%", "100%"),
            ("%zz", "%zz"),
            ("%4", "%4"),
            ("", ""),
        ];
        for (raw, decoded) in cases {
            let params = parse_query(&format!("k={raw}"));
            assert_eq!(params["k"], decoded, "{raw}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_openid_sized() {
        let a = derived_id("o", "wx1:code");
        assert_eq!(a, derived_id("o", "wx1:code"));
        assert_ne!(a, derived_id("o", "wx2:code"));
        assert_eq!(a.len(), 28);
    }

    #[test]
    fn faults_queue_in_order_and_count_down() {
        let mut st = State::new();
        let path = "/cgi-bin/token";
        let fault = |errcode, times| Fault {
            delay: None,
            status: None,
            errcode: Some(errcode),
            body: None,
            times,
        };
        st.faults
            .entry(path)
            .or_default()
            .extend([fault(1, 2), fault(2, 1)]);
        let seen: Vec<_> = (0..4)
            .map(|_| st.record_call(path).and_then(|f| f.errcode))
            .collect();
        assert_eq!(seen, [Some(1), Some(1), Some(2), None]);
        assert_eq!(st.calls[path], 4);
    }
}
