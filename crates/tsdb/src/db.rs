//! The database: head + WAL + RocksDB, and the operations over them.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, IteratorMode, WriteBatch};
use tiermon_chunkenc::XorChunk;
use tiermon_model::{Labels, Matcher, Sample};

use crate::downsample::{self, Aggregate, Resolution};
use crate::head::{Batch, Head, SampleError, SealedChunk, SeriesRef, partition_of};
use crate::index::{self, CF_INDEX, Indexed};
use crate::keys::{self, CF_CHUNKS, CF_HEAD, CF_META, CF_SERIES};
use crate::spans::Spans;
use crate::tier::{BlockMeta, BlockWriter, StoredChunk, Tier};
use crate::wal::{self, Record, Wal};
use crate::{Error, Options, Result};

/// Chunk value encodings (first byte of a `chunks` value).
const ENC_XOR: u8 = 0;
const ENC_SEALED: u8 = 1;
const ENC_AGG: u8 = 2;

/// Series created under one lock and one WAL write, at most: a large
/// remote_write request of new series must not hold appends back long.
const CREATE_BATCH: usize = 1024;

/// Bytes of sealed chunks collected before they are written to RocksDB
/// together, as one table file: they stay readable in the head and their
/// samples are in the WAL meanwhile.
const PENDING_BYTES: usize = 8 << 20;

/// Folder (in the data folder) of the table files of sealed chunks being
/// written, before RocksDB ingests them.
const INGEST_DIR: &str = "ingest";

/// A series and its labels.
type Named = (SeriesRef, Labels);

/// An open database. Cheap to clone; all methods are thread-safe.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// RocksDB's block cache, shared by the column families.
    cache: rocksdb::Cache,
    dir: std::path::PathBuf,
    opts: Options,
    rocks: DB,
    head: RwLock<Head>,
    wal: Mutex<Wal>,
    /// Serialises maintenance (compaction, downsampling, retention).
    maintenance: Mutex<()>,
    /// Serialises writes of sealed chunks, so that the stored `next_seq`
    /// never goes backwards; counts the table files written.
    chunk_writes: Mutex<u64>,
    /// Options of the chunk column family, for the table files of sealed
    /// chunks written outside RocksDB and then ingested.
    sst_opts: rocksdb::Options,
    /// Blob storage for old partitions, when configured.
    tier: Option<Tier>,
    /// WAL positions that readers still need, by reader name: checkpoints
    /// keep the segments from the oldest of them on.
    wal_holds: Mutex<std::collections::HashMap<String, u64>>,
    /// Identity of this database's WAL; a new data folder gets a new one.
    wal_epoch: u64,
    /// Longest raw chunk of each partition, where reads start.
    spans: Spans,
    /// Compaction runs since the start (blocks of open partitions and
    /// closed partitions).
    compactions: AtomicU64,
    /// Runs of `maintain` completed since the start.
    maintenance_runs: AtomicU64,
    /// Which series the index on disk holds, for the partitions being
    /// written.
    indexed: Mutex<Indexed>,
    /// Partitions holding data of evicted series: a read there asks the
    /// index on disk as well as the head.
    cold: RwLock<BTreeSet<i64>>,
    /// Whether a series was ever evicted: a new label set must then be
    /// looked up on disk before it gets a new reference.
    evicted_any: AtomicBool,
    /// Series with data before this partition are never evicted: a
    /// version without the index on disk wrote it.
    index_from: i64,
}

/// A series and its samples in the asked range, oldest first.
#[derive(Debug, Clone)]
pub struct SeriesData {
    /// The series.
    pub labels: Labels,
    /// Its samples; staleness markers included.
    pub samples: Vec<Sample>,
}

/// A series and its samples as `(timestamp ms, value)`, oldest first.
pub type SeriesSamples = (Labels, Vec<(i64, f64)>);

/// Samples read back from the WAL by [`Db::wal_read`].
#[derive(Debug, Clone, Default)]
pub struct WalBatch {
    /// Position after the last record read: where the next read starts.
    pub end: u64,
    /// Series (by storage reference, see [`Db::labels_of`]) and their
    /// samples, in commit order within each series.
    pub series: Vec<(SeriesRef, Vec<(i64, f64)>)>,
    /// Samples read.
    pub samples: usize,
    /// Bytes that could not be read back (a damaged sealed segment).
    pub skipped_bytes: u64,
    /// Whether segments after `from` had been deleted before this read.
    pub truncated: bool,
}

/// What a commit did.
#[derive(Debug, Default, Clone)]
pub struct CommitResult {
    /// Samples accepted (now durable in the WAL).
    pub accepted: usize,
    /// Samples rejected, by position in the appender, with the reason.
    pub rejected: Vec<(usize, SampleError)>,
}

/// Size and shape of the database.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Series in the head.
    pub series: usize,
    /// Samples appended since open.
    pub samples_appended: u64,
    /// Approximate heap bytes of the head.
    pub head_bytes: usize,
    /// Bytes of the live RocksDB files.
    pub disk_bytes: u64,
    /// Bytes of the WAL.
    pub wal_bytes: u64,
    /// Blocks in blob storage.
    pub blob_blocks: usize,
    /// Bytes in blob storage.
    pub blob_bytes: u64,
    /// Metric names holding the most series.
    pub top_metrics: Vec<(String, usize)>,
    /// Label pairs holding the most series.
    pub top_label_pairs: Vec<(String, usize)>,
    /// Label names with the most distinct values.
    pub top_label_names_by_values: Vec<(String, usize)>,
}

/// Gauges of the storage that are cheap to read at any time (no walk
/// over the series), for a tier's own metrics.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Series in the head.
    pub head_series: usize,
    /// Samples appended since open.
    pub samples_appended: u64,
    /// Sealed chunks in the head not yet written to RocksDB.
    pub pending_chunks: usize,
    /// Heap bytes of those chunks: about two table files of them (more
    /// while their writes fail), whatever the number of series.
    pub pending_bytes: usize,
    /// Bytes of RocksDB's memtables, all column families.
    pub memtable_bytes: u64,
    /// Bytes held in RocksDB's block cache.
    pub block_cache_bytes: u64,
    /// Bytes of RocksDB's open table readers (indexes and filters).
    pub table_readers_bytes: u64,
    /// Bytes of the live RocksDB files.
    pub sst_bytes: u64,
    /// Bytes of the write-ahead log's segments.
    pub wal_bytes: u64,
    /// Compaction runs since the start: the blocks of an open partition,
    /// or a closed partition.
    pub compactions: u64,
    /// Runs of [`Db::maintain`] completed since the start.
    pub maintenance_runs: u64,
}

/// What [`Db::maintain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// Partitions compacted into pcodec chunks.
    pub compacted: Vec<i64>,
    /// (partition, until, series rewritten): the blocks of an open
    /// partition compacted up to `until`.
    pub blocks: Vec<(i64, i64, usize)>,
    /// (resolution, partition) downsampled.
    pub downsampled: Vec<(Resolution, i64)>,
    /// (resolution, partition) deleted by retention.
    pub deleted: Vec<(Resolution, i64)>,
    /// (resolution, partition) moved to blob storage.
    pub tiered: Vec<(Resolution, i64)>,
    /// (resolution, partition, error) whose upload failed; the data stays
    /// local and the next run tries again.
    pub tier_failed: Vec<(Resolution, i64, String)>,
    /// Idle series evicted from the head.
    pub evicted: usize,
}

