//! The configuration loader on arbitrary TOML: never a panic, and a database URL's password is
//! never quoted in its errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mbg_provision::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = format!("[database]\nurl = \"postgres://u:fuzzpw-4242@h/db\"\n{text}");
    if let Err(e) = Config::from_toml(&text) {
        let message = e.to_string();
        assert!(!message.contains("fuzzpw-4242"), "{message}");
    }
});
