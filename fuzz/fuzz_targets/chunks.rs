//! Any bytes as chunks: a head (XOR) chunk, and a sealed chunk read whole
//! and by pages for a time range. Never a panic; what a range read gives
//! in its range is what the whole decode gives there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiermon_chunkenc::{XorChunk, sealed};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = XorChunk::decode_into(data, &mut out);
    let Some((range, chunk)) = data.split_first_chunk::<16>() else {
        return;
    };
    let mint = i64::from_le_bytes(range[..8].try_into().unwrap());
    let maxt = i64::from_le_bytes(range[8..].try_into().unwrap());
    let whole = sealed::decode(chunk);
    let mut part = Vec::new();
    let read = sealed::decode_pages_into(chunk, mint, maxt, &mut part);
    if let (Ok((ts, vs)), Ok(())) = (whole, read) {
        let want: Vec<(i64, u64)> = ts
            .into_iter()
            .zip(vs)
            .filter(|s| s.0 >= mint && s.0 <= maxt)
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        let got: Vec<(i64, u64)> = part
            .into_iter()
            .filter(|s| s.0 >= mint && s.0 <= maxt)
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        assert_eq!(got, want);
    }
});
