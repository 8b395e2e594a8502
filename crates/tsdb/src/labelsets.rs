//! The label sets of the head's series, packed by slot.
//!
//! A set is its (name, value) symbol pairs written as LEB128 varints — a
//! count, then each name and value — one after another in pages of
//! 128 KiB; a slot keeps where its set starts, 4 bytes. Symbol ids are
//! small (names among the first interned, values numbering in the tens
//! of thousands), so a set of six labels takes about 20 bytes, where a
//! boxed slice of pairs took 48 on the heap and 16 in the slot.
//!
//! A removed set leaves its bytes behind; when they are more than half
//! of what the pages hold, the live sets are copied into new pages in
//! slot order and the old pages freed.

use crate::head::Segmented;
use crate::wal::{get_uvarint, put_uvarint};

/// Bytes of a page.
const PAGE: usize = 128 << 10;

/// A set starts at an even offset: an address is the page (high 16 bits)
/// and the offset in 2-byte units (low 16 bits).
const ALIGN: usize = 2;

/// Pages an address can name; the last address means "no set".
const MAX_PAGES: usize = (1 << 16) - 1;

/// Bytes of sets the pages can hold.
pub(crate) const CAPACITY: usize = MAX_PAGES * PAGE;

/// The address of a free slot.
const FREE: u32 = u32::MAX;

/// Most bytes one set of `n` pairs takes (5 for each varint), plus the
/// padding to the next set.
fn max_encoded_len(n: usize) -> usize {
    5 + 10 * n + ALIGN
}

/// The label sets, by slot.
#[derive(Debug, Default)]
pub(crate) struct LabelSets {
    pages: Vec<Vec<u8>>,
    /// Address of each slot's set, or [`FREE`].
    at: Segmented<u32>,
    /// Bytes written to pages (live sets, removed ones and padding).
    written: usize,
    /// Bytes of removed sets still in pages.
    garbage: usize,
}

/// The pairs of one set, decoded as they are read.
#[derive(Debug, Clone)]
pub(crate) struct Pairs<'a> {
    bytes: &'a [u8],
    left: u32,
}

