//! Any bytes as a push stream of compact batches, through one stream
//! dictionary: never a panic, and a malformed batch is an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tiermon_federation::fuzz_compact_stream(data);
});
