//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;
pub use util::AnswersInFlight;

mod client;
mod common;
mod connection;
mod request;
mod response;
mod ssl;
mod test;
mod util;

#[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
type SslContext = ();
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
type SslContext = crate::ssl::SslContextImpl;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // wafer's fix: answers the connections still have to write
    answers: util::AnswersInFlight,
}

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// Bounds on what one client may make the server hold or wait for (wafer's fix: upstream had
/// none). `Limits::default()` caps request heads and sets no timeout.
///
/// ```
/// let mut limits = tiny_http::Limits::default();
/// limits.io_timeout = Some(std::time::Duration::from_secs(10));
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let server = tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The longest request line (method, target and version, without the CRLF); a longer one
    /// is answered `414 URI Too Long` and the connection closed. Default 8 KiB.
    pub max_request_line: usize,
    /// The most bytes of header lines (CRLFs included) in one request; more is answered
    /// `431 Request Header Fields Too Large` and the connection closed. Default 16 KiB.
    pub max_header_bytes: usize,
    /// When set: every read and write on a client's socket fails after this long without
    /// progress; a connection idle this long between requests is closed without an answer;
    /// a request head must arrive whole within this long of its first byte, else
    /// `408 Request Timeout` and the connection closed. Default `None` (no timeout).
    pub io_timeout: Option<std::time::Duration>,
    /// When set: the connection's own thread reads each request's body whole, before `recv()`
    /// hands the request out: at most this many bytes (a larger body is answered
    /// `413 Payload Too Large`, unread when its `Content-Length` says so) and, with
    /// `io_timeout`, within that long of the head's end (else `408`), both closing the
    /// connection. `Expect: 100-continue` is answered by that thread. The request's reader is
    /// then the body in memory, and its answer is written to memory and, on `flush` (or when
    /// the request is answered), to the client's socket, as much as it takes without waiting;
    /// the rest, if any, by a thread of its own (`max_answers_behind`): whoever takes requests
    /// from `recv()` never waits on a client. One request per connection is in flight (the next
    /// one is handed out once the previous answer is written), and `Request::upgrade` is not
    /// supported. Default `None` (bodies are read from the socket by whoever reads the
    /// request, as upstream).
    pub max_buffered_body: Option<usize>,
    /// With `max_buffered_body`: decides each request's own limit from its method and target
    /// (path and query, as sent) instead, so that a few routes may take larger bodies than the
    /// rest. Default `None` (every request gets `max_buffered_body`).
    pub body_limit: Option<BodyLimit>,
    /// With `max_buffered_body`: the most bytes of bodies that all connections together hold at
    /// once, read or being read. A body's bytes are taken before it is read (its
    /// `Content-Length`; a chunked body's chunks as they arrive) and given back when its request
    /// is answered or dropped. A request whose body would go past the budget is answered
    /// `503 Service Unavailable` with `Retry-After: 1` and the connection closed, its body
    /// unread (a chunked one from the chunk that would go past). Without it, N connections may
    /// make the server hold N bodies of the largest limit at once. Default `None` (no budget).
    pub body_budget: Option<usize>,
    /// With `body_budget`: the most of it held by bodies whose limit is over
    /// `max_buffered_body` (larger limits `body_limit` grants), so that they cannot take the
    /// room of the ordinary bodies. Default `None` (they may take all of it).
    pub large_body_budget: Option<usize>,
    /// Called with the status of every refusal a connection's thread answers itself (400, 408,
    /// 413, 414, 417, 431, 501, 505, 503), just before it writes it: these requests never reach
    /// `recv()`, so this is how the application can count or log them. Default `None`.
    pub on_refusal: Option<OnRefusal>,
    /// With `max_buffered_body`: the most threads at once writing the rest of an answer the
    /// client's socket would not take at once (a large answer, a client that does not read);
    /// past it, such a connection is cut. Default 256.
    pub max_answers_behind: usize,
    /// With `max_buffered_body` and `io_timeout`: the least rate, in bytes per second, at which
    /// a client must take an answer written behind: the rest of an answer has the io timeout
    /// plus its size at this rate, past which the connection is cut, however little each write
    /// moves (each write also waits at most the io timeout). Default 32 KiB/s.
    pub min_answer_rate: usize,
}

/// What to do about a refusal (wafer's fix, `Limits::on_refusal`): a function of its status,
/// called on the connection's thread, which it should not hold up.
#[derive(Clone)]
pub struct OnRefusal(Arc<dyn Fn(u16) + Send + Sync>);

impl OnRefusal {
    pub fn new(f: impl Fn(u16) + Send + Sync + 'static) -> OnRefusal {
        OnRefusal(Arc::new(f))
    }

    pub(crate) fn call(&self, status: u16) {
        (self.0)(status)
    }
}

impl std::fmt::Debug for OnRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRefusal(..)")
    }
}

/// The same callback is the same function.
impl PartialEq for OnRefusal {
    fn eq(&self, other: &OnRefusal) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OnRefusal {}

/// A per-request body limit (wafer's fix, `Limits::body_limit`): a function of the request's
/// method and target (path and query, as sent), called once per request with a body, on the
/// connection's thread, before any of the body is read.
#[derive(Clone)]
pub struct BodyLimit(Arc<DecideLimit>);

type DecideLimit = dyn Fn(&Method, &str) -> usize + Send + Sync;

impl BodyLimit {
    pub fn new(decide: impl Fn(&Method, &str) -> usize + Send + Sync + 'static) -> BodyLimit {
        BodyLimit(Arc::new(decide))
    }

    fn limit(&self, method: &Method, target: &str) -> usize {
        (self.0)(method, target)
    }
}

impl std::fmt::Debug for BodyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyLimit(..)")
    }
}

