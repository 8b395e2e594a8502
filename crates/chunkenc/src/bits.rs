//! Bit-level writer and reader, most significant bit first.

/// Bytes that `bits` bits occupy.
pub(crate) fn byte_len(bits: u32) -> usize {
    (bits as usize).div_ceil(8)
}

/// Up to 192 bits gathered before they are written, most significant
/// first: one sample of an XOR stream is at most 145 bits. Encoding into
/// this first tells the sample's exact size, so that the owner of the
/// stream's buffer can make room (or refuse) before anything is written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SampleBits {
    /// Left-aligned: bit `i` is bit `63 - i % 64` of word `i / 64`.
    words: [u64; 3],
    len: u32,
}

impl SampleBits {
    /// Bits gathered.
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// Adds the low `n` bits of `v` (n ≤ 64, and at most 192 in all).
    #[inline]
    pub(crate) fn push(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        debug_assert!(n <= 64 && self.len + n <= 192);
        let left = v << (64 - n);
        let (i, off) = ((self.len / 64) as usize, self.len % 64);
        self.words[i] |= left >> off;
        if off + n > 64 {
            self.words[i + 1] = left << (64 - off);
        }
        self.len += n;
    }

    /// Writes the bits into `buf` from bit `pos` on. Bits of `buf` past
    /// `pos` need not be zero: each byte from `pos`'s on is overwritten,
    /// the bits before `pos` in its first byte kept. `buf` must hold
    /// `byte_len(pos + self.len())` bytes.
    #[inline]
    pub(crate) fn write_into(&self, buf: &mut [u8], pos: u32) {
        let mut pos = pos as usize;
        let mut left = self.len;
        for &w in &self.words {
            if left == 0 {
                break;
            }
            let n = left.min(64);
            put_bits(buf, &mut pos, w >> (64 - n), n);
            left -= n;
        }
    }
}

/// Writes the low `n` bits of `v` (0 < n ≤ 64) at bit `pos`, most
/// significant first: the rest of the partial byte, then whole bytes,
/// then the remainder.
#[inline]
fn put_bits(buf: &mut [u8], pos: &mut usize, v: u64, mut n: u32) {
    let mut p = *pos;
    let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
    let used = (p % 8) as u32;
    if used != 0 {
        let free = 8 - used;
        let take = free.min(n);
        let chunk = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
        // Keep the bits before `p`; clear the ones after.
        let keep = !(0xffu8 >> used);
        buf[p / 8] = (buf[p / 8] & keep) | (chunk << (free - take));
        p += take as usize;
        n -= take;
    }
    while n >= 8 {
        n -= 8;
        buf[p / 8] = (v >> n) as u8;
        p += 8;
    }
    if n > 0 {
        buf[p / 8] = ((v << (8 - n)) & 0xff) as u8;
        p += n as usize;
    }
    *pos = p;
}

/// Reads bits from a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(bytes: &'a [u8], bit_len: usize) -> Self {
        Self {
            bytes,
            pos: 0,
            end: bit_len.min(bytes.len() * 8),
        }
    }

    #[inline]
    pub(crate) fn read_bit(&mut self) -> Option<bool> {
        if self.pos >= self.end {
            return None;
        }
        let b = self.bytes[self.pos / 8] & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(b)
    }

    /// Reads `n` bits (n ≤ 64).
    #[inline]
    pub(crate) fn read_bits(&mut self, mut n: u32) -> Option<u64> {
        if self.pos + n as usize > self.end {
            return None;
        }
        let i = self.pos / 8;
        let off = (self.pos % 8) as u32;
        // Common case: the bits lie within 8 bytes that can be loaded at once.
        if n > 0
            && n + off <= 64
            && let Some(word) = self.bytes.get(i..i + 8)
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(word);
            let v = (u64::from_be_bytes(b) << off) >> (64 - n);
            self.pos += n as usize;
            return Some(v);
        }
        let mut v = 0u64;
        while n > 0 {
            let byte = self.bytes[self.pos / 8];
            let off = (self.pos % 8) as u32;
            let avail = 8 - off;
            let take = avail.min(n);
            let bits = (byte >> (avail - take)) & (((1u16 << take) - 1) as u8);
            v = (v << take) | u64::from(bits);
            self.pos += take as usize;
            n -= take;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bits_round_trip(
            items in proptest::collection::vec((any::<u64>(), 0u32..=64), 0..50),
            garbage in any::<u8>(),
        ) {
            // Samples of up to three words each, written one after
            // another into a buffer whose unwritten bytes hold garbage.
            let mut buf = vec![garbage; 50 * 9 + 8];
            let mut bits = 0u32;
            for group in items.chunks(3) {
                let mut s = SampleBits::default();
                for &(v, n) in group {
                    s.push(v, n);
                }
                s.write_into(&mut buf, bits);
                bits += s.len();
            }
            let mut r = BitReader::new(&buf, bits as usize);
            for &(v, n) in &items {
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                prop_assert_eq!(r.read_bits(n), Some(v & mask));
            }
            prop_assert_eq!(r.read_bit(), None);
        }
    }
}
