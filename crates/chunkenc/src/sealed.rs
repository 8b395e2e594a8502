//! Sealed chunks: a finished run of one series, compressed with pcodec.
//!
//! Layout: `version (1) | count (varint) | value mode (1) | [decimal scale
//! (1), scaled mode only] | timestamps length (varint) | timestamps (pco
//! i64, or a progression) | values (pco f64, u64 bits, i64 scaled integers,
//! or one constant)`.
//!
//! Values that are decimals with few digits (what exporters print: CPU
//! seconds with two decimals, byte counters, temperatures) are stored as
//! integers scaled by a power of ten, as VictoriaMetrics does; pcodec
//! compresses their deltas much better than the floats. Other runs are
//! stored as floats, for pcodec's own float modes; a run that would not
//! come back bit-exact as floats is stored as raw bit patterns (still
//! compressed), so no NaN payload is ever lost. Every column is compressed
//! twice, with pcodec's automatic delta choice and with plain first-order
//! deltas, and the shorter kept: the automatic choice misses runs that are
//! constant but for a few steps (filesystem sizes, info metrics), which
//! plain deltas make almost free. Runs simpler still are stored as
//! formulas, without pcodec's header of some 25 bytes: one repeated value
//! (mode `VALUES_CONST`, its 8 bytes), and integer columns that are
//! arithmetic progressions (regular timestamps, window starts, counts) as
//! their first value and step.

//!
//! A paged chunk (version 2, [`encode_paged`]) holds a longer run, a
//! closed partition's, in pages (its blocks): one pcodec chunk per column
//! whose pages decode on their own, and each page's count and first
//! timestamp up front, so that a read of a short range decodes only the
//! pages it needs ([`decode_pages_into`]) while the run pays one set of
//! headers. Layout: `2 | count (varint) | pages (varint) | per page:
//! count, first timestamp's zigzag delta from the previous page's (varints)
//! | value mode (1) | [scale (1)] | timestamps length (varint) |
//! timestamps | values`, where a paged pcodec column is `PCO_PAGED |
//! header and chunk metadata length (varint) | header and chunk metadata |
//! each page's length (varints) | the pages`, and progressions and
//! constants are formulas as in version 1.

use pco::data_types::Number;
use pco::wrapped::{FileCompressor, FileDecompressor};
use pco::{ChunkConfig, DeltaSpec, PagingSpec};

use crate::{Error, Result};

const VERSION: u8 = 1;
const VERSION_PAGED: u8 = 2;
const VALUES_F64: u8 = 0;
const VALUES_BITS: u8 = 1;
const VALUES_SCALED: u8 = 2;
const VALUES_CONST: u8 = 3;

/// First byte of an integer column that is an arithmetic progression (a
/// pcodec column begins with its magic "pco!", never with this).
const INTS_STEP: u8 = 0;

/// First byte of a paged pcodec column.
const PCO_PAGED: u8 = 1;

/// Most values a column that is stored as a formula (a constant or a
/// progression) may claim, so that damaged input cannot ask for an
/// unbounded allocation; longer columns are never written as formulas.
const MAX_FORMULA_VALUES: usize = 1 << 20;

/// Powers of ten tried as scales, each exact in `f64`.
const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Largest magnitude below which every integer is exact in `f64`.
const EXACT_INTS: f64 = 9_007_199_254_740_992.0;

/// Encodes samples (timestamps strictly increasing) into a sealed chunk.
pub fn encode(ts: &[i64], vs: &[f64]) -> Vec<u8> {
    assert_eq!(ts.len(), vs.len(), "one value per timestamp");
    let mut out = vec![VERSION];
    put_varint(&mut out, ts.len() as u64);
    if ts.is_empty() {
        return out;
    }
    let t = int_column(ts, None);
    let (header, v) = values(vs, None);
    out.extend_from_slice(&header);
    put_varint(&mut out, t.len() as u64);
    out.extend_from_slice(&t);
    out.extend_from_slice(&v);
    out
}

/// Encodes a column of floats bit-exactly, as a chunk's values are:
/// `value mode (1) | [decimal scale (1)] | pco`.
pub fn encode_floats(vs: &[f64]) -> Vec<u8> {
    let (mut out, v) = values(vs, None);
    out.extend_from_slice(&v);
    out
}

