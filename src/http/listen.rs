//! The listening socket and the bounds that keep slow, idle, oversized or ambiguous clients from
//! tying the server up. This is the only place that decides how long a client may take and how
//! much it may send; the fork of tiny_http (`vendor/tiny_http`, its README lists each change)
//! enforces it, configured here by `tiny_http::Limits`:
//!
//! - **The accept loop never stops**: out of descriptors or threads, it pauses (up to 100 ms)
//!   and tries again; a connection it cannot serve is closed.
//! - **Heads** are read by the connection's own thread within caps (request line 8 KiB → 414,
//!   header lines 16 KiB → 431) and in time (`server.io_timeout_ms` from the first byte → 408);
//!   ambiguous framing is refused (400, 501, 505). Every refusal closes the connection.
//! - **Bodies** are read whole by the connection's thread too, before a worker sees the request:
//!   at most `server.max_body_bytes` (413, unread when `Content-Length` says so; the gateway's
//!   routes, `gateway::parse_route`, `gateway.max_body_bytes` instead), within
//!   `server.io_timeout_ms` of the head's end (408). A worker takes the body out of the request
//!   (`Request::take_body`, not a copy), so each body is held once.
//! - **The bodies held at once** are bounded too, whatever the number of connections: the
//!   gateway's at most `gateway.max_inflight_bytes` together, all others at most
//!   [`OTHER_BODIES_BUDGET`] (at least one of `server.max_body_bytes`), from the moment a body
//!   is about to be read until its request is answered (the body a worker took included: it
//!   must not outlive the answer). A request past that is answered 503
//!   with `Retry-After: 1` and its body is not read.
//! - **Answers** are written to the socket by the worker (or upstream thread) that made them,
//!   as much as the socket takes without waiting, the usual small answer in one call; the rest
//!   of a larger one, or of one to a client that does not read, by a thread of tiny_http's
//!   (at most 256 at once, past which that connection is cut), each write bounded by
//!   `server.io_timeout_ms` and the whole rest by that plus its size at 32 KiB/s (tiny_http's
//!   `Limits::min_answer_rate`); so is every read. A connection idle that long is closed.
//!
//! - **Every refusal is counted and logged**: the requests refused above never reach a worker,
//!   so tiny_http reports each (`Limits::on_refusal`): `wafer_requests_total{route="refused"}`
//!   by status, and a log line `REFUSED - STATUS`.
//! - **Bursts of new connections** wait in an accept queue of [`BACKLOG`] (the kernel caps it at
//!   `net.core.somaxconn`), not std's 128: past the queue Linux drops a SYN, and its client
//!   tries again only a second later.
//!
//! So no worker ever waits on a client: a slow client costs one connection thread (a small
//! stack), and a client that does not read a large answer one answer thread, for at most about
//! twice the io timeout per request.

use crate::config::{GatewayConfig, ServerConfig};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The bytes of bodies other than the gateway's held at once: 256 bodies of the default
/// `server.max_body_bytes` (64 KiB), far more than are ever in progress when clients are not
/// holding bodies back on purpose.
pub const OTHER_BODIES_BUDGET: usize = 16 << 20;

/// Connections the kernel may hold for the accept loop (std's `TcpListener::bind` asks for 128).
pub const BACKLOG: i32 = 4096;

/// A listening socket on `addr` as std's `TcpListener::bind` makes one (`SO_REUSEADDR`, so a
/// restart binds at once), with an accept queue of [`BACKLOG`].
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// tiny_http on `addr`, bounded as above.
pub fn bind(
    addr: SocketAddr,
    server: &ServerConfig,
    gateway: &GatewayConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<tiny_http::Server> {
    let max_body_bytes = server.max_body_bytes;
    let gateway_max_body_bytes = usize::try_from(gateway.max_body_bytes).unwrap_or(usize::MAX);
    let gateway_inflight = usize::try_from(gateway.max_inflight_bytes).unwrap_or(usize::MAX);
    let listener = listener(addr)?;
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(Duration::from_millis(server.io_timeout_ms));
    limits.max_buffered_body = Some(max_body_bytes);
    // Gateway bodies are the "large" ones only when their limit is the larger; either way no
    // body is refused for its size alone (gateway.max_inflight_bytes ≥ its max_body_bytes).
    limits.large_body_budget = Some(gateway_inflight);
    limits.body_budget =
        Some(gateway_inflight.saturating_add(OTHER_BODIES_BUDGET.max(max_body_bytes)));
    limits.body_limit = Some(tiny_http::BodyLimit::new(move |_, target| {
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        match crate::core::gateway::parse_route(path) {
            Some(_) => gateway_max_body_bytes,
            None => max_body_bytes,
        }
    }));
    limits.on_refusal = Some(tiny_http::OnRefusal::new(move |status| {
        metrics.refused(status);
        // The request log's shape (method, path, status): neither is known, or trusted, here.
        log::info!("REFUSED - {status}");
    }));
    tiny_http::Server::from_listener_with_limits(listener, None, limits)
        .map_err(std::io::Error::other)
}

/// The address tiny_http listens on (an IP listener always has one).
pub fn local_addr(server: &tiny_http::Server) -> std::io::Result<SocketAddr> {
    server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("not an IP listener"))
}
