//! Gorilla's XOR chunk, appendable one sample at a time.
//!
//! [`XorChunk`] is an encoder's state (`XorState`, 24 bytes) and a buffer
//! of its own. A sample is encoded into at most 145 bits before anything
//! is written, so that the buffer grows by exactly what the sample needs.

use std::alloc::Layout;
use std::ptr::NonNull;

use crate::bits::{BitReader, SampleBits, byte_len};
use crate::{Error, Result};

/// What an XOR stream's encoder keeps between samples, without the
/// stream's bytes: 24 bytes. Serialised, a stream is a 2-byte big-endian
/// sample count followed by the bit stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XorState {
    /// Bits written.
    bits: u32,
    /// The last timestamp, from the first (the stream's first 64 bits).
    t_off: u32,
    /// The last timestamp minus the one before it.
    delta: u32,
    n: u16,
    leading: u8,
    trailing: u8,
    v: u64,
}

impl Default for XorState {
    fn default() -> Self {
        Self::new()
    }
}

/// A sample encoded against a [`XorState`] by [`XorState::encode`], not
/// yet written: its bits and the state it leads to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoded {
    bits: SampleBits,
    /// The state's bit count it was encoded at.
    at: u32,
    t_off: u32,
    delta: u32,
    leading: u8,
    trailing: u8,
    v: u64,
}

impl Encoded {
    /// Bytes the stream takes once the sample is written: what the buffer
    /// given to [`XorState::commit`] must hold.
    pub fn bytes_needed(&self) -> usize {
        byte_len(self.at + self.bits.len())
    }
}

impl XorState {
    /// The state of an empty stream.
    pub const fn new() -> Self {
        Self {
            bits: 0,
            t_off: 0,
            delta: 0,
            n: 0,
            leading: 0xff,
            trailing: 0,
            v: 0,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// Whether the stream has no samples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes of the encoded stream (without the count).
    pub fn encoded_len(&self) -> usize {
        byte_len(self.bits)
    }

    /// Length of the serialised stream: count, then the bit stream.
    pub fn serialized_len(&self) -> usize {
        2 + self.encoded_len()
    }

    /// Timestamp of the first sample of `buf`, this state's stream, if
    /// any: its first 64 bits.
    pub fn first_timestamp(&self, buf: &[u8]) -> Option<i64> {
        if self.n == 0 {
            return None;
        }
        let b: [u8; 8] = buf.get(..8)?.try_into().ok()?;
        Some(i64::from_be_bytes(b))
    }

    /// Timestamp of the last sample of `buf`, this state's stream, if any.
    pub fn last_timestamp(&self, buf: &[u8]) -> Option<i64> {
        Some(self.first_timestamp(buf)? + i64::from(self.t_off))
    }

    /// The samples of `buf`, this state's stream (it may be longer than
    /// the stream), in order.
    pub fn iter<'a>(&self, buf: &'a [u8]) -> XorIter<'a> {
        let stream = &buf[..self.encoded_len().min(buf.len())];
        XorIter::new(stream, self.bits as usize, self.n as usize)
    }