/// Decodes [`encode_floats`], which must hold `n` values.
pub fn decode_floats(b: &[u8], n: usize) -> Result<Vec<f64>> {
    let (&mode, rest) = b.split_first().ok_or(Error::Truncated("float column"))?;
    let (scale, rest) = scale_of(mode, rest)?;
    let vs = decode_values(mode, scale, rest, n)?;
    if vs.len() != n {
        return Err(Error::Corrupt(format!(
            "float column should hold {n} values, holds {}",
            vs.len()
        )));
    }
    Ok(vs)
}

/// The value header (mode, and the scale for scaled integers) and the
/// compressed values, paged by `pages` if given.
fn values(vs: &[f64], pages: Option<&[usize]>) -> (Vec<u8>, Vec<u8>) {
    if let Some(first) = vs.first()
        && vs.len() <= MAX_FORMULA_VALUES
        && vs.iter().all(|v| v.to_bits() == first.to_bits())
    {
        // Info metrics, `up`, sizes of idle filesystems: one value.
        return (vec![VALUES_CONST], first.to_bits().to_le_bytes().to_vec());
    }
    if let Some((scale, ints)) = scaled(vs) {
        return (vec![VALUES_SCALED, scale], column(&ints, pages));
    }
    let v = column(vs, pages);
    let back = match pages {
        None => pco::standalone::simple_decompress::<f64>(&v).map_err(|_| ()),
        Some(p) => Pages::read(&v, p)
            .and_then(|c| c.decode::<f64>(0..p.len()))
            .map_err(|_| ()),
    };
    if back.is_ok_and(|b| {
        b.len() == vs.len() && b.iter().zip(vs).all(|(a, b)| a.to_bits() == b.to_bits())
    }) {
        (vec![VALUES_F64], v)
    } else {
        let bits: Vec<u64> = vs.iter().map(|v| v.to_bits()).collect();
        (vec![VALUES_BITS], column(&bits, pages))
    }
}

/// A pcodec column: [`compress`]ed whole, or [`paged_compress`]ed by
/// `pages`.
fn column<T: Number>(v: &[T], pages: Option<&[usize]>) -> Vec<u8> {
    match pages {
        None => compress(v),
        Some(p) => paged_compress(v, p),
    }
}

/// Reads the decimal scale that follows a scaled mode.
fn scale_of(mode: u8, rest: &[u8]) -> Result<(f64, &[u8])> {
    if mode != VALUES_SCALED {
        return Ok((1.0, rest));
    }
    let (&d, rest) = rest
        .split_first()
        .ok_or(Error::Truncated("sealed chunk decimal scale"))?;
    let scale = *POW10
        .get(usize::from(d))
        .ok_or_else(|| Error::Corrupt(format!("decimal scale {d} out of range")))?;
    Ok((scale, rest))
}

/// Decodes values stored in `mode`; `n`, the count the header gives, is
/// what a constant run repeats.
fn decode_values(mode: u8, scale: f64, vb: &[u8], n: usize) -> Result<Vec<f64>> {
    let pco_err = |e: pco::errors::PcoError| Error::Corrupt(format!("pcodec: {e}"));
    Ok(match mode {
        VALUES_CONST => {
            let bits: [u8; 8] = vb
                .try_into()
                .map_err(|_| Error::Corrupt(format!("constant value of {} bytes", vb.len())))?;
            vec![f64::from_bits(u64::from_le_bytes(bits)); formula_len(n)?]
        }
        VALUES_F64 => pco::standalone::simple_decompress::<f64>(vb).map_err(pco_err)?,
        VALUES_BITS => pco::standalone::simple_decompress::<u64>(vb)
            .map_err(pco_err)?
            .into_iter()
            .map(f64::from_bits)
            .collect(),
        VALUES_SCALED => pco::standalone::simple_decompress::<i64>(vb)
            .map_err(pco_err)?
            .into_iter()
            .map(|i| i as f64 / scale)
            .collect(),
        m => return Err(Error::Corrupt(format!("unknown value mode {m}"))),
    })
}

/// The smallest decimal scale `d` for which every value is an integer `i`
/// with `i / 10^d` giving back the value's very bits, and those integers.
/// `None` for runs with non-finite values, negative zeros or more digits.
fn scaled(vs: &[f64]) -> Option<(u8, Vec<i64>)> {
    if !vs.iter().all(|v| v.is_finite()) {
        return None;
    }
    let mut ints = Vec::with_capacity(vs.len());
    'scale: for (d, &m) in POW10.iter().enumerate() {
        ints.clear();
        for &v in vs {
            let x = (v * m).round();
            if x.abs() > EXACT_INTS {
                continue 'scale;
            }
            let i = x as i64;
            if (i as f64 / m).to_bits() != v.to_bits() {
                continue 'scale;
            }
            ints.push(i);
        }
        return Some((d as u8, ints));
    }
    None
}

