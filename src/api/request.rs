//! A request as the handlers see it (`Incoming`, its `Method`, its route `Params`, its
//! `Headers`), and the access rule of the key-guarded routes (`guard`). Knows nothing of the
//! HTTP server that read it: `http` fills these in from tiny_http's request.

use super::context::Context;
use crate::secret::Secret;

/// The request's headers, looked up by case-insensitive name (implemented by `http` over the
/// server's own header list, borrowed, not copied).
pub trait Headers {
    fn header(&self, name: &str) -> Option<&str>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// A request as the handlers see it: read completely, nothing left on the socket. Borrowed from
/// the server's request (no copies of the head on the hot path).
pub struct Incoming<'a> {
    pub method: Method,
    /// The method as sent (`HEAD`, `PUT`, …), for the gateway, which relays it.
    pub verb: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a dyn Headers,
    pub body: Vec<u8>,
    /// The route pattern's `{name}` segments, in order ([`Incoming::param`]).
    pub params: Params,
}

impl Incoming<'_> {
    /// The route pattern's `i`th `{name}` segment (`""` when it has none).
    pub fn param(&self, i: usize) -> &str {
        self.params.get(self.path, i)
    }

    /// A header by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name)
    }

    /// The decoded query parameters.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_decode(self.query)
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Where a pattern's `{name}` segments are in the path (at most three), for `Incoming::param`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params {
    spans: [(u16, u16); 3],
    len: u8,
}

impl Params {
    /// The `i`th parameter of `path` (the path these were found in), or `""`.
    /// Record the next parameter, at `start..end` of the path; `None` past three (or a path
    /// longer than 64 KiB).
    pub fn push(&mut self, start: usize, end: usize) -> Option<()> {
        let slot = self.spans.get_mut(usize::from(self.len))?;
        *slot = (u16::try_from(start).ok()?, u16::try_from(end).ok()?);
        self.len += 1;
        Some(())
    }

    pub fn get<'p>(&self, path: &'p str, i: usize) -> &'p str {
        match self.spans.get(i) {
            Some(&(start, end)) if i < usize::from(self.len) => {
                path.get(usize::from(start)..usize::from(end)).unwrap_or("")
            }
            _ => "",
        }
    }
}

/// Why a request may not use a key-guarded route (CONTRACT §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A key is set and the request does not carry it.
    NoKey,
    /// No key is set and the request's `Host` is not a loopback name or address.
    ForeignHost,
}

/// May this request use a key-guarded route (the credential interfaces of the envelope, every
/// `/v1` route)? With `server.api_key` set: only with `Authorization: Bearer <key>`. Without
/// one: only when its `Host` names this machine's loopback, so that a web page a browser on
/// the same machine loads from elsewhere (DNS rebinding) cannot read tokens or replace secrets.
pub fn guard(w: &Context, rq: &Incoming) -> Result<(), Refused> {
    let key = &w.shared.config.server.api_key;
    if key.is_empty() {
        return match rq.header("Host") {
            Some(host) if is_loopback_host(host) => Ok(()),
            _ => Err(Refused::ForeignHost),
        };
    }
    if bearer_ok(key, rq) {
        Ok(())
    } else {
        Err(Refused::NoKey)
    }
}

/// Does the request carry `Authorization: Bearer <key>`? Compared in constant time.
pub fn bearer_ok(key: &Secret, rq: &Incoming) -> bool {
    let given = rq
        .header("Authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    crate::crypto::ct_eq(given.trim().as_bytes(), key.expose().as_bytes())
}

/// A `Host` header that names the loopback: `localhost` (any case), an address in 127.0.0.0/8
/// or `[::1]`, each with or without a numeric port. Nothing else: not a name under
/// `localhost.`, not `0.0.0.0`, not a malformed port.
pub fn is_loopback_host(host: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        let port_fine = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return port_fine
            && addr
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|a| a.is_loopback());
    }
    let name = match host.split_once(':') {
        None => host,
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return false,
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// `application/x-www-form-urlencoded` (and query string) decoding, by `form_urlencoded`.
/// Invalid escapes are kept as they are; invalid UTF-8 is replaced.
pub fn form_decode(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost:5757",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.255.0.9:65535",
            "[::1]",
            "[::1]:80",
            "[0:0:0:0:0:0:0:1]:80",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "attacker.example",
            "localhost.attacker.example",
            "attacker.localhost",
            "localhost.",
            "localhost:",
            "localhost:http",
            "localhost:123456",
            "localhost:1:2",
            "127.0.0.1.nip.io",
            "127.1",
            "0.0.0.0",
            "10.0.0.1:5757",
            "[::2]",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[::ffff:127.0.0.1]",
            "::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_decode("a=1&b=x+y&c=%E4%B8%AD&d=%zz&e&f=%4"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "中".into()),
                ("d".into(), "%zz".into()),
                ("e".into(), "".into()),
                ("f".into(), "%4".into()),
            ]
        );
    }
}
