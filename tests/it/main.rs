//! wafer's integration tests: one binary, the real server on 127.0.0.1:0 with a real SQLite file
//! in a temp dir, and the fake WeChat on loopback. Behaviour is tested at the HTTP boundary.

mod access;
mod bounds;
mod callbacks;
mod cli;
mod component;
mod credentials;
mod gateway;
mod harness;
mod overload;
mod phone;
mod robustness;
mod sealing;
mod sessions;