    /// Appends the serialised stream of `buf`, this state's, to `out`.
    pub fn write_to(&self, buf: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n.to_be_bytes());
        out.extend_from_slice(&buf[..self.encoded_len()]);
    }

    /// Whether `t`, after the last timestamp `last`, is within
    /// [`MAX_SPAN`] of the first sample (always, for an empty stream).
    pub fn within_span_after(&self, last: i64, t: i64) -> bool {
        self.n == 0 || self.offset_after(last, t).is_some()
    }

    /// `t`'s offset from the first timestamp, given the last, if within
    /// [`MAX_SPAN`].
    fn offset_after(&self, last: i64, t: i64) -> Option<u32> {
        let off = t.checked_sub(last)?.checked_add(i64::from(self.t_off))?;
        (0..=MAX_SPAN).contains(&off).then_some(off as u32)
    }

    /// Encodes a sample after the stream's last timestamp `last` (ignored
    /// while the stream is empty); nothing is written yet. `None` when the
    /// stream cannot take it: `t` not after `last`, more than
    /// [`MAX_SPAN`] after the first, or [`MAX_SAMPLES`] reached. The
    /// caller keeps `last`, so that the first timestamp is not read: it
    /// sits at the stream's start, in another cache line than the end that
    /// the sample is written to, and in a head of many series that read is
    /// a miss to memory.
    #[inline]
    pub fn encode(&self, last: i64, t: i64, v: f64) -> Option<Encoded> {
        let vb = v.to_bits();
        let mut e = Encoded {
            bits: SampleBits::default(),
            at: self.bits,
            t_off: 0,
            delta: 0,
            leading: self.leading,
            trailing: self.trailing,
            v: vb,
        };
        if self.n == 0 {
            e.bits.push(t as u64, 64);
            e.bits.push(vb, 64);
            return Some(e);
        }
        if self.n as usize >= MAX_SAMPLES || t <= last {
            return None;
        }
        let off = self.offset_after(last, t)?;
        let delta = off - self.t_off;
        let dod = i64::from(delta) - i64::from(self.delta);
        e.t_off = off;
        e.delta = delta;
        match dod {
            0 => e.bits.push(0, 1),
            -8191..=8192 => e.bits.push(0b10 << 14 | (dod as u64 & 0x3fff), 16),
            -65535..=65536 => e.bits.push(0b110 << 17 | (dod as u64 & 0x1_ffff), 20),
            -524_287..=524_288 => e.bits.push(0b1110 << 20 | (dod as u64 & 0xf_ffff), 24),
            _ => {
                e.bits.push(0b1111, 4);
                e.bits.push(dod as u64, 64);
            }
        }
        let x = vb ^ self.v;
        if x == 0 {
            e.bits.push(0, 1);
            return Some(e);
        }
        let leading = (x.leading_zeros() as u8).min(31);
        let trailing = x.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            let sig = 64 - self.leading as u32 - self.trailing as u32;
            e.bits.push(0b10, 2);
            e.bits.push(x >> self.trailing, sig);
        } else {
            e.leading = leading;
            e.trailing = trailing;
            let sig = 64 - leading as u32 - trailing as u32;
            // Control bits, leading zeros, and the significant bits' count
            // (64 is written as 0 in 6 bits).
            e.bits.push(
                0b11 << 11 | u64::from(leading) << 6 | (u64::from(sig) & 0x3f),
                13,
            );
            e.bits.push(x >> trailing, sig);
        }
        Some(e)
    }

    /// Writes `e`, encoded against this state, into `buf`, this state's
    /// stream, which holds [`Encoded::bytes_needed`] bytes at least.
    /// Bytes of `buf` past the stream need not be zero.
    #[inline]
    pub fn commit(&mut self, buf: &mut [u8], e: &Encoded) {
        assert_eq!(e.at, self.bits, "a sample encoded against another state");
        e.bits.write_into(buf, self.bits);
        self.bits += e.bits.len();
        self.t_off = e.t_off;
        self.delta = e.delta;
        self.leading = e.leading;
        self.trailing = e.trailing;
        self.v = e.v;
        self.n += 1;
    }
}

/// An appendable chunk of (timestamp, value) samples with strictly
/// increasing timestamps: the encoder's state and a buffer of its own, 32
/// bytes. Serialised as a 2-byte big-endian sample count followed by the
/// bit stream.
///
/// The buffer is held by its pointer alone (8 bytes, where a `Box<[u8]>`
/// takes 16): it only ever grows to [`buffer_size`] of the stream's
/// length, so its size is a function of the stream's length
/// ([`XorChunk::capacity`]). A head keeps one open chunk per series, and
/// those 8 bytes make its series record one cache line.
pub struct XorChunk {
    /// [`Self::capacity`] bytes, all initialised; dangling while the
    /// chunk is empty.
    buf: NonNull<u8>,
    state: XorState,
}