/// Compresses a column with pcodec's automatic delta choice and with
/// first-order deltas, and keeps the shorter.
fn compress<T: Number>(v: &[T]) -> Vec<u8> {
    let auto = ChunkConfig::default();
    let deltas = ChunkConfig::default().with_delta_spec(DeltaSpec::TryConsecutive(1));
    // pco only fails on invalid configuration, which these are not.
    let a = pco::standalone::simple_compress(v, &auto).unwrap_or_default();
    let b = pco::standalone::simple_compress(v, &deltas).unwrap_or_default();
    if !b.is_empty() && b.len() < a.len() {
        b
    } else {
        a
    }
}

/// An integer column: an arithmetic progression (window starts, counts,
/// timestamps of recording rules) as `INTS_STEP | first | step` (zigzag
/// varints), anything else as pcodec ([`column`], paged by `pages` if
/// given).
fn int_column(v: &[i64], pages: Option<&[usize]>) -> Vec<u8> {
    if v.len() <= MAX_FORMULA_VALUES
        && let Some(formula) = progression(v)
    {
        return formula;
    }
    column(v, pages)
}

/// Decodes [`int_column`] of `n` values.
fn decode_int_column(b: &[u8], n: usize) -> Result<Vec<i64>> {
    if b.first() == Some(&INTS_STEP) {
        return progression_values(b, 0, n);
    }
    pco::standalone::simple_decompress::<i64>(b).map_err(|e| Error::Corrupt(format!("pcodec: {e}")))
}

/// Values `start..start + n` of the progression [`progression`] wrote.
fn progression_values(mut b: &[u8], start: usize, n: usize) -> Result<Vec<i64>> {
    b = b.get(1..).unwrap_or_default();
    let first = unzigzag(get_varint(&mut b)?);
    let step = unzigzag(get_varint(&mut b)?);
    if !b.is_empty() {
        return Err(Error::Corrupt(format!(
            "{} bytes after an integer progression",
            b.len()
        )));
    }
    let mut x = first.wrapping_add(step.wrapping_mul(start as i64));
    let mut out = Vec::with_capacity(formula_len(n)?);
    for _ in 0..n {
        out.push(x);
        x = x.wrapping_add(step);
    }
    Ok(out)
}

fn formula_len(n: usize) -> Result<usize> {
    if n > MAX_FORMULA_VALUES {
        return Err(Error::Corrupt(format!(
            "a column of {n} values (at most {MAX_FORMULA_VALUES})"
        )));
    }
    Ok(n)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes a column of integers: its length, then pcodec or, for an
/// arithmetic progression, its first value and step.
pub fn encode_ints(v: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, v.len() as u64);
    if !v.is_empty() {
        out.extend_from_slice(&int_column(v, None));
    }
    out
}

/// Decodes [`encode_ints`].
pub fn decode_ints(mut b: &[u8]) -> Result<Vec<i64>> {
    let n = get_varint(&mut b)? as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let v = decode_int_column(b, n)?;
    if v.len() != n {
        return Err(Error::Corrupt(format!(
            "integer column says {n} values, holds {}",
            v.len()
        )));
    }
    Ok(v)
}

/// A chunk's value mode and scale, timestamp column and value column,
/// from what follows its counts.
fn columns(rest: &[u8]) -> Result<(u8, f64, &[u8], &[u8])> {
    let (&mode, rest) = rest
        .split_first()
        .ok_or(Error::Truncated("sealed chunk value mode"))?;
    let (scale, mut rest) = scale_of(mode, rest)?;
    let tlen = get_varint(&mut rest)? as usize;
    if tlen > rest.len() {
        return Err(Error::Truncated("sealed chunk timestamps"));
    }
    let (tb, vb) = rest.split_at(tlen);
    Ok((mode, scale, tb, vb))
}

