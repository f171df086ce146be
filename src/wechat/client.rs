//! The WeChat HTTP client: one ureq agent (TLS verified, a timeout on every call), the base URLs
//! from config, and the one function that decodes WeChat's `{errcode, errmsg}`. Nothing else in
//! wafer speaks HTTP to WeChat. It never logs query strings or bodies: they carry secrets.

use super::{urls, Errcode};
use crate::config::WeChatConfig;
use serde_json::Value;
use std::fmt;
use std::time::{Duration, Instant};

/// Which WeChat host a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// api.weixin.qq.com: mini programs, official accounts, the Open Platform component.
    Api,
    /// qyapi.weixin.qq.com: WeCom.
    Work,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamError {
    /// Connection refused, DNS, TLS or a timeout: WeChat did not answer.
    Net(String),
    /// An HTTP status other than 200 (a gateway's HTML error page, say).
    Status(u16),
    /// A 200 whose body is not a JSON object.
    Garbage,
    /// WeChat's own error: errcode non-zero.
    WeChat { errcode: Errcode, errmsg: String },
    /// WeChat's JSON, but not an answer to what was asked (a phone number watermarked for
    /// another app): refused like an error WeChat returned, not like an unreachable WeChat.
    Unexpected(&'static str),
    /// Not sent: this thread may not wait on an upstream ([`may_wait_here`]: a server worker,
    /// which a handler should have sent to the upstream pool instead). Becomes `Error::Busy`.
    NotSent,
}

impl UpstreamError {
    /// A transport-level failure (as opposed to WeChat saying no, or saying something else).
    pub fn is_transport(&self) -> bool {
        !matches!(
            self,
            UpstreamError::WeChat { .. } | UpstreamError::Unexpected(_)
        )
    }
    pub fn errcode(&self) -> Option<Errcode> {
        match self {
            UpstreamError::WeChat { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Net(m) => write!(f, "unreachable: {m}"),
            UpstreamError::Status(s) => write!(f, "HTTP status {s}"),
            UpstreamError::Garbage => f.write_str("answer is not JSON"),
            UpstreamError::WeChat { errcode, errmsg } => write!(f, "errcode {errcode}: {errmsg}"),
            UpstreamError::Unexpected(what) => write!(f, "unexpected answer: {what}"),
            UpstreamError::NotSent => f.write_str("not sent: no thread may wait on it now"),
        }
    }
}

/// Decode a WeChat answer: `errcode` absent or 0 is success (many success bodies carry none).
pub fn decode(body: &str) -> Result<Value, UpstreamError> {
    let v: Value = serde_json::from_str(body).map_err(|_| UpstreamError::Garbage)?;
    if !v.is_object() {
        return Err(UpstreamError::Garbage);
    }
    match v.get("errcode").map(|c| c.as_i64()) {
        None | Some(Some(0)) => Ok(v),
        Some(Some(errcode)) => Err(UpstreamError::WeChat {
            errcode: Errcode(errcode),
            errmsg: v
                .get("errmsg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }),
        Some(None) => Err(UpstreamError::Garbage),
    }
}

/// What an upstream call reports to the observer (log line and metrics).
pub struct CallRecord<'a> {
    pub path: &'a str,
    pub outcome: &'a Result<Value, UpstreamError>,
    pub elapsed: Duration,
}

/// The largest upstream answer we read; WeChat's are a few hundred bytes.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

pub struct WeChat {
    agent: ureq::Agent,
    /// The gateway's agent (`relay`): the same timeouts, and no redirect is followed, so a
    /// relayed call never leaves the configured host.
    pub(super) relay_agent: ureq::Agent,
    api_base: String,
    work_api_base: String,
    observer: Box<dyn Fn(&CallRecord) + Send + Sync>,
}

/// Successful `jscode2session`.
pub struct Code2Session {
    pub openid: String,
    pub session_key: crate::secret::Secret,
    pub unionid: Option<String>,
}

/// Server workers are the threads named with this prefix (`http::start` names them so): they
/// answer from memory and the database only, and never wait on an upstream.
pub const WORKER_THREAD_PREFIX: &str = "worker-";

/// May this thread wait on an upstream? Not a server worker ([`WORKER_THREAD_PREFIX`]): a handler
/// there that needs WeChat answers `api::Outcome::NeedsUpstream` before it gets here. This is
/// the check that holds if one forgot.
pub fn may_wait_here() -> bool {
    !std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with(WORKER_THREAD_PREFIX))
}

/// Is this a server worker about to wait on `what`? Logged as the bug it is; the caller then
/// sends nothing and answers "not sent" (busy).
pub(crate) fn on_a_worker(what: &str) -> bool {
    if may_wait_here() {
        return false;
    }
    log::error!("bug: a server worker was about to wait on {what}; answered busy instead");
    true
}

/// Keep-alive connections kept per host (and in all): as many as logins the upstream pool lets
/// wait at once with the default 4 workers, so a burst of logins does not open a connection
/// (and leave a socket in TIME_WAIT) per call.
const IDLE_CONNECTIONS: usize = 256;

impl WeChat {
    pub fn new(cfg: &WeChatConfig) -> WeChat {
        let builder = || {
            ureq::AgentBuilder::new()
                .timeout(Duration::from_millis(cfg.timeout_ms))
                .max_idle_connections(IDLE_CONNECTIONS)
                .max_idle_connections_per_host(IDLE_CONNECTIONS)
                .user_agent(concat!("wafer/", env!("CARGO_PKG_VERSION")))
        };
        WeChat {
            agent: builder().build(),
            relay_agent: builder().redirects(0).build(),
            api_base: cfg.api_base.trim_end_matches('/').to_string(),
            work_api_base: cfg.work_api_base.trim_end_matches('/').to_string(),
            observer: Box::new(log_call),
        }
    }

    /// Replace the default observer (a log line) with one that also records metrics.
    pub fn with_observer(mut self, f: impl Fn(&CallRecord) + Send + Sync + 'static) -> WeChat {
        self.observer = Box::new(f);
        self
    }

    /// The configured base URL of `host` (no trailing slash).
    pub(super) fn base(&self, host: Host) -> &str {
        match host {
            Host::Api => &self.api_base,
            Host::Work => &self.work_api_base,
        }
    }

    pub fn get(
        &self,
        host: Host,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, UpstreamError> {
        self.call(host, path, query, None)
    }

    pub fn post(
        &self,
        host: Host,
        path: &str,
        query: &[(&str, &str)],
        body: &Value,
    ) -> Result<Value, UpstreamError> {
        self.call(host, path, query, Some(body))
    }

    fn call(
        &self,
        host: Host,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, UpstreamError> {
        // The one check that holds whatever the caller forgot: a worker never waits on WeChat.
        if on_a_worker(path) {
            return Err(UpstreamError::NotSent);
        }
        let base = self.base(host);
        let started = Instant::now();
        let mut req = match body {
            Some(_) => self.agent.post(&format!("{base}{path}")),
            None => self.agent.get(&format!("{base}{path}")),
        };
        for (k, v) in query {
            req = req.query(k, v);
        }
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let outcome = match sent {
            Ok(resp) => read_body(resp).and_then(|text| decode(&text)),
            Err(ureq::Error::Status(code, _)) => Err(UpstreamError::Status(code)),
            Err(ureq::Error::Transport(t)) => Err(UpstreamError::Net(transport_kind(&t))),
        };
        (self.observer)(&CallRecord {
            path,
            outcome: &outcome,
            elapsed: started.elapsed(),
        });
        outcome
    }

    /// `GET /sns/jscode2session`: exchange a login code for (openid, session_key, unionid).
    pub fn jscode2session(
        &self,
        appid: &str,
        secret: &str,
        code: &str,
    ) -> Result<Code2Session, UpstreamError> {
        let v = self.get(
            Host::Api,
            urls::JSCODE2SESSION,
            &[
                ("appid", appid),
                ("secret", secret),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ],
        )?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        match (s("openid"), s("session_key")) {
            (Some(openid), Some(key)) => Ok(Code2Session {
                openid,
                session_key: crate::secret::Secret::new(key),
                unionid: s("unionid"),
            }),
            _ => Err(UpstreamError::Garbage),
        }
    }
}

/// What a business endpoint (an app's `forward_url`) answered.
#[derive(Debug)]
pub struct Forwarded {
    pub status: u16,
    pub body: String,
}

impl WeChat {
    /// POST a JSON body to an operator's own URL (a callback `forward_url`), bounded by
    /// `timeout` for the whole exchange. Not a WeChat call: it is not decoded as `{errcode}` and
    /// not counted as upstream. Any status is returned; only transport failures are errors.
    pub fn post_json_to(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Forwarded, UpstreamError> {
        if on_a_worker("forward_url") {
            return Err(UpstreamError::NotSent);
        }
        let started = Instant::now();
        let sent = self.agent.post(url).timeout(timeout).send_json(body);
        let outcome = match sent {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => {
                let status = resp.status();
                read_body(resp).map(|body| Forwarded { status, body })
            }
            Err(ureq::Error::Transport(t)) => Err(UpstreamError::Net(transport_kind(&t))),
        };
        log::info!(
            "forward {} {}us",
            match &outcome {
                Ok(f) => f.status.to_string(),
                Err(e) => e.to_string(),
            },
            started.elapsed().as_micros()
        );
        outcome
    }
}

fn read_body(resp: ureq::Response) -> Result<String, UpstreamError> {
    use std::io::Read;
    let mut text = String::new();
    resp.into_reader()
        .take(MAX_ANSWER_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| UpstreamError::Net(format!("reading answer: {}", e.kind())))?;
    Ok(text)
}

/// A transport error's kind, without the URL (which carries the secret in its query).
pub(super) fn transport_kind(t: &ureq::Transport) -> String {
    let kind = format!("{:?}", t.kind());
    match t.message() {
        Some(m) if !m.contains('?') => format!("{kind}: {m}"),
        _ => kind,
    }
}

/// The default observer: one line per upstream call on stderr, no query, no body.
pub fn log_call(rec: &CallRecord) {
    let result = match rec.outcome {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    log::info!(
        "upstream {} {} {}us",
        rec.path,
        result,
        rec.elapsed.as_micros()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_cases() {
        let werr = |c: i64, m: &str| {
            Err(UpstreamError::WeChat {
                errcode: Errcode(c),
                errmsg: m.into(),
            })
        };
        assert!(decode(r#"{"access_token":"t","expires_in":7200}"#).is_ok());
        assert!(decode(r#"{"errcode":0,"errmsg":"ok","ticket":"t"}"#).is_ok());
        assert_eq!(
            decode(r#"{"errcode":40029,"errmsg":"invalid code"}"#),
            werr(40029, "invalid code")
        );
        assert_eq!(decode(r#"{"errcode":-1}"#), werr(-1, ""));
        assert_eq!(decode("<html>502</html>"), Err(UpstreamError::Garbage));
        assert_eq!(decode("[1]"), Err(UpstreamError::Garbage));
        assert_eq!(decode(r#"{"errcode":"x"}"#), Err(UpstreamError::Garbage));
        assert_eq!(decode(""), Err(UpstreamError::Garbage));
    }

    #[test]
    fn a_worker_thread_sends_nothing() {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        upstream.set_nonblocking(true).unwrap();
        let base = format!("http://{}", upstream.local_addr().unwrap());
        let wechat = std::sync::Arc::new(WeChat::new(&WeChatConfig {
            api_base: base.clone(),
            work_api_base: base.clone(),
            timeout_ms: 500,
            ..WeChatConfig::default()
        }));
        let forward = format!("{base}/forward");
        let on_worker = {
            let wechat = wechat.clone();
            std::thread::Builder::new()
                .name(format!("{WORKER_THREAD_PREFIX}0"))
                .spawn(move || {
                    assert!(!may_wait_here());
                    let got = wechat.get(Host::Api, "/cgi-bin/token", &[]);
                    let forwarded =
                        wechat.post_json_to(&forward, &Value::Null, Duration::from_secs(1));
                    (got, forwarded.map(|f| f.status))
                })
                .unwrap()
        };
        let (got, forwarded) = on_worker.join().unwrap();
        assert_eq!(got, Err(UpstreamError::NotSent));
        assert_eq!(forwarded, Err(UpstreamError::NotSent));
        // (`core::error` answers NotSent busy in every dialect: its own test.)
        // Nothing reached the upstream.
        assert_eq!(
            upstream.accept().map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        // A thread that may wait sends.
        assert!(may_wait_here());
        assert!(matches!(
            wechat.get(Host::Api, "/cgi-bin/token", &[]),
            Err(UpstreamError::Net(_))
        ));
        assert!(upstream.accept().is_ok());
    }
}
