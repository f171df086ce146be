//! The listening socket and the limits that keep slow, idle or oversized clients from tying the
//! server up. This is the only place that decides how long a client may take.
//!
//! Why it is built this way: tiny_http (our fork, `vendor/tiny_http`) accepts on its own thread
//! and gives every connection a thread of its own that reads the request head, bounded by
//! `tiny_http::Limits`; only then does one of our workers get the request and read the body.
//!
//! 1. **Socket timeouts, inherited.** The listening socket is made here with socket2 and given
//!    `SO_RCVTIMEO` and `SO_SNDTIMEO` (`server.io_timeout_ms`, default 10 s) before it is handed
//!    to `tiny_http::Server::from_listener`. On Linux an accepted socket inherits these options
//!    from its listener (the unit test below checks it on the machine it runs on). So every read
//!    and write on every connection — tiny_http's header reads, our workers' body reads, the
//!    response write — fails after that long without progress (Linux reports `EAGAIN`). An idle
//!    client, or an idle keep-alive connection, is closed by tiny_http and its thread ends; a
//!    client that stops reading its response frees the worker after one timeout.
//!    The catch, found by trying it: `accept()` on a listener obeys `SO_RCVTIMEO` too. The
//!    fork's accept loop retries after any accept error (`vendor/tiny_http/README.md`); a
//!    **keeper** thread still connects to the listener over loopback every quarter timeout and
//!    closes at once, so accept seldom times out, and the empty connection costs tiny_http one
//!    EOF read. Should the accept thread ever report an error, `Front` logs it and starts a new
//!    tiny_http server on a duplicate of the same listening socket; the old one is kept for a
//!    few timeouts so that requests already read on its connections are still answered.
//! 2. **A body deadline.** A worker reads the body in chunks and gives up with 408 once the whole
//!    body has taken longer than the same timeout, so a byte-at-a-time body holds a worker for at
//!    most about twice `io_timeout_ms`, never `max_body_bytes` times it.
//! 3. **Head limits and strict framing**, in the fork (`tiny_http::Limits`): a request line over
//!    8 KiB is answered 414, header lines over 16 KiB 431, ambiguous framing 400 or 501, a head
//!    not whole within the io timeout of its first byte 408, each closing the connection.
//!
//! What remains: the body is read by a worker, so a slow body holds one for up to the body
//! deadline. Production deployments put wafer behind a reverse proxy (README, "Running in
//! production"), which buffers bodies; the limits here make a directly exposed wafer degrade
//! gracefully rather than stall.

