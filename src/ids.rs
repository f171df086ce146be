//! Identifiers and secrets drawn from the operating system's CSPRNG, and the one-way hash under
//! which an `skey` is stored. Kept apart from `crypto` so that `crypto` stays free of I/O.

use sha2::{Digest, Sha256};

/// 16 random bytes from the OS, or an error the caller turns into a 500 (never a weak fallback).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf)?;
    Ok(buf)
}

/// 32 lowercase hex characters (128 bits) from the CSPRNG: the shape of `id` and `skey`.
pub fn random_hex32() -> Result<String, getrandom::Error> {
    Ok(crate::crypto::hex(&random_bytes::<16>()?))
}

/// sha256 of the skey: what the sessions table stores and looks up, so a copy of the database
/// does not hand out live sessions.
pub fn skey_hash(skey: &str) -> [u8; 32] {
    Sha256::digest(skey.as_bytes()).into()
}

/// True for the shape of an `id` or `skey`: exactly 32 lowercase hex characters.
pub fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_has_the_contract_shape_and_differs() {
        let a = random_hex32().unwrap();
        let b = random_hex32().unwrap();
        assert!(is_hex32(&a) && is_hex32(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn skey_hash_is_sha256() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            crate::crypto::hex(&skey_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex32_shape() {
        for (s, ok) in [
            ("0123456789abcdef0123456789abcdef", true),
            ("0123456789ABCDEF0123456789abcdef", false),
            ("0123456789abcdef0123456789abcde", false),
            ("0123456789abcdef0123456789abcdeg", false),
        ] {
            assert_eq!(is_hex32(s), ok, "{s}");
        }
    }
}
