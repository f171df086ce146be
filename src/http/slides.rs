//! The slide flusher inside `wafer serve` (SQLite): one background thread with its own database
//! connection that writes the session slides the workers and the upstream pool recorded
//! (`store::Slides`) in one transaction about every `store::SLIDES_FLUSH_EVERY`, or at once
//! when `store::SLIDES_FLUSH_AT` are pending. When the server stops (`Slides::close`, after the
//! last request is answered) it writes what is left and ends, so SIGTERM loses no slide; a
//! crash loses at most the batch pending.
//!
//! It must not decide what a slide is (`core::session`) or hold anything but the slides.

use crate::store::{Db, Slides, SLIDES_FLUSH_EVERY};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Start the flusher; it ends once `slides` is closed and what was pending is written.
pub fn spawn(db: Db, slides: Arc<Slides>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("slides".into())
        .spawn(move || loop {
            let closed = slides.wait_due(Instant::now() + SLIDES_FLUSH_EVERY);
            if let Err(e) = db.flush_slides() {
                log::error!(
                    "slides: {e} ({} pending, written at the next try)",
                    slides.pending()
                );
            }
            if closed {
                break;
            }
        })
}