use super::Reply;
use socket2::{Domain, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// tiny_http on a listening socket with timeouts, restarted if its accept thread ever stops.
pub struct Front {
    /// A duplicate of the socket handed to tiny_http, for restarts.
    listener: std::net::TcpListener,
    addr: SocketAddr,
    io_timeout: Duration,
    /// How long a replaced server is still drained.
    retire_after: Duration,
    servers: Mutex<Servers>,
}

struct Servers {
    current: Arc<tiny_http::Server>,
    /// Replaced servers whose open connections may still deliver requests, and since when.
    retired: Vec<(Arc<tiny_http::Server>, Instant)>,
}

impl Front {
    /// Bind `addr` with the socket timeouts set, and start tiny_http on it.
    pub fn bind(addr: SocketAddr, io_timeout: Duration) -> std::io::Result<Front> {
        let listener = timed_listener(addr, io_timeout)?;
        let addr = listener.local_addr()?;
        let current = Arc::new(start_tiny_http(&listener, io_timeout)?);
        Ok(Front {
            listener,
            addr,
            io_timeout,
            retire_after: io_timeout * 3,
            servers: Mutex::new(Servers {
                current,
                retired: Vec::new(),
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request, waiting up to `wait`: first anything a retired server still holds,
    /// then the current server.
    pub fn recv(&self, wait: Duration) -> Option<tiny_http::Request> {
        let (current, any_retired) = {
            let s = self.lock();
            (s.current.clone(), !s.retired.is_empty())
        };
        if any_retired {
            if let Some(rq) = self.try_recv_retired() {
                return Some(rq);
            }
        }
        match current.recv_timeout(wait) {
            Ok(rq) => rq,
            Err(e) => {
                self.restart(&current, &e);
                None
            }
        }
    }

    /// A request already waiting anywhere, without blocking (for the drain at shutdown).
    pub fn try_recv(&self) -> Option<tiny_http::Request> {
        let current = self.lock().current.clone();
        match current.try_recv() {
            Ok(Some(rq)) => Some(rq),
            _ => self.try_recv_retired(),
        }
    }

    fn try_recv_retired(&self) -> Option<tiny_http::Request> {
        let retired: Vec<_> = self.lock().retired.iter().map(|(s, _)| s.clone()).collect();
        retired.iter().find_map(|s| s.try_recv().ok().flatten())
    }

    /// Replace a server whose accept thread has stopped (once, whichever worker sees it).
    fn restart(&self, dead: &Arc<tiny_http::Server>, e: &std::io::Error) {
        let mut s = self.lock();
        let retire_after = self.retire_after;
        s.retired
            .retain(|(_, since)| since.elapsed() < retire_after);
        if !Arc::ptr_eq(&s.current, dead) {
            return;
        }
        eprintln!("wafer: the accept loop stopped ({e}); starting a new one");
        match start_tiny_http(&self.listener, self.io_timeout) {
            Ok(new) => {
                let old = std::mem::replace(&mut s.current, Arc::new(new));
                s.retired.push((old, Instant::now()));
            }
            Err(e) => {
                eprintln!("wafer: could not restart the accept loop: {e}");
                drop(s);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Servers> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// tiny_http with CONTRACT §8's head limits (its defaults: a request line over 8 KiB → 414,
/// header lines over 16 KiB → 431) and the io timeout on every connection.
fn start_tiny_http(
    listener: &std::net::TcpListener,
    io_timeout: Duration,
) -> std::io::Result<tiny_http::Server> {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(io_timeout);
    tiny_http::Server::from_listener_with_limits(listener.try_clone()?, None, limits)
        .map_err(std::io::Error::other)
}

/// A listening socket whose accepted connections inherit `io_timeout` on reads and writes.
fn timed_listener(
    addr: SocketAddr,
    io_timeout: Duration,
) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_read_timeout(Some(io_timeout))?;
    socket.set_write_timeout(Some(io_timeout))?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Start the keeper: a loopback connection to `addr` every quarter of `io_timeout`, so that
/// tiny_http's accept (which inherits the timeout) always has something to accept in time.
pub fn spawn_keeper(
    addr: SocketAddr,
    io_timeout: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let every = io_timeout / 4;
    std::thread::Builder::new()
        .name("accept-keeper".into())
        .spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    // The connection is closed unused; tiny_http reads EOF and drops it.
                    let _ = TcpStream::connect_timeout(&target, every);
                    next = Instant::now() + every;
                }
                std::thread::sleep(every.min(Duration::from_millis(50)));
            }
        })
}

/// The same reply, asking the client to close the connection.
pub fn closing(mut r: Reply) -> Reply {
    r.headers.push(("Connection", "close".into()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The design rests on accepted sockets inheriting the listener's timeouts: check it here.
    #[test]
    fn accepted_sockets_inherit_the_timeouts() {
        let t = Duration::from_millis(300);
        let l = timed_listener("127.0.0.1:0".parse().unwrap(), t).unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (mut accepted, _) = l.accept().unwrap();
        assert_eq!(accepted.read_timeout().unwrap(), Some(t));
        assert_eq!(accepted.write_timeout().unwrap(), Some(t));
        // And the kernel really applies it: a read with nothing sent times out.
        let started = std::time::Instant::now();
        let mut buf = [0u8; 1];
        let e = accepted.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
        client.write_all(b"x").unwrap();
        assert_eq!(accepted.read(&mut buf).unwrap(), 1);
    }

    /// Why the keeper exists: without a connection, accept itself times out.
    #[test]
    fn accept_obeys_the_timeout_too() {
        let l = timed_listener("127.0.0.1:0".parse().unwrap(), Duration::from_millis(100)).unwrap();
        let e = l.accept().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e:?}");
    }

    /// With the keeper running, tiny_http keeps accepting long after several timeouts.
    #[test]
    fn server_outlives_idle_periods() {
        let t = Duration::from_millis(200);
        let stop = Arc::new(AtomicBool::new(false));
        let front = Front::bind("127.0.0.1:0".parse().unwrap(), t).unwrap();
        let keeper = spawn_keeper(front.addr(), t, stop.clone()).unwrap();
        std::thread::sleep(t * 5);
        assert_eq!(get(&front, "/x").as_deref(), Some("/x"));
        stop.store(true, Ordering::SeqCst);
        keeper.join().unwrap();
    }

    /// Without the keeper the accept thread stops; the front starts a new one.
    #[test]
    fn a_stopped_accept_loop_is_restarted() {
        let t = Duration::from_millis(100);
        let front = Front::bind("127.0.0.1:0".parse().unwrap(), t).unwrap();
        std::thread::sleep(t * 4);
        assert!(front.recv(Duration::from_millis(10)).is_none());
        assert_eq!(get(&front, "/after").as_deref(), Some("/after"));
    }

    /// Send a GET and receive it through the front.
    fn get(front: &Front, path: &str) -> Option<String> {
        let mut c = TcpStream::connect(front.addr()).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Some(rq) = front.recv(Duration::from_millis(50)) {
                return Some(rq.url().to_string());
            }
        }
        None
    }
}
