//! The Wafer envelope parser (`POST /mina_auth/`): any bytes give a name and a para object or
//! one of the contract's envelope errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match wafer::api::envelope::parse_envelope(data) {
        Ok((name, _para)) => assert!(!name.is_empty()),
        Err(wafer::api::envelope::EnvelopeError(code, _)) => assert!(matches!(code, 1009 | 1002 | 1011)),
    }
});
