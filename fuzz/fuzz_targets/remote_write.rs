//! Any bytes as a decompressed remote_write request, read in place: never
//! a panic; every series' labels and samples are read to the end or to
//! an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for series in tiermon_proto::remote_write::series(data) {
        let Ok(series) = series else { break };
        let _ = series.label_bytes();
        let _ = series.labels();
        let _ = series.samples(|_, _| {});
    }
});
