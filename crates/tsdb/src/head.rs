//! The head: every active series in memory, its open chunk and its
//! out-of-order buffer, the postings index, and sealed chunks not yet in
//! RocksDB. Series that went idle are evicted ([`Head::evict`]); the
//! per-partition index on disk (`index.rs`) finds them from then on.

use std::collections::HashMap;
use std::sync::Arc;

use tiermon_chunkenc::XorChunk;
use tiermon_model::{Label, Labels, MatchOp, Matcher};

use crate::labelsets::{LabelSets, Pairs};

/// Dense reference of a series, assigned at creation, stable for its life;
/// never `SeriesRef::MAX`, which callers may use as a mark.
pub type SeriesRef = u32;

/// Interned strings, by dense id, each counted by its uses (as a name or a
/// value of a series in memory) so that evicting the last series that used
/// a string frees it: with pods and containers coming and going, label
/// values churn, and the table must not keep every value ever seen.
#[derive(Debug, Default)]
pub(crate) struct Symbols {
    strs: Vec<Arc<str>>,
    uses: Vec<u32>,
    ids: HashMap<Arc<str>, u32>,
    /// Ids of freed strings, for reuse.
    free: Vec<u32>,
}

impl Symbols {
    /// The id of `s`, counting one more use of it.
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            self.uses[id as usize] += 1;
            return id;
        }
        let a: Arc<str> = Arc::from(s);
        let id = match self.free.pop() {
            Some(id) => {
                self.strs[id as usize] = a.clone();
                self.uses[id as usize] = 1;
                id
            }
            None => {
                self.strs.push(a.clone());
                self.uses.push(1);
                self.strs.len() as u32 - 1
            }
        };
        self.ids.insert(a, id);
        id
    }

    /// One use of `id` fewer; the string is freed with its last use.
    pub(crate) fn release(&mut self, id: u32) {
        let Some(n) = self.uses.get_mut(id as usize).filter(|n| **n > 0) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            let gone = std::mem::replace(&mut self.strs[id as usize], Arc::from(""));
            self.ids.remove(&gone);
            self.free.push(id);
        }
    }

    /// Strings in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn lookup(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub(crate) fn get(&self, id: u32) -> &Arc<str> {
        &self.strs[id as usize]
    }

    pub(crate) fn heap_size(&self) -> usize {
        self.strs.iter().map(|s| s.len() + 16).sum::<usize>()
            + self.strs.capacity() * 16
            + self.uses.capacity() * 4
            + self.free.capacity() * 4
            + self.ids.capacity() * 24
    }
}

/// A sealed run of one series, waiting to be written (or being read); its
/// bytes are in its [`Batch`].
#[derive(Debug, Clone)]
pub(crate) struct SealedChunk {
    pub r: SeriesRef,
    pub partition: i64,
    pub min_t: i64,
    pub max_t: i64,
    /// Write order: among overlapping chunks, the higher wins a timestamp.
    pub seq: u64,
    /// Where its serialised XOR chunk (count, then stream) starts in the
    /// batch's bytes, and its length.
    at: usize,
    len: u32,
}

impl SealedChunk {
    /// A chunk's description; [`Batch::push`] places its bytes.
    pub(crate) fn new(r: SeriesRef, partition: i64, min_t: i64, max_t: i64, seq: u64) -> Self {
        Self {
            r,
            partition,
            min_t,
            max_t,
            seq,
            at: 0,
            len: 0,
        }
    }
}

/// Sealed chunks and their serialised XOR streams, one after another in
/// one buffer: sealing copies a stream out of its series (a hundred bytes
/// or so) instead of allocating for each chunk, and the table file's
/// values are written from here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Batch {
    chunks: Vec<SealedChunk>,
    bytes: Vec<u8>,
}

impl Batch {
    /// Adds a chunk: `c`'s place in the bytes is set here.
    fn push(&mut self, mut c: SealedChunk, chunk: &XorChunk) {
        c.at = self.bytes.len();
        chunk.write_to(&mut self.bytes);
        c.len = (self.bytes.len() - c.at) as u32;
        self.chunks.push(c);
    }

    /// Adds a chunk of another batch.
    fn push_from(&mut self, c: &SealedChunk, bytes: &[u8]) {
        let mut c = c.clone();
        c.at = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.chunks.push(c);
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Chunk `i` and its serialised XOR chunk.
    pub fn get(&self, i: usize) -> (&SealedChunk, &[u8]) {
        let c = &self.chunks[i];
        (c, &self.bytes[c.at..c.at + c.len as usize])
    }

    /// The chunks with their serialised XOR chunks.
    pub fn iter(&self) -> impl Iterator<Item = (&SealedChunk, &[u8])> {
        (0..self.chunks.len()).map(|i| self.get(i))
    }

    /// The chunks.
    pub fn chunks(&self) -> &[SealedChunk] {
        &self.chunks
    }

    fn heap_size(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<SealedChunk>() + self.bytes.capacity()
    }
}

/// Sealed chunks not yet in RocksDB: those waiting for the next write,
/// and those of the write under way, which reads still find here until it
/// is done.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    waiting: Batch,
    writing: Arc<Batch>,
    /// The buffers of the last batch written, for the next one to fill.
    spare: Batch,
}

