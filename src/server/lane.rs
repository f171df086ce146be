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
//! touches a few pages). The lane's threads and its queue are the upstream pool's bound: when the
//! queue is full, the worker answers the request at once without waiting on anyone (`server::
//! refuse`: 1005 in the envelope, 503 `busy` with `Retry-After: 1` on `/v1` and for callbacks,
//! `WEIXIN_NET_ERR` on `/mina`). A worker never runs a request that waits on an upstream: a
//! burst of slow logins costs its surplus a quick refusal, not every session check its worker.
//!
//! Two ways in. Before routing, by path ([`waits_upstream`]): every `/wechat/` route, and the
//! `/v1` and `/mina` logins. During routing, by deferral: whatever would wait on WeChat on a
//! worker (a login's `jscode2session`, a credential not usable from memory, whose fetch or
//! another caller's the broker would wait for) calls `error::may_wait` first, which answers the
//! worker `Error::Deferred` (`wechat.rs` asks it again before every call, so a forgotten path
//! is deferred too); `server::answer` then hands the request over with [`Lane::hand_over`], and
//! the lane routes it again from the start (so nothing a handler does before `may_wait` is a
//! write). The Wafer envelope's login is found this way rather than by
//! searching every envelope's body, which would cost each `qcloud.cam.auth` a scan. Either way
//! is a matter of where, not what: a request sent the wrong way is still answered right.

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

/// What became of a request offered to the lane.
pub enum Offer {
    /// The lane has it.
    Taken,
    /// Not for the lane (by path): the worker routes it (where it may still be deferred).
    Declined(Job),
    /// For the lane, which is full: the worker must answer it without waiting (busy).
    Full(Job),
}

impl Lane {
    /// Take `job` if [`waits_upstream`] says so and the lane has room.
    pub fn offer(&self, job: Job) -> Offer {
        if job.body.is_err() || !waits_upstream(job.method, &job.path) {
            return Offer::Declined(job);
        }
        match self.hand_over(job) {
            None => Offer::Taken,
            Some(job) => Offer::Full(job),
        }
    }

    /// Take `job` whatever it is (a handler found it must wait on WeChat: `Error::Deferred`) if
    /// the lane has room (`None`); otherwise give it back, counted, for the worker to refuse.
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

/// Is this a request to hand to the lane before routing? (Others may still be deferred.)
pub fn waits_upstream(method: Method, path: &str) -> bool {
    matches!(
        (method, path),
        (Method::Post, "/v1/sessions" | "/mina/login")
    ) || path.starts_with("/wechat/")
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
        let db = Db::open_with(db_path, shared.sealer.clone())
            .map_err(|e| format!("database {}: {e}", db_path.display()))?;
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
        // Not a login: declined at once, not counted.
        let offer = lane.offer(request(&server, "/v1/sessions/check"));
        assert!(matches!(offer, Offer::Declined(_)));
        // A login: taken while there is room, then given back as full (and counted).
        assert!(matches!(
            lane.offer(request(&server, "/v1/sessions")),
            Offer::Taken
        ));
        assert!(matches!(
            lane.offer(request(&server, "/v1/sessions")),
            Offer::Full(_)
        ));
        assert!(lane
            .hand_over(request(&server, "/v1/apps/wx1/access_token"))
            .is_some());
        assert!(metrics.render(None).contains("wafer_lane_full_total 2\n"));
        // With the lane gone, nothing is taken.
        drop(rx);
        assert!(matches!(
            lane.offer(request(&server, "/mina/login")),
            Offer::Full(_)
        ));
    }

    #[test]
    fn callbacks_and_path_logins_take_the_lane_before_routing() {
        assert!(waits_upstream(Method::Post, "/v1/sessions"));
        assert!(waits_upstream(Method::Post, "/mina/login"));
        assert!(waits_upstream(Method::Post, "/wechat/mp/wx1"));
        assert!(waits_upstream(
            Method::Get,
            "/wechat/component/wx1/authorize"
        ));
        assert!(!waits_upstream(Method::Post, "/v1/sessions/check"));
        assert!(!waits_upstream(Method::Get, "/v1/apps/wx1/access_token"));
        assert!(!waits_upstream(Method::Post, "/mina/auth"));
        assert!(!waits_upstream(Method::Get, "/healthz"));
        // Envelopes are not read here (every qcloud.cam.auth would pay for it): an envelope
        // login is deferred by `error::may_wait` (tests/it/robustness.rs).
        assert!(!waits_upstream(Method::Post, "/mina_auth/"));
    }
}
