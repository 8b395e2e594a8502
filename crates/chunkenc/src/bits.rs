//! Bit-level writer and reader, most significant bit first.

/// Appends bits to a byte vector.
#[derive(Debug, Clone, Default)]
pub(crate) struct BitWriter {
    pub(crate) bytes: Vec<u8>,
    /// Bits used in the last byte (0 means the last byte is full or absent).
    used: u8,
}

impl BitWriter {
    pub(crate) fn bit_len(&self) -> usize {
        if self.used == 0 {
            self.bytes.len() * 8
        } else {
            (self.bytes.len() - 1) * 8 + self.used as usize
        }
    }

    /// Adds a zero byte, growing the buffer in small steps: head chunks
    /// stay open in memory for every series, so doubling's slack (up to
    /// half the buffer) would cost more than the copies it saves.
    #[inline]
    fn push_byte(&mut self) {
        if self.bytes.len() == self.bytes.capacity() {
            self.bytes.reserve_exact(32);
        }
        self.bytes.push(0);
    }

    #[inline]
    pub(crate) fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.push_byte();
        }
        if bit {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// Writes the low `n` bits of `v` (n ≤ 64), most significant first:
    /// the rest of the partial last byte, then whole bytes, then the
    /// remainder, with one capacity check.
    #[inline]
    pub(crate) fn write_bits(&mut self, v: u64, mut n: u32) {
        if n == 0 {
            return;
        }
        // New bytes this write starts (the partial last byte has room).
        let new = ((self.used as u32 + n).div_ceil(8) - u32::from(self.used != 0)) as usize;
        if self.bytes.capacity() - self.bytes.len() < new {
            self.bytes.reserve_exact(32);
        }
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        if self.used != 0 {
            let free = 8 - self.used as u32;
            let take = free.min(n);
            let chunk = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.bytes.last_mut() {
                *last |= chunk << (free - take);
            }
            self.used = ((self.used as u32 + take) % 8) as u8;
            n -= take;
        }
        while n >= 8 {
            n -= 8;
            self.bytes.push((v >> n) as u8);
        }
        if n > 0 {
            self.bytes.push(((v << (8 - n)) & 0xff) as u8);
            self.used = n as u8;
        }
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
            let mut w = BitWriter::default();
            for &(v, n) in &items {
                w.write_bits(v, n);
                w.write_bit(v & 1 == 1);
            }
            let mut r = BitReader::new(&w.bytes, w.bit_len());
            for &(v, n) in &items {
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                prop_assert_eq!(r.read_bits(n), Some(v & mask));
                prop_assert_eq!(r.read_bit(), Some(v & 1 == 1));
            }
            prop_assert_eq!(r.read_bit(), None);
        }
    }
}