/// The same limit is the same function.
impl PartialEq for BodyLimit {
    fn eq(&self, other: &BodyLimit) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for BodyLimit {}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_line: 8 * 1024,
            max_header_bytes: 16 * 1024,
            io_timeout: None,
            max_buffered_body: None,
            body_limit: None,
            body_budget: None,
            large_body_budget: None,
            on_refusal: None,
            max_answers_behind: 256,
            min_answer_rate: 32 * 1024,
        }
    }
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with_limits(listener, ssl_config, Limits::default())
    }

    /// `from_listener`, with the bounds on clients given (wafer's fix).
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let inside_messages = messages.clone();
        let answers = util::AnswersInFlight::default();
        let inside_answers = answers.clone();
        // wafer's fix: one budget of buffered body bytes for all the server's connections.
        let budget = match (limits.max_buffered_body, limits.body_budget) {
            (Some(_), Some(total)) => {
                util::BodyBudget::new(total, limits.large_body_budget.unwrap_or(total))
            }
            _ => util::BodyBudget::default(),
        };
        // wafer's fix: a thread that cannot be started is an error here, not a panic.
        thread::Builder::new()
            .name("tiny-http-accept".into())
            .spawn(move || {
                accept_loop(
                    server,
                    ssl,
                    limits,
                    inside_close_trigger,
                    inside_messages,
                    inside_answers,
                    budget,
                )
            })?;

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
            answers,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// The count of answers not yet written to their clients (wafer's fix, with
    /// `Limits::max_buffered_body`, where the rest of an answer the socket did not take at once
    /// is written after `respond` returns). Before exiting, drop the server (requests nobody took are then
    /// answered `500`) and wait on this for the answers to reach their clients.
    pub fn answers_in_flight(&self) -> util::AnswersInFlight {
        self.answers.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

/// The longest pause of the accept loop after an error (wafer's fix, see `accept_loop`).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Accepts connections and hands each to a thread of the pool until the server is dropped.
///
/// wafer's fix: upstream pushed the first accept error to `recv()` and ended the loop, and
/// panicked when the second handle on a new connection could not be made. Out of descriptors
/// (`EMFILE`, `ENFILE`), out of memory, or anything else, the server then never accepted again.
/// Now every error is followed by a pause (doubling from 1 ms up to `ACCEPT_BACKOFF_MAX`, so a
/// loop that cannot accept does not spin) and another try; a connection that cannot be set up
/// is closed, and so is one for which no thread can be started (`TaskPool::spawn`).
fn accept_loop(
    server: Listener,
    ssl: Option<SslContext>,
    limits: Limits,
    close: Arc<AtomicBool>,
    messages: Arc<MessagesQueue<Message>>,
    answers: util::AnswersInFlight,
    budget: util::BodyBudget,
) {
    // a tasks pool is used to dispatch the connections into threads
    let tasks_pool = util::TaskPool::new();
    let mut backoff = Duration::ZERO;

    log::debug!("Running accept thread");
    while !close.load(Relaxed) {
        let new_client = server
            .accept()
            .and_then(|(sock, _)| {
                use util::RefinedTcpStream;
                match ssl {
                    None => RefinedTcpStream::new(sock).map(Some),
                    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                    Some(ref ssl) => match ssl.accept(sock) {
                        // trying to apply SSL over the connection
                        // if an error occurs, we just close the socket and resume listening
                        Ok(sock) => RefinedTcpStream::new(sock).map(Some),
                        Err(_) => Ok(None),
                    },
                    #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                    // `from_listener` refuses an SSL config without the features.
                    Some(ref _ssl) => Ok(None),
                }
            })
            .map(|streams| {
                streams.map(|(read_closable, write_closable)| {
                    ClientConnection::new(
                        write_closable,
                        read_closable,
                        limits.clone(),
                        answers.clone(),
                        budget.clone(),
                    )
                })
            });

        let client = match new_client {
            Ok(Some(client)) => client,
            Ok(None) => continue,
            Err(e) => {
                log::error!("Error accepting new client: {}", e);
                backoff = (backoff * 2).clamp(Duration::from_millis(1), ACCEPT_BACKOFF_MAX);
                thread::sleep(backoff);
                continue;
            }
        };
        backoff = Duration::ZERO;

        let messages = messages.clone();
        let close = close.clone();
        let mut client = Some(client);
        tasks_pool.spawn(Box::new(move || {
            if let Some(client) = client.take() {
                // Synchronization is needed for HTTPS requests to avoid a deadlock
                if client.secure() {
                    let (sender, receiver) = mpsc::channel();
                    for rq in client {
                        messages.push(rq.with_notify_sender(sender.clone()).into());
                        if receiver.recv().is_err() {
                            break;
                        }
                    }
                } else {
                    for rq in client {
                        // wafer's fix: once the server is gone nobody takes requests; end the
                        // connection rather than queue one for ever.
                        if close.load(Relaxed) {
                            break;
                        }
                        messages.push(rq.into());
                        // wafer's fix: the server may have gone between the check and the push,
                        // after it dropped the requests left in the queue; nobody takes this one
                        // now, and this thread would wait for its answer for ever. Whoever pushes
                        // after that drop sees `close` (the queue's lock orders the two).
                        if close.load(Relaxed) {
                            while messages.try_pop().is_some() {}
                            break;
                        }
                    }
                }
            }
        }));
    }
    log::debug!("Terminating accept thread");
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // wafer's fix: requests nobody will take now are dropped, so answered `500` (upstream
        // left them in the queue, which the connection threads keep alive).
        while self.messages.try_pop().is_some() {}
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
