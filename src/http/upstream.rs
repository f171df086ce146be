//! The upstream pool: the threads that answer requests that may wait on someone else (WeChat
//! for a login or a cold credential, a business endpoint for a forwarded callback), so that
//! however many of them wait, the workers stay free for session checks and token reads.
//!
//! A worker hands a request over ([`Upstream::submit`]) when its route's pool is
//! `routes::Pool::Upstream`, or when its handler answered `Outcome::NeedsUpstream`. Here the
//! route's handler runs with waiting allowed (`http::answer_upstream`), the request is not
//! routed again.
//!
//! The pool grows with demand: a request finds an idle thread, or a new one is started for it,
//! up to a bound on requests at once ([`IN_FLIGHT_PER_WORKER`], at most [`MAX_IN_FLIGHT`]); a
//! thread idle for [`IDLE_EXIT`] ends. A request's place is given back ([`Slot::release`]) just
//! before its answer is handed over, not after: a client that sends its next request the moment
//! it has the answer finds its place free, and the thread still finishing (writing the log line)
//! counts as idle for it, so no thread is started for it either. Past
//! the bound the request is given back and its worker answers it busy at once (the route's
//! dialect: 1005 in the envelope, 503 `busy` with `Retry-After: 1` on `/v1` and for callbacks,
//! `WEIXIN_NET_ERR` on `/mina`), counted in `wafer_lane_full_total`. Nothing queues behind a
//! busy thread: what is admitted starts at once. The pool knows nothing of requests: it runs
//! what `http::start` tells it to with each job.
//!
//! Database connections are not per thread, nor per request: a request's handler runs with a
//! `store::DbPool` handle, whose every operation takes a connection and gives it back (a session
//! write, the pool's one writer connection, in this process's turn of session writes), so a
//! login waiting on WeChat holds none (it reads its app, waits, then writes); as many as were in
//! use at once are kept, up to [`MAX_KEPT_CONNECTIONS`].

use super::routes::Route;
use crate::api::{Method, Params};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Requests in the upstream pool at once, per worker: a slow WeChat should cost a login its
/// latency and nothing else, so with the default 4 workers 256 logins wait on WeChat at once
/// (256 logins/s on a WeChat that takes a second, 2,560/s at 100 ms). Waiting, a request holds
/// a thread (a stack, mostly untouched) and a socket to WeChat, no database connection.
pub const IN_FLIGHT_PER_WORKER: usize = 64;
/// At most this many requests in the pool however many workers (`server.workers` may be up to
/// 1024).
pub const MAX_IN_FLIGHT: usize = 1024;
/// Connections kept open between operations, at most: opening one costs about a tenth of a login's
/// CPU, so as many as were in use at once are kept, up to this many.
pub const MAX_KEPT_CONNECTIONS: usize = 64;
/// A thread idle this long ends.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);
/// A pool connection's page cache, KiB (a worker's is SQLite's default, 2 MiB).
pub const CACHE_KIB: i64 = 256;

/// A request read whole, routed, with what its answer and log line need.
pub struct Job {
    pub rq: tiny_http::Request,
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
    pub started: Instant,
    pub route: &'static Route,
    pub params: Params,
}

struct State<J> {
    jobs: VecDeque<J>,
    /// Jobs taken and not finished (queued or running): the bound is on these.
    in_flight: usize,
    /// Threads alive, and of those, waiting for a job, or running one whose place is given back
    /// already (about to look for the next job).
    threads: usize,
    idle: usize,
    finishing: usize,
    closed: bool,
}

struct Inner<J> {
    state: Mutex<State<J>>,
    /// A job was queued, or the pool closed.
    work: Condvar,
    /// A thread ended.
    gone: Condvar,
    max_in_flight: usize,
    idle_exit: Duration,
    run: Runner<J>,
}

/// What runs a job: with the job, its place in the pool.
type Runner<J> = Box<dyn Fn(J, Slot<'_>) + Send + Sync>;

/// A job's place in the pool, handed to the runner with the job. [`Slot::release`] gives it
/// back (call it just before the answer is handed over); a slot dropped unreleased (a panic)
/// gives it back then. Either way the thread counts as finishing until it looks for its next
/// job.
pub struct Slot<'a> {
    places: &'a dyn Places,
}