impl Pending {
    fn push(&mut self, c: SealedChunk, chunk: &XorChunk) {
        self.waiting.push(c, chunk);
    }

    /// Heap bytes of the chunks waiting and being written.
    pub fn heap_size(&self) -> usize {
        self.waiting.heap_size() + self.writing.heap_size() + self.spare.heap_size()
    }

    /// Chunks waiting and being written.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.writing.len()
    }

    /// Bytes of the chunks waiting.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting.bytes.len()
    }

    /// Whether no chunk is waiting.
    pub fn nothing_waiting(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Chunks waiting and being written, with their serialised XOR chunks.
    pub fn iter(&self) -> impl Iterator<Item = (&SealedChunk, &[u8])> {
        self.waiting.iter().chain(self.writing.iter())
    }

    /// Takes the waiting chunks for a write; they stay readable here until
    /// [`Self::finish_write`]. Writes are serialised by the caller.
    pub fn start_write(&mut self) -> Arc<Batch> {
        debug_assert!(
            self.writing.is_empty(),
            "two writes of pending chunks at once"
        );
        let next = std::mem::take(&mut self.spare);
        self.writing = Arc::new(std::mem::replace(&mut self.waiting, next));
        Arc::clone(&self.writing)
    }

    /// Ends the write of `batch` (from [`Self::start_write`]): written, its
    /// chunks are forgotten (and its buffers kept for a later batch); not,
    /// they wait for the next write.
    pub fn finish_write(&mut self, batch: Arc<Batch>, written: bool) {
        self.writing = Arc::default();
        if written {
            if let Ok(mut b) = Arc::try_unwrap(batch) {
                b.chunks.clear();
                b.bytes.clear();
                self.spare = b;
            }
            return;
        }
        for (c, bytes) in batch.iter() {
            self.waiting.push_from(c, bytes);
        }
    }
}

/// One series in memory: what an append reads and writes, one 64-byte
/// cache line. Its labels and out-of-order samples, which appends do not
/// touch, are kept apart (see [`Head`]).
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct MemSeries {
    /// The open chunk; its first sample's partition is the chunk's.
    pub chunk: XorChunk,
    pub min_t: i64,
    pub max_t: i64,
    /// Sequence of the open chunk, taken when it started, so that anything
    /// sealed while it is open (out-of-order rewrites) wins over it.
    pub chunk_seq: u64,
    /// Its reference (the slot it sits in is not).
    pub r: SeriesRef,
    /// Whether out-of-order samples were sealed (into chunks that may hold
    /// later writes of its timestamps) since the open chunk started; after
    /// a restart, assumed. While it is false, the open chunk holds the
    /// series' every sample from [`MemSeries::chunk_min_t`] on, so a read
    /// from there on needs nothing from RocksDB.
    pub ooo_sealed: bool,
    /// 24 bits of its label hash, which place it in [`Head`]'s table by
    /// labels (see [`table_hash`]): the table grows without decoding and
    /// hashing every label set again. It fills the record's padding.
    hash: [u8; 3],
}

/// The hash of a series in [`Head`]'s table by labels: 24 bits of its
/// [`Labels::series_id`] spread over 64 (the table takes its bucket from
/// the low bits and a tag from the top ones). Series that share those 24
/// bits are told apart by their labels.
fn table_hash(fragment: [u8; 3]) -> u64 {
    let f = u64::from(fragment[0]) | u64::from(fragment[1]) << 8 | u64::from(fragment[2]) << 16;
    f.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The 24 bits of a label hash a series keeps.
fn fragment(series_id: u64) -> [u8; 3] {
    let b = series_id.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// Why a sample was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// Older than the series' newest sample minus the out-of-order window.
    #[error(
        "sample at {t} is too old for series {series}: its newest sample is at {max_t} and the out-of-order window is {window_ms} ms"
    )]
    TooOld {
        /// The series.
        series: String,
        /// The sample's timestamp.
        t: i64,
        /// The series' newest timestamp.
        max_t: i64,
        /// The configured window.
        window_ms: i64,
    },
}

/// The in-memory state.
#[derive(Debug, Default)]
pub(crate) struct Head {
    pub symbols: Symbols,
    /// Series in memory, by slot.
    series: Segmented<MemSeries>,
    /// Their labels, (name, value) symbol pairs sorted by name, by slot,
    /// packed; a free slot has none.
    labels: LabelSets,
    /// Out-of-order samples (and rewrites of existing timestamps) not yet
    /// sealed, in arrival order, by series: most series never have any.
    ooo: HashMap<SeriesRef, Vec<(i64, f64)>>,
    /// Slot + 1 of each reference, 0 for one not in memory (evicted, or a
    /// gap): 4 bytes per reference ever made, so that evicted series leave
    /// only that behind.
    slots: Vec<u32>,
    /// Free slots, reused by the next series.
    free: Vec<u32>,
    /// Series in memory.
    live: usize,
    /// Series by label hash ([`table_hash`]), told apart by their labels
    /// when hashes collide: 4 bytes an entry, the hash read from the
    /// series' record when the table grows.
    by_hash: hashbrown::HashTable<SeriesRef>,
    /// (name, value) → series, ascending.
    postings: HashMap<(u32, u32), Vec<SeriesRef>>,
    /// name → values seen.
    values: HashMap<u32, Vec<u32>>,
    /// Sealed chunks not yet in RocksDB.
    pub pending: Pending,
    pub next_seq: u64,
    pub samples_appended: u64,
    /// Partition width in milliseconds.
    pub width: i64,
    /// The partition of the last sample appended, to tell without a
    /// division whether the next one is in it.
    partitions: PartitionCache,
}

