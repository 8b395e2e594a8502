//! The scrape cache: raw series text → caller's series reference.

use hashbrown::HashTable;

/// Maps the raw series text of a sample line ([`crate::SampleRef::series`])
/// to whatever the caller keeps per series (a storage reference, parsed
/// labels). Looking a known series up hashes its bytes once and allocates
/// nothing; only new series pay for decoding labels and an insert.
///
/// The text itself is not kept: entries are keyed by 96 bits of its xxh3
/// hash, so an entry costs its key, the caller's value and 4 bytes (20
/// bytes for a 4-byte reference) whatever the length of the series. Two
/// series of one target would have to collide in 96 bits to be confused —
/// about one chance in 2^57 for a target with a million series.
///
/// Exporters write their series in the same order at every scrape, so the
/// entries are kept in the order of the last page and each line is first
/// compared with the entry after the one the previous line matched: no
/// hash table in the steady state. A line found elsewhere (a new series,
/// one gone, a page in another order) builds a table of positions for the
/// rest of that scrape, and the end of the scrape puts the entries in the
/// page's order again.
///
/// Each lookup marks the entry as seen in the current scrape; [`Self::end_scrape`]
/// returns the entries not seen, so the caller can write staleness markers
/// for series that disappeared.
#[derive(Debug)]
pub struct SeriesCache<T> {
    /// In the order of the last page.
    entries: Vec<Slot<T>>,
    /// Positions in `entries` by key, while a scrape needs it.
    index: Option<HashTable<u32>>,
    /// The entry the next line is expected to be.
    cursor: usize,
    /// Lines looked up or inserted in this scrape.
    lines: u32,
    /// Whether this scrape's order differs from `entries`' order.
    moved: bool,
}

#[derive(Debug)]
struct Slot<T> {
    /// 96 bits of the series text's xxh3-128, as three words (4-byte
    /// alignment keeps a slot at 20 bytes for a 4-byte value).
    key: [u32; 3],
    value: T,
    /// The line of this scrape that named it, plus one; 0 when not seen.
    seen: u32,
}

#[inline]
fn key(series: &str) -> [u32; 3] {
    let h = xxhash_rust::xxh3::xxh3_128(series.as_bytes());
    [h as u32, (h >> 32) as u32, (h >> 64) as u32]
}

#[inline]
fn hash_of(k: &[u32; 3]) -> u64 {
    // The key is a hash already.
    u64::from(k[0]) | (u64::from(k[1]) << 32)
}