/// Decodes a sealed chunk into timestamps and values.
pub fn decode(b: &[u8]) -> Result<(Vec<i64>, Vec<f64>)> {
    let (&version, mut rest) = b.split_first().ok_or(Error::Truncated("sealed chunk"))?;
    if version == VERSION_PAGED {
        let (counts, _, rest) = page_table(rest)?;
        return decode_paged(&counts, rest, 0..counts.len());
    }
    if version != VERSION {
        return Err(Error::Corrupt(format!(
            "unknown sealed chunk version {version}"
        )));
    }
    let n = get_varint(&mut rest)? as usize;
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let (mode, scale, tb, vb) = columns(rest)?;
    let ts = decode_int_column(tb, n)?;
    let vs = decode_values(mode, scale, vb, n)?;
    samples_of(n, ts, vs)
}

/// Timestamps and values decoded for `n` samples, if there are `n` of each.
fn samples_of(n: usize, ts: Vec<i64>, vs: Vec<f64>) -> Result<(Vec<i64>, Vec<f64>)> {
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

/// Encodes samples (timestamps strictly increasing) into a paged chunk
/// whose pages hold `pages` samples each, in order (see the module
/// documentation). One page, or a run longer than a formula may claim,
/// gives a version 1 chunk.
pub fn encode_paged(ts: &[i64], vs: &[f64], pages: &[usize]) -> Vec<u8> {
    assert_eq!(ts.len(), vs.len(), "one value per timestamp");
    assert_eq!(
        pages.iter().sum::<usize>(),
        ts.len(),
        "pages hold every sample"
    );
    assert!(pages.iter().all(|&n| n > 0), "no empty page");
    if pages.len() < 2 || ts.len() > MAX_FORMULA_VALUES {
        return encode(ts, vs);
    }
    let mut out = vec![VERSION_PAGED];
    put_varint(&mut out, ts.len() as u64);
    put_varint(&mut out, pages.len() as u64);
    let (mut at, mut prev) = (0, 0i64);
    for &n in pages {
        put_varint(&mut out, n as u64);
        put_varint(&mut out, zigzag(ts[at].wrapping_sub(prev)));
        prev = ts[at];
        at += n;
    }
    let (header, v) = values(vs, Some(pages));
    out.extend_from_slice(&header);
    let t = int_column(ts, Some(pages));
    put_varint(&mut out, t.len() as u64);
    out.extend_from_slice(&t);
    out.extend_from_slice(&v);
    out
}

/// `INTS_STEP | first | step` for an arithmetic progression.
fn progression(v: &[i64]) -> Option<Vec<u8>> {
    let [first, ref rest @ ..] = *v else {
        return None;
    };
    let step = rest.first().map_or(0, |&s| s.wrapping_sub(first));
    if !v.windows(2).all(|w| w[1] == w[0].wrapping_add(step)) {
        return None;
    }
    let mut out = vec![INTS_STEP];
    put_varint(&mut out, zigzag(first));
    put_varint(&mut out, zigzag(step));
    Some(out)
}

/// A paged pcodec column, with pcodec's automatic delta choice or with
/// first-order deltas, whichever is shorter.
fn paged_compress<T: Number>(v: &[T], pages: &[usize]) -> Vec<u8> {
    let paging = PagingSpec::Exact(pages.to_vec());
    let auto = ChunkConfig::default().with_paging_spec(paging.clone());
    let deltas = ChunkConfig::default()
        .with_delta_spec(DeltaSpec::TryConsecutive(1))
        .with_paging_spec(paging);
    let try_one = |config: &ChunkConfig| -> pco::errors::PcoResult<Vec<u8>> {
        let fc = FileCompressor::default();
        let mut cc = fc.chunk_compressor(v, config)?;
        let head = cc.write_meta(fc.write_header(Vec::new())?)?;
        let mut out = vec![PCO_PAGED];
        put_varint(&mut out, head.len() as u64);
        out.extend_from_slice(&head);
        let bodies = (0..pages.len())
            .map(|i| cc.write_page(i, Vec::new()))
            .collect::<pco::errors::PcoResult<Vec<_>>>()?;
        for b in &bodies {
            put_varint(&mut out, b.len() as u64);
        }
        for b in bodies {
            out.extend_from_slice(&b);
        }
        Ok(out)
    };
    // pco only fails on invalid configuration, which these are not.
    let a = try_one(&auto).unwrap_or_default();
    let b = try_one(&deltas).unwrap_or_default();
    if !b.is_empty() && (a.is_empty() || b.len() < a.len()) {
        b
    } else {
        a
    }
}

/// A paged pcodec column, split into its parts.
struct Pages<'a> {
    head: &'a [u8],
    bodies: Vec<&'a [u8]>,
    counts: &'a [usize],
}

