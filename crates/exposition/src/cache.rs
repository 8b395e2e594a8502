//! The scrape cache: raw series text → caller's series reference.

use hashbrown::HashMap;

/// Maps the raw series text of a sample line ([`crate::SampleRef::series`])
/// to whatever the caller keeps per series (a storage reference, parsed
/// labels). Looking a known series up hashes its bytes once and allocates
/// nothing; only new series pay for decoding labels and an insert.
///
/// Each lookup marks the entry as seen in the current scrape; [`Self::end_scrape`]
/// returns the entries not seen, so the caller can write staleness markers
/// for series that disappeared.
#[derive(Debug)]
pub struct SeriesCache<T> {
    map: HashMap<Box<str>, Slot<T>, foldhash::fast::FixedState>,
    scrape: u64,
}

#[derive(Debug)]
struct Slot<T> {
    value: T,
    seen: u64,
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
        let slot = self.map.get_mut(series)?;
        slot.seen = scrape;
        Some(&slot.value)
    }

    /// Adds (or replaces) the entry for `series`, marking it seen.
    pub fn insert(&mut self, series: &str, value: T) -> &T {
        let scrape = self.scrape;
        let slot = self.map.entry(series.into()).or_insert(Slot {
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
        let gone: Vec<Box<str>> = self
            .map
            .iter()
            .filter(|(_, s)| s.seen != scrape)
            .map(|(k, _)| k.clone())
            .collect();
        self.scrape += 1;
        gone.into_iter()
            .filter_map(|k| self.map.remove(&k))
            .map(|s| s.value)
            .collect()
    }

    /// Removes and returns every entry (a failed scrape: all its series
    /// become stale) and starts a new scrape.
    pub fn drain(&mut self) -> Vec<T> {
        self.scrape += 1;
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
