//! wafer: a self-hosted WeChat session and credential server.
//!
//! One binary replaces Tencent's abandoned Wafer session server and the token "中控" every WeChat
//! team writes: mini-program logins become our own `id` + `skey`, access tokens and tickets are
//! hosted and refreshed ahead of expiry, and WeChat's callbacks are verified and decrypted.
//!
//! The dependency direction is one way (see ARCHITECTURE.md):
//! `main → cli → server → {accounts, session, credential, component, push, gateway} → {wechat, store, crypto}`.
//! Only `server` touches tiny_http, only `wechat` touches ureq, only `store` touches rusqlite
//! (and `import_wafer` alone the `mysql` driver, to read an original Wafer's database).
//! `crypto` is the `wafer-crypto` crate (no I/O at all), re-exported so `crate::crypto::…` reads
//! as before. The fake WeChat is the `fake-wechat` crate, used only by `cli` (`wafer dev`,
//! `wafer mock-wechat`) and by tests.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod cli;
pub mod component;
pub mod config;
pub mod cos;
pub mod credential;
pub mod error;
pub mod gateway;
pub mod ids;
pub mod import_wafer;
pub mod logging;
pub mod metrics;
pub mod push;
pub mod seal;
pub mod server;
pub mod session;
pub mod store;
pub mod wechat;

pub use wafer_crypto as crypto;