/// The bounds of one partition, `[start, end)`: nearly every sample of a
/// commit falls in the same partition as the open chunk of its series, so
/// the two 64-bit divisions that would tell it are rarely needed.
#[derive(Debug, Default)]
struct PartitionCache {
    start: i64,
    end: i64,
}

impl PartitionCache {
    /// Whether `a` and `b` are in the same partition of `width` ms.
    #[inline]
    fn same(&mut self, a: i64, b: i64, width: i64) -> bool {
        if !(self.start..self.end).contains(&b) {
            self.start = partition_of(b, width);
            self.end = self.start.saturating_add(width);
        }
        (self.start..self.end).contains(&a)
    }
}

/// How many samples ahead [`Head::append_all`] prefetches a series and, at
/// half that distance, the end of its open chunk: far enough to hide a
/// miss to memory, near enough that the lines are still in L1.
const PREFETCH: usize = 16;

/// Asks the CPU to bring the cache line at `p` into L1. It is a hint: it
/// never dereferences `p` and never faults, whatever the address.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `prefetch` reads nothing and cannot fault on any address; SSE
    // is part of every x86_64 target.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl Head {
    /// An empty head for partitions `width` ms wide.
    pub(crate) fn new(width: i64) -> Self {
        Self {
            width,
            ..Self::default()
        }
    }
}

/// A vector that grows by fixed segments instead of doubling: a million
/// series of 104 bytes would otherwise carry up to 100 MB of unused
/// capacity (a third of it on average), and each doubling copies them all
/// under the head's lock.
#[derive(Debug)]
pub(crate) struct Segmented<T> {
    segments: Vec<Vec<T>>,
    len: usize,
}

/// Elements per segment of [`Segmented`].
const SEGMENT: usize = 1024;

impl<T> Default for Segmented<T> {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Segmented<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push(&mut self, x: T) {
        if self.len == self.segments.len() * SEGMENT {
            self.segments.push(Vec::with_capacity(SEGMENT));
        }
        self.segments[self.len / SEGMENT].push(x);
        self.len += 1;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.segments.iter().flatten()
    }

    /// Bytes of elements allocated, used or not.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.segments.len() * SEGMENT * std::mem::size_of::<T>()
            + self.segments.capacity() * std::mem::size_of::<Vec<T>>()
    }
}

impl<T> std::ops::Index<usize> for Segmented<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.segments[i / SEGMENT][i % SEGMENT]
    }
}

impl<T> std::ops::IndexMut<usize> for Segmented<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.segments[i / SEGMENT][i % SEGMENT]
    }
}

pub(crate) fn partition_of(t: i64, width: i64) -> i64 {
    t.div_euclid(width) * width
}

impl Head {
    /// Series in memory.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The reference the next new series gets: every one below it was
    /// made (and may since have been evicted).
    pub(crate) fn next_ref(&self) -> SeriesRef {
        self.slots.len() as SeriesRef
    }

    /// Reserves references below `r` (known to exist on disk) so that new
    /// series never reuse them.
    pub(crate) fn reserve_refs(&mut self, r: SeriesRef) {
        if self.slots.len() < r as usize {
            self.slots.resize(r as usize, 0);
        }
    }

    /// Whether series `r` is in memory.
    pub(crate) fn contains(&self, r: SeriesRef) -> bool {
        self.slots.get(r as usize).is_some_and(|&s| s != 0)
    }

    /// Series `r`, if in memory.
    pub(crate) fn get(&self, r: SeriesRef) -> Option<&MemSeries> {
        match self.slots.get(r as usize) {
            Some(&s) if s != 0 => Some(&self.series[s as usize - 1]),
            _ => None,
        }
    }

    /// Series `r`, if in memory, to change.
    pub(crate) fn get_mut(&mut self, r: SeriesRef) -> Option<&mut MemSeries> {
        match self.slots.get(r as usize) {
            Some(&s) if s != 0 => Some(&mut self.series[s as usize - 1]),
            _ => None,
        }
    }

    /// Slot of series `r`, which the caller knows to be in memory.
    fn slot(&self, r: SeriesRef) -> usize {
        self.slots[r as usize] as usize - 1
    }

