//! Every WeChat errcode wafer acts on (anything else is passed through as WeChat's answer). The
//! numbers are WeChat's global return codes, shared by the official-account, mini-program and
//! Open Platform APIs on `api.weixin.qq.com`; WeCom (`qyapi.weixin.qq.com`) reuses most of them,
//! with the difference `stale_token` spells out.

/// "system busy, retry later": retried with exponential backoff.
pub const SYSTEM_BUSY: i64 = -1;
/// "invalid credential": on `api.weixin.qq.com` the access token is invalid or not the latest;
/// on WeCom it means the secret is wrong, so a fresh token would not help there.
pub const INVALID_CREDENTIAL: i64 = 40001;
/// "invalid access_token".
pub const INVALID_ACCESS_TOKEN: i64 = 40014;
/// "access_token expired".
pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
/// "reach max api daily quota limit": no further call for this credential until UTC midnight.
pub const DAILY_QUOTA_REACHED: i64 = 45009;

/// Whether `errcode` means "the access token you used is stale: refresh it and ask again", for a
/// call to WeCom (`work`) or to `api.weixin.qq.com`.
pub fn stale_token(errcode: i64, work: bool) -> bool {
    matches!(errcode, INVALID_ACCESS_TOKEN | ACCESS_TOKEN_EXPIRED)
        || (errcode == INVALID_CREDENTIAL && !work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_token_on_each_host() {
        for code in [40001, 40014, 42001] {
            assert!(stale_token(code, false), "{code} on api.weixin.qq.com");
        }
        // WeCom's 40001 is a wrong secret: refreshing the token would fail the same way.
        assert!(!stale_token(40001, true));
        assert!(stale_token(40014, true) && stale_token(42001, true));
        for code in [-1, 0, 40013, 40125, 45009, 61023] {
            assert!(
                !stale_token(code, false) && !stale_token(code, true),
                "{code}"
            );
        }
    }
}
