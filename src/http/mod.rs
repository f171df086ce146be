//! The HTTP server: the only module that touches tiny_http. One tiny_http server shared by N
//! worker threads, each with its own SQLite connection, each looping on `recv`. A request is
//! read once into an `api::Incoming` (its body taken out of tiny_http's request, bounded by
//! `server.max_body_bytes` and counted in the body budget until the answer), routed once by
//! the route table (`routes`), and answered with an `api::Reply`, on the worker or, when it may
//! wait on WeChat, on the upstream pool (`upstream`). A panic in a handler becomes a 500 and the
//! thread goes on. Shutdown stops taking new work, finishes what is in hand, and joins.
//!
//! It must not know any dialect's fields or hold domain logic: the handlers in `api` parse and
//! render, `core` decides. Nothing but `cli` (and tests) uses it.

mod listen;
mod purge;
mod routes;
mod slides;
mod upstream;

use crate::api::{
    guard, v1, Context, Headers, Incoming, Method, Outcome, Params, Reply, Shared, Wait,
    KNOWN_APP_TTL,
};
use crate::config::Config;
use crate::core::credential::Broker;
use crate::metrics::Metrics;
use crate::store::{Db, Target};
use crate::wechat::WeChat;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running server.
pub struct Handle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// The upstream pool (`upstream`): closed after the workers, once its requests are answered.
    upstream: upstream::Upstream<upstream::Job>,
    refresher: Option<JoinHandle<()>>,
    /// The session purger (`purge`) and the accounts watch (`accounts::spawn_watch`).
    background: Vec<JoinHandle<()>>,
    /// The session slides recorded to be written behind, and their flusher (`slides`; SQLite).
    slides: Arc<crate::store::Slides>,
    flusher: Option<JoinHandle<()>>,
    /// Answers given but not yet written to their clients (the rest of a large one, by a
    /// thread of tiny_http's).
    answers: tiny_http::AnswersInFlight,
    io_timeout: Duration,
    pub shared: Arc<Shared>,
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop taking requests, let every worker finish the one in hand and drain the queue, join.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.upstream.close();
        // Every check is answered: the flusher writes the slides still pending, and ends.
        self.slides.close();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        // The server is gone with the last worker; tiny_http's threads still write the rest of
        // the answers given (each write bounded by the io timeout).
        self.answers.wait(self.io_timeout);
        if let Some(r) = self.refresher.take() {
            let _ = r.join();
        }
        for b in self.background.drain(..) {
            let _ = b.join();
        }
    }
}

