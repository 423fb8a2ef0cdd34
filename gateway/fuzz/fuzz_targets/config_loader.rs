//! The config loader (TOML parse + validation) never panics, whatever the file says; an error
//! always names FILE:LINE:COL.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.toml");
    if let Err(errors) = gateway::config::load_str(path, text, gateway::config::Mode::Check) {
        for e in errors {
            assert!(e.starts_with("fuzz.toml:"), "{e}");
        }
    }
});