impl<T> Default for SeriesCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> SeriesCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            index: None,
            cursor: 0,
            lines: 0,
            moved: false,
        }
    }

    /// The position of the entry keyed `k`, through the table of
    /// positions (built on first need in a scrape).
    fn lookup(&mut self, k: &[u32; 3]) -> Option<usize> {
        let entries = &self.entries;
        let index = self.index.get_or_insert_with(|| {
            let mut t = HashTable::with_capacity(entries.len());
            for (i, s) in entries.iter().enumerate() {
                t.insert_unique(hash_of(&s.key), i as u32, |&j| {
                    hash_of(&entries[j as usize].key)
                });
            }
            t
        });
        index
            .find(hash_of(k), |&j| entries[j as usize].key == *k)
            .map(|&j| j as usize)
    }

    /// The entry for `series`, marking it seen in this scrape.
    #[inline]
    pub fn get(&mut self, series: &str) -> Option<&T> {
        let k = key(series);
        let at = match self.entries.get(self.cursor) {
            Some(s) if s.key == k => self.cursor,
            _ => {
                let i = self.lookup(&k)?;
                self.moved = true;
                i
            }
        };
        Some(&self.mark(at).value)
    }

    /// Marks entry `at` as this scrape's next line.
    fn mark(&mut self, at: usize) -> &mut Slot<T> {
        self.lines += 1;
        self.cursor = at + 1;
        let slot = &mut self.entries[at];
        slot.seen = self.lines;
        slot
    }

    /// Adds (or replaces) the entry for `series`, marking it seen.
    pub fn insert(&mut self, series: &str, value: T) -> &T {
        let k = key(series);
        let at = match self.lookup(&k) {
            Some(i) => {
                self.entries[i].value = value;
                if i != self.cursor {
                    self.moved = true;
                }
                i
            }
            None => {
                let i = self.entries.len();
                if self.cursor != i {
                    // Named before entries that follow it in the page.
                    self.moved = true;
                }
                self.entries.push(Slot {
                    key: k,
                    value,
                    seen: 0,
                });
                // The lookup built the table; it follows the new entry.
                if let Some(index) = self.index.as_mut() {
                    let entries = &self.entries;
                    index.insert_unique(hash_of(&k), i as u32, |&j| {
                        hash_of(&entries[j as usize].key)
                    });
                }
                i
            }
        };
        &self.mark(at).value
    }

    /// Counts a line of this scrape whose entry is added later, with
    /// [`Self::insert_seen`] (its value is not known yet: a series being
    /// created with others); returns the line's number.
    pub fn skip_line(&mut self) -> u32 {
        self.lines += 1;
        self.lines
    }

    /// Adds (or replaces) the entry for `series` as seen at `line` (from
    /// [`Self::skip_line`]), so that the next scrape expects it where
    /// this page had it; whether the entry is new.
    pub fn insert_seen(&mut self, series: &str, value: T, line: u32) -> bool {
        let k = key(series);
        // Out of the page's order: the end of the scrape sorts.
        self.moved = true;
        if let Some(i) = self.lookup(&k) {
            let slot = &mut self.entries[i];
            slot.value = value;
            slot.seen = slot.seen.max(line);
            return false;
        }
        let i = self.entries.len();
        self.entries.push(Slot {
            key: k,
            value,
            seen: line,
        });
        if let Some(index) = self.index.as_mut() {
            let entries = &self.entries;
            index.insert_unique(hash_of(&k), i as u32, |&j| {
                hash_of(&entries[j as usize].key)
            });
        }
        true
    }

    /// Ends a scrape: removes and returns the entries not seen since the
    /// previous call.
    pub fn end_scrape(&mut self) -> Vec<T> {
        let mut gone = Vec::new();
        if self.entries.iter().any(|s| s.seen == 0) {
            let mut kept = Vec::with_capacity(self.entries.len());
            for s in self.entries.drain(..) {
                if s.seen == 0 {
                    gone.push(s.value);
                } else {
                    kept.push(s);
                }
            }
            self.entries = kept;
        }
        if self.moved {
            // The next page is expected in this one's order.
            self.entries.sort_unstable_by_key(|s| s.seen);
        }
        if self.entries.capacity() > self.entries.len() + self.entries.len() / 8 + 16 {
            self.entries.shrink_to_fit();
        }
        for s in &mut self.entries {
            s.seen = 0;
        }
        self.index = None;
        self.cursor = 0;
        self.lines = 0;
        self.moved = false;
        gone
    }

    /// Removes and returns every entry (a failed scrape: all its series
    /// become stale) and starts a new scrape.
    pub fn drain(&mut self) -> Vec<T> {
        let all = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|s| s.value)
            .collect();
        self.index = None;
        self.cursor = 0;
        self.lines = 0;
        self.moved = false;
        all
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page(cache: &mut SeriesCache<u32>, lines: &[&str], next: &mut u32) -> (Vec<u32>, Vec<u32>) {
        page_with(cache, lines, next, false)
    }

    /// A scrape of `lines`; with `deferred`, new series get their values
    /// after the page, as a scraper creating them together does.
    fn page_with(
        cache: &mut SeriesCache<u32>,
        lines: &[&str],
        next: &mut u32,
        deferred: bool,
    ) -> (Vec<u32>, Vec<u32>) {
        let mut refs = Vec::new();
        let mut pending = Vec::new();
        for l in lines {
            let r = match cache.get(l) {
                Some(&r) => r,
                None if deferred => {
                    pending.push((refs.len(), *l, cache.skip_line()));
                    0
                }
                None => {
                    *next += 1;
                    *cache.insert(l, *next)
                }
            };
            refs.push(r);
        }
        let mut created: std::collections::HashMap<&str, u32> = Default::default();
        for (i, l, line) in pending {
            let r = *created.entry(l).or_insert_with(|| {
                *next += 1;
                *next
            });
            let new = cache.insert_seen(l, r, line);
            assert_eq!(new, refs[..i].iter().all(|&x| x != r), "{l} new once");
            refs[i] = r;
        }
        let mut gone = cache.end_scrape();
        gone.sort_unstable();
        (refs, gone)
    }

    #[test]
    fn a_stable_page_needs_no_index_and_changes_are_followed() {
        let mut c = SeriesCache::new();
        let mut next = 0;
        let (refs, gone) = page(&mut c, &["a", "b", "c"], &mut next);
        assert_eq!((refs, gone), (vec![1, 2, 3], vec![]));
        // The same page again: every line where it was expected.
        for l in ["a", "b", "c"] {
            assert!(c.get(l).is_some());
            assert!(c.index.is_none(), "found in place, without a table");
        }
        assert!(c.end_scrape().is_empty());
        // A series appears in the middle and one goes.
        let (refs, gone) = page(&mut c, &["a", "x", "c"], &mut next);
        assert_eq!((refs, gone), (vec![1, 4, 3], vec![2]));
        // That order is now the expected one.
        for l in ["a", "x", "c"] {
            assert!(c.get(l).is_some());
        }
        assert!(c.index.is_none());
        c.end_scrape();
        // Another order, and a line twice.
        let (refs, gone) = page(&mut c, &["c", "a", "x", "a"], &mut next);
        assert_eq!((refs, gone), (vec![3, 1, 4, 1], vec![]));
        assert_eq!(c.len(), 3);
        // A failed scrape: everything goes.
        let mut all = c.drain();
        all.sort_unstable();
        assert_eq!(all, [1, 3, 4]);
        assert!(c.is_empty());
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn series_added_after_the_page_keep_its_order() {
        let mut c = SeriesCache::new();
        let mut next = 0;
        page(&mut c, &["a", "c"], &mut next);
        let (refs, gone) = page_with(&mut c, &["a", "b", "c", "d"], &mut next, true);
        assert_eq!((refs, gone), (vec![1, 3, 2, 4], vec![]));
        // The next page in the same order is found in place.
        for l in ["a", "b", "c", "d"] {
            assert!(c.get(l).is_some());
            assert!(c.index.is_none(), "{l} found in place, without a table");
        }
        assert!(c.end_scrape().is_empty());
    }

    #[test]
    fn insert_replaces_an_entry() {
        let mut c = SeriesCache::new();
        c.insert("a", 1u32);
        c.insert("b", 2);
        assert_eq!(*c.insert("a", 7), 7);
        assert_eq!(c.len(), 2);
        c.end_scrape();
        assert_eq!(c.get("a"), Some(&7));
        assert_eq!(c.get("b"), Some(&2));
        assert!(c.end_scrape().is_empty());
    }

    #[test]
    fn a_slot_is_20_bytes_for_a_4_byte_value() {
        assert_eq!(std::mem::size_of::<Slot<u32>>(), 20);
    }

    proptest! {
        /// Whatever the pages, the cache answers as a map from series to
        /// its first reference would, and reports exactly the series
        /// missing from each page as gone.
        #[test]
        fn behaves_as_a_map(pages in proptest::collection::vec(
            proptest::collection::vec(0u8..24, 0..40), 1..12),
            deferred in any::<bool>(),
        ) {
            let mut c = SeriesCache::new();
            let mut model: std::collections::HashMap<String, u32> = Default::default();
            let mut next = 0;
            for p in pages {
                let lines: Vec<String> = p.iter().map(|i| format!("s{i}")).collect();
                let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
                let mut want_refs = Vec::new();
                let mut n = next;
                let mut m2 = model.clone();
                for l in &lines {
                    let r = *m2.entry(l.clone()).or_insert_with(|| { n += 1; n });
                    want_refs.push(r);
                }
                let mut want_gone: Vec<u32> = model
                    .iter()
                    .filter(|(k, _)| !lines.contains(k))
                    .map(|(_, &r)| r)
                    .collect();
                want_gone.sort_unstable();
                m2.retain(|k, _| lines.contains(k));
                let (got_refs, got_gone) = page_with(&mut c, &refs, &mut next, deferred);
                prop_assert_eq!(got_refs, want_refs);
                prop_assert_eq!(got_gone, want_gone);
                prop_assert_eq!(c.len(), m2.len());
                model = m2;
            }
        }
    }
}
