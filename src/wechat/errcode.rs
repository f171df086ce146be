//! Every WeChat errcode wafer acts on, named (anything else is passed through as WeChat's
//! answer). The numbers are WeChat's global return codes, shared by the official-account,
//! mini-program and Open Platform APIs on `api.weixin.qq.com`; WeCom (`qyapi.weixin.qq.com`)
//! reuses most of them, with the difference [`Errcode::stale_token`] spells out.

use super::Host;
use std::fmt;

/// A WeChat `errcode` (never 0: success is not an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errcode(pub i64);

/// "system busy, retry later": retried with exponential backoff.
pub const SYSTEM_BUSY: Errcode = Errcode(-1);
/// "invalid credential": on `api.weixin.qq.com` the access token is invalid or not the latest;
/// on WeCom it means the secret is wrong, so a fresh token would not help there.
pub const INVALID_CREDENTIAL: Errcode = Errcode(40001);
/// "invalid access_token".
pub const INVALID_ACCESS_TOKEN: Errcode = Errcode(40014);
/// "access_token expired".
pub const ACCESS_TOKEN_EXPIRED: Errcode = Errcode(42001);
/// "invalid code": a login code, or a `getPhoneNumber` code, WeChat does not accept.
pub const INVALID_CODE: Errcode = Errcode(40029);
/// "reach max api daily quota limit": no further call for this credential until UTC midnight.
pub const DAILY_QUOTA_REACHED: Errcode = Errcode(45009);

impl Errcode {
    /// Whether this errcode, from a call made with an access token on `host`, means "the token
    /// you used is stale: refresh it and ask again". The one stale set per product.
    pub fn stale_token(self, host: Host) -> bool {
        matches!(self, INVALID_ACCESS_TOKEN | ACCESS_TOKEN_EXPIRED)
            || (self == INVALID_CREDENTIAL && host == Host::Api)
    }
}

impl fmt::Display for Errcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_token_on_each_host() {
        for code in [40001, 40014, 42001] {
            assert!(
                Errcode(code).stale_token(Host::Api),
                "{code} on api.weixin.qq.com"
            );
        }
        // WeCom's 40001 is a wrong secret: refreshing the token would fail the same way.
        assert!(!INVALID_CREDENTIAL.stale_token(Host::Work));
        assert!(INVALID_ACCESS_TOKEN.stale_token(Host::Work));
        assert!(ACCESS_TOKEN_EXPIRED.stale_token(Host::Work));
        for code in [-1, 0, 40013, 40125, 45009, 61023] {
            let code = Errcode(code);
            assert!(
                !code.stale_token(Host::Api) && !code.stale_token(Host::Work),
                "{code}"
            );
        }
    }
}
