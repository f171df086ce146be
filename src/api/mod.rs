//! The HTTP dialects wafer answers, each a thin layer: parse the request, call `core`, render the
//! reply in the dialect's words. `envelope` is the original Wafer's `/` envelope, `mina` the
//! original `/mina/*` session routes, `v1` the `/v1` JSON routes, `callbacks` WeChat's pushes and
//! the component's authorisation pages, `gateway_routes` the routes of the WeChat API gateway,
//! `ops` `/healthz` and `/metrics`, `dev` the `wafer dev` routes. Handlers never touch the
//! database or WeChat themselves: `core` does.

mod context;
mod reply;
mod request;

pub use context::{credential, Context, Outcome, Shared, Wait, KNOWN_APP_TTL};
pub use reply::{method_not_allowed, not_found, unauthorized, JsonWriter, Reply, JSON};
pub use request::{
    bearer_ok, form_decode, guard, is_loopback_host, Headers, Incoming, Method, Params, Refused,
};

pub mod callbacks;
pub mod dev;
pub mod envelope;
pub mod gateway_routes;
pub mod json;
pub mod mina;
pub mod ops;
pub mod v1;
