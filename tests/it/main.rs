//! wafer's integration tests: one binary, the real server on 127.0.0.1:0 with a real SQLite file
//! in a temp dir, and the fake WeChat on loopback. Behaviour is tested at the HTTP boundary.
//! Tests that need a real MySQL-compatible server take their database from `mysql::test_db`.

mod access;
mod bounds;
mod callbacks;
mod cli;
mod component;
mod credentials;
mod gateway;
mod harness;
mod import;
mod mysql;
mod overload;
mod phone;
mod robustness;
mod sealing;
mod sessions;
mod shared_db;
