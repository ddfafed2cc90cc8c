//! `config::parse` on arbitrary text: never panics, and a refusal always names a problem.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = certgate::config::parse(text, Path::new("/fuzz/certgate.yaml")) {
        assert!(!problems.to_string().is_empty());
    }
});
