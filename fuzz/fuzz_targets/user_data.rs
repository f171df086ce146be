//! Mini-program `encryptedData`: `decrypt_user_data` on arbitrary key, ciphertext and IV text,
//! `check_watermark` on arbitrary plaintext, and an encrypt/decrypt round trip. Errors are
//! fine; panics and round-trip mismatches are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wafer_crypto as crypto;

/// A valid 16-byte session key (base64), as WeChat hands out.
const KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next(),
    );
    // Attacker-controlled ciphertext and IV under a real key, with and without the IV.
    let _ = crypto::decrypt_user_data(KEY, a, Some(b));
    let _ = crypto::decrypt_user_data(KEY, a, None);
    // Everything attacker-controlled, the key included.
    let _ = crypto::decrypt_user_data(a, b, c);
    // Plaintext parsing.
    let _ = crypto::check_watermark(data, "wx4f4bc4dec97d474b");
    let _ = crypto::parse_user_data(data);
    // Round trip.
    let iv = [7u8; 16];
    let ct = crypto::encrypt_user_data(KEY, data, Some(&iv)).expect("a valid key encrypts");
    let iv_b64 = "BwcHBwcHBwcHBwcHBwcHBw==";
    let back = crypto::decrypt_user_data(KEY, &ct, Some(iv_b64)).expect("round trip decrypts");
    assert_eq!(back, data);
});
