//! Sealed chunks: a finished run of one series, compressed with pcodec.
//!
//! Layout: `version (1) | count (varint) | value mode (1) | timestamps length
//! (varint) | timestamps (pco i64) | values (pco f64, or u64 bits)`.
//!
//! pcodec picks, per chunk, what suits the numbers: delta orders for
//! timestamps and counters, float multipliers for decimal gauges, and
//! entropy coding for what remains. Values are checked after encoding; if a
//! run would not come back bit-exact as floats, it is stored as raw bit
//! patterns instead (still compressed), so no NaN payload is ever lost.

use crate::{Error, Result};

const VERSION: u8 = 1;
const VALUES_F64: u8 = 0;
const VALUES_BITS: u8 = 1;

/// Encodes samples (timestamps strictly increasing) into a sealed chunk.
pub fn encode(ts: &[i64], vs: &[f64]) -> Vec<u8> {
    assert_eq!(ts.len(), vs.len(), "one value per timestamp");
    let mut out = vec![VERSION];
    put_varint(&mut out, ts.len() as u64);
    if ts.is_empty() {
        return out;
    }
    let cfg = pco::ChunkConfig::default();
    // pco only fails on invalid configuration, which the default is not.
    let t = pco::standalone::simple_compress(ts, &cfg).unwrap_or_default();
    let (mode, v) = match pco::standalone::simple_compress(vs, &cfg) {
        Ok(v) if same_bits(&v, vs) => (VALUES_F64, v),
        _ => {
            let bits: Vec<u64> = vs.iter().map(|v| v.to_bits()).collect();
            (
                VALUES_BITS,
                pco::standalone::simple_compress(&bits, &cfg).unwrap_or_default(),
            )
        }
    };
    out.push(mode);
    put_varint(&mut out, t.len() as u64);
    out.extend_from_slice(&t);
    out.extend_from_slice(&v);
    out
}

/// Encodes a column of integers (length-prefixed pcodec).
pub fn encode_ints(v: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, v.len() as u64);
    if !v.is_empty() {
        out.extend_from_slice(
            &pco::standalone::simple_compress(v, &pco::ChunkConfig::default()).unwrap_or_default(),
        );
    }
    out
}

/// Decodes [`encode_ints`].
pub fn decode_ints(mut b: &[u8]) -> Result<Vec<i64>> {
    let n = get_varint(&mut b)? as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let v = pco::standalone::simple_decompress::<i64>(b)
        .map_err(|e| Error::Corrupt(format!("pcodec: {e}")))?;
    if v.len() != n {
        return Err(Error::Corrupt(format!(
            "integer column says {n} values, holds {}",
            v.len()
        )));
    }
    Ok(v)
}

fn same_bits(encoded: &[u8], vs: &[f64]) -> bool {
    match pco::standalone::simple_decompress::<f64>(encoded) {
        Ok(back) => {
            back.len() == vs.len() && back.iter().zip(vs).all(|(a, b)| a.to_bits() == b.to_bits())
        }
        Err(_) => false,
    }
}

/// Decodes a sealed chunk into timestamps and values.
pub fn decode(b: &[u8]) -> Result<(Vec<i64>, Vec<f64>)> {
    let (&version, mut rest) = b.split_first().ok_or(Error::Truncated("sealed chunk"))?;
    if version != VERSION {
        return Err(Error::Corrupt(format!(
            "unknown sealed chunk version {version}"
        )));
    }
    let n = get_varint(&mut rest)? as usize;
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let (&mode, mut rest) = rest
        .split_first()
        .ok_or(Error::Truncated("sealed chunk value mode"))?;
    let tlen = get_varint(&mut rest)? as usize;
    if tlen > rest.len() {
        return Err(Error::Truncated("sealed chunk timestamps"));
    }
    let (tb, vb) = rest.split_at(tlen);
    let pco_err = |e: pco::errors::PcoError| Error::Corrupt(format!("pcodec: {e}"));
    let ts = pco::standalone::simple_decompress::<i64>(tb).map_err(pco_err)?;
    let vs = match mode {
        VALUES_F64 => pco::standalone::simple_decompress::<f64>(vb).map_err(pco_err)?,
        VALUES_BITS => pco::standalone::simple_decompress::<u64>(vb)
            .map_err(pco_err)?
            .into_iter()
            .map(f64::from_bits)
            .collect(),
        m => return Err(Error::Corrupt(format!("unknown value mode {m}"))),
    };
    if ts.len() != n || vs.len() != n {
        return Err(Error::Corrupt(format!(
            "sealed chunk says {n} samples, holds {} timestamps and {} values",
            ts.len(),
            vs.len()
        )));
    }
    Ok((ts, vs))
}

/// Number of samples in a sealed chunk, read from its header.
pub fn count(b: &[u8]) -> Result<usize> {
    let mut rest = b.get(1..).ok_or(Error::Truncated("sealed chunk"))?;
    Ok(get_varint(&mut rest)? as usize)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Result<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first().ok_or(Error::Truncated("varint"))?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(Error::Corrupt("varint longer than 10 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(s: &[(i64, f64)]) -> (Vec<i64>, Vec<f64>) {
        s.iter().copied().unzip()
    }

    proptest! {
        #[test]
        fn round_trips_bit_exactly(s in crate::xor::tests::samples()) {
            let (ts, vs) = split(&s);
            let b = encode(&ts, &vs);
            let (ts2, vs2) = decode(&b).unwrap();
            prop_assert_eq!(&ts2, &ts);
            prop_assert_eq!(vs2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), vs.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(count(&b).unwrap(), ts.len());
        }

        #[test]
        fn corrupt_input_is_an_error_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&b);
        }
    }

    #[test]
    fn decimal_gauges_and_regular_timestamps_compress_well() {
        let n = 5760;
        let ts: Vec<i64> = (0..n).map(|i| 1_700_000_000_000 + i * 15_000).collect();
        let vs: Vec<f64> = (0..n)
            .map(|i| (((i * 7919) % 1000) as f64) / 100.0 + 20.0)
            .collect();
        let b = encode(&ts, &vs);
        let per_sample = b.len() as f64 / n as f64;
        assert!(per_sample < 1.5, "{per_sample} bytes per sample");
    }

    #[test]
    fn truncated_chunk_is_an_error() {
        let b = encode(&[1, 2, 3], &[1.0, 2.0, 3.0]);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
