//! WeChat's side: the HTTP client (`client`: the only code that speaks HTTP to WeChat; `relay`:
//! its byte-for-byte call for the gateway), every WeChat URL wafer uses (`urls`) and every
//! errcode it acts on (`errcode`).

mod client;
pub mod errcode;
mod relay;
pub mod urls;

pub use client::*;
pub use errcode::Errcode;
pub use relay::{RelayError, RelayRequest, Relayed};
