//! The domain error shared by the session, credential and component cores. Each wire dialect
//! (Wafer envelope, `/mina`, `/v1`) renders it in its own words; internal detail (SQL errors,
//! upstream bodies) goes to the log, never into a response.

use crate::wechat::UpstreamError;
use std::fmt;

/// `Clone`: a refresh's error is handed to every caller that waited for it.
#[derive(Debug, Clone)]
pub enum Error {
    /// A required field is missing or of the wrong type; the text names the field.
    BadRequest(String),
    /// No app matches (or the single-app fallback is ambiguous).
    NoApp,
    /// Invalid, expired or unknown session.
    AuthFail,
    /// encryptedData could not be decrypted or its watermark is wrong.
    DecryptFail,
    /// WeChat could not be reached, timed out or answered something that is not its JSON.
    Upstream(UpstreamError),
    /// WeChat answered an errcode to a login (`jscode2session`).
    CodeRejected(i64),
    /// A database read failed.
    Db(String),
    /// A session write failed; nothing was committed.
    SessionWrite(String),
    /// A thing named in the path does not exist (agent, component, authoriser).
    NotFound(&'static str),
    /// The operation is refused by policy (quota, force-refresh limits); the text says why.
    Refused(String),
    /// Something that should not happen; logged, answered as a 500.
    Internal(String),
    /// The answer would wait on WeChat and this thread must not ([`may_wait`]): the server hands
    /// the request to a thread that may. Never sent to a client.
    Deferred,
}

thread_local! {
    /// On this thread, whatever would wait on WeChat answers `Error::Deferred` instead (the
    /// server's workers: `server::lane`).
    static DEFER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether [`may_wait`] answered `Error::Deferred` on this thread since [`take_deferred`].
    static DEFERRED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Set whether this thread defers what would wait on WeChat (see [`may_wait`]).
pub fn defer_waits_on_this_thread(on: bool) {
    DEFER.with(|d| d.set(on));
}

/// Called before anything that would wait on WeChat (a login's `jscode2session`, a credential
/// fetch or another caller's): `Err(Error::Deferred)` on a thread that must not wait. Nothing
/// may have been written before it, since the request is routed again from the start elsewhere.
pub fn may_wait() -> Result<(), Error> {
    if DEFER.with(|d| d.get()) {
        DEFERRED.with(|d| d.set(true));
        return Err(Error::Deferred);
    }
    Ok(())
}

/// Did [`may_wait`] answer `Error::Deferred` on this thread since the last call? (Clears.)
pub fn take_deferred() -> bool {
    DEFERRED.with(|d| d.replace(false))
}

impl Error {
    /// The WeChat errcode this error carries, if any (kept in `/v1` errors and in logs).
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Error::CodeRejected(c) => Some(*c),
            Error::Upstream(UpstreamError::WeChat { errcode, .. }) => Some(*errcode),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRequest(m) => write!(f, "bad request: {m}"),
            Error::NoApp => f.write_str("no such app"),
            Error::AuthFail => f.write_str("invalid session"),
            Error::DecryptFail => f.write_str("decryption failed"),
            Error::Upstream(e) => write!(f, "wechat: {e}"),
            Error::CodeRejected(c) => write!(f, "wechat rejected the login code (errcode {c})"),
            Error::Db(m) => write!(f, "database: {m}"),
            Error::SessionWrite(m) => write!(f, "session write: {m}"),
            Error::NotFound(what) => write!(f, "no such {what}"),
            Error::Refused(m) => f.write_str(m),
            Error::Internal(m) => write!(f, "internal: {m}"),
            Error::Deferred => f.write_str("deferred to a thread that may wait on WeChat"),
        }
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Db(e.to_string())
    }
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Self {
        Error::Upstream(e)
    }
}

impl From<getrandom::Error> for Error {
    fn from(e: getrandom::Error) -> Self {
        Error::Internal(format!("random source: {e}"))
    }
}