/// Open the database, apply the apps, WeCom agents and components declared in config, bind, and
/// start the workers.
pub fn start(config: Config, dev: bool) -> Result<Handle, String> {
    crate::logging::init();
    config.check_listen_needs_key().map_err(|e| e.to_string())?;
    let target = Target::from_config(&config.storage)?;
    let sealer = crate::seal::Sealer::from_config(&config.storage)?;
    // Every connection this process opens: the start-up one, the background threads', the workers'.
    let open =
        || Db::open_with(&target, sealer.clone()).map_err(|e| format!("database {target}: {e}"));
    let db = open()?;
    if let Some(s) = &sealer {
        let n = db
            .seal_existing()
            .map_err(|e| format!("database {target}: {e}"))?;
        log::info!(
            "wafer: secrets are sealed at rest with key id {}{}",
            s.current_id(),
            if n > 0 {
                format!(" ({n} value(s) sealed now)")
            } else {
                String::new()
            }
        );
    }
    let metrics = Arc::new(Metrics::default());
    let m = metrics.clone();
    let wechat = WeChat::new(&config.wechat).with_observer(move |rec| {
        crate::wechat::log_call(rec);
        let code = match rec.outcome {
            Ok(_) => 0,
            Err(e) => e.errcode().map_or(-2, |c| c.0),
        };
        m.upstream(rec.path, code);
    });
    let wechat = Arc::new(wechat);
    let broker = Arc::new(Broker::new(wechat.clone(), metrics.clone(), &config.wechat));
    crate::core::accounts::apply_config(&db, &broker, &config, crate::ids::now())?;
    let apps = db.list_apps().map_err(|e| format!("database: {e}"))?.len();
    drop(db);

    let listen_addr: SocketAddr = config
        .server
        .listen
        .parse()
        .map_err(|_| format!("server.listen {}: not HOST:PORT", config.server.listen))?;
    let io_timeout = Duration::from_millis(config.server.io_timeout_ms);
    let server = listen::bind(
        listen_addr,
        &config.server,
        &config.gateway,
        metrics.clone(),
    )
    .map_err(|e| format!("server.listen {}: {e}", config.server.listen))?;
    let addr = listen::local_addr(&server)
        .map_err(|e| format!("server.listen {}: {e}", config.server.listen))?;
    let answers = server.answers_in_flight();
    let server = Arc::new(server);
    let workers_n = config.server.workers;
    let gateway = crate::core::gateway::Gateway::new(&config.gateway, metrics.clone());
    let shared = Arc::new(Shared {
        config,
        wechat,
        broker: broker.clone(),
        metrics,
        known_apps: crate::core::session::KnownApps::new(KNOWN_APP_TTL),
        dev,
        db: target.clone(),
        sealer: sealer.clone(),
        gateway,
        health: crate::store::HealthProbe::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let refresher_db = open()?;
    let refresher = crate::core::credential::spawn_refresher(broker, refresher_db, stop.clone())
        .map_err(|e| format!("spawning the refresher: {e}"))?;
    // Changes to the accounts made by another process (the CLI): the broker reloads what it
    // holds, and the known apps are read again.
    let watch_db = open()?;
    let watching = shared.clone();
    let watch = crate::core::accounts::spawn_watch(
        watch_db,
        shared.broker.clone(),
        stop.clone(),
        move || watching.known_apps.clear(),
    )
    .map_err(|e| format!("spawning the accounts watch: {e}"))?;
    let purger_db = open()?;
    let purger = purge::spawn(purger_db, stop.clone(), purge::PURGE_EVERY)
        .map_err(|e| format!("spawning the purger: {e}"))?;
    let upstream_bound = (workers_n * upstream::IN_FLIGHT_PER_WORKER).min(upstream::MAX_IN_FLIGHT);
    // Session slides are written behind, together (SQLite; on MySQL at once): every handle of
    // this server records into `slides`, the flusher writes them.
    let slides = Arc::new(crate::store::Slides::default());
    let flusher = match &target {
        Target::Mysql(_) => None,
        Target::File(_) => {
            let mut db = open()?;
            db.share_slides(&slides);
            // The refresher thread checkpoints. A flush waits for its turn and the lock about
            // as long as it takes for the next one to be due; what it could not write is
            // written then.
            let _ = db.no_autocheckpoint();
            db.wait_for_writes(crate::store::SLIDES_FLUSH_EVERY)
                .map_err(|e| format!("database {target}: {e}"))?;
            let spawned = slides::spawn(db, slides.clone());
            Some(spawned.map_err(|e| format!("spawning the slide flusher: {e}"))?)
        }
    };
    let mut pool_db = crate::store::DbPool::open(
        &target,
        sealer.clone(),
        upstream_bound.min(upstream::MAX_KEPT_CONNECTIONS),
        upstream::CACHE_KIB,
    )
    .map_err(|e| format!("database {target}: {e}"))?;
    pool_db.share_slides(&slides);
    let pool_shared = shared.clone();
    let upstream = upstream::Upstream::new(
        upstream_bound,
        upstream::IDLE_EXIT,
        move |job: upstream::Job, slot: upstream::Slot| {
            let mut w = Context {
                db: pool_db.db(),
                shared: pool_shared.clone(),
            };
            answer_upstream(&mut w, job, slot);
        },
    );
    let mut workers = Vec::with_capacity(workers_n);
    for i in 0..workers_n {
        let mut db = open()?;
        db.share_slides(&slides);
        let _ = db.no_autocheckpoint(); // the refresher thread checkpoints
        db.wait_for_writes(WORKER_WRITE_WAIT)
            .map_err(|e| format!("database {target}: {e}"))?;
        let mut worker = Context {
            db,
            shared: shared.clone(),
        };
        let (server, stop, upstream) = (server.clone(), stop.clone(), upstream.clone());
        // The name tells `wechat` that this thread never waits on an upstream.
        let t = std::thread::Builder::new()
            .name(format!("{}{i}", crate::wechat::WORKER_THREAD_PREFIX))
            .spawn(move || worker_loop(&mut worker, &upstream, &server, &stop))
            .map_err(|e| format!("spawning worker: {e}"))?;
        workers.push(t);
    }
    log::info!(
        "wafer listening on http://{addr} (database {target}, {apps} app(s), {workers_n} workers, up to {upstream_bound} upstream threads{})",
        if dev { ", dev mode" } else { "" }
    );
    Ok(Handle {
        addr,
        stop,
        workers,
        upstream,
        refresher: Some(refresher),
        background: vec![purger, watch],
        slides,
        flusher,
        answers,
        io_timeout,
        shared,
    })
}

fn worker_loop(
    worker: &mut Context,
    upstream: &upstream::Upstream<upstream::Job>,
    server: &tiny_http::Server,
    stop: &AtomicBool,
) {
    // A short receive timeout rather than `unblock()`: unblock tokens can be consumed by any
    // worker (including one draining), so counting them does not reliably wake every worker.
    // Request log lines are batched while requests are queued, and written before waiting.
    crate::logging::batch_this_thread();
    while !stop.load(Ordering::SeqCst) {
        // The fork's accept loop reports no errors here: it retries them itself.
        let next = match server.try_recv() {
            Ok(Some(rq)) => Some(rq),
            _ => {
                crate::logging::flush();
                server
                    .recv_timeout(Duration::from_millis(100))
                    .ok()
                    .flatten()
            }
        };
        if let Some(rq) = next {
            serve(worker, upstream, rq);
        }
    }
    // Drain what tiny_http already accepted, then leave.
    while let Ok(Some(rq)) = server.try_recv() {
        serve(worker, upstream, rq);
    }
    crate::logging::flush();
}

/// Read, route (once), answer, log, count, on a worker. A request whose route is answered by
/// the upstream pool, or whose handler answered [`Outcome::NeedsUpstream`], goes there; when the
/// pool is full it is answered busy at once, in its route's words. Never panics out: a handler
/// panic is answered with a 500.
fn serve(
    worker: &mut Context,
    upstream: &upstream::Upstream<upstream::Job>,
    mut rq: tiny_http::Request,
) {
    let started = Instant::now();
    let method = match rq.method() {
        tiny_http::Method::Get | tiny_http::Method::Head => Method::Get,
        tiny_http::Method::Post => Method::Post,
        _ => Method::Other,
    };
    // Owned: the log line needs the path after the request has been answered (and the upstream
    // pool needs it on another thread). The query is what follows it (after the '?').
    let path = rq
        .url()
        .split_once('?')
        .map_or(rq.url(), |(p, _)| p)
        .to_string();
    let body = take_body(&mut rq);
    let (route, params) = match route(worker, &rq, method, &path) {
        Ok(found) => found,
        Err((label, reply)) => {
            drop(body);
            return respond(&worker.shared, rq, label, reply, method, &path, started);
        }
    };
    let body = if route.pool == routes::Pool::Workers {
        let incoming = incoming(&rq, method, &path, body, params);
        match run_caught(route, worker, &incoming, Wait::Forbidden) {
            Outcome::Reply(reply) => {
                drop(incoming);
                return respond(
                    &worker.shared,
                    rq,
                    route.label,
                    reply,
                    method,
                    &path,
                    started,
                );
            }
            Outcome::NeedsUpstream => incoming.body,
        }
    } else {
        body
    };
    let job = upstream::Job {
        rq,
        method,
        path,
        body,
        started,
        route,
        params,
    };
    if let Some(job) = upstream.submit(job) {
        worker.shared.metrics.upstream_full();
        let upstream::Job {
            rq,
            path,
            body,
            route,
            ..
        } = job;
        drop(body);
        let reply = route.dialect.busy();
        respond(
            &worker.shared,
            rq,
            route.label,
            reply,
            method,
            &path,
            started,
        );
    }
}

/// The route for a request, or the answer when there is none (with its metrics label). Every
/// `/v1` path is behind [`guard`] first, known or not.
fn route(
    w: &Context,
    rq: &tiny_http::Request,
    method: Method,
    path: &str,
) -> Result<(&'static routes::Route, Params), (&'static str, Reply)> {
    if path.starts_with("/v1/") {
        let incoming = incoming(rq, method, path, Vec::new(), Params::default());
        guard(w, &incoming).map_err(|refused| ("/v1", v1::refused(refused)))?;
    }
    match routes::find(method, path, w.shared.dev) {
        routes::Found::Route(route, params) => Ok((route, params)),
        routes::Found::WrongMethod(route) => Err(("-", route.dialect.wrong_method())),
        routes::Found::None => Err(("-", crate::api::not_found())),
    }
}

/// The handlers read a request's headers through [`Headers`], borrowed from tiny_http's request.
impl Headers for tiny_http::Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

fn incoming<'a>(
    rq: &'a tiny_http::Request,
    method: Method,
    path: &'a str,
    body: Vec<u8>,
    params: Params,
) -> Incoming<'a> {
    Incoming {
        method,
        verb: rq.method().as_str(),
        path,
        query: rq.url().get(path.len() + 1..).unwrap_or(""),
        headers: rq,
        body,
        params,
    }
}

