//! WeChat's side: the HTTP client (`client`: the only code that speaks HTTP to WeChat), every
//! WeChat URL wafer uses (`urls`) and every errcode it acts on (`errcode`).

mod client;
pub mod errcode;
pub mod urls;

pub use client::*;
pub use errcode::Errcode;
