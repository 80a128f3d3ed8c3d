//! The token answers of `POST initiate` and `POST token` (form-encoded): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mbg_provision::mbg::answers;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = answers::token(data) {
        // Debug output never shows the token.
        let debug = format!("{token:?}");
        assert!(!debug.contains("oauth_token="), "{debug}");
    }
});