// SAFETY: a chunk owns its buffer as a `Box<[u8]>` would; nothing else
// points into it.
#[allow(unsafe_code)]
unsafe impl Send for XorChunk {}
// SAFETY: as for `Send`; shared access only reads.
#[allow(unsafe_code)]
unsafe impl Sync for XorChunk {}

impl Default for XorChunk {
    fn default() -> Self {
        Self {
            buf: NonNull::dangling(),
            state: XorState::new(),
        }
    }
}

impl std::fmt::Debug for XorChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XorChunk")
            .field("state", &self.state)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Clone for XorChunk {
    fn clone(&self) -> Self {
        let mut c = Self::default();
        let cap = self.capacity();
        if cap > 0 {
            c.buf = allocate(cap);
            // SAFETY: both buffers are `cap` bytes; distinct allocations.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy_nonoverlapping(self.buf.as_ptr(), c.buf.as_ptr(), cap);
            }
        }
        c.state = self.state;
        c
    }
}

impl Drop for XorChunk {
    fn drop(&mut self) {
        let cap = self.capacity();
        if cap > 0 {
            // SAFETY: the buffer was allocated with `cap` bytes (the
            // invariant of `capacity`), alignment 1.
            #[allow(unsafe_code)]
            unsafe {
                std::alloc::dealloc(self.buf.as_ptr(), bytes_layout(cap));
            }
        }
    }
}

/// The layout of a buffer of `n` bytes.
fn bytes_layout(n: usize) -> Layout {
    Layout::array::<u8>(n).unwrap_or_else(|_| panic!("a chunk buffer of {n} bytes"))
}

