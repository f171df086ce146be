//! Form and query-string decoding (`/mina/*` form bodies, every query string): any text decodes
//! to pairs without a panic, and plain `k=v` pairs come back as they were.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = wafer::api::form_decode(&text);
    let plain: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let pairs = wafer::api::form_decode(&format!("k={plain}"));
    assert_eq!(pairs, vec![("k".to_string(), plain)]);
});