impl Iterator for Pairs<'_> {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = read_varint(&mut self.bytes);
        let v = read_varint(&mut self.bytes);
        Some((n, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Pairs<'_> {}

fn varint_len(x: u32) -> usize {
    // 1 byte per 7 bits, at least one.
    (32 - (x | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads one varint of a set, which `place` wrote (the WAL's encoding).
fn read_varint(b: &mut &[u8]) -> u32 {
    get_uvarint(b).map_or(0, |x| x as u32)
}

fn encoded_len(pairs: &[(u32, u32)]) -> usize {
    varint_len(pairs.len() as u32)
        + pairs
            .iter()
            .map(|&(n, v)| varint_len(n) + varint_len(v))
            .sum::<usize>()
}

impl LabelSets {
    /// Slots, free or not.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether slot `slot` holds a set.
    pub(crate) fn is_live(&self, slot: usize) -> bool {
        self.at[slot] != FREE
    }

    /// The set of slot `slot`, if it holds one.
    pub(crate) fn get(&self, slot: usize) -> Option<Pairs<'_>> {
        if slot >= self.at.len() || self.at[slot] == FREE {
            return None;
        }
        Some(read_at(&self.pages, self.at[slot]))
    }

    /// Whether a set of `n` pairs can be added: false only when the pages
    /// can address no more ([`CAPACITY`], 8 GiB: hundreds of millions of
    /// sets).
    pub(crate) fn has_room(&self, n: usize) -> bool {
        let need = max_encoded_len(n);
        let last_free = self
            .pages
            .last()
            .filter(|p| p.len() < PAGE)
            .map_or(0, |p| p.capacity() - p.len());
        // Compaction frees at least a page when more than a page is garbage.
        need <= last_free || self.pages.len() < MAX_PAGES || self.garbage > need + PAGE
    }

    /// Adds a slot holding `pairs`.
    pub(crate) fn push(&mut self, pairs: &[(u32, u32)]) {
        let a = self.place(pairs);
        self.at.push(a);
    }

    /// Puts `pairs` in free slot `slot`.
    pub(crate) fn set(&mut self, slot: usize, pairs: &[(u32, u32)]) {
        debug_assert!(!self.is_live(slot), "slot {slot} holds a set");
        let a = self.place(pairs);
        self.at[slot] = a;
    }

    /// Frees slot `slot`; its pairs are appended to `out`.
    pub(crate) fn remove(&mut self, slot: usize, out: &mut Vec<(u32, u32)>) {
        let Some(p) = self.get(slot) else {
            return;
        };
        let from = out.len();
        out.extend(p);
        self.garbage += encoded_len(&out[from..]).next_multiple_of(ALIGN);
        self.at[slot] = FREE;
        if self.garbage > PAGE && self.garbage * 2 > self.written {
            self.compact();
        }
    }

    /// Heap bytes held.
    pub(crate) fn heap_size(&self) -> usize {
        self.pages.iter().map(Vec::capacity).sum::<usize>()
            + self.pages.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.at.capacity_bytes()
    }

    /// Writes `pairs` into a page; its address.
    fn place(&mut self, pairs: &[(u32, u32)]) -> u32 {
        let need = encoded_len(pairs).next_multiple_of(ALIGN);
        // A set must start within the first PAGE bytes to be addressed.
        let fits = self
            .pages
            .last()
            .is_some_and(|p| p.len() < PAGE && p.capacity() - p.len() >= need);
        if !fits {
            if self.pages.len() >= MAX_PAGES && self.garbage > 0 {
                self.compact();
                return self.place(pairs);
            }
            assert!(
                self.pages.len() < MAX_PAGES,
                "label sets fill {MAX_PAGES} pages (Db checks has_room before creating a series)"
            );
            // A set larger than a page gets a page of its own.
            self.pages.push(Vec::with_capacity(PAGE.max(need)));
        }
        let page_no = self.pages.len() - 1;
        let page = &mut self.pages[page_no];
        let start = page.len();
        put_uvarint(page, pairs.len() as u64);
        for &(n, v) in pairs {
            put_uvarint(page, n.into());
            put_uvarint(page, v.into());
        }
        page.resize(start + need, 0);
        self.written += need;
        ((page_no as u32) << 16) | (start / ALIGN) as u32
    }

    /// Copies the live sets into new pages, in slot order, and frees the
    /// old ones.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.pages);
        self.written = 0;
        self.garbage = 0;
        let mut pairs = Vec::new();
        for slot in 0..self.at.len() {
            let a = self.at[slot];
            if a == FREE {
                continue;
            }
            pairs.clear();
            pairs.extend(read_at(&old, a));
            self.at[slot] = self.place(&pairs);
        }
    }
}

/// The set at address `a` in `pages`.
fn read_at(pages: &[Vec<u8>], a: u32) -> Pairs<'_> {
    let page = &pages[(a >> 16) as usize];
    let mut bytes = &page[(a & 0xffff) as usize * ALIGN..];
    let left = read_varint(&mut bytes);
    Pairs { bytes, left }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_round_trip() {
        for x in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            1 << 21,
            u32::MAX - 1,
            u32::MAX,
        ] {
            let mut b = Vec::new();
            put_uvarint(&mut b, x.into());
            assert_eq!(b.len(), varint_len(x), "{x}");
            let mut s = &b[..];
            assert_eq!(read_varint(&mut s), x);
            assert!(s.is_empty());
        }
    }

    #[test]
    fn a_typical_set_takes_a_fraction_of_a_boxed_slice() {
        let mut l = LabelSets::default();
        // __name__, instance, job, cpu, mode: names among the first
        // symbols, values in the thousands.
        let pairs = [(0, 4_000), (1, 9_000), (2, 3), (5, 40), (6, 70)];
        l.push(&pairs);
        // 13 bytes, padded to an even 14.
        assert_eq!(l.written, 14);
        assert_eq!(l.get(0).unwrap().collect::<Vec<_>>(), pairs);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(Vec<(u32, u32)>),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec((any::<u32>(), any::<u32>()), 0..12).prop_map(Op::Add),
            // A few large sets cross page boundaries and take pages of
            // their own.
            1 => proptest::collection::vec((0..1000u32, any::<u32>()), 5_000..15_000)
                .prop_map(Op::Add),
            4 => any::<usize>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the order of adds and removes (removes trigger
        /// compaction), every slot reads back what was put in it.
        #[test]
        fn slots_read_back_what_was_put(ops in proptest::collection::vec(op(), 1..200)) {
            let mut l = LabelSets::default();
            let mut model: Vec<Option<Vec<(u32, u32)>>> = Vec::new();
            let mut free: Vec<usize> = Vec::new();
            for o in ops {
                match o {
                    Op::Add(p) => match free.pop() {
                        Some(s) => {
                            l.set(s, &p);
                            model[s] = Some(p);
                        }
                        None => {
                            l.push(&p);
                            model.push(Some(p));
                        }
                    },
                    Op::Remove(i) if !model.is_empty() => {
                        let s = i % model.len();
                        let mut out = Vec::new();
                        l.remove(s, &mut out);
                        let had = model[s].take();
                        prop_assert_eq!(out, had.clone().unwrap_or_default());
                        if had.is_some() {
                            free.push(s);
                        }
                    }
                    Op::Remove(_) => {}
                }
                prop_assert_eq!(l.len(), model.len());
                for (s, m) in model.iter().enumerate() {
                    prop_assert_eq!(l.is_live(s), m.is_some());
                    prop_assert_eq!(l.get(s).map(|p| p.collect::<Vec<_>>()), m.clone());
                }
                prop_assert!(l.garbage <= l.written);
            }
        }
    }

    #[test]
    fn removing_most_sets_gives_pages_back() {
        let mut l = LabelSets::default();
        for i in 0..100_000u32 {
            l.push(&[(0, i), (1, i * 7), (2, 3)]);
        }
        let full = l.heap_size();
        let mut out = Vec::new();
        for s in 0..90_000 {
            out.clear();
            l.remove(s, &mut out);
            assert_eq!(out, [(0, s as u32), (1, s as u32 * 7), (2, 3)]);
        }
        assert!(
            l.pages.len() * PAGE < full / 4,
            "{} pages after removing 90% (was {full} bytes)",
            l.pages.len()
        );
        for s in 90_000..100_000 {
            let i = s as u32;
            assert_eq!(
                l.get(s).unwrap().collect::<Vec<_>>(),
                [(0, i), (1, i * 7), (2, 3)]
            );
        }
    }
}
