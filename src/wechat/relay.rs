//! The gateway's call to WeChat (CONTRACT §9): a caller's request relayed as bytes, and
//! WeChat's answer brought back as bytes (status, `Content-Type`, `Content-Disposition`, body),
//! whatever it is: JSON, an image, an error page. Unlike `client`'s calls it decodes nothing
//! and reports nothing to the observer (the gateway logs and counts its calls itself, with a
//! bounded label: a relayed path is the caller's choice). The host is always a configured base
//! URL and no redirect is followed.

use super::client::transport_kind;
use super::{Host, WeChat};
use std::io::Read;

/// A request to relay.
pub struct RelayRequest<'a> {
    pub host: Host,
    /// A relative path already checked by the gateway (`[A-Za-z0-9_./-]`, no `.`, `..` or empty
    /// segment), without its leading slash.
    pub path: &'a str,
    /// The query string to send, already encoded, the credential included; may be empty.
    pub query: &'a str,
    pub method: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// The largest answer body read; a larger one is [`RelayError::TooLarge`].
    pub max_answer: u64,
}

/// WeChat's answer, as it came.
#[derive(Debug)]
pub struct Relayed {
    pub status: u16,
    pub content_type: Option<String>,
    pub content_disposition: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// Not sent: this thread may not wait on WeChat (a server worker: `client::may_wait_here`).
    NotSent,
    /// Connection refused, DNS, TLS, a timeout, or the answer broke off.
    Unreachable(String),
    /// The answer's body is larger than `max_answer`.
    TooLarge,
}

impl WeChat {
    /// Send `rq` to WeChat and read its answer, any status, within `max_answer` bytes.
    pub fn relay(&self, rq: &RelayRequest) -> Result<Relayed, RelayError> {
        if super::client::on_a_worker(rq.path) {
            return Err(RelayError::NotSent);
        }
        let sep = if rq.query.is_empty() { "" } else { "?" };
        let url = format!("{}/{}{sep}{}", self.base(rq.host), rq.path, rq.query);
        let mut req = self.relay_agent.request(rq.method, &url);
        if let Some(ct) = rq.content_type {
            req = req.set("Content-Type", ct);
        }
        let sent = if rq.body.is_empty() && rq.content_type.is_none() {
            req.call()
        } else {
            req.send_bytes(rq.body)
        };
        let resp = match sent {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => {
                return Err(RelayError::Unreachable(transport_kind(&t)))
            }
        };
        let declared = resp
            .header("Content-Length")
            .and_then(|n| n.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > rq.max_answer) {
            return Err(RelayError::TooLarge);
        }
        let status = resp.status();
        let header = |name| resp.header(name).map(str::to_string);
        let (content_type, content_disposition) =
            (header("Content-Type"), header("Content-Disposition"));
        let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
        resp.into_reader()
            .take(rq.max_answer + 1)
            .read_to_end(&mut body)
            .map_err(|e| RelayError::Unreachable(format!("reading answer: {}", e.kind())))?;
        if body.len() as u64 > rq.max_answer {
            return Err(RelayError::TooLarge);
        }
        Ok(Relayed {
            status,
            content_type,
            content_disposition,
            body,
        })
    }
}