    /// The series in memory, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &MemSeries> {
        self.series
            .iter()
            .enumerate()
            .filter(|&(slot, _)| self.labels.is_live(slot))
            .map(|(_, s)| s)
    }

    /// Out-of-order samples of series `r` not yet sealed, in arrival order.
    pub(crate) fn ooo(&self, r: SeriesRef) -> &[(i64, f64)] {
        self.ooo.get(&r).map_or(&[], Vec::as_slice)
    }

    /// Gives series `r`, in memory, out-of-order samples (from a
    /// checkpoint), replacing what it had.
    pub(crate) fn set_ooo(&mut self, r: SeriesRef, ooo: Vec<(i64, f64)>) {
        if ooo.is_empty() {
            self.ooo.remove(&r);
        } else {
            self.ooo.insert(r, ooo);
        }
    }

    /// The (name, value) symbol pairs of series `r`, if in memory.
    fn pairs(&self, r: SeriesRef) -> Option<Pairs<'_>> {
        if self.contains(r) {
            self.labels.get(self.slot(r))
        } else {
            None
        }
    }

    /// Whether a series of `n` labels can be created: false only when the
    /// label sets fill what they can address (8 GiB).
    pub(crate) fn has_room(&self, n: usize) -> bool {
        self.labels.has_room(n)
    }

    /// The series with exactly these labels.
    pub(crate) fn lookup(&self, labels: &Labels) -> Option<SeriesRef> {
        let h = table_hash(fragment(labels.series_id().0));
        self.by_hash
            .find(h, |&r| self.labels_eq(r, labels))
            .copied()
    }

    fn labels_eq(&self, r: SeriesRef, labels: &Labels) -> bool {
        let Some(pairs) = self.pairs(r) else {
            return false;
        };
        pairs.len() == labels.len()
            && pairs.zip(labels.iter()).all(|((n, v), l)| {
                **self.symbols.get(n) == *l.name && **self.symbols.get(v) == *l.value
            })
    }

    /// Creates a series with reference `r` (the next one, or the one the
    /// WAL or RocksDB recorded); nothing if it is in memory already.
    pub(crate) fn create(&mut self, r: SeriesRef, labels: &Labels) {
        self.create_sorted(r, labels.iter().map(|l| (&*l.name, &*l.value)));
    }

    /// [`Head::create`] from `(name, value)` pairs sorted by name, unique
    /// and with non-empty values, as storage keeps them: no label set is
    /// built on the way (opening a large head creates millions).
    pub(crate) fn create_sorted<'a, I>(&mut self, r: SeriesRef, labels: I)
    where
        I: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        if self.contains(r) {
            return;
        }
        let hash = fragment(tiermon_model::series_id_of(labels.clone()).0);
        let pairs: Vec<(u32, u32)> = labels
            .map(|(n, v)| (self.symbols.intern(n), self.symbols.intern(v)))
            .collect();
        for &(n, v) in pairs.iter() {
            let p = self.postings.entry((n, v)).or_default();
            if p.is_empty() {
                let vals = self.values.entry(n).or_default();
                grow_gently(vals);
                vals.push(v);
            }
            grow_gently(p);
            // References usually arrive in order; keep the list sorted if not.
            match p.last() {
                Some(&last) if last > r => {
                    let i = p.partition_point(|&x| x < r);
                    p.insert(i, r);
                }
                _ => p.push(r),
            }
        }
        self.reserve_refs(r + 1);
        let slot = match self.free.pop() {
            Some(f) => {
                self.series[f as usize] = MemSeries::new(r, hash);
                self.labels.set(f as usize, &pairs);
                f as usize
            }
            None => {
                self.series.push(MemSeries::new(r, hash));
                self.labels.push(&pairs);
                self.series.len() - 1
            }
        };
        self.slots[r as usize] = slot as u32 + 1;
        self.live += 1;
        let (series, slots) = (&self.series, &self.slots);
        self.by_hash.insert_unique(table_hash(hash), r, |&x| {
            table_hash(series[slots[x as usize] as usize - 1].hash)
        });
    }

    /// Removes series from memory: their slots, postings and hash
    /// entries. The caller has made sure that everything they hold is on
    /// disk and indexed there.
    pub(crate) fn evict(&mut self, refs: &[SeriesRef]) {
        let mut gone: HashMap<(u32, u32), Vec<SeriesRef>> = HashMap::new();
        let mut pairs = Vec::new();
        for &r in refs {
            let Some(slot) = self.slots.get(r as usize).copied().filter(|&s| s != 0) else {
                continue;
            };
            pairs.clear();
            self.labels.remove(slot as usize - 1, &mut pairs);
            let h = table_hash(self.series[slot as usize - 1].hash);
            if let Ok(e) = self.by_hash.find_entry(h, |&x| x == r) {
                e.remove();
            }
            for &pair in &pairs {
                gone.entry(pair).or_default().push(r);
                self.symbols.release(pair.0);
                self.symbols.release(pair.1);
            }
            self.series[slot as usize - 1] = MemSeries::new(r, [0; 3]);
            self.ooo.remove(&r);
            self.slots[r as usize] = 0;
            self.free.push(slot - 1);
            self.live -= 1;
        }
        for ((n, v), mut refs) in gone {
            refs.sort_unstable();
            let Some(p) = self.postings.get_mut(&(n, v)) else {
                continue;
            };
            *p = difference(p, &refs);
            if p.is_empty() {
                self.postings.remove(&(n, v));
                if let Some(vals) = self.values.get_mut(&n) {
                    vals.retain(|&x| x != v);
                    if vals.is_empty() {
                        self.values.remove(&n);
                    }
                }
            } else {
                p.shrink_to_fit();
            }
        }
    }

    /// The labels of a series in memory.
    pub(crate) fn labels(&self, r: SeriesRef) -> Labels {
        let v: Vec<Label> = self
            .labels
            .get(self.slot(r))
            .into_iter()
            .flatten()
            .map(|(n, v)| Label {
                name: self.symbols.get(n).clone(),
                value: self.symbols.get(v).clone(),
            })
            .collect();
        Labels::from_sorted(v)
    }

    /// Appends samples of series in memory, in order; the rejected go to
    /// `rejected` with their index, ascending. A commit's
    /// series are spread over memory, so each append would wait for its
    /// series and its chunk's last bytes; they are fetched ahead instead.
    pub(crate) fn append_all(
        &mut self,
        samples: &[(SeriesRef, i64, f64)],
        opts: &crate::Options,
        rejected: &mut Vec<(usize, SampleError)>,
    ) {
        for (i, &(r, t, v)) in samples.iter().enumerate() {
            if let Some(&(ahead, _, _)) = samples.get(i + PREFETCH) {
                let slot = self.slots[ahead as usize] as usize - 1;
                prefetch(&self.series[slot]);
            }
            if let Some(&(ahead, _, _)) = samples.get(i + PREFETCH / 2) {
                let slot = self.slots[ahead as usize] as usize - 1;
                prefetch(self.series[slot].chunk.tail());
            }
            if let Err(e) = self.append(r, t, v, opts) {
                rejected.push((i, e));
            }
        }
    }

    /// Appends one sample; a chunk that fills up or crosses a partition is
    /// sealed into `pending`.
    pub(crate) fn append(
        &mut self,
        r: SeriesRef,
        t: i64,
        v: f64,
        opts: &crate::Options,
    ) -> Result<(), SampleError> {
        let width = self.width;
        let window = opts.ooo_window_ms();
        let max_samples = opts.chunk_samples.min(tiermon_chunkenc::MAX_SAMPLES);
        let slot = self.slots[r as usize] as usize - 1;
        let s = &mut self.series[slot];
        // An open chunk ends at the series' newest sample (out-of-order
        // ones are older): read from the series, not from the chunk's
        // stream, which is another cache line.
        let last = (!s.chunk.is_empty()).then_some(s.max_t);
        debug_assert_eq!(last, s.chunk.last_timestamp());
        if last.is_none_or(|l| t > l) {
            // The chunk's samples share a partition, so its last stands for
            // its first, which is in another cache line (see
            // `XorChunk::append_after`).
            if let Some(l) = last
                && (!self.partitions.same(l, t, width)
                    || s.chunk.len() >= max_samples
                    || s.chunk.encoded_len() >= opts.chunk_bytes
                    || !s.chunk.within_span_after(l, t))
            {
                seal_open(s, width, &mut self.pending);
            }
            if s.chunk.is_empty() {
                if s.max_t != i64::MIN && t <= s.max_t {
                    // Older than data already sealed: not in order any more.
                    return self.append_ooo(r, t, v, window);
                }
                s.ooo_sealed = false;
                s.chunk_seq = self.next_seq;
                self.next_seq += 1;
            }
            if !s.chunk.append_after(s.max_t, t, v) {
                debug_assert!(
                    false,
                    "an open chunk refused a sample it was checked to take"
                );
                return self.append_ooo(r, t, v, window);
            }
            s.min_t = s.min_t.min(t);
            s.max_t = s.max_t.max(t);
            self.samples_appended += 1;
            return Ok(());
        }
        if last == Some(t)
            && s.chunk
                .iter()
                .last()
                .is_some_and(|(_, lv)| lv.to_bits() == v.to_bits())
        {
            // The same sample again (a retried write): nothing to do.
            return Ok(());
        }
        self.append_ooo(r, t, v, window)
    }

    fn append_ooo(&mut self, r: SeriesRef, t: i64, v: f64, window: i64) -> Result<(), SampleError> {
        let slot = self.slot(r);
        let s = &mut self.series[slot];
        if t < s.max_t.saturating_sub(window) {
            let series = self.labels(r).to_string();
            let s = &self.series[slot];
            return Err(SampleError::TooOld {
                series,
                t,
                max_t: s.max_t,
                window_ms: window,
            });
        }
        let ooo = self.ooo.entry(r).or_default();
        ooo.push((t, v));
        s.min_t = s.min_t.min(t);
        self.samples_appended += 1;
        if ooo.len() >= 1024 {
            self.seal_ooo(r);
        }
        Ok(())
    }

    /// Seals a series' out-of-order buffer into chunks, one per partition.
    pub(crate) fn seal_ooo(&mut self, r: SeriesRef) {
        let width = self.width;
        let Some(slot) = self.get(r).map(|_| self.slot(r)) else {
            return;
        };
        let Some(mut ooo) = self.ooo.remove(&r) else {
            return;
        };
        // Last write wins a timestamp: stable sort, then keep the last of each run.
        ooo.sort_by_key(|&(t, _)| t);
        let mut dedup: Vec<(i64, f64)> = Vec::with_capacity(ooo.len());
        for (t, v) in ooo.into_iter() {
            match dedup.last_mut() {
                Some(last) if last.0 == t => *last = (t, v),
                _ => dedup.push((t, v)),
            }
        }
        let s = &mut self.series[slot];
        if dedup.last().is_some_and(|&(t, _)| t >= s.chunk_min_t()) {
            s.ooo_sealed = true;
        }
        let mut i = 0;
        while i < dedup.len() {
            let p = partition_of(dedup[i].0, width);
            let mut c = XorChunk::new();
            let start = i;
            // Until the partition ends or the chunk takes no more (full, or
            // its longest span reached).
            while i < dedup.len()
                && partition_of(dedup[i].0, width) == p
                && c.append(dedup[i].0, dedup[i].1)
            {
                i += 1;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let meta = SealedChunk::new(r, p, dedup[start].0, dedup[i - 1].0, seq);
            self.pending.push(meta, &c);
        }
    }

    /// Seals open chunks and out-of-order samples in partitions that end at
    /// or before `closed_before`: a series that went quiet must not keep
    /// its last chunk in memory, out of reach of compaction, downsampling,
    /// tiering and retention.
    pub(crate) fn seal_closed(&mut self, closed_before: i64) {
        let width = self.width;
        let closed = |p: i64| p.saturating_add(width) <= closed_before;
        for slot in 0..self.series.len() {
            // A free slot's chunk is empty.
            let s = &mut self.series[slot];
            if !s.chunk.is_empty() && closed(partition_of(s.chunk_min_t(), width)) {
                seal_open(s, width, &mut self.pending);
            }
        }
        let ooo: Vec<SeriesRef> = self
            .ooo
            .iter()
            .filter(|(_, o)| o.iter().any(|&(t, _)| closed(partition_of(t, width))))
            .map(|(&r, _)| r)
            .collect();
        for r in ooo {
            self.seal_ooo(r);
        }
    }

    /// Seals the open chunk and out-of-order samples of series `r`.
    pub(crate) fn seal_series(&mut self, r: SeriesRef) {
        if !self.contains(r) {
            return;
        }
        let slot = self.slot(r);
        let s = &mut self.series[slot];
        if !s.chunk.is_empty() {
            seal_open(s, self.width, &mut self.pending);
        }
        self.seal_ooo(r);
    }

    /// Seals every open chunk and out-of-order buffer (before a flush).
    pub(crate) fn seal_all(&mut self) {
        for slot in 0..self.series.len() {
            if self.labels.is_live(slot) {
                self.seal_series(self.series[slot].r);
            }
        }
    }

    /// Series matching all matchers (at least one must not match the empty
    /// string, or all series are candidates), ascending.
    pub(crate) fn select(&self, matchers: &[Matcher]) -> Vec<SeriesRef> {
        let mut result: Option<Vec<SeriesRef>> = None;
        let mut subtract: Vec<Vec<SeriesRef>> = Vec::new();
        for m in matchers {
            let name = self.symbols.lookup(m.name());
            if m.matches_empty() {
                // Series without the label match; remove those whose value
                // does not.
                if let Some(n) = name {
                    let bad = self.union_values(n, |v| !m.matches(v), None);
                    subtract.push(bad);
                }
            } else {
                let good = match name {
                    Some(n) => self.union_values(n, |v| m.matches(v), Some(m)),
                    None => Vec::new(),
                };
                result = Some(match result {
                    None => good,
                    Some(prev) => intersect(&prev, &good),
                });
            }
        }
        let mut refs = result.unwrap_or_else(|| {
            let mut all: Vec<SeriesRef> = self.iter().map(|s| s.r).collect();
            all.sort_unstable();
            all
        });
        for s in subtract {
            refs = difference(&refs, &s);
        }
        refs
    }

    /// Union of the postings of values of label `n` for which `keep` holds.
    /// `positive` is the matcher when `keep` is exactly its match, which
    /// allows looking exact values up and skipping values by prefix.
    fn union_values(
        &self,
        n: u32,
        keep: impl Fn(&str) -> bool,
        positive: Option<&Matcher>,
    ) -> Vec<SeriesRef> {
        let empty = Vec::new();
        let values = self.values.get(&n).unwrap_or(&empty);
        let mut lists: Vec<&Vec<SeriesRef>> = Vec::new();
        if let Some(set) = positive.and_then(Matcher::set_matches) {
            // Exact values: look them up instead of scanning every value.
            for v in set {
                if let Some(p) = self
                    .symbols
                    .lookup(v)
                    .and_then(|v| self.postings.get(&(n, v)))
                {
                    lists.push(p);
                }
            }
        } else {
            let prefix = positive
                .filter(|m| m.op() == MatchOp::Regex)
                .and_then(literal_prefix);
            for &v in values {
                let s = self.symbols.get(v);
                if prefix.is_some_and(|p| !s.starts_with(p)) {
                    continue;
                }
                if keep(s)
                    && let Some(p) = self.postings.get(&(n, v))
                {
                    lists.push(p);
                }
            }
        }
        merge_union(&lists)
    }

    /// Label names and, for `name`, values, of the given series.
    pub(crate) fn label_names(&self, refs: &[SeriesRef]) -> Vec<String> {
        let mut ids: Vec<u32> = refs
            .iter()
            .filter_map(|&r| self.pairs(r))
            .flat_map(|p| p.map(|(n, _)| n))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out: Vec<String> = ids
            .into_iter()
            .map(|n| self.symbols.get(n).to_string())
            .collect();
        out.sort();
        out
    }

    pub(crate) fn label_values(&self, name: &str, refs: &[SeriesRef]) -> Vec<String> {
        let Some(n) = self.symbols.lookup(name) else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = refs
            .iter()
            .filter_map(|&r| self.pairs(r)?.find(|&(ln, _)| ln == n).map(|(_, v)| v))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out: Vec<String> = ids
            .into_iter()
            .map(|v| self.symbols.get(v).to_string())
            .collect();
        out.sort();
        out
    }

    /// Series counts per value of `name` (e.g. per metric name), largest
    /// first.
    pub(crate) fn top_values(&self, name: &str, n: usize) -> Vec<(String, usize)> {
        let Some(id) = self.symbols.lookup(name) else {
            return Vec::new();
        };
        let mut v: Vec<(String, usize)> = self
            .values
            .get(&id)
            .map(|vals| {
                vals.iter()
                    .map(|&v| {
                        (
                            self.symbols.get(v).to_string(),
                            self.postings.get(&(id, v)).map_or(0, Vec::len),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Label pairs holding the most series.
    pub(crate) fn top_pairs(&self, n: usize) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .postings
            .iter()
            .map(|(&(k, val), p)| {
                (
                    format!("{}={}", self.symbols.get(k), self.symbols.get(val)),
                    p.len(),
                )
            })
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Label names with the most distinct values.
    pub(crate) fn top_names_by_values(&self, n: usize) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .values
            .iter()
            .map(|(&k, vals)| (self.symbols.get(k).to_string(), vals.len()))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Approximate heap bytes of the head, for the memory-per-series figure.
    pub(crate) fn heap_size(&self) -> usize {
        let labels = self.labels.heap_size();
        let ooo: usize = self
            .ooo
            .values()
            .map(|o| o.capacity() * 16 + 48)
            .sum::<usize>()
            + self.ooo.capacity() * 40;
        let postings: usize = self
            .postings
            .values()
            .map(|p| p.capacity() * 4 + 24 + 8 + 16)
            .sum();
        let values: usize = self
            .values
            .values()
            .map(|v| v.capacity() * 4 + 24 + 8)
            .sum();
        labels
            + ooo
            + self
                .series
                .iter()
                .map(|s| match s.chunk.heap_size() {
                    0 => 0,
                    // With malloc's 8-byte header (buffers fill their block).
                    n => n + 8,
                })
                .sum::<usize>()
            + self.series.capacity_bytes()
            + postings
            + values
            + self.slots.capacity() * 4
            + self.free.capacity() * 4
            + self.by_hash.capacity() * (std::mem::size_of::<SeriesRef>() + 1)
            + self.symbols.heap_size()
            + self.pending.heap_size()
    }
}

impl MemSeries {
    /// Series `r`, without samples, whose labels hash to `hash`.
    fn new(r: SeriesRef, hash: [u8; 3]) -> Self {
        Self {
            chunk: XorChunk::new(),
            min_t: i64::MAX,
            max_t: i64::MIN,
            chunk_seq: 0,
            r,
            ooo_sealed: false,
            hash,
        }
    }

    /// First sample of the open chunk; `i64::MAX` when it is empty.
    pub(crate) fn chunk_min_t(&self) -> i64 {
        self.chunk.first_timestamp().unwrap_or(i64::MAX)
    }
}

/// Seals the open chunk of `s`, which has samples, into `pending`: its
/// stream is copied into the batch's buffer, and its own buffer freed.
fn seal_open(s: &mut MemSeries, width: i64, pending: &mut Pending) {
    let min_t = s.chunk_min_t();
    debug_assert_eq!(s.chunk.last_timestamp(), Some(s.max_t));
    // The open chunk ends at the series' newest sample.
    let meta = SealedChunk::new(s.r, partition_of(min_t, width), min_t, s.max_t, s.chunk_seq);
    pending.push(meta, &s.chunk);
    s.chunk = XorChunk::new();
}

/// Makes room for one more element, growing by an eighth rather than
/// doubling: postings lists live as long as their series, and doubling
/// leaves up to half of each unused (a quarter on average), which at four
/// bytes a reference costs more per series than the copies growth saves.
fn grow_gently<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 8).max(4));
    }
}

/// The literal text every match of a regex matcher starts with, when the
/// pattern has no alternation (so that the prefix is certain).
pub(crate) fn literal_prefix(m: &Matcher) -> Option<&str> {
    let p = m.value();
    if p.contains('|') {
        return None;
    }
    let end = p
        .find(|c: char| ".^$*+?()[]{}|\\".contains(c))
        .unwrap_or(p.len());
    (end > 0).then(|| &p[..end])
}

fn merge_union(lists: &[&Vec<SeriesRef>]) -> Vec<SeriesRef> {
    match lists {
        [] => Vec::new(),
        [one] => (*one).clone(),
        _ => {
            let mut v: Vec<SeriesRef> = lists.iter().flat_map(|l| l.iter().copied()).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    }
}

pub(crate) fn intersect(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

pub(crate) fn difference(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let mut j = 0;
    a.iter()
        .copied()
        .filter(|&x| {
            while j < b.len() && b[j] < x {
                j += 1;
            }
            !(j < b.len() && b[j] == x)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segmented_vector_indexes_across_segments_and_keeps_order() {
        let mut v = Segmented::default();
        for i in 0..3 * SEGMENT + 5 {
            v.push(i);
        }
        assert_eq!(v.len(), 3 * SEGMENT + 5);
        assert_eq!(v[SEGMENT - 1], SEGMENT - 1);
        assert_eq!(v[SEGMENT], SEGMENT);
        v[2 * SEGMENT] = 7;
        assert_eq!(v[2 * SEGMENT], 7);
        assert_eq!(v.iter().filter(|&&x| x == 7).count(), 2);
        assert_eq!(v.iter().count(), v.len());
        assert_eq!(*v.iter().last().unwrap(), 3 * SEGMENT + 4);
        // Four segments allocated, never more than one partly empty.
        assert_eq!(
            v.capacity_bytes(),
            4 * SEGMENT * std::mem::size_of::<usize>()
                + v.segments.capacity() * std::mem::size_of::<Vec<usize>>()
        );
    }
}

#[cfg(test)]
mod size_tests {
    /// One per series in memory: what an append touches (encoder state,
    /// times, sequence, buffer, flags) and nothing else; labels and
    /// out-of-order samples are kept apart.
    #[test]
    fn a_series_in_memory_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<super::MemSeries>(), 64);
        assert_eq!(std::mem::align_of::<super::MemSeries>(), 64);
    }
}

#[cfg(test)]
mod append_tests {
    use super::*;
    use proptest::prelude::*;
    use tiermon_model::Labels;

    proptest! {
        /// The cache answers as two divisions would, whatever it held.
        #[test]
        fn the_partition_cache_agrees_with_dividing(
            pairs in proptest::collection::vec((-10_000i64..10_000, -10_000i64..10_000), 1..50),
            width in 1i64..3_000,
        ) {
            let mut cache = PartitionCache::default();
            for (a, b) in pairs {
                prop_assert_eq!(
                    cache.same(a, b, width),
                    partition_of(a, width) == partition_of(b, width),
                    "a {} b {} width {}", a, b, width
                );
            }
        }
    }

    /// The table by labels keeps 24 bits of each hash: among 30k series
    /// a few dozen pairs share them, and must still be told apart, as
    /// the table grows and as series leave and come back.
    #[test]
    fn series_sharing_hash_bits_are_told_apart() {
        let mut head = Head::new(1_000);
        let set = |i: usize| Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())]);
        let n = 30_000;
        for i in 0..n {
            head.create(i as SeriesRef, &set(i));
        }
        let mut by_fragment: HashMap<[u8; 3], usize> = HashMap::new();
        for i in 0..n {
            *by_fragment
                .entry(fragment(set(i).series_id().0))
                .or_default() += 1;
        }
        let shared = by_fragment.values().filter(|&&k| k > 1).count();
        assert!(shared >= 10, "only {shared} fragments shared: no test");
        for i in 0..n {
            assert_eq!(head.lookup(&set(i)), Some(i as SeriesRef), "series {i}");
        }
        let gone: Vec<SeriesRef> = (0..n as SeriesRef).filter(|r| r % 3 == 0).collect();
        head.evict(&gone);
        for i in 0..n {
            let want = (i % 3 != 0).then_some(i as SeriesRef);
            assert_eq!(head.lookup(&set(i)), want, "series {i}");
        }
        for &r in &gone {
            head.create(r, &set(r as usize));
        }
        for i in 0..n {
            assert_eq!(head.lookup(&set(i)), Some(i as SeriesRef), "series {i}");
        }
        assert_eq!(head.lookup(&set(n)), None);
    }

    /// A commit whose series cross a partition boundary at different
    /// samples seals each chunk within one partition, and reports the
    /// rejected samples by their index in the commit.
    #[test]
    fn appending_a_batch_seals_at_partitions_and_names_the_rejected() {
        let width = 1_000;
        let mut head = Head::new(width);
        let opts = crate::Options {
            ooo_window: std::time::Duration::from_millis(100),
            ..crate::Options::default()
        };
        for r in 0..40 {
            let l = Labels::from_pairs([("__name__", "m"), ("i", &r.to_string())]);
            head.create(r, &l);
        }
        // Series r has samples every 70 ms from -3000 + r, so that each
        // crosses -2000, -1000, 0 and 1000 at its own step, interleaved in
        // one commit; then one sample too old for series 3.
        let mut samples = Vec::new();
        for k in 0..80 {
            for r in 0..40u32 {
                samples.push((r, -3_000 + i64::from(r) + 70 * k, k as f64));
            }
        }
        samples.push((3, -3_000, 0.5));
        let mut rejected = Vec::new();
        head.append_all(&samples, &opts, &mut rejected);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, samples.len() - 1);
        let mut per_series = vec![0usize; 40];
        for (c, bytes) in head.pending.iter() {
            assert_eq!(partition_of(c.min_t, width), c.partition, "{c:?}");
            assert_eq!(partition_of(c.max_t, width), c.partition, "{c:?}");
            let samples = XorChunk::decode(bytes).unwrap();
            assert_eq!(samples.first().map(|s| s.0), Some(c.min_t));
            assert_eq!(samples.last().map(|s| s.0), Some(c.max_t));
            per_series[c.r as usize] += samples.len();
        }
        for (r, sealed) in per_series.iter().enumerate() {
            let s = head.get(r as u32).unwrap();
            let open: Vec<(i64, f64)> = s.chunk.iter().collect();
            assert_eq!(sealed + open.len(), 80, "series {r}");
            // The open chunk holds the last partition's samples alone.
            let p = partition_of(s.max_t, width);
            assert!(open.iter().all(|&(t, _)| partition_of(t, width) == p));
        }
    }
}
