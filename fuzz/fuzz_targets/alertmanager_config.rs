//! Alertmanager configuration files and label matchers never panic,
//! whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tiermon_alertmanager::Config::parse(text);
    let _ = tiermon_alertmanager::matchers::parse(text);
});
