//! wafer: a self-hosted WeChat session and credential server.
//!
//! One binary replaces Tencent's abandoned Wafer session server and the token "中控" every WeChat
//! team writes: mini-program logins become our own `id` + `skey`, access tokens and tickets are
//! hosted and refreshed ahead of expiry, and WeChat's callbacks are verified and decrypted.
//!
//! The dependency direction is one way (see ARCHITECTURE.md):
//! `main → cli → server → {session, credential, component, callback} → {wechat, store, crypto}`.
//! Only `server` touches tiny_http (and `mock`, which is a separate fake upstream), only `wechat`
//! touches ureq, only `store` touches rusqlite. `crypto` does no I/O at all.
#![forbid(unsafe_code)]

pub mod callback;
pub mod cli;
pub mod component;
pub mod config;
pub mod cos;
pub mod credential;
pub mod crypto;
pub mod error;
pub mod ids;
pub mod log;
pub mod metrics;
pub mod mock;
pub mod server;
pub mod session;
pub mod store;
pub mod wechat;
