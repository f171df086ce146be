//! WXBizMsgCrypt: `MsgCrypt::decrypt` on arbitrary `Encrypt` text (current and previous key),
//! and an encrypt/decrypt round trip of arbitrary messages. Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wafer_crypto::MsgCrypt;

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const PREV: &str = "GFEDCBA9876543210zyxwvutsrqponmlkjihgfedcba";

fuzz_target!(|data: &[u8]| {
    let mc = MsgCrypt::new("token", KEY, Some(PREV), "wxb11529c136998cb6").expect("valid keys");
    let text = String::from_utf8_lossy(data);
    let _ = mc.decrypt(&text);
    let _ = mc.verify(&text, "1409304348", "xxxxxx", &text);
    let mut random = [0u8; 16];
    for (r, d) in random.iter_mut().zip(data) {
        *r = *d;
    }
    let ct = mc.encrypt(&text, &random);
    assert_eq!(mc.decrypt(&ct).as_deref(), Ok(&*text));
});