impl Db {
    /// Opens (creating if needed) the database in `dir`, recovering the
    /// head from the last checkpoint and the WAL after it.
    pub fn open(dir: &Path, opts: Options) -> Result<Db> {
        let start = Instant::now();
        if let Some(b) = &opts.blob {
            let need = opts.partition + opts.ooo_window;
            if b.after < need {
                return Err(Error::Config {
                    key: "blob.after",
                    detail: format!(
                        "{:?} is shorter than the partition width plus the out-of-order window ({need:?}); \
                         a partition must be closed and downsampled before it moves",
                        b.after
                    ),
                });
            }
        }
        let (b, w) = (opts.block.as_millis(), opts.partition.as_millis());
        if b > 0 && b < w && !w.is_multiple_of(b) {
            return Err(Error::Config {
                key: "block",
                detail: format!(
                    "{:?} does not divide the partition width ({:?}): blocks are aligned within a partition",
                    opts.block, opts.partition
                ),
            });
        }
        if opts.series_idle < opts.ooo_window {
            return Err(Error::Config {
                key: "series_idle",
                detail: format!(
                    "{:?} is shorter than the out-of-order window ({:?}): a series must stay in the head while samples may still arrive late for it",
                    opts.series_idle, opts.ooo_window
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the data folder", dir, e))?;
        // Blocks an earlier run was uploading: still local, redone later.
        let spool = dir.join("blob-spool");
        if spool.exists() {
            std::fs::remove_dir_all(&spool)
                .map_err(|e| Error::io("emptying the upload spool", &spool, e))?;
        }
        // Table files of sealed chunks an earlier run did not ingest: their
        // samples are in the WAL, which replay writes again.
        let ingest = dir.join(INGEST_DIR);
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest)
                .map_err(|e| Error::io("emptying the ingest folder", &ingest, e))?;
        }
        std::fs::create_dir_all(&ingest)
            .map_err(|e| Error::io("creating the ingest folder", &ingest, e))?;
        let mut ro = rocksdb::Options::default();
        ro.create_if_missing(true);
        ro.create_missing_column_families(true);
        ro.set_max_background_jobs(2);
        let mut chunk_opts = rocksdb::Options::default();
        // Chunks are compressed already; keep RocksDB's own compression for
        // the cold levels only.
        chunk_opts.set_compression_type(rocksdb::DBCompressionType::None);
        chunk_opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
        // One block cache for every column family, so that
        // `block_cache_bytes` bounds it (RocksDB would otherwise give each
        // family a cache of its own).
        let cache = rocksdb::Cache::new_lru_cache(opts.block_cache_bytes);
        let with_cache = |mut o: rocksdb::Options| {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            o.set_block_based_table_factory(&table);
            o
        };
        let chunk_opts = with_cache(chunk_opts);
        let mut sst_opts = chunk_opts.clone();
        // A table file would otherwise take the bottommost level's zstd,
        // on the appending thread, for chunks that are compressed already;
        // compaction applies it where the data settles.
        sst_opts.set_bottommost_compression_type(rocksdb::DBCompressionType::None);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_META, with_cache(rocksdb::Options::default())),
            ColumnFamilyDescriptor::new(CF_SERIES, with_cache(lz4())),
            ColumnFamilyDescriptor::new(CF_CHUNKS, chunk_opts),
            ColumnFamilyDescriptor::new(CF_HEAD, with_cache(lz4())),
            ColumnFamilyDescriptor::new(CF_INDEX, with_cache(index::options())),
        ];
        let rocks_dir = dir.join("rocksdb");
        let rocks = DB::open_cf_descriptors(&ro, &rocks_dir, cfs)
            .map_err(Error::rocks("opening RocksDB"))?;

        let mut head = Head::new(opts.partition_ms());
        let meta = rocks.cf_handle(CF_META).ok_or_else(|| Error::Corrupt {
            what: "missing meta column family".into(),
        })?;
        head.next_seq = get_u64(&rocks, meta, keys::META_NEXT_SEQ)?.unwrap_or(0);
        let checkpoint = get_u64(&rocks, meta, keys::META_CHECKPOINT)?.unwrap_or(0);
        let spans = Spans::load(&rocks, meta, opts.partition_ms())?;
        let tier = match &opts.blob {
            None => None,
            Some(b) => Some(Tier::new(b, load_manifest(&rocks, meta)?)?),
        };

        // The head as of the checkpoint: the series it held (not those
        // evicted since), with their labels.
        let persisted = get_u64(&rocks, meta, keys::META_SERIES_PERSISTED)?.unwrap_or(0);
        let series_cf = cf(&rocks, CF_SERIES)?;
        let head_cf = cf(&rocks, CF_HEAD)?;
        let mut labels_it = rocks.raw_iterator_cf(series_cf);
        // Raw iterators: no copy of each key and value.
        let mut head_it = rocks.raw_iterator_cf(head_cf);
        head_it.seek_to_first();
        while let (Some(k), Some(v)) = (head_it.key(), head_it.value()) {
            let r = u32::from_be_bytes(k.try_into().map_err(|_| Error::Corrupt {
                what: "head key".into(),
            })?);
            if evicted_marker(v).is_some() {
                head_it.next();
                continue;
            }
            let key = keys::series(r);
            // Both families are in ref order: step, and seek only past the
            // labels of evicted series.
            if labels_it.valid() && labels_it.key().is_some_and(|k| k < &key[..]) {
                labels_it.next();
            }
            if labels_it.key() != Some(&key[..]) {
                labels_it.seek(key);
            }
            match (labels_it.key(), labels_it.value()) {
                (Some(k), Some(v)) if k == key => {
                    let mut pairs = Vec::with_capacity(16);
                    if !decode_sorted_labels(v, &mut pairs) {
                        return Err(Error::Corrupt {
                            what: format!("labels of series {r}"),
                        });
                    }
                    head.create_sorted(r, pairs.iter().copied());
                }
                _ => {
                    labels_it.status().map_err(Error::rocks("reading series"))?;
                    return Err(Error::Corrupt {
                        what: format!("head checkpoint of series {r} without its labels"),
                    });
                }
            }
            restore_series(&mut head, r, v).ok_or_else(|| Error::Corrupt {
                what: format!("head checkpoint of series {r}"),
            })?;
            head_it.next();
        }
        head_it
            .status()
            .map_err(Error::rocks("reading the head checkpoint"))?;
        drop((head_it, labels_it));
        // Open chunks took their sequence when they started; new ones must
        // come after them.
        let max_open = head
            .iter()
            .filter(|s| !s.chunk.is_empty())
            .map(|s| s.chunk_seq + 1)
            .max()
            .unwrap_or(0);
        head.next_seq = head.next_seq.max(max_open);

        // The WAL after the checkpoint.
        let wal_dir = dir.join("wal");
        let mut replayed = 0usize;
        let stats = wal::replay(&wal_dir, checkpoint, |rec| {
            match rec {
                Record::Series { r, labels } => {
                    if !head.contains(r) {
                        head.create(r, &Labels::from_pairs(labels));
                        if u64::from(r) < persisted {
                            // Brought back after an eviction.
                            revive(&rocks, head_cf, &mut head, r)?;
                        }
                    }
                }
                Record::Samples(s) => {
                    for (r, t, v) in s {
                        // Evicted series had every sample stored first.
                        if head.contains(r) {
                            // Replaying what was accepted before gives the
                            // same answer; a rejection here means it was
                            // already sealed and stored.
                            let _ = head.append(r, t, v, &opts);
                            replayed += 1;
                        }
                    }
                }
            }
            Ok(())
        })?;
        stats.repair()?;
        head.reserve_refs(persisted.min(u64::from(u32::MAX)) as SeriesRef);
        let wal = Wal::open(&wal_dir, opts.wal_segment_bytes, opts.wal_fsync)?;
        let wal_epoch = match get_u64(&rocks, meta, keys::META_WAL_EPOCH)? {
            Some(e) => e,
            None => {
                let e = rand::random::<u64>() | 1;
                rocks
                    .put_cf(meta, keys::META_WAL_EPOCH, e.to_be_bytes())
                    .map_err(Error::rocks("writing the WAL epoch"))?;
                e
            }
        };
        let index_from = match get_u64(&rocks, meta, keys::META_INDEX_FROM)? {
            Some(p) => p as i64,
            None => {
                let p = index_start(&rocks, &head, opts.partition_ms())?;
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, keys::META_INDEX_FROM, (p as u64).to_be_bytes());
                // Series made before the index: found by hash from now on.
                let icf = cf(&rocks, CF_INDEX)?;
                for s in head.iter() {
                    index::add_hash(&mut batch, icf, head.labels(s.r).series_id().0, s.r);
                }
                rocks
                    .write(batch)
                    .map_err(Error::rocks("starting the index"))?;
                p
            }
        };
        let mut cold = BTreeSet::new();
        for item in rocks.prefix_iterator_cf(meta, keys::META_COLD) {
            let (k, _) = item.map_err(Error::rocks("reading cold partitions"))?;
            match keys::parse_cold(&k) {
                Some(p) => cold.insert(p),
                None => break,
            };
        }
        let evicted_any = rocks
            .get_pinned_cf(meta, keys::META_EVICTED)
            .map_err(Error::rocks("reading metadata"))?
            .is_some();
        // Series already in the index of the partitions being written.
        let mut indexed = Indexed::default();
        let newest = head.iter().map(|s| s.max_t).max().unwrap_or(i64::MIN);
        if newest != i64::MIN {
            let icf = cf(&rocks, CF_INDEX)?;
            let p = partition_of(newest, opts.partition_ms());
            for q in [p.saturating_sub(opts.partition_ms()), p] {
                for r in index::all(&rocks, icf, q)? {
                    indexed.set(q, r);
                }
            }
        }
        let db = Db {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                opts,
                rocks,
                head: RwLock::new(head),
                wal: Mutex::new(wal),
                maintenance: Mutex::new(()),
                chunk_writes: Mutex::new(0),
                sst_opts,
                tier,
                wal_holds: Mutex::new(std::collections::HashMap::new()),
                wal_epoch,
                spans,
                indexed: Mutex::new(indexed),
                cold: RwLock::new(cold),
                evicted_any: AtomicBool::new(evicted_any),
                compactions: AtomicU64::new(0),
                maintenance_runs: AtomicU64::new(0),
                index_from,
                cache,
            }),
        };
        if db.inner.spans.is_empty() {
            // Written before spans were recorded (or empty): read the
            // partitions there are from their start.
            let ps = db.partitions(Resolution::Raw)?;
            db.inner
                .spans
                .assume_widest(&db.inner.rocks, cf(&db.inner.rocks, CF_META)?, &ps)?;
        }
        db.write_pending()?;
        tracing::info!(
            dir = %dir.display(),
            series = db.inner.head.read().len(),
            wal_segments = stats.segments,
            wal_samples = replayed,
            took_ms = start.elapsed().as_millis() as u64,
            "storage opened"
        );
        Ok(db)
    }

    /// The settings the database runs with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// A new appender. Samples become visible and durable at
    /// [`Appender::commit`].
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            db: self,
            samples: Vec::new(),
        }
    }

    /// The reference of the series with exactly these labels, creating it
    /// (durably) if needed.
    pub fn series_ref(&self, labels: &Labels) -> Result<SeriesRef> {
        if let Some(r) = self.inner.head.read().lookup(labels) {
            return Ok(r);
        }
        let mut out = vec![Ok(SeriesRef::MAX)];
        self.create_missing(std::slice::from_ref(labels), vec![0], &mut out)?;
        out.pop().expect("one result per label set")
    }

    /// The references of many series, creating (durably) those that do not
    /// exist: a scrape's or a remote_write request's new series take the
    /// head's lock and write the WAL once per batch (of up to 1,024), not
    /// once each. One result per label set, in order: a series refused (invalid
    /// labels, a limit) does not hold the others back. The outer error is
    /// a failure of storage itself; series it did not create can be asked
    /// for again.
    pub fn series_refs(&self, sets: &[Labels]) -> Result<Vec<Result<SeriesRef>>> {
        let mut out: Vec<Result<SeriesRef>> = Vec::with_capacity(sets.len());
        let mut missing = Vec::new();
        {
            let head = self.inner.head.read();
            for (i, labels) in sets.iter().enumerate() {
                match head.lookup(labels) {
                    Some(r) => out.push(Ok(r)),
                    None => {
                        // Replaced below.
                        out.push(Ok(SeriesRef::MAX));
                        missing.push(i);
                    }
                }
            }
        }
        self.create_missing(sets, missing, &mut out)?;
        Ok(out)
    }

    /// Creates the series `sets[i]` for each `i` of `missing` (not found a
    /// moment ago), setting `out[i]`.
    fn create_missing(
        &self,
        sets: &[Labels],
        missing: Vec<usize>,
        out: &mut [Result<SeriesRef>],
    ) -> Result<()> {
        if missing.is_empty() {
            return Ok(());
        }
        // Checks that need no lock: the labels, and whether an evicted
        // series comes back (it keeps its reference).
        let evicted = self.inner.evicted_any.load(Ordering::Acquire);
        let mut todo: Vec<(usize, Option<SeriesRef>)> = Vec::with_capacity(missing.len());
        for i in missing {
            let stored = self.validate_labels(&sets[i]).and_then(|()| match evicted {
                true => self.stored_ref(&sets[i]),
                false => Ok(None),
            });
            match stored {
                Ok(stored) => todo.push((i, stored)),
                Err(e) => out[i] = Err(e),
            }
        }
        for batch in todo.chunks(CREATE_BATCH) {
            self.create_series(sets, batch, out)?;
        }
        Ok(())
    }

    /// Creates the series `sets[i]` for each `(i, stored reference)` of
    /// `batch` under one lock and one WAL write, setting `out[i]`.
    fn create_series(
        &self,
        sets: &[Labels],
        batch: &[(usize, Option<SeriesRef>)],
        out: &mut [Result<SeriesRef>],
    ) -> Result<()> {
        let mut head = self.inner.head.write();
        // (index, reference, whether it was evicted and comes back)
        let mut created: Vec<(usize, SeriesRef, bool)> = Vec::with_capacity(batch.len());
        for &(i, stored) in batch {
            let labels = &sets[i];
            // Created meanwhile, or earlier in this batch.
            if let Some(r) = head.lookup(labels) {
                out[i] = Ok(r);
                continue;
            }
            if head.len() >= self.inner.opts.max_series {
                out[i] = Err(Error::Limit {
                    limit: "max_series",
                    value: self.inner.opts.max_series,
                    detail: format!("cannot create {labels}"),
                });
                continue;
            }
            if !head.has_room(labels.len()) {
                out[i] = Err(Error::Limit {
                    limit: "label_bytes",
                    value: crate::labelsets::CAPACITY,
                    detail: format!("the head's label sets are full: cannot create {labels}"),
                });
                continue;
            }
            let r = stored.unwrap_or_else(|| head.next_ref());
            // The last reference stays unused: callers may mark with it.
            if r == SeriesRef::MAX {
                out[i] = Err(Error::Limit {
                    limit: "series references",
                    value: SeriesRef::MAX as usize,
                    detail: format!("every reference was handed out: cannot create {labels}"),
                });
                continue;
            }
            head.create(r, labels);
            created.push((i, r, stored.is_some()));
        }
        if created.is_empty() {
            return Ok(());
        }
        let logged = self
            .inner
            .wal
            .lock()
            .log_series(created.iter().map(|&(i, r, _)| (r, &sets[i])));
        if let Err(e) = logged {
            // Not durable, so not created: nobody may append to them.
            let refs: Vec<SeriesRef> = created.iter().map(|&(_, r, _)| r).collect();
            head.evict(&refs);
            return Err(e);
        }
        let hcf = cf(&self.inner.rocks, CF_HEAD)?;
        for (i, r, revived) in created {
            out[i] = match revived {
                true => revive(&self.inner.rocks, hcf, &mut head, r).map(|()| r),
                false => Ok(r),
            };
        }
        Ok(())
    }

    /// The reference an evicted series with exactly these labels had.
    fn stored_ref(&self, labels: &Labels) -> Result<Option<SeriesRef>> {
        let rocks = &self.inner.rocks;
        for r in index::by_hash(rocks, cf(rocks, CF_INDEX)?, labels.series_id().0)? {
            if self.stored_labels(r)?.as_ref() == Some(labels) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The labels recorded on disk for series `r`.
    fn stored_labels(&self, r: SeriesRef) -> Result<Option<Labels>> {
        let rocks = &self.inner.rocks;
        match rocks
            .get_pinned_cf(cf(rocks, CF_SERIES)?, keys::series(r))
            .map_err(Error::rocks("reading series"))?
        {
            None => Ok(None),
            Some(v) => decode_labels(&v).map(Some).ok_or_else(|| Error::Corrupt {
                what: format!("labels of series {r}"),
            }),
        }
    }

    /// Labels of series by reference, from the head or from disk, for
    /// refs ascending.
    fn labels_many(&self, refs: &[SeriesRef]) -> Result<Vec<Labels>> {
        let rocks = &self.inner.rocks;
        let scf = cf(rocks, CF_SERIES)?;
        let keys: Vec<[u8; 4]> = refs.iter().map(|&r| keys::series(r)).collect();
        let mut out = Vec::with_capacity(refs.len());
        for (r, v) in refs
            .iter()
            .zip(rocks.batched_multi_get_cf(scf, &keys, true))
        {
            let v = v.map_err(Error::rocks("reading series"))?;
            let labels = v
                .and_then(|v| decode_labels(&v))
                .ok_or_else(|| Error::Corrupt {
                    what: format!("labels of series {r}"),
                })?;
            out.push(labels);
        }
        Ok(out)
    }

    fn validate_labels(&self, labels: &Labels) -> Result<()> {
        let o = &self.inner.opts;
        let invalid = |reason: String| Error::InvalidSeries {
            series: labels.to_string(),
            reason,
        };
        if labels.is_empty() {
            return Err(invalid("no labels".into()));
        }
        if labels.len() > o.max_labels_per_series {
            return Err(Error::Limit {
                limit: "max_labels_per_series",
                value: o.max_labels_per_series,
                detail: format!("{labels} has {} labels", labels.len()),
            });
        }
        for l in labels {
            if !tiermon_model::is_valid_label_name(&l.name) {
                return Err(invalid(format!("invalid label name {:?}", &*l.name)));
            }
            if l.name.len() > o.max_label_name_len {
                return Err(Error::Limit {
                    limit: "max_label_name_len",
                    value: o.max_label_name_len,
                    detail: format!("label name of {} bytes", l.name.len()),
                });
            }
            if l.value.len() > o.max_label_value_len {
                return Err(Error::Limit {
                    limit: "max_label_value_len",
                    value: o.max_label_value_len,
                    detail: format!("value of label {} has {} bytes", l.name, l.value.len()),
                });
            }
        }
        Ok(())
    }

    fn commit(&self, samples: &[(SeriesRef, i64, f64)]) -> Result<CommitResult> {
        let o = &self.inner.opts;
        if samples.len() > o.max_samples_per_commit {
            return Err(Error::Limit {
                limit: "max_samples_per_commit",
                value: o.max_samples_per_commit,
                detail: format!("a commit of {} samples", samples.len()),
            });
        }
        let mut res = CommitResult::default();
        {
            let mut head = self.inner.head.write();
            // Evicted series come back for a caller that kept their
            // reference; anything else unknown fails the commit whole.
            let mut revived: Vec<(SeriesRef, Labels)> = Vec::new();
            for &(r, _, _) in samples {
                if head.contains(r) || revived.iter().any(|(x, _)| *x == r) {
                    continue;
                }
                let stored = if r < head.next_ref() {
                    self.stored_labels(r)?
                } else {
                    None
                };
                match stored {
                    Some(l) => revived.push((r, l)),
                    None => return Err(Error::UnknownRef(r)),
                }
            }
            if !revived.is_empty() {
                self.inner
                    .wal
                    .lock()
                    .log_series(revived.iter().map(|(r, l)| (*r, l)))?;
                let hcf = cf(&self.inner.rocks, CF_HEAD)?;
                for (r, l) in &revived {
                    head.create(*r, l);
                    revive(&self.inner.rocks, hcf, &mut head, *r)?;
                }
            }
            head.append_all(samples, o, &mut res.rejected);
            res.accepted = samples.len() - res.rejected.len();
            let accepted: std::borrow::Cow<'_, [(SeriesRef, i64, f64)]> = if res.rejected.is_empty()
            {
                samples.into()
            } else {
                // Rejected indices ascend.
                let mut rejected = res.rejected.iter().map(|&(i, _)| i).peekable();
                samples
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| rejected.next_if_eq(&i).is_none())
                    .map(|(_, &s)| s)
                    .collect()
            };
            if !accepted.is_empty() {
                self.inner.wal.lock().log_samples(&accepted)?;
            }
        }
        // Sealed chunks stay readable in the head and their samples are in
        // the WAL, so they go to RocksDB in batches rather than one write
        // per commit (checkpoint and maintenance flush the rest).
        if self.inner.head.read().pending.waiting_bytes() >= PENDING_BYTES {
            self.write_pending()?;
        }
        Ok(res)
    }

    /// Writes sealed chunks waiting in the head to RocksDB. On failure they
    /// stay in the head (still readable) for the next attempt.
    fn write_pending(&self) -> Result<()> {
        let mut files = self.inner.chunk_writes.lock();
        let (chunks, next_seq, fresh) = {
            let mut head = self.inner.head.write();
            if head.pending.nothing_waiting() {
                return Ok(());
            }
            let chunks = head.pending.start_write();
            match self.unindexed(&head, chunks.chunks().iter().map(|c| (c.partition, c.r))) {
                Ok(fresh) => (chunks, head.next_seq, fresh),
                Err(e) => {
                    head.pending.finish_write(chunks, false);
                    return Err(e);
                }
            }
        };
        *files += 1;
        let r = self.write_chunks(&chunks, next_seq, &fresh, *files);
        if r.is_ok() {
            self.mark_indexed(&fresh);
        }
        self.inner
            .head
            .write()
            .pending
            .finish_write(chunks, r.is_ok());
        r
    }

    /// Of `(partition, ref)` pairs, those not yet in the partition's index
    /// on disk, by partition, with their labels (from `head`, or from disk
    /// for a series not in it).
    fn unindexed(
        &self,
        head: &Head,
        pairs: impl Iterator<Item = (i64, SeriesRef)>,
    ) -> Result<Vec<(i64, Vec<Named>)>> {
        let mut new: Vec<(i64, SeriesRef)> = {
            let indexed = self.inner.indexed.lock();
            pairs.filter(|&(p, r)| !indexed.has(p, r)).collect()
        };
        new.sort_unstable();
        new.dedup();
        let mut out: Vec<(i64, Vec<(SeriesRef, Labels)>)> = Vec::new();
        for (p, r) in new {
            let labels = match head.get(r) {
                Some(_) => head.labels(r),
                None => self.stored_labels(r)?.ok_or(Error::UnknownRef(r))?,
            };
            match out.last_mut() {
                Some((q, v)) if *q == p => v.push((r, labels)),
                _ => out.push((p, vec![(r, labels)])),
            }
        }
        Ok(out)
    }

    fn mark_indexed(&self, fresh: &[(i64, Vec<(SeriesRef, Labels)>)]) {
        let mut indexed = self.inner.indexed.lock();
        for (p, series) in fresh {
            for (r, _) in series {
                indexed.set(*p, *r);
            }
        }
    }

    /// Writes sealed chunks: first what reads need to find them (the
    /// partitions' spans, the index of series new to a partition) and the
    /// next sequence, then the chunks themselves as one sorted table file
    /// ingested into the chunk column family, then the partitions' write
    /// marks, so that maintenance that clears a mark has the chunks that
    /// set it. The table file keeps the chunks out of RocksDB's memtable
    /// and WAL, whose skip-list inserts and copies cost more than the
    /// appends that sealed them; our WAL holds their samples until the
    /// checkpoint after this write, so a crash part way is made whole by
    /// replay, which writes them again.
    fn write_chunks(
        &self,
        chunks: &Batch,
        next_seq: u64,
        fresh: &[(i64, Vec<(SeriesRef, Labels)>)],
        file_no: u64,
    ) -> Result<()> {
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let mcf = cf(rocks, CF_META)?;
        let icf = cf(rocks, CF_INDEX)?;
        let mut batch = WriteBatch::default();
        for (p, series) in fresh {
            index::add(&mut batch, icf, *p, series);
        }
        batch.put_cf(&mcf, keys::META_NEXT_SEQ, next_seq.to_be_bytes());
        self.inner.spans.write(
            rocks,
            mcf,
            batch,
            chunks
                .chunks()
                .iter()
                .map(|c| (c.partition, c.max_t - c.min_t)),
            "writing sealed chunks",
        )?;
        let order = table_order(chunks.chunks());
        let path = self
            .inner
            .dir
            .join(INGEST_DIR)
            .join(format!("{file_no:08}.sst"));
        let table = || -> std::result::Result<(), rocksdb::Error> {
            let mut writer = rocksdb::SstFileWriter::create(&self.inner.sst_opts);
            writer.open(&path)?;
            let mut value = Vec::new();
            for (key, i) in &order {
                let (c, bytes) = chunks.get(*i);
                value.clear();
                chunk_header_into(ENC_XOR, c.max_t, &mut value);
                value.extend_from_slice(bytes);
                writer.put(key, &value)?;
            }
            writer.finish()
        };
        if let Err(e) = table() {
            let _ = std::fs::remove_file(&path);
            return Err(Error::rocks("writing a table file of sealed chunks")(e));
        }
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        // A link, not a copy: the file is ours and on the same file system.
        ingest.set_move_files(true);
        let r = rocks
            .ingest_external_file_cf_opts(&ccf, &ingest, vec![&path])
            .map_err(Error::rocks("ingesting sealed chunks"));
        // After a move the name is RocksDB's link; after a failure, ours.
        let _ = std::fs::remove_file(&path);
        r?;
        let mut marks = WriteBatch::default();
        let mut partitions: Vec<i64> = Vec::new();
        for c in chunks.chunks() {
            if !partitions.contains(&c.partition) {
                partitions.push(c.partition);
                marks.put_cf(&mcf, keys::written(c.partition), []);
            }
        }
        rocks
            .write(marks)
            .map_err(Error::rocks("marking the partitions written"))
    }

    /// Writes the head to RocksDB and deletes the WAL before that point, so
    /// that a restart replays only what came after.
    pub fn checkpoint(&self) -> Result<()> {
        let start = Instant::now();
        let rocks = &self.inner.rocks;
        let scf = cf(rocks, CF_SERIES)?;
        let hcf = cf(rocks, CF_HEAD)?;
        let mcf = cf(rocks, CF_META)?;
        let icf = cf(rocks, CF_INDEX)?;
        // The head is gathered under a read lock (commits, which log to
        // the WAL under the write lock, wait; queries do not) into two
        // contiguous buffers, not one allocation per series — at a million
        // series that was hundreds of MB for a moment, memory the allocator
        // then kept — and written after the lock is released.
        let (segment, total, new_series, snapshot) = {
            let head = self.inner.head.read();
            let segment = self.inner.wal.lock().cut()?;
            let persisted = get_u64(rocks, mcf, keys::META_SERIES_PERSISTED)?
                .unwrap_or(0)
                .min(u64::from(u32::MAX)) as SeriesRef;
            let mut new_series = Packed::default();
            for r in (persisted..head.next_ref()).filter(|&r| head.contains(r)) {
                let labels = head.labels(r);
                encode_labels_into(&labels, &mut new_series.bytes);
                new_series.close(r, labels.series_id().0);
            }
            let mut snapshot = Packed::default();
            // About 64 bytes a series: 40 of fields, the open chunk.
            snapshot.bytes.reserve(head.len() * 64);
            for s in head.iter() {
                snapshot_series(&head, s, &mut snapshot.bytes);
                snapshot.close(s.r, 0);
            }
            (segment, head.next_ref(), new_series, snapshot)
        };
        let gathered = start.elapsed();
        let mut batch = WriteBatch::default();
        for (r, id, labels) in new_series.iter() {
            batch.put_cf(&scf, keys::series(r), labels);
            index::add_hash(&mut batch, icf, id, r);
        }
        for (r, _, snap) in snapshot.iter() {
            batch.put_cf(&hcf, keys::series(r), snap);
        }
        drop((new_series, snapshot));
        self.write_pending()?;
        batch.put_cf(
            &mcf,
            keys::META_SERIES_PERSISTED,
            u64::from(total).to_be_bytes(),
        );
        batch.put_cf(&mcf, keys::META_CHECKPOINT, segment.to_be_bytes());
        rocks
            .write(batch)
            .map_err(Error::rocks("writing the head checkpoint"))?;
        rocks
            .flush_wal(true)
            .map_err(Error::rocks("syncing RocksDB"))?;
        let keep = self
            .inner
            .wal_holds
            .lock()
            .values()
            .map(|&p| wal::unpack(p).0)
            .fold(segment, u64::min);
        self.inner.wal.lock().truncate_before(keep)?;
        tracing::debug!(
            series = total,
            locked_ms = gathered.as_millis() as u64,
            took_ms = start.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        Ok(())
    }

    /// Identity of this database's write-ahead log: positions from
    /// [`Self::wal_read`] compare only within one epoch.
    pub fn wal_epoch(&self) -> u64 {
        self.inner.wal_epoch
    }

    /// Reads what was committed after WAL position `from` (0: from the
    /// oldest segment kept), about `max_samples` samples at most, grouped by
    /// series. Positions grow with every record, so the returned
    /// [`WalBatch::end`] orders batches; a commit still being written is
    /// left for the next call.
    pub fn wal_read(&self, from: u64, max_samples: usize) -> Result<WalBatch> {
        let mut by_ref: std::collections::HashMap<SeriesRef, usize> =
            std::collections::HashMap::new();
        let mut grouped: Vec<(SeriesRef, Vec<(i64, f64)>)> = Vec::new();
        let mut samples = 0usize;
        let tail = wal::read_from(
            &self.inner.dir.join("wal"),
            from,
            max_samples.max(1),
            |rec| {
                if let Record::Samples(s) = rec {
                    samples += s.len();
                    for (r, t, v) in s {
                        let i = *by_ref.entry(r).or_insert_with(|| {
                            grouped.push((r, Vec::new()));
                            grouped.len() - 1
                        });
                        grouped[i].1.push((t, v));
                    }
                }
            },
        )?;
        // Evicted series included: their labels are on disk.
        let n = self.inner.head.read().next_ref();
        let series = grouped.into_iter().filter(|(r, _)| *r < n).collect();
        Ok(WalBatch {
            end: tail.end,
            series,
            samples,
            skipped_bytes: tail.skipped_bytes,
            truncated: tail.truncated,
        })
    }

    /// The labels of the series with reference `r`, if there is one.
    pub fn labels_of(&self, r: SeriesRef) -> Option<Labels> {
        {
            let head = self.inner.head.read();
            if head.contains(r) {
                return Some(head.labels(r));
            }
        }
        match self.stored_labels(r) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(series = r, error = %e, "reading the labels of an evicted series");
                None
            }
        }
    }

    /// Keeps the WAL from position `pos` on through checkpoints, on behalf
    /// of reader `name`; `None` releases it.
    pub fn wal_hold(&self, name: &str, pos: Option<u64>) {
        let mut holds = self.inner.wal_holds.lock();
        match pos {
            Some(p) => {
                holds.insert(name.to_owned(), p);
            }
            None => {
                holds.remove(name);
            }
        }
    }

    /// The WAL's segments: position of their start, bytes, last change.
    pub fn wal_segments(&self) -> Vec<(u64, u64, std::time::SystemTime)> {
        wal::segment_list(&self.inner.dir.join("wal"))
    }

    /// Series matching all `matchers` with their samples in
    /// `[mint, maxt]` (milliseconds, inclusive). Series without samples in
    /// the range are left out.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<SeriesData>> {
        Ok(self
            .select_pairs(matchers, mint, maxt)?
            .into_iter()
            .map(|(labels, samples)| SeriesData {
                labels,
                samples: samples
                    .into_iter()
                    .map(|(t, v)| Sample::new(t, v))
                    .collect(),
            })
            .collect())
    }

    /// [`Db::select`] with samples as `(timestamp, value)` pairs, as the
    /// query engine takes them (no copy on the way).
    pub fn select_pairs(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesSamples>> {
        /// Series per batch: a large read is decoded by two reader
        /// threads (see [`Db::select_batches`]), a small one on the
        /// caller's.
        const BATCH: usize = 1024;
        let mut out = Vec::new();
        self.select_batches(matchers, mint, maxt, BATCH, |b| {
            out.extend(b);
            true
        })?;
        Ok(out)
    }

    /// [`Db::select_pairs`] handed to `f` in batches of at most `batch`
    /// series as they are read, so that a caller reducing each series
    /// holds one batch's samples at a time. Each series is read whole from
    /// one RocksDB snapshot (with several batches, two readers each have
    /// their own); `f` returning `false` stops the read.
    pub fn select_batches(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        batch: usize,
        mut f: impl FnMut(Vec<SeriesSamples>) -> bool,
    ) -> Result<()> {
        let batch = batch.max(1);
        let snaps = self.head_snapshots(matchers, mint, maxt)?;
        let rocks = &self.inner.rocks;
        let chunks = cf(rocks, CF_CHUNKS)?;
        if snaps.is_empty() {
            return Ok(());
        }
        if snaps.len() <= batch {
            let mut it = rocks.raw_iterator_cf(chunks);
            f(self.read_batch(&mut it, snaps, mint, maxt)?);
            return Ok(());
        }
        // Two reader threads decode the next batches while `f` reduces
        // this one; batch i comes from reader i % 2, so `f` gets them in
        // order. Each reader's iterator is its own RocksDB snapshot: every
        // series is read whole from one of them.
        let n = snaps.len().div_ceil(batch);
        let readers = 2;
        let mut shares: Vec<Vec<Vec<HeadSnapshot>>> = (0..readers).map(|_| Vec::new()).collect();
        let mut snaps = snaps.into_iter();
        for i in 0..n {
            shares[i % readers].push(snaps.by_ref().take(batch).collect());
        }
        std::thread::scope(|scope| {
            let mut rxs = Vec::with_capacity(readers);
            for share in shares {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                rxs.push(rx);
                scope.spawn(move || {
                    let mut it = rocks.raw_iterator_cf(chunks);
                    for part in share {
                        let read = self.read_batch(&mut it, part, mint, maxt);
                        let failed = read.is_err();
                        // A send fails once the caller stopped reading.
                        if tx.send(read).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            for i in 0..n {
                let Ok(read) = rxs[i % readers].recv() else {
                    break;
                };
                if !f(read?) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// The samples of `part` in `[mint, maxt]`, series without any left
    /// out.
    fn read_batch(
        &self,
        it: &mut rocksdb::DBRawIterator<'_>,
        part: Vec<HeadSnapshot>,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesSamples>> {
        // Local data first, then blob storage: a partition tiered in
        // between is then seen twice (merged), never missed.
        let mut runs = Vec::with_capacity(part.len());
        for s in &part {
            runs.push(self.local_runs(it, s, mint, maxt)?);
        }
        let mut blob = self.blob_chunks(Resolution::Raw, &part, mint, maxt)?;
        let mut out = Vec::with_capacity(part.len());
        for (s, mut parts) in part.into_iter().zip(runs) {
            for c in blob.remove(&s.r).unwrap_or_default() {
                let (_, max_t, _) = split_value(&c.value)?;
                if c.min_t <= maxt && max_t >= mint {
                    parts.push_range(c.seq, &c.value, mint, maxt)?;
                }
            }
            let mut samples = merge(parts);
            samples.retain(|&(t, _)| t >= mint && t <= maxt);
            if !samples.is_empty() {
                out.push((s.labels, samples));
            }
        }
        Ok(out)
    }

    /// Chunks of `snaps` in blob storage, in the tiered partitions of
    /// `res` that overlap `[mint, maxt]`.
    fn blob_chunks(
        &self,
        res: Resolution,
        snaps: &[HeadSnapshot],
        mint: i64,
        maxt: i64,
    ) -> Result<std::collections::HashMap<SeriesRef, Vec<StoredChunk>>> {
        let mut out: std::collections::HashMap<SeriesRef, Vec<StoredChunk>> = Default::default();
        let Some(tier) = &self.inner.tier else {
            return Ok(out);
        };
        let width = self.inner.opts.partition_ms();
        for p in tier.partitions(res.id()) {
            let end = p.saturating_add(width - 1);
            if end < mint || p > maxt {
                continue;
            }
            let refs: Vec<SeriesRef> = snaps
                .iter()
                .filter(|s| s.min_t <= end && s.max_t >= p)
                .map(|s| s.r)
                .collect();
            if refs.is_empty() {
                continue;
            }
            for (r, chunks) in tier.read(res.id(), p, &refs)? {
                out.entry(r).or_default().extend(chunks);
            }
        }
        Ok(out)
    }

    /// Downsampled windows of matching series that start in `[mint, maxt]`.
    pub fn select_aggregates(
        &self,
        matchers: &[Matcher],
        res: Resolution,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(Labels, Vec<Aggregate>)>> {
        let snaps = self.head_snapshots(matchers, mint, maxt)?;
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let width = self.inner.opts.partition_ms();
        let mut out = Vec::new();
        let mut local = Vec::with_capacity(snaps.len());
        for s in &snaps {
            let mut aggs = Vec::new();
            let last = maxt.min(s.max_t);
            let mut p = partition_of(mint.max(s.min_t), width);
            while p <= last {
                for item in rocks.prefix_iterator_cf(&ccf, keys::series_prefix(res.id(), p, s.r)) {
                    let (k, v) = item.map_err(Error::rocks("reading aggregates"))?;
                    if !k.starts_with(&keys::series_prefix(res.id(), p, s.r)) {
                        break;
                    }
                    let (enc, _, payload) = split_value(&v)?;
                    if enc != ENC_AGG {
                        return Err(Error::Corrupt {
                            what: "aggregate chunk encoding".into(),
                        });
                    }
                    aggs.extend(
                        downsample::decode(payload)?
                            .into_iter()
                            .filter(|a| a.start >= mint && a.start <= maxt),
                    );
                }
                p = match p.checked_add(width) {
                    Some(n) => n,
                    None => break,
                };
            }
            local.push(aggs);
        }
        let mut blob = self.blob_chunks(res, &snaps, mint, maxt)?;
        for (s, mut aggs) in snaps.into_iter().zip(local) {
            for c in blob.remove(&s.r).unwrap_or_default() {
                let (enc, _, payload) = split_value(&c.value)?;
                if enc != ENC_AGG {
                    return Err(Error::Corrupt {
                        what: "aggregate chunk encoding in a block".into(),
                    });
                }
                aggs.extend(
                    downsample::decode(payload)?
                        .into_iter()
                        .filter(|a| a.start >= mint && a.start <= maxt),
                );
            }
            if !aggs.is_empty() {
                // Stable sort: a window stored twice keeps its first copy.
                aggs.sort_by_key(|a| a.start);
                aggs.dedup_by_key(|a| a.start);
                out.push((s.labels, aggs));
            }
        }
        Ok(out)
    }

    /// Label names of series matching `matchers` (all series when empty)
    /// with data in `[mint, maxt]`.
    pub fn label_names(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<String>> {
        let (mut names, cold) = self.matching(matchers, mint, maxt, Head::label_names)?;
        if !cold.is_empty() {
            for l in cold {
                names.extend(l.iter().map(|l| l.name.to_string()));
            }
            names.sort();
            names.dedup();
        }
        Ok(names)
    }

    /// Values of label `name` over matching series with data in the range.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>> {
        let (mut values, cold) = self.matching(matchers, mint, maxt, |head, refs| {
            head.label_values(name, refs)
        })?;
        if !cold.is_empty() {
            values.extend(cold.iter().filter_map(|l| l.get(name)).map(str::to_string));
            values.sort();
            values.dedup();
        }
        Ok(values)
    }

    /// Labels of matching series with data in the range.
    pub fn series(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Labels>> {
        let (mut out, cold) = self.matching(matchers, mint, maxt, |head, refs| {
            refs.iter().map(|&r| head.labels(r)).collect::<Vec<_>>()
        })?;
        out.extend(cold);
        Ok(out)
    }

    /// `f` over the head's matching series with data in the range (under
    /// the head's lock), and the labels of matching evicted ones (read
    /// after it).
    fn matching<T>(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        f: impl FnOnce(&Head, &[SeriesRef]) -> T,
    ) -> Result<(T, Vec<Labels>)> {
        let (out, all) = {
            let head = self.inner.head.read();
            let all = head.select(matchers);
            (f(&head, &in_range(&head, &all, mint, maxt)), all)
        };
        let cold: Vec<SeriesRef> = self
            .cold_refs(matchers, mint, maxt, &all)?
            .into_iter()
            .map(|c| c.0)
            .collect();
        Ok((out, self.labels_many(&cold)?))
    }

    /// Series matching `matchers` that only the index on disk knows of
    /// (evicted from the head; `head` lists the ones in it, ascending), in
    /// the cold partitions overlapping `[mint, maxt]`: by ref, with the
    /// first and last of those partitions each is in.
    fn cold_refs(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        head: &[SeriesRef],
    ) -> Result<Vec<(SeriesRef, i64, i64)>> {
        let width = self.inner.opts.partition_ms();
        let lo = mint.saturating_sub(width - 1);
        if lo > maxt {
            return Ok(Vec::new());
        }
        let parts: Vec<i64> = self.inner.cold.read().range(lo..=maxt).copied().collect();
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let rocks = &self.inner.rocks;
        let icf = cf(rocks, CF_INDEX)?;
        let mut found: std::collections::BTreeMap<SeriesRef, (i64, i64)> = Default::default();
        for p in parts {
            for r in index::select(rocks, icf, p, matchers)? {
                if head.binary_search(&r).is_err() {
                    let e = found.entry(r).or_insert((p, p));
                    e.1 = p;
                }
            }
        }
        Ok(found.into_iter().map(|(r, (a, b))| (r, a, b)).collect())
    }

    /// The storage's cheap gauges: what its memory outside the head is
    /// (RocksDB's memtables, block cache and table readers) and how many
    /// series and samples it holds.
    pub fn gauges(&self) -> Gauges {
        let (head_series, samples_appended, pending_chunks, pending_bytes) = {
            let head = self.inner.head.read();
            (
                head.len(),
                head.samples_appended,
                head.pending.len(),
                head.pending.heap_size(),
            )
        };
        let rocks = &self.inner.rocks;
        let sum = |property: &str| -> u64 {
            [CF_META, CF_SERIES, CF_CHUNKS, CF_HEAD, CF_INDEX]
                .iter()
                .filter_map(|n| rocks.cf_handle(n))
                .filter_map(|c| rocks.property_int_value_cf(&c, property).ok().flatten())
                .sum()
        };
        Gauges {
            head_series,
            samples_appended,
            pending_chunks,
            pending_bytes,
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables"),
            block_cache_bytes: self.inner.cache.get_usage() as u64,
            table_readers_bytes: sum("rocksdb.estimate-table-readers-mem"),
            sst_bytes: sum("rocksdb.live-sst-files-size"),
            wal_bytes: self.inner.wal.lock().disk_size(),
            compactions: self.inner.compactions.load(Ordering::Relaxed),
            maintenance_runs: self.inner.maintenance_runs.load(Ordering::Relaxed),
        }
    }

    /// Sizes, and the metrics and label pairs with the most series (for
    /// finding a cardinality explosion).
    pub fn stats(&self, top: usize) -> Stats {
        let head = self.inner.head.read();
        let rocks = &self.inner.rocks;
        let disk_bytes = [CF_SERIES, CF_CHUNKS, CF_HEAD, CF_META]
            .iter()
            .filter_map(|n| rocks.cf_handle(n))
            .map(|c| {
                rocks
                    .property_int_value_cf(&c, "rocksdb.live-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0)
                    + rocks
                        .property_int_value_cf(&c, "rocksdb.cur-size-all-mem-tables")
                        .ok()
                        .flatten()
                        .unwrap_or(0)
            })
            .sum();
        let (blob_blocks, blob_bytes) = self.inner.tier.as_ref().map_or((0, 0), Tier::totals);
        Stats {
            series: head.len(),
            samples_appended: head.samples_appended,
            head_bytes: head.heap_size() + self.inner.indexed.lock().heap_size(),
            disk_bytes,
            wal_bytes: self.inner.wal.lock().disk_size(),
            blob_blocks,
            blob_bytes,
            top_metrics: head.top_values(tiermon_model::METRIC_NAME, top),
            top_label_pairs: head.top_pairs(top),
            top_label_names_by_values: head.top_names_by_values(top),
        }
    }

    /// Seals every open chunk and writes it to RocksDB (for tests and
    /// before measuring the on-disk size).
    pub fn flush_head(&self) -> Result<()> {
        self.inner.head.write().seal_all();
        self.write_pending()?;
        let rocks = &self.inner.rocks;
        rocks
            .flush_cf(&cf(rocks, CF_CHUNKS)?)
            .map_err(Error::rocks("flushing chunks"))
    }

    /// Bytes the chunks of raw data take in RocksDB after a full
    /// compaction of the column family.
    pub fn compact_disk(&self) -> Result<u64> {
        let rocks = &self.inner.rocks;
        let c = cf(rocks, CF_CHUNKS)?;
        rocks
            .flush_cf(&c)
            .map_err(Error::rocks("flushing chunks"))?;
        rocks.compact_range_cf(&c, None::<&[u8]>, None::<&[u8]>);
        Ok(rocks
            .property_int_value_cf(&c, "rocksdb.live-sst-files-size")
            .map_err(Error::rocks("reading sizes"))?
            .unwrap_or(0))
    }

    /// Bytes of keys and values stored for one resolution (before
    /// RocksDB's own compression and file overhead).
    pub fn resolution_bytes(&self, res: Resolution) -> Result<u64> {
        let rocks = &self.inner.rocks;
        let mut total = 0u64;
        for item in rocks.prefix_iterator_cf(cf(rocks, CF_CHUNKS)?, [res.id()]) {
            let (k, v) = item.map_err(Error::rocks("reading chunks"))?;
            if k.first() != Some(&res.id()) {
                break;
            }
            total += (k.len() + v.len()) as u64;
        }
        Ok(total)
    }

    /// Background work for time `now` (ms): compacts and downsamples raw
    /// partitions that can no longer receive samples, and applies
    /// retention. Never holds the head lock for long.
    pub fn maintain(&self, now: i64) -> Result<MaintainReport> {
        let _guard = self.inner.maintenance.lock();
        let mut report = MaintainReport::default();
        let o = &self.inner.opts;
        let width = o.partition_ms();
        // A partition is closed once its end is older than the out-of-order
        // window.
        let closed_before = partition_of(now - o.ooo_window_ms(), width);
        self.inner.head.write().seal_closed(closed_before);
        self.write_pending()?;
        let horizon = now.saturating_sub(o.ooo_window_ms());
        for p in self.partitions(Resolution::Raw)? {
            if p + width > closed_before {
                // Open: its blocks older than the out-of-order window.
                if let Some(b) = o.block_ms()
                    && horizon > p
                {
                    let until = p + (horizon.min(p + width) - p) / b * b;
                    let n = self.compact_blocks(p, until)?;
                    if n > 0 {
                        report.blocks.push((p, until, n));
                    }
                }
                continue;
            }
            // The hour windows are written last: a partition without them
            // is not downsampled yet (its minute windows may be there:
            // received from below, see `put_aggregates`).
            if !self.has_partition(Resolution::OneHour, p)? {
                self.take_written(p)?;
                if self.compact_partition(p)? {
                    report.compacted.push(p);
                }
                self.downsample_partition(p)?;
                report.downsampled.push((Resolution::OneMinute, p));
                report.downsampled.push((Resolution::OneHour, p));
            } else if self.take_written(p)? && self.compact_partition(p)? {
                // Late samples arrived in a closed partition.
                report.compacted.push(p);
            }
        }
        report.evicted = self.evict_idle(now)?;
        self.tier_old(now, &mut report)?;
        report.deleted = self.apply_retention(now)?;
        self.drop_expired_index(&report.deleted)?;
        self.inner
            .indexed
            .lock()
            .forget_before(closed_before.saturating_sub(width));
        self.inner.maintenance_runs.fetch_add(1, Ordering::Relaxed);
        Ok(report)
    }

    /// Evicts series without a sample for `series_idle` from the head,
    /// once everything they hold is stored and indexed on disk: their
    /// checkpoint entry becomes a record of their time range, and the
    /// partitions they have data in are marked cold, so that reads there
    /// ask the index on disk. A sample for one brings it back.
    fn evict_idle(&self, now: i64) -> Result<usize> {
        let o = &self.inner.opts;
        let width = o.partition_ms();
        let cutoff = now.saturating_sub(o.series_idle.as_millis() as i64);
        let rocks = &self.inner.rocks;
        let mcf = cf(rocks, CF_META)?;
        let hcf = cf(rocks, CF_HEAD)?;
        // Only series whose labels are on disk (made before the last
        // checkpoint) and whose data is all in indexed partitions.
        let persisted = get_u64(rocks, mcf, keys::META_SERIES_PERSISTED)?.unwrap_or(0);
        let index_from = self.inner.index_from;
        let idle = |s: &crate::head::MemSeries| {
            s.max_t < cutoff
                && u64::from(s.r) < persisted
                && (s.min_t > s.max_t || partition_of(s.min_t, width) >= index_from)
        };
        let candidates: Vec<SeriesRef> = {
            let mut head = self.inner.head.write();
            let c: Vec<SeriesRef> = head.iter().filter(|s| idle(s)).map(|s| s.r).collect();
            for &r in &c {
                head.seal_series(r);
            }
            c
        };
        if candidates.is_empty() {
            return Ok(0);
        }
        self.write_pending()?;
        let longest = o.retention_raw.max(o.retention_1m).max(o.retention_1h);
        let oldest = partition_of(now.saturating_sub(longest.as_millis() as i64), width);
        let mut head = self.inner.head.write();
        let pending: std::collections::HashSet<SeriesRef> =
            head.pending.iter().map(|(c, _)| c.r).collect();
        let mut gone = Vec::new();
        let mut cold = BTreeSet::new();
        let mut batch = WriteBatch::default();
        {
            let known = self.inner.cold.read();
            for r in candidates {
                let Some(s) = head.get(r) else { continue };
                // A sample may have come in meanwhile.
                if !idle(s)
                    || !s.chunk.is_empty()
                    || !head.ooo(r).is_empty()
                    || pending.contains(&r)
                {
                    continue;
                }
                if s.min_t <= s.max_t {
                    let mut p = partition_of(s.min_t, width).max(oldest);
                    while p <= s.max_t {
                        if !known.contains(&p) {
                            cold.insert(p);
                        }
                        p = match p.checked_add(width) {
                            Some(n) => n,
                            None => break,
                        };
                    }
                }
                batch.put_cf(hcf, keys::series(r), evicted_value(s.min_t, s.max_t));
                gone.push(r);
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        for &p in &cold {
            batch.put_cf(mcf, keys::cold(p), []);
        }
        batch.put_cf(mcf, keys::META_EVICTED, []);
        // Before the series leave the head, so that a new label set is
        // looked up on disk and reads find them in the cold partitions.
        self.inner.evicted_any.store(true, Ordering::Release);
        rocks
            .write(batch)
            .map_err(Error::rocks("recording evicted series"))?;
        self.inner.cold.write().extend(cold);
        head.evict(&gone);
        tracing::debug!(series = gone.len(), "evicted idle series");
        Ok(gone.len())
    }

    /// Drops the index of partitions that retention emptied in every
    /// resolution.
    fn drop_expired_index(&self, deleted: &[(Resolution, i64)]) -> Result<()> {
        let rocks = &self.inner.rocks;
        let icf = cf(rocks, CF_INDEX)?;
        let mcf = cf(rocks, CF_META)?;
        let mut ps: Vec<i64> = deleted.iter().map(|&(_, p)| p).collect();
        ps.sort_unstable();
        ps.dedup();
        for p in ps {
            let mut held = false;
            for res in [Resolution::Raw, Resolution::OneMinute, Resolution::OneHour] {
                held |= self.has_partition(res, p)?;
            }
            if held {
                continue;
            }
            index::delete_partition(rocks, icf, p)?;
            rocks
                .delete_cf(mcf, keys::cold(p))
                .map_err(Error::rocks("removing a cold partition"))?;
            self.inner.cold.write().remove(&p);
        }
        Ok(())
    }

    /// Moves closed partitions older than the blob age to blob storage.
    fn tier_old(&self, now: i64, report: &mut MaintainReport) -> Result<()> {
        let Some(tier) = &self.inner.tier else {
            return Ok(());
        };
        let width = self.inner.opts.partition_ms();
        let cutoff = now.saturating_sub(tier.after_ms);
        for res in [Resolution::Raw, Resolution::OneMinute, Resolution::OneHour] {
            for p in self.partitions(res)? {
                if p.saturating_add(width) > cutoff {
                    continue;
                }
                match self.tier_partition(tier, res, p) {
                    Ok(()) => report.tiered.push((res, p)),
                    Err(e @ (Error::Blob { .. } | Error::BlobVerify { .. })) => {
                        tracing::warn!(partition = p, resolution = ?res, error = %e,
                            "partition stays local; its upload will be retried at the next run");
                        report.tier_failed.push((res, p, e.to_string()));
                        // The store is likely down: the rest waits too.
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Writes the local chunks of `(res, p)` as one block, uploads and
    /// verifies it, then records it and deletes exactly those chunks (later
    /// arrivals stay for the next generation) in one RocksDB write.
    fn tier_partition(&self, tier: &Tier, res: Resolution, p: i64) -> Result<()> {
        let rocks = &self.inner.rocks;
        let spool = self.inner.dir.join("blob-spool");
        std::fs::create_dir_all(&spool)
            .map_err(|e| Error::io("creating the upload spool", &spool, e))?;
        let generation = tier.next_generation(res.id(), p);
        let file = spool.join(format!("{}-{p}-{generation}.tmb", res.id()));
        let mut writer = BlockWriter::create(file.clone(), res.id(), p)?;
        let mut written: Vec<[u8; 29]> = Vec::new();
        self.for_each_series(res, p, |r, group| {
            let labels = encode_labels(&self.inner.head.read().labels(r));
            let chunks: Vec<(u64, i64, &[u8])> = group
                .iter()
                .map(|(k, v)| (k.seq, k.min_t, v.as_slice()))
                .collect();
            writer.add(r, &labels, &chunks)?;
            written.extend(
                group
                    .iter()
                    .map(|(k, _)| keys::chunk(k.res, k.partition, k.r, k.min_t, k.seq)),
            );
            Ok(())
        })?;
        let finished = writer.finish();
        let uploaded = finished.and_then(|(size, crc)| {
            if written.is_empty() {
                return Ok(None);
            }
            let path = tier.path(res.id(), p, generation);
            let started = Instant::now();
            tier.upload(&path, &file, size, crc)?;
            tracing::info!(
                path,
                size,
                chunks = written.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "partition moved to blob storage"
            );
            Ok(Some(BlockMeta {
                generation,
                size,
                crc,
            }))
        });
        let _ = std::fs::remove_file(&file);
        let Some(meta) = uploaded? else {
            return Ok(());
        };
        // Readers see the block before the local chunks go.
        tier.record(res.id(), p, meta);
        let mut batch = WriteBatch::default();
        let mut value = meta.size.to_le_bytes().to_vec();
        value.extend_from_slice(&meta.crc.to_le_bytes());
        batch.put_cf(
            cf(rocks, CF_META)?,
            keys::tier(res.id(), p, generation),
            value,
        );
        let ccf = cf(rocks, CF_CHUNKS)?;
        for k in &written {
            batch.delete_cf(ccf, k);
        }
        if let Err(e) = rocks.write(batch) {
            tier.forget(res.id(), p);
            // Earlier generations stay recorded.
            for b in load_manifest(rocks, cf(rocks, CF_META)?)?
                .remove(&(res.id(), p))
                .unwrap_or_default()
            {
                tier.record(res.id(), p, b);
            }
            return Err(Error::rocks("recording a tiered partition")(e));
        }
        Ok(())
    }

    fn partitions(&self, res: Resolution) -> Result<Vec<i64>> {
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let mut out = Vec::new();
        let mut start = keys::partition_prefix(res.id(), i64::MIN).to_vec();
        loop {
            let mut it = rocks.iterator_cf(
                &ccf,
                IteratorMode::From(&start, rocksdb::Direction::Forward),
            );
            let Some(item) = it.next() else { break };
            let (k, _) = item.map_err(Error::rocks("listing partitions"))?;
            let Some(key) = keys::parse_chunk(&k) else {
                break;
            };
            if key.res != res.id() {
                break;
            }
            out.push(key.partition);
            match key.partition.checked_add(1) {
                Some(next) => start = keys::partition_prefix(res.id(), next).to_vec(),
                None => break,
            }
        }
        Ok(out)
    }

    fn has_partition(&self, res: Resolution, p: i64) -> Result<bool> {
        if self.inner.tier.as_ref().is_some_and(|t| t.has(res.id(), p)) {
            return Ok(true);
        }
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let prefix = keys::partition_prefix(res.id(), p);
        match rocks.prefix_iterator_cf(&ccf, prefix).next() {
            Some(item) => Ok(item
                .map_err(Error::rocks("reading a partition"))?
                .0
                .starts_with(&prefix)),
            None => Ok(false),
        }
    }

    /// Calls `f` once per series with chunks in partition `p` of `res`,
    /// with those chunks' keys and values, in key order.
    fn for_each_series(
        &self,
        res: Resolution,
        p: i64,
        mut f: impl FnMut(SeriesRef, &[(keys::ChunkKey, Vec<u8>)]) -> Result<()>,
    ) -> Result<()> {
        let rocks = &self.inner.rocks;
        let prefix = keys::partition_prefix(res.id(), p);
        let mut group: Vec<(keys::ChunkKey, Vec<u8>)> = Vec::new();
        for item in rocks.prefix_iterator_cf(cf(rocks, CF_CHUNKS)?, prefix) {
            let (k, v) = item.map_err(Error::rocks("reading a partition"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let key = keys::parse_chunk(&k).ok_or_else(|| Error::Corrupt {
                what: "chunk key".into(),
            })?;
            if let Some((g, _)) = group.last()
                && g.r != key.r
            {
                f(g.r, &group)?;
                group.clear();
            }
            group.push((key, v.to_vec()));
        }
        if let Some((g, _)) = group.last() {
            f(g.r, &group)?;
        }
        Ok(())
    }

    /// Rewrites each series' chunks in raw partition `p` into one pcodec
    /// chunk, paged by block (see [`Options::block`]): the most compact
    /// form on disk, of which a short read decodes only the pages it
    /// needs. Returns whether anything changed; a series already in one
    /// sealed chunk is left as it is.
    fn compact_partition(&self, p: i64) -> Result<bool> {
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let mcf = cf(rocks, CF_META)?;
        let width = self
            .inner
            .opts
            .block_ms()
            .unwrap_or(self.inner.opts.partition_ms());
        let block_of = |t: i64| t.saturating_sub(p) / width;
        let mut changed = false;
        let mut batch = WriteBatch::default();
        let mut span = 0i64;
        self.for_each_series(Resolution::Raw, p, |r, group| {
            if let [(_, v)] = group
                && split_value(v)?.0 == ENC_SEALED
            {
                return Ok(());
            }
            let mut parts = Runs::default();
            for (k, v) in group {
                parts.push_chunk(k.seq, v)?;
                batch.delete_cf(ccf, keys::chunk(0, k.partition, k.r, k.min_t, k.seq));
            }
            let merged = merge(parts);
            let seq = group.iter().map(|(k, _)| k.seq).max().unwrap_or(0);
            if let (Some(&(t0, _)), Some(&(t1, _))) = (merged.first(), merged.last()) {
                let pages: Vec<usize> = merged
                    .chunk_by(|a, b| block_of(a.0) == block_of(b.0))
                    .map(<[_]>::len)
                    .collect();
                let (ts, vs): (Vec<i64>, Vec<f64>) = merged.into_iter().unzip();
                let enc = tiermon_chunkenc::sealed::encode_paged(&ts, &vs, &pages);
                span = span.max(t1 - t0);
                batch.put_cf(
                    ccf,
                    keys::chunk(0, p, r, t0, seq),
                    chunk_value(ENC_SEALED, t1, &enc),
                );
            }
            changed = true;
            // Bounded batches, each series' rewrite in one (with the span
            // it raises): a day of a large fleet is gigabytes.
            if batch.size_in_bytes() > 16 << 20 {
                self.inner.spans.write(
                    rocks,
                    mcf,
                    std::mem::take(&mut batch),
                    [(p, span)],
                    "writing compacted chunks",
                )?;
            }
            Ok(())
        })?;
        if changed {
            self.inner.compactions.fetch_add(1, Ordering::Relaxed);
            self.inner
                .spans
                .write(rocks, mcf, batch, [(p, span)], "writing compacted chunks")?;
        }
        Ok(changed)
    }

    /// Whether raw partition `p` received chunks since this was last
    /// asked, forgetting it: a write after this marks it again.
    fn take_written(&self, p: i64) -> Result<bool> {
        let rocks = &self.inner.rocks;
        let mcf = cf(rocks, CF_META)?;
        let key = keys::written(p);
        let marked = rocks
            .get_cf(mcf, key)
            .map_err(Error::rocks("reading a partition's write mark"))?
            .is_some();
        if marked {
            rocks
                .delete_cf(mcf, key)
                .map_err(Error::rocks("clearing a partition's write mark"))?;
        }
        Ok(marked)
    }

    /// Compacts the sealed chunks of open raw partition `p` between the
    /// blocks compacted before and `until` (a block boundary) into one
    /// pcodec chunk per series and block, each holding exactly the series'
    /// samples of its block. A chunk reaching past `until` keeps its later
    /// samples as a chunk of its own; a chunk from before the range is left
    /// as it is (its samples in the range are copied, under the same
    /// write sequence rule). Returns how many series were rewritten.
    ///
    /// Written in bounded batches, each series' rewrite in one: the range
    /// is recorded first (it only widens reads' seeks), so a crash part
    /// way leaves some series as they were, which is correct, and the
    /// partition's compaction when it closes takes them in. So does it
    /// the rest of a partition compacted with another block width.
    fn compact_blocks(&self, p: i64, until: i64) -> Result<usize> {
        let Some(block) = self.inner.opts.block_ms() else {
            return Ok(0);
        };
        let spans = &self.inner.spans;
        let from = match spans.compacted(p) {
            None => p,
            Some((done, width)) if width == block => done,
            Some(_) => return Ok(0),
        };
        if until <= from {
            return Ok(0);
        }
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        spans.claim_blocks(rocks, cf(rocks, CF_META)?, p, until, block)?;
        let reach = from.saturating_sub(spans.get(p)).max(p);
        let prefix = keys::partition_prefix(0, p);
        let mut it = rocks.raw_iterator_cf(ccf);
        let mut batch = WriteBatch::default();
        let mut group: Vec<(keys::ChunkKey, Vec<u8>)> = Vec::new();
        let mut rewritten = 0;
        it.seek(prefix);
        while let Some(k) = it.key().filter(|k| k.starts_with(&prefix)) {
            let corrupt = || Error::Corrupt {
                what: "chunk key".into(),
            };
            let r = keys::parse_chunk(k).ok_or_else(corrupt)?.r;
            // The chunks of `r` that can hold samples in the range.
            group.clear();
            let series = keys::series_prefix(0, p, r);
            it.seek(keys::chunk(0, p, r, reach, 0));
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(&series) {
                    break;
                }
                let key = keys::parse_chunk(k).ok_or_else(corrupt)?;
                if key.min_t >= until {
                    break;
                }
                if split_value(v)?.1 >= from {
                    group.push((key, v.to_vec()));
                }
                it.next();
            }
            if group.iter().any(|(k, _)| k.min_t >= from) {
                rewrite_blocks(&mut batch, ccf, &group, from, until, block)?;
                rewritten += 1;
                if batch.size_in_bytes() > 16 << 20 {
                    rocks
                        .write(std::mem::take(&mut batch))
                        .map_err(Error::rocks("writing compacted blocks"))?;
                }
            }
            match r.checked_add(1) {
                Some(next) => it.seek(keys::series_prefix(0, p, next)),
                None => break,
            }
        }
        it.status()
            .map_err(Error::rocks("reading chunks to compact"))?;
        rocks
            .write(batch)
            .map_err(Error::rocks("writing compacted blocks"))?;
        if rewritten > 0 {
            self.inner.compactions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(rewritten)
    }

    /// Writes 1-minute and 1-hour aggregates of raw partition `p`.
    fn downsample_partition(&self, p: i64) -> Result<()> {
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let width = self.inner.opts.partition_ms();
        let mut batch = WriteBatch::default();
        self.for_each_series(Resolution::Raw, p, |r, group| {
            // Minute windows stored by `put_aggregates` are the series'
            // own; only the hour windows are computed, from them.
            let received = self.read_windows(ccf, Resolution::OneMinute, p, r)?;
            if !received.is_empty() {
                let h1 = downsample::rollup(&received, Resolution::OneHour.window_ms());
                if let (Some(first), Some(last)) = (h1.first(), h1.last()) {
                    batch.put_cf(
                        ccf,
                        keys::chunk(Resolution::OneHour.id(), p, r, first.start, 0),
                        chunk_value(ENC_AGG, last.start, &downsample::encode(&h1)),
                    );
                }
                return Ok(());
            }
            let mut parts = Runs::default();
            for (k, v) in group {
                parts.push_chunk(k.seq, v)?;
            }
            let samples = merge(parts);
            // Resets compensated in earlier partitions keep counting.
            let mut carry = (0.0, None);
            let prev = keys::series_prefix(Resolution::OneMinute.id(), p - width, r);
            if let Some(item) = rocks.prefix_iterator_cf(ccf, prev).next() {
                let (k, v) = item.map_err(Error::rocks("reading aggregates"))?;
                if k.starts_with(&prev)
                    && let Some(last) = downsample::decode(split_value(&v)?.2)?.last()
                {
                    carry = (last.counter - last.last, Some(last.last));
                }
            }
            let m1 = downsample::aggregate(&samples, Resolution::OneMinute.window_ms(), &mut carry);
            let h1 = downsample::rollup(&m1, Resolution::OneHour.window_ms());
            for (res, aggs) in [(Resolution::OneMinute, m1), (Resolution::OneHour, h1)] {
                if let (Some(first), Some(last)) = (aggs.first(), aggs.last()) {
                    batch.put_cf(
                        ccf,
                        keys::chunk(res.id(), p, r, first.start, 0),
                        chunk_value(ENC_AGG, last.start, &downsample::encode(&aggs)),
                    );
                }
            }
            Ok(())
        })?;
        rocks
            .write(batch)
            .map_err(Error::rocks("writing aggregates"))
    }

    /// The windows of series `r` stored locally in partition `p` of `res`,
    /// by start, each window once.
    fn read_windows(
        &self,
        ccf: &ColumnFamily,
        res: Resolution,
        p: i64,
        r: SeriesRef,
    ) -> Result<Vec<Aggregate>> {
        let prefix = keys::series_prefix(res.id(), p, r);
        let mut out = Vec::new();
        for item in self.inner.rocks.prefix_iterator_cf(ccf, prefix) {
            let (k, v) = item.map_err(Error::rocks("reading aggregates"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (enc, _, payload) = split_value(&v)?;
            if enc != ENC_AGG {
                return Err(Error::Corrupt {
                    what: "aggregate chunk encoding".into(),
                });
            }
            out.extend(downsample::decode(payload)?);
        }
        out.sort_by_key(|a| a.start);
        out.dedup_by_key(|a| a.start);
        Ok(out)
    }

    /// Stores windows computed elsewhere — the global tier's minute windows
    /// come from the primaries — for series that exist here; durable when
    /// it returns. Storing a window again replaces it. The partition's
    /// hour windows are rolled up from them when it closes; `select`
    /// keeps reading the series' raw samples.
    pub fn put_aggregates(
        &self,
        res: Resolution,
        windows: &[(SeriesRef, Aggregate)],
    ) -> Result<()> {
        if res == Resolution::Raw {
            return Err(Error::Corrupt {
                what: "aggregates of the raw resolution".into(),
            });
        }
        if windows.is_empty() {
            return Ok(());
        }
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let icf = cf(rocks, CF_INDEX)?;
        let width = self.inner.opts.partition_ms();
        let fresh = {
            let head = self.inner.head.read();
            self.unindexed(
                &head,
                windows
                    .iter()
                    .map(|(r, a)| (partition_of(a.start, width), *r)),
            )?
        };
        let mut batch = WriteBatch::default();
        for (p, series) in &fresh {
            index::add(&mut batch, icf, *p, series);
        }
        for (r, a) in windows {
            // Sequence 1: apart from the windows computed here (0).
            batch.put_cf(
                ccf,
                keys::chunk(res.id(), partition_of(a.start, width), *r, a.start, 1),
                chunk_value(
                    ENC_AGG,
                    a.start,
                    &downsample::encode(std::slice::from_ref(a)),
                ),
            );
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(self.inner.opts.wal_fsync);
        rocks
            .write_opt(batch, &wo)
            .map_err(Error::rocks("writing received aggregates"))?;
        self.mark_indexed(&fresh);
        Ok(())
    }

    /// Deletes partitions past their resolution's retention, then the
    /// oldest partitions while the data is over `max_bytes`.
    fn apply_retention(&self, now: i64) -> Result<Vec<(Resolution, i64)>> {
        let o = &self.inner.opts;
        let width = o.partition_ms();
        let rocks = &self.inner.rocks;
        let ccf = cf(rocks, CF_CHUNKS)?;
        let mut deleted = Vec::new();
        for (res, keep) in [
            (Resolution::Raw, o.retention_raw),
            (Resolution::OneMinute, o.retention_1m),
            (Resolution::OneHour, o.retention_1h),
        ] {
            let cutoff = now - keep.as_millis() as i64;
            for p in self.partitions(res)? {
                if p + width <= cutoff {
                    self.delete_partition(ccf, res, p)?;
                    deleted.push((res, p));
                }
            }
            if let Some(tier) = &self.inner.tier {
                for p in tier.partitions(res.id()) {
                    if p + width > cutoff {
                        continue;
                    }
                    // The manifest goes first: a crash in between leaves an
                    // unreferenced object, never a reference to a missing one.
                    let blocks = tier.blocks(res.id(), p);
                    let mut batch = WriteBatch::default();
                    let mcf = cf(rocks, CF_META)?;
                    for b in &blocks {
                        batch.delete_cf(mcf, keys::tier(res.id(), p, b.generation));
                    }
                    rocks
                        .write(batch)
                        .map_err(Error::rocks("removing tiered partitions"))?;
                    tier.forget(res.id(), p);
                    if let Err(e) = tier.delete(res.id(), p, &blocks) {
                        tracing::warn!(partition = p, resolution = ?res, error = %e,
                            "deleting expired blocks failed; they are no longer referenced");
                    }
                    if !deleted.contains(&(res, p)) {
                        deleted.push((res, p));
                    }
                }
            }
        }
        if let Some(max) = o.max_bytes {
            loop {
                let size = self.chunk_bytes()?;
                if size <= max {
                    break;
                }
                // Oldest first, raw before its aggregates.
                let mut all: Vec<(i64, Resolution)> = Vec::new();
                for res in [Resolution::Raw, Resolution::OneMinute, Resolution::OneHour] {
                    all.extend(self.partitions(res)?.into_iter().map(|p| (p, res)));
                }
                all.sort();
                let Some(&(p, res)) = all.first() else { break };
                tracing::info!(partition = p, resolution = ?res, size, max, "deleting the oldest partition to stay under max_bytes");
                self.delete_partition(ccf, res, p)?;
                deleted.push((res, p));
                rocks.compact_range_cf(
                    &ccf,
                    Some(keys::partition_prefix(res.id(), p)),
                    Some(keys::partition_prefix(res.id(), p + width)),
                );
            }
        }
        Ok(deleted)
    }

    fn delete_partition(&self, ccf: &ColumnFamily, res: Resolution, p: i64) -> Result<()> {
        let width = self.inner.opts.partition_ms();
        let rocks = &self.inner.rocks;
        rocks
            .delete_range_cf(
                ccf,
                keys::partition_prefix(res.id(), p),
                keys::partition_prefix(res.id(), p.saturating_add(width)),
            )
            .map_err(Error::rocks("deleting a partition"))?;
        if res == Resolution::Raw {
            // Chunks written since are read from the partition's start.
            self.inner.spans.forget(rocks, cf(rocks, CF_META)?, p)?;
            rocks
                .delete_cf(cf(rocks, CF_META)?, keys::written(p))
                .map_err(Error::rocks("deleting a partition's write mark"))?;
        }
        Ok(())
    }

    /// Bytes of the chunks column family, live files and memtables.
    fn chunk_bytes(&self) -> Result<u64> {
        let rocks = &self.inner.rocks;
        let c = cf(rocks, CF_CHUNKS)?;
        let p = |name: &str| {
            rocks
                .property_int_value_cf(&c, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        Ok(p("rocksdb.live-sst-files-size") + p("rocksdb.cur-size-all-mem-tables"))
    }

    /// What a read of `[mint, maxt]` needs of each matching series: the
    /// head's part for series in it, and for evicted ones where to look.
    fn head_snapshots(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<HeadSnapshot>> {
        let (mut snaps, all) = self.hot_snapshots(matchers, mint, maxt);
        let cold = self.cold_refs(matchers, mint, maxt, &all)?;
        if cold.is_empty() {
            return Ok(snaps);
        }
        let width = self.inner.opts.partition_ms();
        let refs: Vec<SeriesRef> = cold.iter().map(|c| c.0).collect();
        for ((r, first, last), labels) in cold.into_iter().zip(self.labels_many(&refs)?) {
            snaps.push(HeadSnapshot {
                r,
                labels,
                chunk: None,
                ooo: Vec::new(),
                pending: Vec::new(),
                min_t: first,
                max_t: last.saturating_add(width - 1),
                head_from: None,
            });
        }
        snaps.sort_by_key(|s| s.r);
        Ok(snaps)
    }

    /// The head's part of [`Self::head_snapshots`], and every matching
    /// series in the head (in range or not), ascending.
    fn hot_snapshots(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> (Vec<HeadSnapshot>, Vec<SeriesRef>) {
        let head = self.inner.head.read();
        let all = head.select(matchers);
        // Sealed chunks not yet written, of the selected series: one pass,
        // not one per selected series.
        let mut pending: std::collections::HashMap<SeriesRef, Vec<(u64, Vec<u8>)>> =
            std::collections::HashMap::new();
        for (c, bytes) in head.pending.iter() {
            if c.min_t <= maxt && c.max_t >= mint && all.binary_search(&c.r).is_ok() {
                pending
                    .entry(c.r)
                    .or_default()
                    .push((c.seq, bytes.to_vec()));
            }
        }
        let snaps = all
            .iter()
            .filter_map(|&r| {
                let s = head.get(r)?;
                if s.max_t < mint || s.min_t > maxt {
                    return None;
                }
                let chunk = (!s.chunk.is_empty()
                    && s.chunk.last_timestamp().is_some_and(|l| l >= mint)
                    && s.chunk_min_t() <= maxt)
                    .then(|| (s.chunk_seq, s.chunk.to_bytes()));
                let ooo = head
                    .ooo(r)
                    .iter()
                    .copied()
                    .filter(|&(t, _)| t >= mint && t <= maxt)
                    .collect();
                let pending = pending.remove(&r).unwrap_or_default();
                Some(HeadSnapshot {
                    r,
                    labels: head.labels(r),
                    chunk,
                    ooo,
                    pending,
                    min_t: s.min_t,
                    max_t: s.max_t,
                    head_from: (!s.chunk.is_empty() && !s.ooo_sealed).then_some(s.chunk_min_t()),
                })
            })
            .collect();
        (snaps, all)
    }

    /// Adds the stored chunks of series `r` in raw partition `p` that
    /// overlap `[mint, maxt]`.
    fn stored_runs(
        &self,
        it: &mut rocksdb::DBRawIterator<'_>,
        parts: &mut Runs,
        p: i64,
        r: SeriesRef,
        mint: i64,
        maxt: i64,
    ) -> Result<()> {
        // Chunks are keyed by their first sample: the first one that can
        // reach `mint` starts no earlier than the partition's longest chunk
        // before it (or `mint`'s block, where blocks were compacted), and
        // none after `maxt` can.
        let from = self.inner.spans.seek_from(p, mint);
        let prefix = keys::series_prefix(0, p, r);
        it.seek(keys::chunk(0, p, r, from, 0));
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(&prefix) {
                break;
            }
            let key = keys::parse_chunk(k).ok_or_else(|| Error::Corrupt {
                what: "chunk key".into(),
            })?;
            if key.min_t > maxt {
                break;
            }
            let (_, max_t, _) = split_value(v)?;
            if max_t >= mint {
                parts.push_range(key.seq, v, mint, maxt)?;
            }
            it.next();
        }
        it.status().map_err(Error::rocks("reading chunks"))
    }

    /// Runs of one series from RocksDB and the head. `it` iterates the
    /// chunks column family; one serves every series of a read, seeking
    /// forward (creating an iterator costs more than a seek).
    fn local_runs(
        &self,
        it: &mut rocksdb::DBRawIterator<'_>,
        s: &HeadSnapshot,
        mint: i64,
        maxt: i64,
    ) -> Result<Runs> {
        let width = self.inner.opts.partition_ms();
        let mut parts = Runs::default();
        // Only partitions where the series has data.
        let last = maxt.min(s.max_t);
        let mut p = partition_of(mint.max(s.min_t), width);
        while p <= last {
            // Where the open chunk covers the range, RocksDB holds only
            // chunks before it (or copies of it, after a restart).
            let covered = s
                .head_from
                .is_some_and(|from| from <= mint && partition_of(from, width) == p);
            if !covered {
                self.stored_runs(it, &mut parts, p, s.r, mint, maxt)?;
            }
            p = match p.checked_add(width) {
                Some(n) => n,
                None => break,
            };
        }
        for (seq, bytes) in &s.pending {
            parts.push_xor(*seq, bytes, "pending chunk")?;
        }
        if let Some((seq, c)) = &s.chunk {
            parts.push_xor(*seq, c, "head chunk")?;
        }
        if !s.ooo.is_empty() {
            parts.push_samples(u64::MAX, &s.ooo);
        }
        Ok(parts)
    }
}

/// Series of `refs` in the head with samples in `[mint, maxt]`.
fn in_range(head: &Head, refs: &[SeriesRef], mint: i64, maxt: i64) -> Vec<SeriesRef> {
    refs.iter()
        .copied()
        .filter(|&r| {
            head.get(r)
                .is_some_and(|s| s.max_t >= mint && s.min_t <= maxt)
        })
        .collect()
}

/// What a read needs from the head for one series, copied out under the
/// lock.
struct HeadSnapshot {
    r: SeriesRef,
    labels: Labels,
    chunk: Option<(u64, Vec<u8>)>,
    ooo: Vec<(i64, f64)>,
    pending: Vec<(u64, Vec<u8>)>,
    min_t: i64,
    max_t: i64,
    /// Where the open chunk holds every sample from on (see
    /// `MemSeries::ooo_sealed`).
    head_from: Option<i64>,
}

/// Samples of one series from several chunks ("runs"): `buf` holds them
/// run after run, `runs` each one's write sequence and extent, so that
/// reading a series allocates one buffer, not one per chunk.
#[derive(Debug, Default)]
struct Runs {
    buf: Vec<(i64, f64)>,
    runs: Vec<(u64, std::ops::Range<usize>)>,
}

impl Runs {
    /// Adds a stored chunk value (any raw encoding).
    fn push_chunk(&mut self, seq: u64, v: &[u8]) -> Result<()> {
        self.push_range(seq, v, i64::MIN, i64::MAX)
    }

    /// Adds a stored chunk value's samples, at least those in `[mint,
    /// maxt]`: of a paged chunk, only the pages that may hold them.
    fn push_range(&mut self, seq: u64, v: &[u8], mint: i64, maxt: i64) -> Result<()> {
        let (enc, _, payload) = split_value(v)?;
        let corrupt = |e: tiermon_chunkenc::Error| Error::Corrupt {
            what: format!("chunk: {e}"),
        };
        let start = self.buf.len();
        match enc {
            ENC_XOR => XorChunk::decode_into(payload, &mut self.buf).map_err(corrupt)?,
            ENC_SEALED => {
                tiermon_chunkenc::sealed::decode_pages_into(payload, mint, maxt, &mut self.buf)
                    .map_err(corrupt)?
            }
            other => {
                return Err(Error::Corrupt {
                    what: format!("chunk encoding {other}"),
                });
            }
        }
        self.runs.push((seq, start..self.buf.len()));
        Ok(())
    }

    /// Adds a serialised XOR chunk from the head (`what` names it in
    /// errors).
    fn push_xor(&mut self, seq: u64, bytes: &[u8], what: &str) -> Result<()> {
        let start = self.buf.len();
        XorChunk::decode_into(bytes, &mut self.buf).map_err(|e| Error::Corrupt {
            what: format!("{what}: {e}"),
        })?;
        self.runs.push((seq, start..self.buf.len()));
        Ok(())
    }

    fn push_samples(&mut self, seq: u64, samples: &[(i64, f64)]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(samples);
        self.runs.push((seq, start..self.buf.len()));
    }
}

/// Merges runs of samples; where several have a timestamp, the run with
/// the highest sequence (the latest write) wins. Within one run, the last
/// sample of a timestamp wins.
fn merge(r: Runs) -> Vec<(i64, f64)> {
    let Runs { buf, mut runs } = r;
    runs.retain(|(_, x)| !x.is_empty());
    let ordered = |x: &std::ops::Range<usize>| buf[x.clone()].windows(2).all(|w| w[0].0 < w[1].0);
    if runs.iter().all(|(_, x)| ordered(x)) {
        let apart = |rs: &[(u64, std::ops::Range<usize>)]| {
            rs.windows(2)
                .all(|w| buf[w[0].1.end - 1].0 < buf[w[1].1.start].0)
        };
        // The usual case: in-order chunks, read in key order, then the
        // head's: the buffer is the answer.
        if apart(&runs) {
            return buf;
        }
        runs.sort_by_key(|(seq, x)| (buf[x.start].0, *seq));
        if apart(&runs) {
            let mut out = Vec::with_capacity(buf.len());
            for (_, x) in &runs {
                out.extend_from_slice(&buf[x.clone()]);
            }
            return out;
        }
        return merge_ordered(&buf, &runs);
    }
    let mut all: Vec<(i64, u64, usize, f64)> = Vec::with_capacity(buf.len());
    for (seq, x) in &runs {
        for (i, &(t, v)) in buf[x.clone()].iter().enumerate() {
            all.push((t, *seq, i, v));
        }
    }
    all.sort_unstable_by_key(|&(t, seq, i, _)| (t, seq, i));
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(all.len());
    for (t, _, _, v) in all {
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 = v,
            _ => out.push((t, v)),
        }
    }
    out
}

/// The blob manifest recorded in `meta`.
fn load_manifest(
    rocks: &DB,
    meta: &ColumnFamily,
) -> Result<std::collections::BTreeMap<(u8, i64), Vec<BlockMeta>>> {
    let mut out: std::collections::BTreeMap<(u8, i64), Vec<BlockMeta>> = Default::default();
    for item in rocks.prefix_iterator_cf(meta, keys::META_TIER) {
        let (k, v) = item.map_err(Error::rocks("reading the blob manifest"))?;
        if !k.starts_with(keys::META_TIER) {
            break;
        }
        let corrupt = || Error::Corrupt {
            what: "blob manifest entry".into(),
        };
        let (res, p, generation) = keys::parse_tier(&k).ok_or_else(corrupt)?;
        if v.len() != 12 {
            return Err(corrupt());
        }
        let size = u64::from_le_bytes(v[0..8].try_into().map_err(|_| corrupt())?);
        let crc = u32::from_le_bytes(v[8..12].try_into().map_err(|_| corrupt())?);
        out.entry((res, p)).or_default().push(BlockMeta {
            generation,
            size,
            crc,
        });
    }
    Ok(out)
}

fn lz4() -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

fn cf<'a>(rocks: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    rocks.cf_handle(name).ok_or_else(|| Error::Corrupt {
        what: format!("missing column family {name}"),
    })
}

fn get_u64(rocks: &DB, cf: &ColumnFamily, key: &[u8]) -> Result<Option<u64>> {
    match rocks
        .get_cf(cf, key)
        .map_err(Error::rocks("reading metadata"))?
    {
        None => Ok(None),
        Some(v) => Ok(Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
            |_| Error::Corrupt {
                what: "metadata value".into(),
            },
        )?))),
    }
}

/// Merges overlapping runs, each in strictly increasing time, given in
/// order of their first timestamp (copies of chunks rewritten after a
/// restart, rewrites): a merge of the runs that overlap at each point,
/// where the higher sequence wins a timestamp, instead of a sort of every
/// sample.
fn merge_ordered(buf: &[(i64, f64)], runs: &[(u64, std::ops::Range<usize>)]) -> Vec<(i64, f64)> {
    use std::cmp::Reverse;
    /// Time, higher sequence first, run, position.
    type Next = (i64, Reverse<u64>, usize, usize);
    // Smallest first.
    let mut heap: std::collections::BinaryHeap<Reverse<Next>> = std::collections::BinaryHeap::new();
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(buf.len());
    let mut next = 0;
    loop {
        // A run joins once it can hold the next timestamp.
        while let Some((seq, x)) = runs.get(next) {
            if heap
                .peek()
                .is_some_and(|Reverse((t, ..))| buf[x.start].0 > *t)
            {
                break;
            }
            heap.push(Reverse((buf[x.start].0, Reverse(*seq), next, x.start)));
            next += 1;
        }
        let Some(Reverse((t, seq, run, i))) = heap.pop() else {
            break;
        };
        let end = runs[run].1.end;
        if heap.is_empty() {
            // One run alone until the next one starts: copied in one go
            // (runs overlap at their edges, after a restart or where
            // blocks were compacted, rarely all along).
            let upto = runs.get(next).map_or(end, |(_, x)| {
                i + buf[i..end].partition_point(|s| s.0 < buf[x.start].0)
            });
            let from = if out.last().is_some_and(|last| last.0 == t) {
                i + 1
            } else {
                i
            };
            out.extend_from_slice(&buf[from..upto.max(from)]);
            if upto < end {
                heap.push(Reverse((buf[upto].0, seq, run, upto)));
            }
            continue;
        }
        if out.last().is_none_or(|last| last.0 != t) {
            out.push(buf[i]);
        }
        if i + 1 < end {
            heap.push(Reverse((buf[i + 1].0, seq, run, i + 1)));
        }
    }
    out
}

/// Rewrites one series' chunks `group` (every chunk that holds samples in
/// `[from, until)`, key order) into block chunks of `block` width within
/// that range: see `Db::compact_blocks`.
fn rewrite_blocks(
    batch: &mut WriteBatch,
    ccf: &ColumnFamily,
    group: &[(keys::ChunkKey, Vec<u8>)],
    from: i64,
    until: i64,
    block: i64,
) -> Result<()> {
    let mut parts = Runs::default();
    for (k, v) in group {
        parts.push_chunk(k.seq, v)?;
    }
    let seq = group.iter().map(|(k, _)| k.seq).max().unwrap_or(0);
    // `parts` holds one run per chunk of `group`, in its order.
    for ((k, v), (_, run)) in group.iter().zip(&parts.runs) {
        if k.min_t < from {
            continue;
        }
        batch.delete_cf(ccf, keys::chunk(0, k.partition, k.r, k.min_t, k.seq));
        // What reaches past the range stays a chunk of its own, under its
        // own sequence: chunks after the range may overlap it.
        let (enc, max_t, _) = split_value(v)?;
        if max_t < until {
            continue;
        }
        let mut one = Runs::default();
        one.push_samples(k.seq, &parts.buf[run.clone()]);
        let rest: Vec<(i64, f64)> = merge(one).into_iter().filter(|s| s.0 >= until).collect();
        let (Some(&(t0, _)), Some(&(t1, _))) = (rest.first(), rest.last()) else {
            continue;
        };
        let payload = if enc == ENC_XOR {
            let mut c = XorChunk::new();
            for &(t, v) in &rest {
                if !c.append(t, v) {
                    return Err(Error::Corrupt {
                        what: "chunk samples out of order".into(),
                    });
                }
            }
            c.to_bytes()
        } else {
            let (ts, vs): (Vec<i64>, Vec<f64>) = rest.into_iter().unzip();
            tiermon_chunkenc::sealed::encode(&ts, &vs)
        };
        batch.put_cf(
            ccf,
            keys::chunk(0, k.partition, k.r, t0, k.seq),
            chunk_value(enc, t1, &payload),
        );
    }
    let merged = merge(parts);
    let lo = merged.partition_point(|s| s.0 < from);
    let hi = merged.partition_point(|s| s.0 < until);
    let (p, r) = (group[0].0.partition, group[0].0.r);
    for run in merged[lo..hi].chunk_by(|a, b| (a.0 - from) / block == (b.0 - from) / block) {
        let (ts, vs): (Vec<i64>, Vec<f64>) = run.iter().copied().unzip();
        let (t0, t1) = (ts[0], ts[ts.len() - 1]);
        batch.put_cf(
            ccf,
            keys::chunk(0, p, r, t0, seq),
            chunk_value(ENC_SEALED, t1, &tiermon_chunkenc::sealed::encode(&ts, &vs)),
        );
    }
    Ok(())
}

/// The keys of sealed chunks in the order a table file takes them
/// (ascending, each once), with the index of the chunk stored under each:
/// of two under one key, the later, as in a write batch. A scrape seals in
/// reference order already, so the sort is mostly skipped.
fn table_order(chunks: &[SealedChunk]) -> Vec<([u8; 29], usize)> {
    let mut order: Vec<([u8; 29], usize)> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| (keys::chunk(0, c.partition, c.r, c.min_t, c.seq), i))
        .collect();
    if !order.is_sorted_by(|a, b| a.0 < b.0) {
        // Stable, so that equal keys stay in sealing order.
        order.sort_by_key(|a| a.0);
        order.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = later.1;
            }
            same
        });
    }
    order
}

fn chunk_value(enc: u8, max_t: i64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + payload.len());
    chunk_header_into(enc, max_t, &mut v);
    v.extend_from_slice(payload);
    v
}

/// A chunk value's header: its encoding and last timestamp.
fn chunk_header_into(enc: u8, max_t: i64, v: &mut Vec<u8>) {
    v.push(enc);
    v.extend_from_slice(&max_t.to_le_bytes());
}

fn split_value(v: &[u8]) -> Result<(u8, i64, &[u8])> {
    if v.len() < 9 {
        return Err(Error::Corrupt {
            what: "chunk value".into(),
        });
    }
    let max_t = i64::from_le_bytes(v[1..9].try_into().map_err(|_| Error::Corrupt {
        what: "chunk value".into(),
    })?);
    Ok((v[0], max_t, &v[9..]))
}

fn encode_labels(labels: &Labels) -> Vec<u8> {
    let mut out = Vec::new();
    encode_labels_into(labels, &mut out);
    out
}

fn encode_labels_into(labels: &Labels, out: &mut Vec<u8>) {
    wal::put_uvarint(out, labels.len() as u64);
    for l in labels {
        wal::put_bytes(out, l.name.as_bytes());
        wal::put_bytes(out, l.value.as_bytes());
    }
}

/// Entries of one kind laid end to end in one buffer, each with its series
/// and a number (the label hash), for a checkpoint.
#[derive(Default)]
struct Packed {
    bytes: Vec<u8>,
    /// (series, number, end of its bytes).
    ends: Vec<(SeriesRef, u64, usize)>,
}

impl Packed {
    /// Ends the entry written since the last one.
    fn close(&mut self, r: SeriesRef, n: u64) {
        self.ends.push((r, n, self.bytes.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (SeriesRef, u64, &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(r, n, end)| {
            let b = &self.bytes[start..end];
            start = end;
            (r, n, b)
        })
    }
}

fn decode_labels(b: &[u8]) -> Option<Labels> {
    let mut pairs = Vec::new();
    decode_sorted_labels(b, &mut pairs).then(|| Labels::from_pairs(pairs))
}

/// Decodes stored labels into `out` without copying them; false unless
/// they are what [`Head::create_sorted`] needs (names sorted and unique,
/// values non-empty).
fn decode_sorted_labels<'a>(mut b: &'a [u8], out: &mut Vec<(&'a str, &'a str)>) -> bool {
    out.clear();
    let Some(n) = wal::get_uvarint(&mut b) else {
        return false;
    };
    for _ in 0..n {
        let (Some(name), Some(value)) = (wal::get_bytes(&mut b), wal::get_bytes(&mut b)) else {
            return false;
        };
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return false;
        };
        if value.is_empty() || out.last().is_some_and(|&(last, _)| last >= name) {
            return false;
        }
        out.push((name, value));
    }
    true
}

/// Appends the head state of one series (open chunk and out-of-order
/// buffer), its checkpoint entry, to `out`.
fn snapshot_series(head: &Head, s: &crate::head::MemSeries, out: &mut Vec<u8>) {
    // The open chunk's first sample and partition, which its bytes also
    // give (kept so that the entry's layout does not change).
    let chunk_min_t = s.chunk.first_timestamp().unwrap_or(0);
    out.extend_from_slice(&chunk_min_t.to_le_bytes());
    out.extend_from_slice(&partition_of(chunk_min_t, head.width).to_le_bytes());
    out.extend_from_slice(&s.min_t.to_le_bytes());
    out.extend_from_slice(&s.max_t.to_le_bytes());
    out.extend_from_slice(&s.chunk_seq.to_le_bytes());
    wal::put_uvarint(out, s.chunk.serialized_len() as u64);
    s.chunk.write_to(out);
    let ooo = head.ooo(s.r);
    wal::put_uvarint(out, ooo.len() as u64);
    for &(t, v) in ooo {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

fn restore_series(head: &mut Head, r: SeriesRef, mut b: &[u8]) -> Option<()> {
    let i64_at = |b: &mut &[u8]| -> Option<i64> {
        let (x, rest) = b.split_at_checked(8)?;
        *b = rest;
        Some(i64::from_le_bytes(x.try_into().ok()?))
    };
    // The open chunk's first sample and partition, which its bytes give.
    let _chunk_min_t = i64_at(&mut b)?;
    let _partition = i64_at(&mut b)?;
    let min_t = i64_at(&mut b)?;
    let max_t = i64_at(&mut b)?;
    let chunk_seq = i64_at(&mut b)? as u64;
    let chunk = XorChunk::from_bytes(wal::get_bytes(&mut b)?).ok()?;
    let n = wal::get_uvarint(&mut b)? as usize;
    let mut ooo = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let t = i64_at(&mut b)?;
        let v = f64::from_bits(i64_at(&mut b)? as u64);
        ooo.push((t, v));
    }
    let s = head.get_mut(r)?;
    s.chunk = chunk;
    // Out-of-order samples sealed before the restart are not known.
    s.ooo_sealed = true;
    s.chunk_seq = chunk_seq;
    s.min_t = min_t;
    s.max_t = max_t;
    head.set_ooo(r, ooo);
    Some(())
}

/// First byte of an evicted series' record in `head` (a checkpoint entry
/// is never 17 bytes long).
const EVICTED: u8 = 0xE5;

/// The `head` entry of an evicted series: the time range it has data in.
fn evicted_value(min_t: i64, max_t: i64) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[0] = EVICTED;
    v[1..9].copy_from_slice(&min_t.to_le_bytes());
    v[9..].copy_from_slice(&max_t.to_le_bytes());
    v
}

fn evicted_marker(v: &[u8]) -> Option<(i64, i64)> {
    if v.len() != 17 || v[0] != EVICTED {
        return None;
    }
    Some((
        i64::from_le_bytes(v[1..9].try_into().ok()?),
        i64::from_le_bytes(v[9..].try_into().ok()?),
    ))
}

/// Gives series `r`, just brought back into `head`, the time range it had
/// when evicted: a sample older than its newest goes the out-of-order way
/// (and is refused outside the window), and reads do not take the new
/// open chunk for all there is.
fn revive(rocks: &DB, hcf: &ColumnFamily, head: &mut Head, r: SeriesRef) -> Result<()> {
    let v = rocks
        .get_pinned_cf(hcf, keys::series(r))
        .map_err(Error::rocks("reading an evicted series"))?;
    if let (Some((min_t, max_t)), Some(s)) =
        (v.as_deref().and_then(evicted_marker), head.get_mut(r))
    {
        s.min_t = min_t;
        s.max_t = max_t;
        s.ooo_sealed = true;
    }
    Ok(())
}

/// The first partition that the index on disk covers whole, for a
/// database that has none yet: the one after any data already stored or
/// in the head (none: all of them).
fn index_start(rocks: &DB, head: &Head, width: i64) -> Result<i64> {
    let mut last: Option<i64> = head
        .iter()
        .filter(|s| s.min_t <= s.max_t)
        .map(|s| s.max_t)
        .max();
    let ccf = cf(rocks, CF_CHUNKS)?;
    let mut it = rocks.raw_iterator_cf(ccf);
    for res in [Resolution::Raw, Resolution::OneMinute, Resolution::OneHour] {
        it.seek_for_prev(keys::partition_prefix(res.id() + 1, i64::MIN));
        if let Some(k) = it.key().and_then(keys::parse_chunk)
            && k.res == res.id()
        {
            last = Some(last.map_or(k.partition, |l| l.max(k.partition)));
        }
    }
    it.status().map_err(Error::rocks("reading chunks"))?;
    Ok(match last {
        None => i64::MIN,
        Some(t) => partition_of(t, width).saturating_add(width),
    })
}

/// Collects samples and commits them as one unit.
#[derive(Debug)]
pub struct Appender<'a> {
    db: &'a Db,
    samples: Vec<(SeriesRef, i64, f64)>,
}

impl Appender<'_> {
    /// Makes room for `n` more samples: a caller that knows the size of
    /// its batch (a scrape: about the last page's) allocates once instead
    /// of growing the buffer step by step.
    pub fn reserve(&mut self, n: usize) {
        self.samples.reserve(n);
    }

    /// Adds a sample to the series with `labels` (created if new); returns
    /// its reference for [`Self::append_ref`] next time.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef> {
        let r = self.db.series_ref(labels)?;
        self.samples.push((r, t, v));
        Ok(r)
    }

    /// Adds a sample by series reference: no label hashing.
    pub fn append_ref(&mut self, r: SeriesRef, t: i64, v: f64) {
        self.samples.push((r, t, v));
    }

    /// Number of samples waiting.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Applies the samples and writes them to the WAL; when this returns
    /// `Ok`, accepted samples are durable. Samples too old for their series
    /// are rejected one by one, with the reason.
    pub fn commit(mut self) -> Result<CommitResult> {
        let samples = std::mem::take(&mut self.samples);
        self.db.commit(&samples)
    }
}

#[cfg(test)]
mod tests;