impl<'a> Pages<'a> {
    fn read(mut b: &'a [u8], counts: &'a [usize]) -> Result<Self> {
        if b.first() != Some(&PCO_PAGED) {
            return Err(Error::Corrupt("paged column without its marker".into()));
        }
        b = &b[1..];
        let len = get_varint(&mut b)? as usize;
        if len > b.len() {
            return Err(Error::Truncated("paged column header"));
        }
        let (head, mut rest) = b.split_at(len);
        let mut lens = Vec::with_capacity(counts.len());
        for _ in counts {
            lens.push(get_varint(&mut rest)? as usize);
        }
        let mut bodies = Vec::with_capacity(counts.len());
        for len in lens {
            if len > rest.len() {
                return Err(Error::Truncated("paged column page"));
            }
            let (page, r) = rest.split_at(len);
            bodies.push(page);
            rest = r;
        }
        if !rest.is_empty() {
            return Err(Error::Corrupt(format!(
                "{} bytes after a paged column's pages",
                rest.len()
            )));
        }
        Ok(Self {
            head,
            bodies,
            counts,
        })
    }

    /// The numbers of pages `range`.
    fn decode<T: Number>(&self, range: std::ops::Range<usize>) -> Result<Vec<T>> {
        let pco_err = |e: pco::errors::PcoError| Error::Corrupt(format!("pcodec: {e}"));
        let (fd, rest) = FileDecompressor::new(self.head).map_err(pco_err)?;
        let (mut cd, _) = fd.chunk_decompressor::<T, &[u8]>(rest).map_err(pco_err)?;
        let n: usize = self.counts[range.clone()].iter().sum();
        let mut out = vec![T::default(); n];
        let mut at = 0;
        for i in range {
            let count = self.counts[i];
            let mut pd = cd
                .page_decompressor(self.bodies[i], count)
                .map_err(pco_err)?;
            let got = pd.read(&mut out[at..at + count]).map_err(pco_err)?;
            if got.n_processed != count {
                return Err(Error::Corrupt(format!(
                    "a page of {count} numbers decoded {}",
                    got.n_processed
                )));
            }
            at += count;
        }
        Ok(out)
    }
}

/// The page table of a paged chunk: each page's count and first
/// timestamp, and what follows the table.
fn page_table(mut b: &[u8]) -> Result<(Vec<usize>, Vec<i64>, &[u8])> {
    let n = get_varint(&mut b)? as usize;
    let n = formula_len(n)?;
    let pages = get_varint(&mut b)? as usize;
    if pages < 2 || pages > n {
        return Err(Error::Corrupt(format!("{pages} pages for {n} samples")));
    }
    let (mut counts, mut firsts) = (Vec::with_capacity(pages), Vec::with_capacity(pages));
    let (mut sum, mut prev) = (0usize, 0i64);
    for _ in 0..pages {
        let c = get_varint(&mut b)? as usize;
        let t = prev.wrapping_add(unzigzag(get_varint(&mut b)?));
        sum = sum.saturating_add(c);
        if c == 0 || sum > n || firsts.last().is_some_and(|&l| t <= l) {
            return Err(Error::Corrupt("paged chunk page table".into()));
        }
        counts.push(c);
        firsts.push(t);
        prev = t;
    }
    if sum != n {
        return Err(Error::Corrupt(format!(
            "paged chunk's pages hold {sum} samples, its header says {n}"
        )));
    }
    Ok((counts, firsts, b))
}

/// Appends to `out` the samples of a sealed chunk's pages that may hold
/// samples in `[mint, maxt]`: of a paged chunk, only those pages (with any
/// samples of theirs outside the range); of a version 1 chunk, every
/// sample.
pub fn decode_pages_into(b: &[u8], mint: i64, maxt: i64, out: &mut Vec<(i64, f64)>) -> Result<()> {
    let (&version, rest) = b.split_first().ok_or(Error::Truncated("sealed chunk"))?;
    if version != VERSION_PAGED {
        let (ts, vs) = decode(b)?;
        out.extend(ts.into_iter().zip(vs));
        return Ok(());
    }
    let (counts, firsts, rest) = page_table(rest)?;
    // Page i holds [firsts[i], firsts[i + 1]).
    let lo = firsts.partition_point(|&f| f <= mint).saturating_sub(1);
    let hi = firsts.partition_point(|&f| f <= maxt);
    if lo >= hi {
        return Ok(());
    }
    let (ts, vs) = decode_paged(&counts, rest, lo..hi)?;
    out.extend(ts.into_iter().zip(vs));
    Ok(())
}

