//! The scrape cache: raw series text → caller's series reference.

use hashbrown::HashMap;

/// Maps the raw series text of a sample line ([`crate::SampleRef::series`])
/// to whatever the caller keeps per series (a storage reference, parsed
/// labels). Looking a known series up hashes its bytes once and allocates
/// nothing; only new series pay for decoding labels and an insert.
///
/// The text itself is not kept: entries are keyed by its 128-bit xxh3
/// hash, so an entry costs 32 bytes whatever the length of the series
/// (a million-series scraper saves ~80 MB). Two series of one target would
/// have to collide in 128 bits to be confused — about one chance in 2^100
/// for a target with a million series.
///
/// Each lookup marks the entry as seen in the current scrape; [`Self::end_scrape`]
/// returns the entries not seen, so the caller can write staleness markers
/// for series that disappeared.
#[derive(Debug)]
pub struct SeriesCache<T> {
    map: HashMap<u128, Slot<T>, foldhash::fast::FixedState>,
    scrape: u32,
}

#[derive(Debug)]
struct Slot<T> {
    value: T,
    seen: u32,
}

#[inline]
fn key(series: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(series.as_bytes())
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
            map: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0x0074_6965_726d_6f6e)),
            scrape: 1,
        }
    }

    /// The entry for `series`, marking it seen in this scrape.
    #[inline]
    pub fn get(&mut self, series: &str) -> Option<&T> {
        let scrape = self.scrape;
        let slot = self.map.get_mut(&key(series))?;
        slot.seen = scrape;
        Some(&slot.value)
    }

    /// Adds (or replaces) the entry for `series`, marking it seen.
    pub fn insert(&mut self, series: &str, value: T) -> &T {
        let scrape = self.scrape;
        let slot = self.map.entry(key(series)).or_insert(Slot {
            value,
            seen: scrape,
        });
        slot.seen = scrape;
        &slot.value
    }

    /// Ends a scrape: removes and returns the entries not seen since the
    /// previous call.
    pub fn end_scrape(&mut self) -> Vec<T> {
        let scrape = self.scrape;
        let gone: Vec<u128> = self
            .map
            .iter()
            .filter(|(_, s)| s.seen != scrape)
            .map(|(k, _)| *k)
            .collect();
        self.scrape = self.scrape.wrapping_add(1);
        gone.into_iter()
            .filter_map(|k| self.map.remove(&k))
            .map(|s| s.value)
            .collect()
    }

    /// Removes and returns every entry (a failed scrape: all its series
    /// become stale) and starts a new scrape.
    pub fn drain(&mut self) -> Vec<T> {
        self.scrape = self.scrape.wrapping_add(1);
        self.map.drain().map(|(_, s)| s.value).collect()
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