/// A zeroed buffer of `n` (> 0) bytes.
fn allocate(n: usize) -> NonNull<u8> {
    let layout = bytes_layout(n);
    // SAFETY: `n` > 0, so the layout is not zero-sized.
    #[allow(unsafe_code)]
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// Most samples a chunk holds.
pub const MAX_SAMPLES: usize = u16::MAX as usize;

/// Longest time a chunk spans, first sample to last, in the timestamps'
/// unit (milliseconds: about 49 days); a sample later than that goes to a
/// new chunk. It keeps the open chunk's state at 24 bytes: the last
/// timestamp is held as an offset from the first.
pub const MAX_SPAN: i64 = u32::MAX as i64;

/// Bytes a chunk's buffer grows by: head chunks stay open in memory for
/// every series, so doubling's slack (up to half the buffer) would cost
/// more than the copies it saves. At about 1.4 bytes a sample, one
/// reallocation per twenty samples, and 16 bytes of slack per series on
/// average. Measured with 50k series (benches/storage.rs): 16 bytes saved
/// 11 B per series but cut appends by reference from 3.9 to 2.6 M/s.
const GROWTH: usize = 32;

/// The buffer size for a stream of `need` bytes: the next growth step,
/// less 8 bytes. glibc's malloc puts an 8-byte header before a block and
/// rounds the two to 16 bytes, so a buffer of 32k - 8 bytes fills its
/// block, where one of 32k bytes would leave 8 bytes of it unused.
fn buffer_size(need: usize) -> usize {
    (need + 8).next_multiple_of(GROWTH) - 8
}

impl XorChunk {
    /// An empty chunk.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoder's state.
    #[cfg(test)]
    pub(crate) fn state(&self) -> &XorState {
        &self.state
    }

    /// Bytes of the buffer: [`buffer_size`] of the stream's length, as
    /// the buffer grows to exactly that (see [`Self::append_after`]); 0
    /// for an empty chunk, whose buffer is not allocated.
    fn capacity(&self) -> usize {
        match self.state.encoded_len() {
            0 => 0,
            n => buffer_size(n),
        }
    }

    /// The whole buffer.
    fn buf(&self) -> &[u8] {
        // SAFETY: `buf` points to `capacity()` initialised bytes that this
        // chunk owns, or is dangling and well aligned for a length of 0.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr(), self.capacity())
        }
    }

    /// The encoded stream (without the count).
    pub(crate) fn stream(&self) -> &[u8] {
        &self.buf()[..self.state.encoded_len()]
    }

    /// Where the next sample will be written (or the buffer's end, if it
    /// is full): for prefetching; never dereferenced.
    pub fn tail(&self) -> *const u8 {
        let at = (self.state.bits as usize / 8).min(self.capacity().saturating_sub(1));
        self.buf.as_ptr().wrapping_add(at)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether the chunk has no samples.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Timestamp of the first sample, if any: the stream's first 64 bits.
    pub fn first_timestamp(&self) -> Option<i64> {
        self.state.first_timestamp(self.buf())
    }

    /// Timestamp of the last sample, if any.
    pub fn last_timestamp(&self) -> Option<i64> {
        self.state.last_timestamp(self.buf())
    }

    /// Bytes of the encoded stream (without the count).
    pub fn encoded_len(&self) -> usize {
        self.state.encoded_len()
    }

    /// Heap bytes held.
    pub fn heap_size(&self) -> usize {
        self.capacity()
    }

    /// Appends a sample. `t` must be greater than the last timestamp and
    /// at most [`MAX_SPAN`] after the first, and the chunk must hold fewer
    /// than [`MAX_SAMPLES`]; otherwise nothing is appended and `false` is
    /// returned.
    pub fn append(&mut self, t: i64, v: f64) -> bool {
        let last = self.last_timestamp().unwrap_or(i64::MIN);
        self.append_after(last, t, v)
    }

    /// [`Self::append`] for a caller that keeps the chunk's last timestamp
    /// (`last`, ignored while the chunk is empty). The first timestamp is
    /// not read: it sits at the stream's start, in another cache line than
    /// the end that the sample is written to, and in a head of many series
    /// that read is a miss to memory. The buffer grows before the sample
    /// is written, by what it needs rounded up to a growth step.
    pub fn append_after(&mut self, last: i64, t: i64, v: f64) -> bool {
        debug_assert!(
            self.is_empty() || Some(last) == self.last_timestamp(),
            "a wrong last timestamp"
        );
        let Some(e) = self.state.encode(last, t, v) else {
            return false;
        };
        // Once the sample is written the buffer must be `buffer_size` of
        // the stream's new length, which is `need`: the same size as now
        // while `need` is within it (the sizes are steps).
        let need = e.bytes_needed();
        let size = buffer_size(need);
        let cap = self.capacity();
        if size != cap {
            debug_assert!(size > cap, "a buffer shrinks");
            self.grow(cap, size);
        }
        // SAFETY: `buf` points to `size` initialised bytes this chunk
        // owns (grown above if it was smaller); no other reference to
        // them is live.
        #[allow(unsafe_code)]
        let buf = unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), size) };
        self.state.commit(buf, &e);
        debug_assert_eq!(self.capacity(), size);
        true
    }

    /// Grows the buffer from `cap` bytes (its size now) to `size`, the new
    /// bytes zeroed: one reallocation.
    fn grow(&mut self, cap: usize, size: usize) {
        if cap == 0 {
            self.buf = allocate(size);
            return;
        }
        let (old, new) = (bytes_layout(cap), bytes_layout(size));
        // SAFETY: `buf` was allocated with layout `old` (`cap` bytes, the
        // buffer's size now); `size` > `cap` > 0 and is a valid layout's
        // size. Zeroing writes within the new size.
        #[allow(unsafe_code)]
        unsafe {
            let p = std::alloc::realloc(self.buf.as_ptr(), old, new.size());
            let Some(p) = NonNull::new(p) else {
                std::alloc::handle_alloc_error(new);
            };
            p.as_ptr().add(cap).write_bytes(0, size - cap);
            self.buf = p;
        }
    }

    /// Whether `t`, after the chunk's last timestamp `last` (see
    /// [`Self::append_after`]), is within [`MAX_SPAN`] of its first sample
    /// (always, for an empty chunk).
    pub fn within_span_after(&self, last: i64, t: i64) -> bool {
        self.state.within_span_after(last, t)
    }

    /// The samples, in order.
    pub fn iter(&self) -> XorIter<'_> {
        self.state.iter(self.buf())
    }

    /// The serialised chunk: count, then the bit stream.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_len());
        self.write_to(&mut out);
        out
    }

    /// Length of [`Self::to_bytes`].
    pub fn serialized_len(&self) -> usize {
        self.state.serialized_len()
    }

    /// Appends [`Self::to_bytes`] to `out`, without a buffer of its own.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.state.write_to(self.buf(), out);
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
    fn a_buffer_fills_its_malloc_block() {
        for need in 1..1000 {
            let size = super::buffer_size(need);
            assert!(
                size >= need && size < need + super::GROWTH,
                "{need}: {size}"
            );
            assert_eq!((size + 8) % 16, 0, "{need}: {size}");
        }
    }

    #[test]
    fn an_open_chunk_is_24_bytes_beside_its_stream() {
        // One per series in the head: a bit count with the small fields
        // packed beside it, and the last timestamp an offset from the
        // first; the buffer by its pointer alone.
        assert_eq!(std::mem::size_of::<XorState>(), 24);
        assert_eq!(std::mem::size_of::<XorChunk>(), 32);
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
        /// A clone at any point holds the same samples, and the two then
        /// grow apart without touching each other's buffer.
        #[test]
        fn clones_are_independent(s in samples(), at in any::<prop::sample::Index>()) {
            let mut c = XorChunk::new();
            let cut = at.index(s.len() + 1);
            let mut taken = Vec::new();
            for &(t, v) in &s[..cut] {
                if c.append(t, v) {
                    taken.push((t, v));
                }
            }
            let mut d = c.clone();
            prop_assert_eq!(d.stream(), c.stream());
            prop_assert_eq!(d.heap_size(), c.heap_size());
            let mut more = taken.clone();
            for &(t, v) in &s[cut..] {
                if d.append(t, v) {
                    more.push((t, v));
                }
            }
            prop_assert_eq!(bits(&c.iter().collect::<Vec<_>>()), bits(&taken));
            prop_assert_eq!(bits(&d.iter().collect::<Vec<_>>()), bits(&more));
            drop(c);
            prop_assert_eq!(bits(&d.iter().collect::<Vec<_>>()), bits(&more));
        }

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

        /// A state writing into a buffer it does not own, whose unwritten
        /// bytes hold garbage and which grows only by what each sample
        /// needs, makes the same stream as a chunk.
        #[test]
        fn a_state_over_a_foreign_buffer_makes_the_same_stream(
            s in samples(),
            garbage in any::<u8>(),
        ) {
            let mut c = XorChunk::new();
            let mut state = XorState::new();
            let mut buf: Vec<u8> = Vec::new();
            let mut last = i64::MIN;
            for &(t, v) in &s {
                let e = state.encode(last, t, v);
                prop_assert_eq!(e.is_some(), c.append(t, v));
                let Some(e) = e else { continue };
                if buf.len() < e.bytes_needed() {
                    buf.resize(e.bytes_needed(), garbage);
                }
                state.commit(&mut buf, &e);
                last = t;
            }
            prop_assert_eq!(&state, c.state());
            prop_assert_eq!(&buf[..state.encoded_len()], c.stream());
            prop_assert_eq!(state.first_timestamp(&buf), c.first_timestamp());
            prop_assert_eq!(state.last_timestamp(&buf), c.last_timestamp());
            prop_assert_eq!(state.iter(&buf).count(), c.len());
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