/// Timestamps and values of pages `range` of a paged chunk, after its
/// page table.
fn decode_paged(
    counts: &[usize],
    rest: &[u8],
    range: std::ops::Range<usize>,
) -> Result<(Vec<i64>, Vec<f64>)> {
    let (mode, scale, tb, vb) = columns(rest)?;
    let start: usize = counts[..range.start].iter().sum();
    let len: usize = counts[range.clone()].iter().sum();
    let ts = if tb.first() == Some(&INTS_STEP) {
        progression_values(tb, start, len)?
    } else {
        Pages::read(tb, counts)?.decode::<i64>(range.clone())?
    };
    let vs = match mode {
        VALUES_CONST => decode_values(mode, scale, vb, len)?,
        VALUES_F64 => Pages::read(vb, counts)?.decode::<f64>(range)?,
        VALUES_BITS => Pages::read(vb, counts)?
            .decode::<u64>(range)?
            .into_iter()
            .map(f64::from_bits)
            .collect(),
        VALUES_SCALED => Pages::read(vb, counts)?
            .decode::<i64>(range)?
            .into_iter()
            .map(|i| i as f64 / scale)
            .collect(),
        m => return Err(Error::Corrupt(format!("unknown value mode {m}"))),
    };
    samples_of(len, ts, vs)
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
        fn decimal_runs_round_trip_bit_exactly(
            ints in proptest::collection::vec(-1_000_000_000_000i64..1_000_000_000_000, 1..300),
            d in 0usize..10,
            odd in proptest::option::of((0usize..300, any::<u64>())),
        ) {
            let mut vs: Vec<f64> = ints.iter().map(|&i| i as f64 / POW10[d]).collect();
            // Now and then one value that is no short decimal (NaN, -0.0, ...).
            if let Some((at, bits)) = odd {
                let at = at % vs.len();
                vs[at] = f64::from_bits(bits);
            }
            let ts: Vec<i64> = (0..vs.len() as i64).map(|i| i * 15_000).collect();
            let (ts2, vs2) = decode(&encode(&ts, &vs)).unwrap();
            prop_assert_eq!(ts2, ts);
            let col = decode_floats(&encode_floats(&vs), vs.len()).unwrap();
            prop_assert_eq!(col.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), vs.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(vs2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), vs.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }

        #[test]
        fn corrupt_input_is_an_error_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&b);
            let _ = decode_pages_into(&b, i64::MIN, i64::MAX, &mut Vec::new());
        }

        #[test]
        fn paged_chunks_round_trip_and_read_their_pages(
            s in crate::xor::tests::samples(),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
            range in (any::<proptest::sample::Index>(), any::<proptest::sample::Index>()),
        ) {
            let (ts, vs) = split(&s);
            let pages = page_counts(ts.len(), &cuts);
            let b = encode_paged(&ts, &vs, &pages);
            let (ts2, vs2) = decode(&b).unwrap();
            prop_assert_eq!(&ts2, &ts);
            prop_assert_eq!(bits(&vs2), bits(&vs));
            prop_assert_eq!(count(&b).unwrap(), ts.len());
            // A range between two of the samples (or outside them all).
            if !ts.is_empty() {
                let (a, z) = (range.0.index(ts.len()), range.1.index(ts.len()));
                let (mint, maxt) = (ts[a.min(z)], ts[a.max(z)]);
                let mut got = Vec::new();
                decode_pages_into(&b, mint, maxt, &mut got).unwrap();
                let want: Vec<(i64, u64)> = s.iter().filter(|x| x.0 >= mint && x.0 <= maxt).map(|x| (x.0, x.1.to_bits())).collect();
                let inside: Vec<(i64, u64)> = got.iter().filter(|x| x.0 >= mint && x.0 <= maxt).map(|x| (x.0, x.1.to_bits())).collect();
                prop_assert_eq!(inside, want);
                // Whole pages only, and no page without samples in range.
                let all: Vec<(i64, u64)> = s.iter().map(|x| (x.0, x.1.to_bits())).collect();
                let got: Vec<(i64, u64)> = got.iter().map(|x| (x.0, x.1.to_bits())).collect();
                prop_assert!(all.windows(got.len()).any(|w| w == got.as_slice()), "a contiguous part");
            }
        }

        #[test]
        fn damaged_paged_chunks_are_an_error_not_a_panic(
            s in crate::xor::tests::samples(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let (ts, vs) = split(&s);
            let pages = page_counts(ts.len(), &[at, cut]);
            let mut b = encode_paged(&ts, &vs, &pages);
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] ^= byte;
                let _ = decode(&b);
                let _ = decode_pages_into(&b, ts.first().copied().unwrap_or(0), i64::MAX, &mut Vec::new());
                b.truncate(cut.index(b.len()));
                let _ = decode(&b);
                let _ = decode_pages_into(&b, i64::MIN, i64::MAX, &mut Vec::new());
            }
        }
    }

    fn bits(vs: &[f64]) -> Vec<u64> {
        vs.iter().map(|v| v.to_bits()).collect()
    }

    /// Page counts for `n` samples cut at `cuts`.
    fn page_counts(n: usize, cuts: &[proptest::sample::Index]) -> Vec<usize> {
        if n == 0 {
            return Vec::new();
        }
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(n)).filter(|&c| c > 0).collect();
        at.push(0);
        at.push(n);
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// A day of a counter at 15 s with scrape jitter, in 2 h pages.
    fn day() -> (Vec<i64>, Vec<f64>, Vec<usize>) {
        let ts: Vec<i64> = (0..5760)
            .map(|i| 1_700_000_000_000 + i * 15_000 + (i * 7919) % 13)
            .collect();
        let mut v = 1e6;
        let vs: Vec<f64> = (0..5760)
            .map(|i| {
                v += ((i * 7919) % 97) as f64;
                v
            })
            .collect();
        (ts, vs, vec![480; 12])
    }

    #[test]
    fn a_short_read_decodes_only_its_pages() {
        let (ts, vs, pages) = day();
        let b = encode_paged(&ts, &vs, &pages);
        let mut got = Vec::new();
        // 1 h inside the third page; then 1 h across the third and fourth.
        decode_pages_into(&b, ts[970], ts[1200], &mut got).unwrap();
        assert_eq!(got.len(), 480);
        assert_eq!(got[0].0, ts[960]);
        got.clear();
        decode_pages_into(&b, ts[1300], ts[1500], &mut got).unwrap();
        assert_eq!(got.len(), 960);
        assert_eq!(got.last().unwrap().0, ts[1919]);
        got.clear();
        // Before the first sample and after the last.
        decode_pages_into(&b, 0, ts[0] - 1, &mut got).unwrap();
        assert!(got.is_empty());
        decode_pages_into(&b, ts[5759] + 1, i64::MAX, &mut got).unwrap();
        assert_eq!(got.len(), 480, "the last page may hold it");
    }

    #[test]
    fn a_paged_day_costs_less_than_a_chunk_per_page() {
        let (ts, vs, pages) = day();
        let paged = encode_paged(&ts, &vs, &pages).len();
        let apart: usize = (0..12)
            .map(|p| encode(&ts[p * 480..(p + 1) * 480], &vs[p * 480..(p + 1) * 480]).len())
            .sum();
        let whole = encode(&ts, &vs).len();
        // Pages cost something (pcodec's state at each page start) but
        // less than half of what separate chunks' headers do (these
        // before their keys).
        assert!(
            (paged - whole) * 2 < apart - whole,
            "paged {paged} B, a chunk per page {apart} B, one chunk {whole} B"
        );
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

    fn mode(b: &[u8]) -> u8 {
        let mut rest = &b[1..];
        get_varint(&mut rest).unwrap();
        rest[0]
    }

    #[test]
    fn short_decimals_are_stored_as_scaled_integers() {
        let ts: Vec<i64> = (0..100).map(|i| i * 15_000).collect();
        let cpu: Vec<f64> = (0..100).map(|i| f64::from(i * 37) / 100.0).collect();
        assert_eq!(mode(&encode(&ts, &cpu)), VALUES_SCALED);
        let bytes: Vec<f64> = (0..100).map(|i| f64::from(i) * 4096.0 + 2.5e11).collect();
        assert_eq!(mode(&encode(&ts, &bytes)), VALUES_SCALED);
        // Full-precision floats, a staleness marker's NaN and -0.0 are not.
        let ratio: Vec<f64> = (0..100).map(|i| f64::from(i) / 3.0).collect();
        assert_eq!(mode(&encode(&ts, &ratio)), VALUES_F64);
        let mut stale = cpu.clone();
        stale[50] = f64::from_bits(0x7ff0_0000_0000_0002);
        let b = encode(&ts, &stale);
        assert_ne!(mode(&b), VALUES_SCALED);
        assert_eq!(decode(&b).unwrap().1[50].to_bits(), stale[50].to_bits());
        let mut zero = cpu.clone();
        zero[0] = -0.0;
        let (_, back) = decode(&encode(&ts, &zero)).unwrap();
        assert_eq!(back[0].to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn a_value_that_steps_rarely_costs_almost_nothing() {
        // A filesystem size: constant for a day but for two steps. pcodec's
        // own delta choice spends more than a bit per sample on it.
        let n = 5760;
        let ts: Vec<i64> = (0..n).map(|i| i * 15_000).collect();
        let vs: Vec<f64> = (0..n)
            .map(|i| 2.5e11 + 4096.0 * f64::from(u8::from(i > 1000) + u8::from(i > 4000)))
            .collect();
        let b = encode(&ts, &vs);
        assert!(b.len() < 200, "{} bytes for {n} samples", b.len());
    }

    proptest! {
        #[test]
        fn integer_columns_round_trip(
            v in proptest::collection::vec(any::<i64>(), 0..200),
            first in any::<i64>(),
            step in any::<i64>(),
            len in 1usize..200,
        ) {
            prop_assert_eq!(decode_ints(&encode_ints(&v)).unwrap(), v);
            // Progressions, wrapping around at the ends of i64 too.
            let p: Vec<i64> = (0..len as i64).map(|i| first.wrapping_add(step.wrapping_mul(i))).collect();
            let b = encode_ints(&p);
            // Length, mode, first and step.
            prop_assert!(b.len() <= 2 + 1 + 2 * 10, "{} bytes", b.len());
            prop_assert_eq!(decode_ints(&b).unwrap(), p);
        }
    }

    #[test]
    fn regular_timestamps_and_constant_values_are_stored_as_formulas() {
        let ts: Vec<i64> = (0..480).map(|i| 1_700_000_000_000 + i * 15_000).collect();
        let up = vec![1.0; 480];
        let b = encode(&ts, &up);
        assert_eq!(mode(&b), VALUES_CONST);
        assert!(b.len() < 30, "{} bytes for 480 samples", b.len());
        let (ts2, vs2) = decode(&b).unwrap();
        assert_eq!((ts2, vs2), (ts.clone(), up));
        // A staleness marker in a constant run keeps its bits.
        let stale = vec![f64::from_bits(0x7ff0_0000_0000_0002); 3];
        let back = decode(&encode(&ts[..3], &stale)).unwrap().1;
        assert!(back.iter().all(|v| v.to_bits() == 0x7ff0_0000_0000_0002));
        // One sample is a constant too.
        assert_eq!(decode(&encode(&[5], &[0.5])).unwrap(), (vec![5], vec![0.5]));
        // A count that no formula may claim is refused, not allocated.
        let mut huge = vec![VERSION];
        put_varint(&mut huge, 1 << 40);
        huge.push(VALUES_CONST);
        let t = int_column(&[1, 2], None);
        put_varint(&mut huge, t.len() as u64);
        huge.extend_from_slice(&t);
        huge.extend_from_slice(&1f64.to_bits().to_le_bytes());
        assert!(decode(&huge).is_err());
        let mut huge = Vec::new();
        put_varint(&mut huge, 1 << 40);
        huge.extend_from_slice(&int_column(&[1, 2], None));
        assert!(decode_ints(&huge).is_err());
        // What is longer than that bound is written so that it reads back.
        let long: Vec<i64> = (0..=MAX_FORMULA_VALUES as i64).collect();
        assert_eq!(decode_ints(&encode_ints(&long)).unwrap(), long);
        let flat = vec![2.5; MAX_FORMULA_VALUES + 1];
        assert_eq!(
            decode_floats(&encode_floats(&flat), flat.len()).unwrap(),
            flat
        );
    }

    #[test]
    fn truncated_chunk_is_an_error() {
        let b = encode(&[1, 2, 3], &[1.0, 2.0, 3.0]);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