impl Slot<'_> {
    /// Give the place back: another job may be taken in it from now on.
    pub fn release(self) {
        // Dropping it does.
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.places.release();
    }
}

/// The pool's places, as a [`Slot`] gives one back (whatever the pool's job type).
trait Places {
    fn release(&self);
}

impl<J> Places for Inner<J> {
    fn release(&self) {
        let mut st = lock(&self.state);
        st.in_flight -= 1;
        st.finishing += 1;
    }
}

/// A handle on the upstream pool (workers hold clones; `http::Handle` closes it).
pub struct Upstream<J> {
    inner: Arc<Inner<J>>,
}

impl<J> Clone for Upstream<J> {
    fn clone(&self) -> Self {
        Upstream {
            inner: self.inner.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<J: Send + 'static> Upstream<J> {
    /// A pool for at most `max_in_flight` jobs at once, each given to `run` on a thread of the
    /// pool; threads idle for `idle_exit` end. No thread is started yet.
    pub fn new(
        max_in_flight: usize,
        idle_exit: Duration,
        run: impl Fn(J, Slot<'_>) + Send + Sync + 'static,
    ) -> Upstream<J> {
        Upstream {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    jobs: VecDeque::new(),
                    in_flight: 0,
                    threads: 0,
                    idle: 0,
                    finishing: 0,
                    closed: false,
                }),
                work: Condvar::new(),
                gone: Condvar::new(),
                max_in_flight,
                idle_exit,
                run: Box::new(run),
            }),
        }
    }

    /// Take `job` if the pool has room (`None`): an idle thread or a new one runs it at once.
    /// Otherwise give it back, for the worker to answer busy.
    pub fn submit(&self, job: J) -> Option<J> {
        let inner = &*self.inner;
        let mut st = lock(&inner.state);
        if st.closed || st.in_flight >= inner.max_in_flight {
            return Some(job);
        }
        st.in_flight += 1;
        st.jobs.push_back(job);
        if st.jobs.len() <= st.idle + st.finishing {
            // An idle or finishing thread takes it (each looks for a job before it waits or
            // ends).
            inner.work.notify_one();
            return None;
        }
        st.threads += 1;
        let pool = self.clone();
        let started = std::thread::Builder::new()
            .name(format!("upstream-{}", st.threads))
            .spawn(move || pool.thread());
        if started.is_err() {
            st.threads -= 1;
            st.in_flight -= 1;
            return st.jobs.pop_back();
        }
        None
    }

    /// One thread: run jobs until idle for `idle_exit`, or closed with nothing left.
    fn thread(self) {
        let inner = &*self.inner;
        let mut st = lock(&inner.state);
        loop {
            if let Some(job) = st.jobs.pop_front() {
                drop(st);
                // The runner catches a handler's panic itself; this keeps the count right if
                // anything else panics (the slot, dropped unreleased, gives the place back).
                let slot = Slot { places: inner };
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (inner.run)(job, slot)
                }));
                st = lock(&inner.state);
                // The slot was released, or dropped, by now.
                st.finishing -= 1;
                continue;
            }
            if st.closed {
                break;
            }
            st.idle += 1;
            let (next, waited) = inner
                .work
                .wait_timeout(st, inner.idle_exit)
                .unwrap_or_else(|e| e.into_inner());
            st = next;
            st.idle -= 1;
            if waited.timed_out() && st.jobs.is_empty() {
                break;
            }
        }
        st.threads -= 1;
        drop(st);
        inner.gone.notify_all();
    }

    /// Take nothing more; wait for every thread to finish what it has and end.
    pub fn close(&self) {
        let inner = &*self.inner;
        let mut st = lock(&inner.state);
        st.closed = true;
        inner.work.notify_all();
        while st.threads > 0 {
            st = inner.gone.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Threads alive now.
    #[cfg(test)]
    fn threads(&self) -> usize {
        lock(&self.inner.state).threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver, Sender};

    /// A pool whose jobs wait until the test lets them go, and report when they start.
    fn gated(max: usize, idle_exit: Duration) -> (Upstream<Receiver<()>>, Receiver<()>) {
        let (started_tx, started) = channel::<()>();
        let started_tx = Mutex::new(started_tx);
        let pool = Upstream::new(max, idle_exit, move |gate: Receiver<()>, _slot| {
            let _ = lock(&started_tx).send(());
            let _ = gate.recv();
        });
        (pool, started)
    }

    fn job() -> (Sender<()>, Receiver<()>) {
        channel()
    }

    #[test]
    fn a_full_pool_gives_jobs_back_and_grows_only_with_demand() {
        let (pool, started) = gated(3, IDLE_EXIT);
        assert_eq!(pool.threads(), 0, "no thread before a job");
        let mut gates = Vec::new();
        for _ in 0..3 {
            let (go, gate) = job();
            assert!(pool.submit(gate).is_none(), "taken while there is room");
            gates.push(go);
        }
        // All three run at once, each on a thread of its own.
        for _ in 0..3 {
            started.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert_eq!(pool.threads(), 3);
        // Full: the next is given back at once.
        let (_go, gate) = job();
        assert!(pool.submit(gate).is_some(), "given back when full");
        // One finishes: its idle thread takes the next job, no new thread.
        gates.pop().unwrap().send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (go, gate) = job();
            match pool.submit(gate) {
                None => {
                    gates.push(go);
                    break;
                }
                Some(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "the finished job's room never came back"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(pool.threads(), 3);
        for go in gates {
            go.send(()).unwrap();
        }
        pool.close();
        assert_eq!(pool.threads(), 0);
        // Closed: nothing is taken.
        let (_go, gate) = job();
        assert!(pool.submit(gate).is_some());
    }

    #[test]
    fn idle_threads_end() {
        let (pool, started) = gated(4, Duration::from_millis(50));
        let (go, gate) = job();
        assert!(pool.submit(gate).is_none());
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.threads() > 0 {
            assert!(Instant::now() < deadline, "an idle thread did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        // And a new one starts for the next job.
        let (go, gate) = job();
        assert!(pool.submit(gate).is_none());
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        go.send(()).unwrap();
        pool.close();
    }

    /// A job that is handed its slot and does what it likes with it.
    type Task = Box<dyn FnOnce(Slot<'_>) + Send>;

    #[test]
    fn a_released_place_takes_the_next_job_on_the_finishing_thread() {
        let pool = Upstream::new(1, IDLE_EXIT, |task: Task, slot| task(slot));
        let (released_tx, released) = channel::<()>();
        let (go, gate) = job();
        let first: Task = Box::new(move |slot| {
            slot.release();
            let _ = released_tx.send(());
            // Still finishing (the answer handed over, the log line not yet written).
            let _ = gate.recv();
        });
        assert!(pool.submit(first).is_none());
        released.recv_timeout(Duration::from_secs(5)).unwrap();
        // The place is free while the first job's thread finishes: the next job is taken at
        // once, and no thread is started for it.
        let (ran_tx, ran) = channel::<()>();
        let next: Task = Box::new(move |_slot| {
            let _ = ran_tx.send(());
        });
        assert!(
            pool.submit(next).is_none(),
            "refused while its place was free"
        );
        assert_eq!(
            pool.threads(),
            1,
            "a thread was started beside a finishing one"
        );
        // A third finds the pool full (the second holds the one place).
        let idle: Task = Box::new(|_slot| {});
        assert!(pool.submit(idle).is_some(), "taken past the bound");
        go.send(()).unwrap();
        ran.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(pool.threads(), 1);
        pool.close();
    }

    #[test]
    fn a_slot_dropped_unreleased_gives_its_place_back() {
        let pool = Upstream::new(1, IDLE_EXIT, |task: Task, slot| task(slot));
        let panics: Task = Box::new(|_slot| panic!("a runner's panic (expected by the test)"));
        assert!(pool.submit(panics).is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        let (ran_tx, ran) = channel::<()>();
        let mut next: Task = Box::new(move |_slot| {
            let _ = ran_tx.send(());
        });
        while let Some(back) = pool.submit(next) {
            assert!(
                Instant::now() < deadline,
                "the panicked job's place never came back"
            );
            std::thread::sleep(Duration::from_millis(10));
            next = back;
        }
        ran.recv_timeout(Duration::from_secs(5)).unwrap();
        pool.close();
    }
}
