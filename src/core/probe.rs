//! What the operator's routes (`/healthz`, `/metrics`) ask of the database: whether it answers a
//! read and a committed write within a bound (`health`), and how many sessions are live
//! (`live_sessions`). It must not write anything but the health probe's one page (at most once a second).

use crate::store::{Db, HealthProbe};
use std::time::Duration;

/// How long `/healthz` waits to write: for this process's other writers and SQLite's write lock
/// together (CONTRACT §8: it answers within a second either way, even queued behind a write on
/// another worker: `http`'s `WORKER_WRITE_WAIT`).
const HEALTH_WRITE_BOUND: Duration = Duration::from_millis(300);

/// `Ok` when the database answers a read and a write (within [`HEALTH_WRITE_BOUND`]), else the
/// reason (`store::Db::health`: the write lock taken every call, a committed write at most once
/// a second for all the callers sharing `probe`, the server's `Shared::health`).
pub fn health(db: &Db, probe: &HealthProbe) -> Result<(), String> {
    db.health(HEALTH_WRITE_BOUND, probe)
}

/// The sessions live at `now`, or `None` when the database does not answer.
pub fn live_sessions(db: &Db, now: i64) -> Option<i64> {
    db.count_live_sessions(now).ok()
}
