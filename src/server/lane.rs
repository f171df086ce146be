//! The upstream lane: requests that may wait on someone else (WeChat for a login, a business
//! endpoint for a forwarded callback, WeChat again for the component's authorisation) are
//! answered on threads of their own, so that however many of them wait, the workers stay free
//! for session checks and token reads.
//!
//! Before the lane, a login held its worker for WeChat's whole round trip (up to
//! `wechat.timeout_ms`), and a callback for its forward target (up to 3 s): as many slow logins
//! as workers, and every session check queued behind them.
//!
//! How: a worker reads the request and its body as always; if [`waits_upstream`] says the
//! request may wait on an upstream, the worker offers it to the lane (a bounded queue,
//! `try_send`) and takes the next request. A lane thread answers it with the same
//! `server::answer` a worker uses, on its own database connection (a small page cache: a login
//! touches a few pages). When the queue is full, the worker answers the request itself, exactly
//! as without a lane, so the lane can only take waiting off the workers, never add a failure.
//!
//! Which requests: logins in every dialect (`qcloud.cam.id_skey`, `POST /v1/sessions`,
//! `POST /mina/login`) and every `/wechat/` route, by [`waits_upstream`] before routing. Token
//! and ticket reads are answered on the workers while the credential is usable from memory (the
//! refresher keeps it so); when it is not, the broker answers the worker `Error::Deferred`
//! instead of fetching or waiting (`credential::defer_waits_on_this_thread`), and
//! `server::answer` hands the request over with [`Lane::hand_over`], where it is routed again from
//! the start (nothing a handler does before asking the broker is a write). The test is a hint,
//! not a contract: a request sent the wrong way is still answered right, only on the other kind
//! of thread.

use super::{answer, Method, Reply, Shared, Worker};
use crate::metrics::Metrics;
use crate::store::Db;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Lane threads per worker: a waiting login costs a thread a small stack and nothing else.
pub const THREADS_PER_WORKER: usize = 4;
/// At most this many lane threads however many workers (each holds a database connection and
/// two file descriptors; `server.workers` may be up to 1024).
pub const MAX_THREADS: usize = 64;
/// Requests that may wait in the lane's queue per lane thread before workers answer them.
const QUEUE_PER_THREAD: usize = 4;
/// A lane connection's page cache, KiB (a worker's is SQLite's default, 2 MiB).
const LANE_CACHE_KIB: i64 = 256;

/// A request read whole (or its ready refusal), with what the log line needs.
pub struct Job {
    pub rq: tiny_http::Request,
    pub method: Method,
    pub path: String,
    pub body: Result<Vec<u8>, Reply>,
    pub started: Instant,
}

/// A worker's handle on the lane.
#[derive(Clone)]
pub struct Lane {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Lane {
    /// Take `job` if it may wait on an upstream and the lane has room; otherwise give it back
    /// for the worker to answer.
    pub fn offer(&self, job: Job) -> Option<Job> {
        match &job.body {
            Ok(body) if waits_upstream(job.method, &job.path, body) => {}
            _ => return Some(job),
        }
        self.hand_over(job)
    }
}

impl Lane {
    /// Take `job` whatever it is (a handler found it must wait on WeChat: `Error::Deferred`) if
    /// the lane has room; otherwise give it back.
    pub fn hand_over(&self, job: Job) -> Option<Job> {
        match self.tx.try_send(job) {
            Ok(()) => None,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.metrics.lane_full();
                Some(job)
            }
        }
    }
}

