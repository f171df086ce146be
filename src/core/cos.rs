//! Tencent Cloud COS signatures for clients that upload directly: the legacy v4 "reusable"
//! (multi-effect) and "nonreusable" (single-effect) signatures of the Wafer protocol, and the v5
//! `Authorization` header. The algorithms are in `crypto`; this module supplies the clock and
//! the random part and interprets the callers' parameters.

use crate::core::error::Error;
use crate::crypto::{self, CosV5Request};

/// The longest validity we sign for: COS itself caps v4 signatures at 90 days.
const MAX_EXPIRY_SECS: u64 = 90 * 86400;

/// v4 multi-effect signature, for the one file `filepath` names (`f = /APPID/BUCKET/PATH`), or
/// for the whole bucket when there is none (`f` empty): never wider than asked. `expiration` is
/// either seconds from now or, when larger than `now`, an absolute unix time (clients use both
/// forms).
#[allow(clippy::too_many_arguments)]
pub fn v4_reusable(
    appid: &str,
    bucket: &str,
    sid: &str,
    skey: &str,
    filepath: Option<&str>,
    expiration: u64,
    now: u64,
    rand: u32,
) -> Result<String, Error> {
    let expire = if expiration > now {
        expiration
    } else {
        now + expiration
    };
    if expiration == 0 || expire - now > MAX_EXPIRY_SECS {
        return Err(Error::BadRequest(
            "expiration must be between 1 s and 90 days".into(),
        ));
    }
    let fileid = filepath
        .map(|path| crypto::cos_v4_fileid(appid, bucket, path))
        .unwrap_or_default();
    Ok(crypto::cos_v4_sign(
        appid, bucket, sid, skey, expire, now, rand, &fileid,
    ))
}

/// v4 single-effect signature for one file (`e = 0`, `f = /APPID/BUCKET/PATH`; an empty
/// `filepath` gives `f = /APPID/BUCKET/`).
pub fn v4_nonreusable(
    appid: &str,
    bucket: &str,
    sid: &str,
    skey: &str,
    filepath: &str,
    now: u64,
    rand: u32,
) -> String {
    let fileid = crypto::cos_v4_fileid(appid, bucket, filepath);
    crypto::cos_v4_sign(appid, bucket, sid, skey, 0, now, rand, &fileid)
}

/// The signing window of a v5 signature: `key_time` as given (`start;end`), else now to
/// now + `expires_secs` (default 600).
pub fn v5_key_time(
    key_time: Option<&str>,
    expires_secs: Option<u64>,
    now: u64,
) -> Result<String, Error> {
    if let Some(kt) = key_time {
        let ok = kt
            .split_once(';')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .is_some_and(|(a, b)| a <= b);
        return if ok {
            Ok(kt.to_string())
        } else {
            Err(Error::BadRequest(
                "key_time must be \"start;end\" in unix seconds".into(),
            ))
        };
    }
    let secs = expires_secs.unwrap_or(600);
    if secs == 0 || secs > MAX_EXPIRY_SECS {
        return Err(Error::BadRequest(
            "expires_secs must be between 1 s and 90 days".into(),
        ));
    }
    Ok(format!("{now};{}", now + secs))
}

pub fn v5_authorization(
    secret_id: &str,
    secret_key: &str,
    key_time: &str,
    req: &CosV5Request,
) -> String {
    crypto::cos_v5_authorization(secret_id, secret_key, key_time, req)
}

/// 10 random decimal digits at most, as COS v4's `r`.
pub fn v4_rand() -> Result<u32, Error> {
    Ok(u32::from_le_bytes(crate::ids::random_bytes::<4>()?) % 1_000_000_000)
}
