use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
pub struct TaskPool {
    sharing: Arc<Sharing>,
    /// Starts a thread; a seam only so that a test can make it fail.
    start: fn(Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
}

/// A task: run once by whichever thread takes it.
type Task = Box<dyn FnMut() + Send>;

/// Starts a pool thread, or says why not (the closure, and the task in it, is then dropped).
fn start_thread(f: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("tiny-http-conn".into())
        .spawn(f)
        .map(drop)
}

struct Sharing {
    // list of the tasks to be done by worker threads
    todo: Mutex<VecDeque<Box<dyn FnMut() + Send>>>,

    // condvar that will be notified whenever a task is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

impl TaskPool {
    pub fn new() -> TaskPool {
        Self::starting_threads_with(start_thread)
    }

    fn starting_threads_with(
        start: fn(Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
    ) -> TaskPool {
        let pool = TaskPool {
            start,
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
            }),
        };

        for _ in 0..MIN_THREADS {
            pool.add_thread(None)
        }

        pool
    }

    /// Executes a function in a thread.
    /// If no thread is available, spawns a new one.
    ///
    /// wafer's fix: when no thread can be started (`EAGAIN`, a task limit), the task is dropped
    /// unrun instead of panicking the caller (the accept loop); for a connection, dropping it
    /// closes it.
    pub fn spawn(&self, code: Task) {
        let mut queue = self.sharing.todo.lock().unwrap_or_else(|e| e.into_inner());

        // wafer's fix: queue the task only if a waiting thread is left that no task queued
        // before has claimed. Upstream compared the waiting count with 0; a waiting thread
        // counts as waiting until it runs again, so two tasks spawned before a woken thread
        // ran were both queued for it, and the second waited, with no thread, until some
        // connection closed (seconds, with keep-alive clients).
        if self.sharing.waiting_tasks.load(Ordering::Acquire) <= queue.len() {
            self.add_thread(Some(code));
        } else {
            queue.push_back(code);
            self.sharing.condvar.notify_one();
        }
    }

    fn add_thread(&self, initial_fn: Option<Task>) {
        let sharing = self.sharing.clone();

        let started = (self.start)(Box::new(move || {
            let sharing = sharing;
            let _active_guard = Registration::new(&sharing.active_tasks);

            if let Some(mut f) = initial_fn {
                f();
            }

            loop {
                let mut task: Task = {
                    let mut todo = sharing.todo.lock().unwrap_or_else(|e| e.into_inner());

                    let task;
                    loop {
                        if let Some(poped_task) = todo.pop_front() {
                            task = poped_task;
                            break;
                        }
                        let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                        let received =
                            if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                todo = sharing
                                    .condvar
                                    .wait(todo)
                                    .unwrap_or_else(|e| e.into_inner());
                                true
                            } else {
                                let (new_lock, waitres) = sharing
                                    .condvar
                                    .wait_timeout(todo, Duration::from_millis(5000))
                                    .unwrap_or_else(|e| e.into_inner());
                                todo = new_lock;
                                !waitres.timed_out()
                            };

                        if !received && todo.is_empty() {
                            return;
                        }
                    }

                    task
                };

                task();
            }
        }));
        if let Err(e) = started {
            log::error!("Could not start a thread for a connection: {}", e);
        }
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Sets its flag when dropped: stands for a connection, which closes when dropped.
    struct Conn(Arc<AtomicBool>);
    impl Drop for Conn {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn never_starts(_: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "Resource temporarily unavailable",
        ))
    }

    #[test]
    fn a_task_no_thread_can_run_is_dropped_not_a_panic() {
        let pool = TaskPool::starting_threads_with(never_starts);
        let (closed, ran) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut conn = Some(Conn(closed.clone()));
        let r = ran.clone();
        pool.spawn(Box::new(move || {
            r.store(true, Ordering::SeqCst);
            drop(conn.take());
        }));
        assert!(closed.load(Ordering::SeqCst), "the connection was kept");
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn tasks_run_on_started_threads() {
        let pool = TaskPool::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..10 {
            let tx = tx.clone();
            pool.spawn(Box::new(move || {
                let _ = tx.send(i);
            }));
        }
        let mut got: Vec<i32> = (0..10)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