/// Run a route's handler inside `catch_unwind`: a panic becomes a 500.
fn run_caught(route: &routes::Route, w: &mut Context, rq: &Incoming, wait: Wait) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route.run(w, rq, wait)))
        .unwrap_or_else(|_| Outcome::Reply(Reply::error(500, "internal", "internal error", None)))
}

/// Answer, on the upstream pool, a request a worker routed (its handler allowed to wait). Its
/// place in the pool is given back just before the answer is handed over: the client may send
/// its next request the moment it has this answer, and must find the place free.
fn answer_upstream(w: &mut Context, job: upstream::Job, slot: upstream::Slot) {
    let upstream::Job {
        rq,
        method,
        path,
        body,
        started,
        route,
        params,
    } = job;
    let incoming = incoming(&rq, method, &path, body, params);
    let reply = match run_caught(route, w, &incoming, Wait::Allowed) {
        Outcome::Reply(reply) => reply,
        Outcome::NeedsUpstream => {
            log::error!(
                "bug: {} answered NeedsUpstream with waiting allowed",
                route.label
            );
            Reply::error(500, "internal", "internal error", None)
        }
    };
    drop(incoming);
    slot.release();
    respond(&w.shared, rq, route.label, reply, method, &path, started);
}

/// Write the reply, log the request and count it under `label`.
fn respond(
    shared: &Shared,
    rq: tiny_http::Request,
    label: &'static str,
    reply: Reply,
    method: Method,
    path: &str,
    started: Instant,
) {
    let status = reply.status;
    let mut resp = tiny_http::Response::from_data(reply.body).with_status_code(status);
    // Empty: the reply names its own (a relayed answer's, in `headers`) or none.
    let content_type = (!reply.content_type.is_empty()).then(|| {
        tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes())
    });
    if let Some(Ok(h)) = content_type {
        resp.add_header(h);
    }
    for (k, v) in reply.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    let _ = rq.respond(resp);
    let elapsed = started.elapsed();
    shared.metrics.request(label, status, elapsed);
    log::info!(
        "{} {} {} {}us",
        method_name(method),
        path,
        status,
        elapsed.as_micros()
    );
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Other => "OTHER",
    }
}

/// The body, already read whole, within `server.max_body_bytes` and the io timeout, by
/// tiny_http's connection thread (`listen`): taken out of the request, not copied, so that it
/// is held once. Its bytes stay counted in the body budget (`listen`) until `rq` is answered;
/// the body must not outlive that answer (`respond` is given it last).
fn take_body(rq: &mut tiny_http::Request) -> Vec<u8> {
    // Every request is buffered (`listen` sets `max_buffered_body`); reading memory cannot fail.
    rq.take_body().unwrap_or_else(|| {
        let mut body = Vec::new();
        let _ = rq.as_reader().read_to_end(&mut body);
        body
    })
}

/// How long a write on a worker (a revocation, user data, an agent's secret) waits for its turn
/// and SQLite's lock together before it fails: a worker never waits the whole busy timeout
/// (`store::BUSY_TIMEOUT`, which logins on the upstream pool get) while checks queue behind it.
const WORKER_WRITE_WAIT: Duration = Duration::from_millis(500);