/// May answering this request wait on WeChat or a forward target?
pub fn waits_upstream(method: Method, path: &str, body: &[u8]) -> bool {
    match (method, path) {
        // A plain search picks the lane for what SDKs send; only a body with `\u` escapes (which
        // could spell the name another way) pays for parsing the envelope here.
        (Method::Post, "/mina_auth/" | "/mina_auth" | "/") => {
            contains(body, b"\"qcloud.cam.id_skey\"")
                || (contains(body, b"\\u")
                    && super::parse_envelope(body).is_ok_and(|(n, _)| n == "qcloud.cam.id_skey"))
        }
        (Method::Post, "/v1/sessions" | "/mina/login") => true,
        _ => path.starts_with("/wechat/"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Start `threads` lane threads, each with its own database connection. The threads end once
/// every [`Lane`] handle is dropped and the queue is empty.
pub fn spawn(
    threads: usize,
    shared: &Arc<Shared>,
    db_path: &Path,
) -> Result<(Lane, Vec<JoinHandle<()>>), String> {
    let (tx, rx) = sync_channel::<Job>(threads * QUEUE_PER_THREAD);
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let db = Db::open(db_path).map_err(|e| format!("database {}: {e}", db_path.display()))?;
        let _ = db.no_autocheckpoint(); // the refresher thread checkpoints
        let _ = db.set_cache_kib(LANE_CACHE_KIB);
        let mut worker = Worker {
            db,
            shared: shared.clone(),
            lane: None,
        };
        let rx = rx.clone();
        let t = std::thread::Builder::new()
            .name(format!("lane-{i}"))
            .spawn(move || run(&mut worker, &rx))
            .map_err(|e| format!("spawning a lane thread: {e}"))?;
        handles.push(t);
    }
    let metrics = shared.metrics.clone();
    Ok((Lane { tx, metrics }, handles))
}

fn run(worker: &mut Worker, rx: &Mutex<Receiver<Job>>) {
    loop {
        // One thread waits inside the lock, the others for it: whoever holds it takes the next.
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Ok(job) => answer(worker, job),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A real request, read by a real tiny_http server on loopback.
    fn request(server: &tiny_http::Server, path: &str) -> Job {
        let mut c = std::net::TcpStream::connect(server.server_addr().to_ip().unwrap()).unwrap();
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{{}}"
        )
        .unwrap();
        let rq = server.recv().unwrap();
        Job {
            rq,
            method: Method::Post,
            path: path.to_string(),
            body: Ok(b"{}".to_vec()),
            started: Instant::now(),
        }
    }

    #[test]
    fn a_full_lane_gives_requests_back_and_counts_them() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = sync_channel(1);
        let lane = Lane {
            tx,
            metrics: metrics.clone(),
        };
        // Not a login: given back at once, not counted.
        assert!(lane.offer(request(&server, "/v1/sessions/check")).is_some());
        // A login: taken while there is room, then given back (and counted).
        assert!(lane.offer(request(&server, "/v1/sessions")).is_none());
        assert!(lane.offer(request(&server, "/v1/sessions")).is_some());
        assert!(lane
            .hand_over(request(&server, "/v1/apps/wx1/access_token"))
            .is_some());
        assert!(metrics.render(None).contains("wafer_lane_full_total 2\n"));
        // With the lane gone, everything comes back.
        drop(rx);
        assert!(lane.offer(request(&server, "/mina/login")).is_some());
    }

    #[test]
    fn logins_and_callbacks_take_the_lane_checks_and_tokens_do_not() {
        let env = |name: &str| {
            format!(
                r#"{{"version":1,"componentName":"MA","interface":{{"interfaceName":"{name}","para":{{}}}}}}"#
            )
        };
        let lane = |m, p: &str, b: &str| waits_upstream(m, p, b.as_bytes());
        assert!(lane(
            Method::Post,
            "/mina_auth/",
            &env("qcloud.cam.id_skey")
        ));
        assert!(lane(Method::Post, "/", &env("qcloud.cam.id_skey")));
        assert!(!lane(Method::Post, "/mina_auth/", &env("qcloud.cam.auth")));
        assert!(!lane(
            Method::Post,
            "/mina_auth/",
            &env("qcloud.mimi.access_token")
        ));
        assert!(lane(Method::Post, "/v1/sessions", "{}"));
        assert!(!lane(Method::Post, "/v1/sessions/check", "{}"));
        assert!(!lane(Method::Get, "/v1/apps/wx1/access_token", ""));
        assert!(lane(Method::Post, "/mina/login", "code=a&app_id=1"));
        assert!(!lane(Method::Post, "/mina/auth", "uuid=a&skey=b&app_id=1"));
        assert!(lane(Method::Post, "/wechat/mp/wx1", "<xml/>"));
        assert!(lane(Method::Get, "/wechat/component/wx1/authorize", ""));
        assert!(!lane(Method::Get, "/healthz", ""));
        assert!(!contains(b"", b"\"x\""));
        // The name spelled with an escape is still a login (found in review).
        assert!(lane(
            Method::Post,
            "/mina_auth/",
            &env("qcloud.cam.id\\u005fskey")
        ));
        assert!(!lane(
            Method::Post,
            "/mina_auth/",
            &env("qcloud.cam.\\u0061uth")
        ));
    }
}
