//! The operator's routes: `/healthz` (CONTRACT §8) and `/metrics` (Prometheus text). They ask
//! `core::probe` about the database and render; they hold no logic of their own.

use super::{bearer_ok, unauthorized, Context, Incoming, Reply};
use crate::core::probe;
use serde_json::json;

/// 200 when the database answers a read and a write (`core::probe::health`; the committed
/// write rationed to one a second for the server), else 503 with the reason.
pub fn healthz(w: &mut Context, _: &Incoming) -> Reply {
    match probe::health(&w.db, &w.shared.health) {
        Ok(()) => Reply::json(200, &json!({"status": "ok"})),
        Err(reason) => Reply::json(503, &json!({"status": "degraded", "reason": reason})),
    }
}

/// Prometheus text; behind the api key when one is set (Prometheus sends it as a bearer token).
pub fn metrics(w: &mut Context, rq: &Incoming) -> Reply {
    let key = &w.shared.config.server.api_key;
    if !key.is_empty() && !bearer_ok(key, rq) {
        return unauthorized();
    }
    let live = probe::live_sessions(&w.db, crate::ids::now());
    Reply::text(
        200,
        "text/plain; version=0.0.4",
        w.shared.metrics.render(live),
    )
}
