//! Gorilla's XOR chunk, appendable one sample at a time.

use crate::bits::{BitReader, BitWriter, byte_len};
use crate::{Error, Result};

/// An appendable chunk of (timestamp, value) samples with strictly
/// increasing timestamps. Serialised as a 2-byte big-endian sample count
/// followed by the bit stream.
#[derive(Debug, Clone, Default)]
pub struct XorChunk {
    /// The bit stream, zeroed past `bits`; its length is the capacity.
    buf: Box<[u8]>,
    /// Bits written.
    bits: u32,
    n: u16,
    /// The last timestamp, from the first (the stream's first 64 bits).
    t_off: u32,
    /// The last timestamp minus the one before it.
    delta: u32,
    v: u64,
    leading: u8,
    trailing: u8,
}

/// Most samples a chunk holds.
pub const MAX_SAMPLES: usize = u16::MAX as usize;

/// Longest time a chunk spans, first sample to last, in the timestamps'
/// unit (milliseconds: about 49 days); a sample later than that goes to a
/// new chunk. It keeps the open chunk at 40 bytes: the last timestamp is
/// held as an offset from the first.
pub const MAX_SPAN: i64 = u32::MAX as i64;

impl XorChunk {
    /// An empty chunk.
    pub fn new() -> Self {
        Self {
            leading: 0xff,
            ..Self::default()
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// Whether the chunk has no samples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Timestamp of the first sample, if any: the stream's first 64 bits.
    pub fn first_timestamp(&self) -> Option<i64> {
        if self.n == 0 {
            return None;
        }
        let b: [u8; 8] = self.buf.get(..8)?.try_into().ok()?;
        Some(i64::from_be_bytes(b))
    }

    /// Timestamp of the last sample, if any.
    pub fn last_timestamp(&self) -> Option<i64> {
        Some(self.first_timestamp()? + i64::from(self.t_off))
    }

    /// Bytes of the encoded stream (without the count).
    pub fn encoded_len(&self) -> usize {
        byte_len(self.bits)
    }

    /// Where the next sample will be written (or the buffer's end, if it
    /// is full): for prefetching; never dereferenced.
    pub fn tail(&self) -> *const u8 {
        self.buf
            .as_ptr()
            .wrapping_add((self.bits as usize / 8).min(self.buf.len().saturating_sub(1)))
    }

    /// Heap bytes held.
    pub fn heap_size(&self) -> usize {
        self.buf.len()
    }

    fn stream(&self) -> &[u8] {
        &self.buf[..byte_len(self.bits)]
    }

    fn writer(&mut self) -> BitWriter<'_> {
        BitWriter {
            buf: &mut self.buf,
            bits: &mut self.bits,
        }
    }

    /// Appends a sample. `t` must be greater than the last timestamp and
    /// at most [`MAX_SPAN`] after the first, and the chunk must hold fewer
    /// than [`MAX_SAMPLES`]; otherwise nothing is appended and `false` is
    /// returned.
    pub fn append(&mut self, t: i64, v: f64) -> bool {
        match self.last_timestamp() {
            None => {
                self.start(t, v);
                true
            }
            Some(last) => self.append_after(last, t, v),
        }
    }

    /// [`Self::append`] for a caller that keeps the chunk's last timestamp
    /// (`last`, ignored while the chunk is empty). The first timestamp is
    /// not read: it sits at the stream's start, in another cache line than
    /// the end that the sample is written to, and in a head of many series
    /// that read is a miss to memory.
    pub fn append_after(&mut self, last: i64, t: i64, v: f64) -> bool {
        if self.n == 0 {
            self.start(t, v);
            return true;
        }
        debug_assert_eq!(Some(last), self.last_timestamp(), "a wrong last timestamp");
        if self.n as usize >= MAX_SAMPLES || t <= last {
            return false;
        }
        let Some(off) = self.offset_after(last, t) else {
            return false;
        };
        let delta = off - self.t_off;
        let dod = i64::from(delta) - i64::from(self.delta);
        let vb = v.to_bits();
        self.write_dod(dod);
        self.write_value(vb);
        self.t_off = off;
        self.delta = delta;
        self.v = vb;
        self.n += 1;
        true
    }

    /// Whether `t`, after the chunk's last timestamp `last` (see
    /// [`Self::append_after`]), is within [`MAX_SPAN`] of its first sample
    /// (always, for an empty chunk).
    pub fn within_span_after(&self, last: i64, t: i64) -> bool {
        self.n == 0 || self.offset_after(last, t).is_some()
    }

    /// `t`'s offset from the first timestamp, given the last, if within
    /// [`MAX_SPAN`].
    fn offset_after(&self, last: i64, t: i64) -> Option<u32> {
        let off = t.checked_sub(last)?.checked_add(i64::from(self.t_off))?;
        (0..=MAX_SPAN).contains(&off).then_some(off as u32)
    }

    /// The first sample of an empty chunk.
    fn start(&mut self, t: i64, v: f64) {
        let vb = v.to_bits();
        let mut w = self.writer();
        w.write_bits(t as u64, 64);
        w.write_bits(vb, 64);
        self.t_off = 0;
        self.delta = 0;
        self.v = vb;
        self.n = 1;
    }

    fn write_dod(&mut self, dod: i64) {
        let mut w = self.writer();
        match dod {
            0 => w.write_bit(false),
            -8191..=8192 => {
                w.write_bits(0b10, 2);
                w.write_bits(dod as u64, 14);
            }
            -65535..=65536 => {
                w.write_bits(0b110, 3);
                w.write_bits(dod as u64, 17);
            }
            -524_287..=524_288 => {
                w.write_bits(0b1110, 4);
                w.write_bits(dod as u64, 20);
            }
            _ => {
                w.write_bits(0b1111, 4);
                w.write_bits(dod as u64, 64);
            }
        }
    }

    fn write_value(&mut self, vb: u64) {
        let x = vb ^ self.v;
        if x == 0 {
            self.writer().write_bit(false);
            return;
        }
        let leading = (x.leading_zeros() as u8).min(31);
        let trailing = x.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            let sig = 64 - self.leading as u32 - self.trailing as u32;
            let shift = self.trailing;
            let mut w = self.writer();
            w.write_bits(0b10, 2);
            w.write_bits(x >> shift, sig);
        } else {
            self.leading = leading;
            self.trailing = trailing;
            let sig = 64 - leading as u32 - trailing as u32;
            let mut w = self.writer();
            w.write_bits(0b11, 2);
            w.write_bits(u64::from(leading), 5);
            // 64 significant bits are written as 0 in 6 bits.
            w.write_bits(u64::from(sig) & 0x3f, 6);
            w.write_bits(x >> trailing, sig);
        }
    }

