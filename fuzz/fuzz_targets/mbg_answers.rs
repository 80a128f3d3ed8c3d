//! The MBG's JSON answers (device and ICP lists) and its refusals: never a panic, and the error
//! for a malformed device list never quotes a password that it carried as a password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mbg_provision::mbg::answers;

const PASSWORD: &str = "fuzz-secret-password";

fuzz_target!(|data: &[u8]| {
    if let Err(e) = answers::devices(data) {
        let text = String::from_utf8_lossy(data);
        // Only where the password is unmistakably one: once, as the value of its key.
        if text.matches(PASSWORD).count() == 1
            && text.contains(&format!("\"setside_password\":\"{PASSWORD}\""))
        {
            let message = e.to_string();
            assert!(!message.contains(PASSWORD), "{message}");
        }
    }
    let _ = answers::icps(data);
    let status = data.first().map_or(400, |b| 400 + u16::from(*b % 200));
    let _ = answers::refusal(status, data);
});
