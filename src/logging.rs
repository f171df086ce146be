//! wafer's logger behind the `log` facade: wafer logs with `log::info!`/`warn!`/`error!`, and
//! [`init`] installs this logger, which writes each record of wafer's own modules as one line
//! to stderr, the message alone (no level, no timestamp: the lines users and tests know, such
//! as `GET /healthz 200 85us`); records of other crates (ureq, rustls) are dropped. Each line is
//! written whole: `eprintln!` writes a formatted line piece by piece (one `write(2)` per piece,
//! under stderr's lock); here a line is formatted first and written with one call.
//!
//! A thread that opts in with [`batch_this_thread`] (the server's workers) keeps its lines in a
//! small buffer instead and writes them in one call, as whole lines, when the buffer nears 4 KiB
//! (within which a pipe write is atomic), when its oldest line is 100 ms old, and whenever
//! [`flush`] is called: the workers call it before they wait for the next request, so an idle
//! server has written every line, and a busy one writes ~60 lines per system call.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// Flush before the buffer would pass this (PIPE_BUF: a write up to it is never interleaved).
const BATCH_BYTES: usize = 4096;
/// The longest a batched line waits while its worker stays busy.
const BATCH_AGE: Duration = Duration::from_millis(100);

struct Batch {
    on: bool,
    buf: String,
    since: Option<Instant>,
}

thread_local! {
    static BATCH: RefCell<Batch> = const { RefCell::new(Batch { on: false, buf: String::new(), since: None }) };
}

/// The logger [`init`] installs.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.target().starts_with("wafer")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            line(*record.args());
        }
    }

    fn flush(&self) {
        flush();
    }
}

/// Install wafer's logger (at `info`). Called by the command line and by `http::start`; a
/// second call changes nothing.
pub fn init() {
    if log::set_logger(&Logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Batch this thread's lines from now on (until the thread ends; call [`flush`] before waiting).
pub fn batch_this_thread() {
    BATCH.with(|b| b.borrow_mut().on = true);
}

/// Log one line (the newline is added).
pub fn line(args: std::fmt::Arguments) {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let start = b.buf.len();
        let _ = b.buf.write_fmt(args);
        b.buf.push('\n');
        if !b.on {
            write_out(&mut b.buf);
            return;
        }
        if b.buf.len() > BATCH_BYTES && start > 0 {
            // Write what was there before this line, keep this line for the next batch.
            let rest = b.buf.split_off(start);
            write_out(&mut b.buf);
            b.buf = rest;
            b.since = Some(Instant::now());
        }
        let since = *b.since.get_or_insert_with(Instant::now);
        if b.buf.len() >= BATCH_BYTES || since.elapsed() >= BATCH_AGE {
            write_out(&mut b.buf);
            b.since = None;
        }
    });
}

/// Write out this thread's batched lines now.
pub fn flush() {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.buf.is_empty() {
            write_out(&mut b.buf);
        }
        b.since = None;
    });
}

fn write_out(buf: &mut String) {
    let _ = std::io::stderr().write_all(buf.as_bytes());
    buf.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_wafers_messages_alone() {
        use log::Log;
        std::thread::spawn(|| {
            batch_this_thread();
            let record = |target: &'static str| {
                Logger.log(
                    &log::Record::builder()
                        .target(target)
                        .level(log::Level::Warn)
                        .args(format_args!("GET /healthz 200 {}us", 85))
                        .build(),
                )
            };
            record("wafer::http");
            BATCH.with(|b| assert_eq!(b.borrow().buf, "GET /healthz 200 85us\n"));
            record("ureq::pool");
            record("rustls::client");
            BATCH.with(|b| assert_eq!(b.borrow().buf, "GET /healthz 200 85us\n"));
            Logger.flush();
            BATCH.with(|b| assert!(b.borrow().buf.is_empty()));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn batched_lines_are_kept_until_flushed_or_full() {
        std::thread::spawn(|| {
            batch_this_thread();
            line(format_args!("a {}", 1));
            BATCH.with(|b| assert_eq!(b.borrow().buf, "a 1\n"));
            flush();
            BATCH.with(|b| assert!(b.borrow().buf.is_empty()));
            for i in 0..200 {
                line(format_args!("GET /healthz 200 {i}us"));
                BATCH.with(|b| assert!(b.borrow().buf.len() <= BATCH_BYTES));
            }
            BATCH.with(|b| assert!(b.borrow().buf.ends_with("199us\n")));
            flush();
        })
        .join()
        .unwrap();
    }
}
