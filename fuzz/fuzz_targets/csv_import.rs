//! `extension import`'s CSV parser: never a panic, whatever the file holds.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let nodes: HashSet<String> = ["pbx1".to_string(), "pbx2".to_string()].into();
    let _ = mbg_provision::import::parse(data, &nodes);
});