    /// The samples, in order.
    pub fn iter(&self) -> XorIter<'_> {
        XorIter::new(self.stream(), self.bits as usize, self.n as usize)
    }

    /// The serialised chunk: count, then the bit stream.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_len());
        self.write_to(&mut out);
        out
    }

    /// Length of [`Self::to_bytes`].
    pub fn serialized_len(&self) -> usize {
        2 + self.encoded_len()
    }

    /// Appends [`Self::to_bytes`] to `out`, without a buffer of its own.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n.to_be_bytes());
        out.extend_from_slice(self.stream());
    }

    /// Rebuilds an appendable chunk from [`Self::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let n = u16::from_be_bytes(
            b.get(..2)
                .ok_or(Error::Truncated("xor chunk header"))?
                .try_into()
                .map_err(|_| Error::Truncated("xor chunk header"))?,
        );
        let stream = &b[2..];
        let mut c = XorChunk::new();
        let mut it = XorIter::new(stream, stream.len() * 8, n as usize);
        for (t, v) in it.by_ref() {
            if !c.append(t, v) {
                return Err(Error::Corrupt(
                    "xor chunk timestamps do not increase".into(),
                ));
            }
        }
        if let Some(e) = it.err {
            return Err(e);
        }
        // Re-encoding reproduces the stream bit for bit.
        if c.stream() != stream {
            return Err(Error::Corrupt(
                "xor chunk has trailing or inconsistent bits".into(),
            ));
        }
        Ok(c)
    }

    /// Decodes a serialised chunk into its samples.
    pub fn decode(b: &[u8]) -> Result<Vec<(i64, f64)>> {
        let mut out = Vec::new();
        Self::decode_into(b, &mut out)?;
        Ok(out)
    }

    /// [`Self::decode`] appending to `out`; on error `out` is left as it
    /// was.
    pub fn decode_into(b: &[u8], out: &mut Vec<(i64, f64)>) -> Result<()> {
        let n = u16::from_be_bytes([
            *b.first().ok_or(Error::Truncated("xor chunk header"))?,
            *b.get(1).ok_or(Error::Truncated("xor chunk header"))?,
        ]);
        let stream = &b[2..];
        let mut it = XorIter::new(stream, stream.len() * 8, n as usize);
        let before = out.len();
        // The count comes from the input: reserve no more than its bits
        // can hold (two bits a sample at the least).
        out.reserve((n as usize).min(stream.len() * 4));
        out.extend(it.by_ref());
        match it.err {
            Some(e) => {
                out.truncate(before);
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// Iterator over an XOR stream; stops early and records an error on
/// corrupt input.
#[derive(Debug, Clone)]
pub struct XorIter<'a> {
    r: BitReader<'a>,
    left: usize,
    read: usize,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
    /// Why iteration stopped early, if it did.
    pub err: Option<Error>,
}

impl<'a> XorIter<'a> {
    fn new(bytes: &'a [u8], bit_len: usize, n: usize) -> Self {
        Self {
            r: BitReader::new(bytes, bit_len),
            left: n,
            read: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
            err: None,
        }
    }

    fn step(&mut self) -> Option<(i64, f64)> {
        if self.read == 0 {
            self.t = self.r.read_bits(64)? as i64;
            self.v = self.r.read_bits(64)?;
            return Some((self.t, f64::from_bits(self.v)));
        }
        let dod = if !self.r.read_bit()? {
            0
        } else if !self.r.read_bit()? {
            sign_extend(self.r.read_bits(14)?, 14)
        } else if !self.r.read_bit()? {
            sign_extend(self.r.read_bits(17)?, 17)
        } else if !self.r.read_bit()? {
            sign_extend(self.r.read_bits(20)?, 20)
        } else {
            self.r.read_bits(64)? as i64
        };
        self.delta = self.delta.wrapping_add(dod);
        self.t = self.t.wrapping_add(self.delta);
        if self.r.read_bit()? {
            if self.r.read_bit()? {
                self.leading = self.r.read_bits(5)? as u8;
                let mut sig = self.r.read_bits(6)? as u8;
                if sig == 0 {
                    sig = 64;
                }
                if self.leading as u32 + sig as u32 > 64 {
                    self.err = Some(Error::Corrupt("xor value window exceeds 64 bits".into()));
                    return None;
                }
                self.trailing = 64 - self.leading - sig;
            }
            let sig = 64 - self.leading as u32 - self.trailing as u32;
            let bits = self.r.read_bits(sig)?;
            self.v ^= bits.checked_shl(self.trailing as u32).unwrap_or(0);
        }
        Some((self.t, f64::from_bits(self.v)))
    }
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

impl Iterator for XorIter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 || self.err.is_some() {
            return None;
        }
        match self.step() {
            Some(s) => {
                self.left -= 1;
                self.read += 1;
                Some(s)
            }
            None => {
                if self.err.is_none() {
                    self.err = Some(Error::Truncated("xor chunk stream"));
                }
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn an_open_chunk_is_40_bytes() {
        // One per series in the head: the stream is a boxed slice and a bit
        // count, with the small fields packed beside them, and the last
        // timestamp an offset from the first.
        assert_eq!(std::mem::size_of::<XorChunk>(), 40);
    }

    #[test]
    fn a_chunk_spans_at_most_max_span() {
        let mut c = XorChunk::new();
        assert!(c.append(-5, 1.0));
        assert!(c.append(MAX_SPAN - 5, 2.0), "the longest span");
        assert!(!c.append(MAX_SPAN - 4, 3.0), "past it");
        assert_eq!(c.last_timestamp(), Some(MAX_SPAN - 5));
        // The same limits for a caller that keeps the last timestamp.
        assert!(c.within_span_after(MAX_SPAN - 5, MAX_SPAN - 5));
        assert!(!c.within_span_after(MAX_SPAN - 5, MAX_SPAN - 4));
        assert!(!c.append_after(MAX_SPAN - 5, MAX_SPAN - 4, 3.0));
        assert!(
            !c.append_after(MAX_SPAN - 5, MAX_SPAN - 5, 3.0),
            "not after the last"
        );
        assert!(!c.within_span_after(MAX_SPAN - 5, i64::MAX), "no overflow");
        let mut c = XorChunk::new();
        assert!(c.within_span_after(0, i64::MAX), "an empty chunk takes any");
        assert!(c.append_after(0, 7, 1.0));
        assert!(c.append_after(7, 8, 2.0));
        assert!(!c.append_after(8, 8, 2.0));
        assert_eq!(c.iter().collect::<Vec<_>>(), [(7, 1.0), (8, 2.0)]);
        let mut c = XorChunk::new();
        assert!(c.append(i64::MAX - 1, 1.0));
        assert!(c.append(i64::MAX, 1.0));
        assert!(!c.append(i64::MAX, 1.0));
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            [(i64::MAX - 1, 1.0), (i64::MAX, 1.0)]
        );
        let mut c = XorChunk::new();
        assert!(c.append(i64::MIN, 1.0));
        assert!(!c.append(0, 1.0), "more than the span from the first");
    }

    use super::*;
    use proptest::prelude::*;

    pub(crate) fn samples() -> impl Strategy<Value = Vec<(i64, f64)>> {
        let value = prop_oneof![
            any::<f64>(),
            (-1000i64..1000).prop_map(|v| v as f64 / 4.0),
            Just(f64::NAN),
            Just(f64::from_bits(0x7ff0_0000_0000_0002)),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
        ];
        let gap = prop_oneof![
            1i64..100,
            Just(15_000i64),
            1i64..10_000_000,
            1i64..i64::MAX / 4096
        ];
        (
            any::<i64>().prop_map(|t| t / 2),
            proptest::collection::vec((gap, value), 0..300),
        )
            .prop_map(|(start, steps)| {
                let mut t = start;
                let mut out = Vec::new();
                for (g, v) in steps {
                    match t.checked_add(g) {
                        Some(n) => t = n,
                        None => break,
                    }
                    out.push((t, v));
                }
                out
            })
    }

    fn bits(s: &[(i64, f64)]) -> Vec<(i64, u64)> {
        s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    proptest! {
        #[test]
        fn round_trips_bit_exactly(s in samples()) {
            // What lies within the longest span of the first sample is
            // taken; everything after is refused.
            let within = s
                .iter()
                .take_while(|&&(t, _)| t - s[0].0 <= MAX_SPAN)
                .count();
            let mut c = XorChunk::new();
            for (i, &(t, v)) in s.iter().enumerate() {
                prop_assert_eq!(c.append(t, v), i < within);
            }
            let s = &s[..within];
            prop_assert_eq!(bits(&c.iter().collect::<Vec<_>>()), bits(s));
            prop_assert_eq!(c.first_timestamp(), s.first().map(|&(t, _)| t));
            prop_assert_eq!(c.last_timestamp(), s.last().map(|&(t, _)| t));
            let bytes = c.to_bytes();
            prop_assert_eq!(bytes.len(), c.serialized_len());
            prop_assert_eq!(bits(&XorChunk::decode(&bytes).unwrap()), bits(s));
            let mut again = XorChunk::from_bytes(&bytes).unwrap();
            prop_assert_eq!(again.len(), s.len());
            prop_assert_eq!(again.first_timestamp(), s.first().map(|&(t, _)| t));
            if let Some(&(t, _)) = s.last() {
                prop_assert_eq!(again.append(t + 1, 1.0), t + 1 - s[0].0 <= MAX_SPAN);
            }
        }

        #[test]
        fn corrupt_input_is_an_error_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = XorChunk::decode(&b);
            let _ = XorChunk::from_bytes(&b);
        }
    }

    #[test]
    fn rejects_out_of_order_and_duplicates() {
        let mut c = XorChunk::new();
        assert!(c.append(10, 1.0));
        assert!(!c.append(10, 2.0));
        assert!(!c.append(5, 2.0));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn regular_scrapes_are_small() {
        let mut c = XorChunk::new();
        for i in 0..120 {
            c.append(1_700_000_000_000 + i * 15_000, 42.0);
        }
        // First sample 16 bytes, then ~2 bits per sample.
        assert!(c.encoded_len() < 16 + 40, "{}", c.encoded_len());
    }
}
