//! Rule files (YAML, checks, baseline expansion) and alert templates never
//! panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = tiermon_rules::RuleFile::parse(text) {
        for g in &f.groups {
            for r in &g.rules {
                let _ = r.expand();
            }
        }
    }
    if let Ok(t) = tiermon_rules::template::Compiled::new(text) {
        let _ = t.expand(&tiermon_rules::template::Data::default(), None);
    }
});
