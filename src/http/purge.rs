//! The periodic purge of expired sessions inside `wafer serve`: one background thread with its
//! own database connection, which deletes sessions past either clock (idle ones once
//! `store::SLIDE_GRACE_SECS` past their window: a slide may be pending) (and remembered callbacks
//! past their window, `callback_seen`) once at start-up and then every `PURGE_EVERY`, and stops
//! promptly when the server shuts down. Expired sessions already fail every check; purging only keeps the table (and `/metrics`' live count query) small. It
//! never holds the write lock for long: the scan is a read, the deletions go in slices of
//! `store::PURGE_SLICE` (see `Db::purge_expired_sessions`).
//! `wafer session purge` does the same once, by hand.

use crate::store::Db;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often expired sessions are deleted.
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Start the purge thread; it returns soon after `stop` is set.
pub fn spawn(db: Db, stop: Arc<AtomicBool>, every: Duration) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("purger".into())
        .spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    let now = crate::ids::now();
                    match db.purge_expired_sessions(now) {
                        Ok(0) => {}
                        Ok(n) => log::info!("purge: {n} expired session(s) deleted"),
                        Err(e) => log::error!("purge: {e}"),
                    }
                    // A handful of rows per callback, each kept for the callback window: one
                    // short statement.
                    if let Err(e) = db.purge_callback_seen(now) {
                        log::error!("purge: remembered callbacks: {e}");
                    }
                    next = Instant::now() + every;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
}
