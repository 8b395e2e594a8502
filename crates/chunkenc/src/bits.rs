//! Bit-level writer and reader, most significant bit first.

/// Appends bits to a buffer owned elsewhere: `buf` (zeroed past the
/// written bits; its length is the capacity) and `bits`, the count of bits
/// written. The owner keeps them as plain fields, so that an open chunk
/// costs no more than a boxed slice and a `u32`.
pub(crate) struct BitWriter<'a> {
    pub(crate) buf: &'a mut Box<[u8]>,
    pub(crate) bits: &'a mut u32,
}

/// Bytes that `bits` bits occupy.
pub(crate) fn byte_len(bits: u32) -> usize {
    (bits as usize).div_ceil(8)
}

/// Bytes an open chunk's stream grows by: at about 1.4 bytes a sample,
/// one reallocation per twenty samples, and 16 bytes of slack per series
/// on average. Measured with 50k series (benches/storage.rs): 16 bytes saved
/// 11 B per series but cut appends by reference from 3.9 to 2.6 M/s.
const GROWTH: usize = 32;

impl BitWriter<'_> {
    /// Makes room for `bytes` bytes in all, growing in small steps: head
    /// chunks stay open in memory for every series, so doubling's slack (up
    /// to half the buffer) would cost more than the copies it saves.
    #[inline]
    fn reserve(&mut self, bytes: usize) {
        if bytes > self.buf.len() {
            self.grow(bytes);
        }
    }

    #[cold]
    fn grow(&mut self, bytes: usize) {
        let mut v = std::mem::take(self.buf).into_vec();
        let add = (bytes - v.len()).next_multiple_of(GROWTH);
        v.reserve_exact(add);
        v.resize(v.len() + add, 0);
        *self.buf = v.into_boxed_slice();
    }

    #[inline]
    pub(crate) fn write_bit(&mut self, bit: bool) {
        let pos = *self.bits as usize;
        self.reserve(pos / 8 + 1);
        if bit {
            self.buf[pos / 8] |= 0x80 >> (pos % 8);
        }
        *self.bits += 1;
    }

    /// Writes the low `n` bits of `v` (n ≤ 64), most significant first:
    /// the rest of the partial last byte, then whole bytes, then the
    /// remainder, with one capacity check.
    #[inline]
    pub(crate) fn write_bits(&mut self, v: u64, mut n: u32) {
        if n == 0 {
            return;
        }
        let mut pos = *self.bits as usize;
        self.reserve((pos + n as usize).div_ceil(8));
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        let used = (pos % 8) as u32;
        if used != 0 {
            let free = 8 - used;
            let take = free.min(n);
            let chunk = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            self.buf[pos / 8] |= chunk << (free - take);
            pos += take as usize;
            n -= take;
        }
        while n >= 8 {
            n -= 8;
            self.buf[pos / 8] = (v >> n) as u8;
            pos += 8;
        }
        if n > 0 {
            self.buf[pos / 8] = ((v << (8 - n)) & 0xff) as u8;
            pos += n as usize;
        }
        *self.bits = pos as u32;
    }
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
        fn bits_round_trip(items in proptest::collection::vec((any::<u64>(), 0u32..=64), 0..50)) {
            let (mut buf, mut bits) = (Box::default(), 0u32);
            let mut w = BitWriter { buf: &mut buf, bits: &mut bits };
            for &(v, n) in &items {
                w.write_bits(v, n);
                w.write_bit(v & 1 == 1);
            }
            prop_assert!(buf.len() >= byte_len(bits) && buf.len() < byte_len(bits) + 32);
            let mut r = BitReader::new(&buf, bits as usize);
            for &(v, n) in &items {
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                prop_assert_eq!(r.read_bits(n), Some(v & mask));
                prop_assert_eq!(r.read_bit(), Some(v & 1 == 1));
            }
            prop_assert_eq!(r.read_bit(), None);
        }
    }
}
