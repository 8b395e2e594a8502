//! Any bytes, either format, both layers: never a panic; and whatever
//! parses re-encodes to text that parses to the same families.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiermon_exposition::{Entry, Format, Parser, encode, parse_families};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        if let Ok(mut p) = Parser::from_bytes(data, format) {
            while let Ok(Some(e)) = p.next_entry() {
                if let Entry::Sample(s) = e {
                    let _ = s.labels().count();
                    if let Some(ex) = &s.exemplar {
                        let _ = ex.labels().count();
                    }
                }
            }
        }
        if let Ok(fams) = parse_families(data, format) {
            let text = encode(&fams, format);
            let again = parse_families(text.as_bytes(), format).expect("re-encoded text parses");
            assert_eq!(encode(&again, format), text, "encoding is stable");
        }
    }
});
