//! What wafer does, whatever the transport: sessions, the credential broker, accounts, the
//! open-platform component, WeChat's pushes, COS signatures, the gateway's limits, the
//! operator's probes, and the one domain error. It calls `wechat` and `store`, and never knows
//! about HTTP requests or replies.

pub mod accounts;
pub mod component;
pub mod cos;
pub mod credential;
pub mod error;
pub mod gateway;
pub mod probe;
pub mod push;
pub mod session;
