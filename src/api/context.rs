//! What a handler runs with (`Context`: a database connection and the `Shared` parts), whether it
//! may wait on WeChat (`Wait`), and what it made of a request (`Outcome`). `http` builds these;
//! handlers only read them.

use super::reply::Reply;
use crate::config::Config;
use crate::core::credential::Broker;
use crate::metrics::Metrics;
use crate::store::{Db, Target};
use crate::wechat::WeChat;
use std::sync::Arc;
use std::time::Duration;

/// What every handler shares, on a worker or the upstream pool: configuration, the WeChat client,
/// metrics.
pub struct Shared {
    pub config: Config,
    pub wechat: Arc<WeChat>,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// Apps known to exist, for the credential routes (re-read at most once per
    /// [`KNOWN_APP_TTL`]).
    pub known_apps: crate::core::session::KnownApps,
    /// `wafer dev`: enables the `/dev/*` routes.
    pub dev: bool,
    pub db: Target,
    /// The key values are sealed with at rest (`storage.key_file`), for every connection.
    pub sealer: Option<Arc<crate::seal::Sealer>>,
    /// The WeChat API gateway: its limits and the bodies in flight.
    pub gateway: crate::core::gateway::Gateway,
    /// `/healthz`'s last committed write: at most one a second for all the workers.
    pub health: crate::store::HealthProbe,
}

/// How long the credential routes trust that an app exists before reading it again: an app
/// removed with the CLI while the server runs is still served tokens for at most this long.
pub const KNOWN_APP_TTL: Duration = Duration::from_secs(1);

/// What a handler runs with: a database connection (a worker's own, or one an upstream thread
/// checked out for this request) and the shared parts.
pub struct Context {
    pub db: Db,
    pub shared: Arc<Shared>,
}

/// May a handler wait on WeChat (or a `forward_url`) for this request?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// On a worker: memory and the database only. What would wait answers
    /// [`Outcome::NeedsUpstream`] instead, having written nothing.
    Forbidden,
    /// On the upstream pool.
    Allowed,
}

/// What a handler that may wait made of a request.
pub enum Outcome {
    Reply(Reply),
    /// Answering would wait on WeChat, and this thread may not ([`Wait::Forbidden`]): the
    /// upstream pool runs the same handler again with [`Wait::Allowed`]. Nothing was written.
    NeedsUpstream,
}

impl From<Reply> for Outcome {
    fn from(r: Reply) -> Outcome {
        Outcome::Reply(r)
    }
}

/// A credential for a handler: with [`Wait::Forbidden`] only one usable from memory (the
/// broker's `try_get`; `None` then means the request needs the upstream pool, and a forced
/// refresh always does), else from the broker, fetched if need be.
pub fn credential(
    w: &Context,
    key: &crate::core::credential::Key,
    force: bool,
    wait: Wait,
) -> Result<Option<crate::core::credential::Credential>, crate::core::error::Error> {
    match wait {
        Wait::Allowed => w.shared.broker.get(&w.db, key, force).map(Some),
        Wait::Forbidden if force => Ok(None),
        Wait::Forbidden => w.shared.broker.try_get(&w.db, key),
    }
}
