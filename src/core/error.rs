//! The domain error shared by the session, credential and component cores. Each wire dialect
//! (Wafer envelope, `/mina`, `/v1`) renders it in its own words; internal detail (SQL errors,
//! upstream bodies) goes to the log, never into a response.

use crate::store;
use crate::wechat::{Errcode, UpstreamError};
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
    CodeRejected(Errcode),
    /// A database read failed.
    Db(store::Error),
    /// A session write failed; nothing was committed.
    SessionWrite(store::Error),
    /// A thing named in the path does not exist (agent, component, authoriser).
    NotFound(&'static str),
    /// The operation is refused by policy, for this reason; each dialect says which.
    Refused(Refusal),
    /// Something that should not happen; logged, answered as a 500.
    Internal(String),
    /// The answer would wait on WeChat and no thread may wait now (the server's upstream pool is
    /// full, or a worker reached WeChat: `wechat::UpstreamError::NotSent`). Answered at once:
    /// 1005, 503 `busy` with `Retry-After: 1`.
    Busy,
}

/// Why a credential is refused without asking WeChat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// WeChat answered 45009 for this credential today: no call until the next UTC day.
    DailyQuota,
    /// `force` was used `limit` times today for this credential.
    ForcePerDay { limit: i64 },
    /// `force` is allowed once every `every_secs`; the next in `next_in_secs`.
    ForceTooSoon { every_secs: i64, next_in_secs: i64 },
    /// A component has no `component_verify_ticket` yet, so no component token can be fetched.
    NoVerifyTicket,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DailyQuota => write!(
                f,
                "WeChat's daily quota for this credential is used up ({})",
                crate::wechat::errcode::DAILY_QUOTA_REACHED
            ),
            Refusal::ForcePerDay { limit } => write!(
                f,
                "force refresh refused: at most {limit} a day for one credential"
            ),
            Refusal::ForceTooSoon {
                every_secs,
                next_in_secs,
            } => write!(
                f,
                "force refresh refused: at most one every {every_secs} s (next in {next_in_secs} s)"
            ),
            Refusal::NoVerifyTicket => f.write_str(
                "no component_verify_ticket received yet (WeChat pushes one every 10 minutes to the event URL)",
            ),
        }
    }
}

impl Error {
    /// The WeChat errcode this error carries, if any (kept in `/v1` errors and in logs).
    pub fn errcode(&self) -> Option<Errcode> {
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
            Error::Refused(r) => write!(f, "{r}"),
            Error::Internal(m) => write!(f, "internal: {m}"),
            Error::Busy => f.write_str("the upstream pool is full"),
        }
    }
}

impl std::error::Error for Error {}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error::Db(e)
    }
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::NotSent => Error::Busy,
            e => Error::Upstream(e),
        }
    }
}

impl From<getrandom::Error> for Error {
    fn from(e: getrandom::Error) -> Self {
        Error::Internal(format!("random source: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call a worker may not make (`wechat`'s own test) is answered busy in every dialect.
    #[test]
    fn a_call_not_sent_is_busy() {
        assert_eq!(
            Error::from(UpstreamError::NotSent).to_string(),
            "the upstream pool is full"
        );
    }
}
