//! wafer: a self-hosted WeChat session and credential server.
//!
//! One binary replaces Tencent's abandoned Wafer session server and the token "中控" every WeChat
//! team writes: mini-program logins become our own `id` + `skey`, access tokens and tickets are
//! hosted and refreshed ahead of expiry, and WeChat's callbacks are verified and decrypted.
//!
//! The dependency direction is one way (see ARCHITECTURE.md):
//! `main → cli → http → api → core → {wechat, store, crypto}`, with the support modules (`config`,
//! `ids`, `logging`, `metrics`, `seal`) usable from below `cli`. Only `http` touches tiny_http,
//! only `wechat` touches ureq, only `store` touches rusqlite and the `mysql` driver (and
//! `cli::import_wafer`, to read an original Wafer's database).
//! `crypto` is the `wafer-crypto` crate (no I/O at all), re-exported so `crate::crypto::…` reads
//! as before. The fake WeChat is the `fake-wechat` crate, used only by `cli` (`wafer dev`,
//! `wafer mock-wechat`) and by tests.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod core;
pub mod http;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod seal;
pub mod secret;
pub mod store;
pub mod wechat;

pub use wafer_crypto as crypto;
