//! tiermon's time-series engine, used by every tier.
//!
//! [`Db`] keeps recent data in the **head** (every series in memory with an
//! open Gorilla chunk and an out-of-order buffer, plus the postings index)
//! and everything sealed in **RocksDB**. An [`Appender`] adds samples by
//! label set or, on the hot path, by the [`SeriesRef`] returned the first
//! time; [`Appender::commit`] writes them to the **write-ahead log** before
//! returning, so an acknowledged sample survives the process being killed.
//! [`Db::checkpoint`] writes the head to RocksDB and drops the WAL before it,
//! which keeps restarts short.
//!
//! Reads ([`Db::select`]) resolve label matchers through the postings and
//! merge, per series, sealed chunks from RocksDB with the head: one sorted
//! run of samples per series, where a later write of a timestamp wins.
//!
//! [`Db::maintain`] runs the background work: compaction of finished
//! partitions into pcodec chunks, downsampling (raw → 1 m → 1 h aggregates
//! that keep min, max, sum, count, last and a reset-adjusted counter) and
//! retention by age and size, which drops whole partitions with range
//! deletes. With [`BlobOptions`], partitions older than a set age move to
//! blob storage (a local folder or S3 through `object_store`) as immutable
//! blocks, removed locally only once the upload reads back intact; reads
//! reach them transparently through a bounded cache.

mod db;
mod downsample;
mod head;
mod index;
mod keys;
mod labelsets;
mod spans;
mod tier;
mod wal;

pub use db::{
    Appender, CommitResult, Db, Gauges, MaintainReport, SeriesData, SeriesSamples, Stats, WalBatch,
};
pub use downsample::{Aggregate, Resolution};

/// Aggregates time-ordered samples into windows of `window_ms`, as the
/// storage's own downsampling does (staleness markers skipped, counter
/// resets compensated within the samples given).
pub fn downsample(samples: &[(i64, f64)], window_ms: i64) -> Vec<Aggregate> {
    downsample::aggregate(samples, window_ms.max(1), &mut (0.0, None))
}
pub use head::{SampleError, SeriesRef};
pub use tier::{BlobOptions, open_store};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Width of a time partition: chunks never span one, and retention,
    /// compaction and tiering work on whole partitions.
    pub partition: Duration,
    /// Width of the blocks an open partition is compacted into: once a
    /// block is older than the out-of-order window, each series' sealed
    /// chunks in it become one pcodec chunk, so that long reads decode a
    /// few large chunks, not hundreds of small ones. A closed partition
    /// becomes one chunk per series paged by block, so that a short read
    /// of an old day decodes a block or two, not the day. Divides
    /// `partition`; zero (or a partition's width or more) leaves open
    /// partitions as written until they close, and pages nothing.
    pub block: Duration,
    /// Samples per head chunk before it is sealed.
    pub chunk_samples: usize,
    /// Encoded bytes of an open head chunk before it is sealed and written
    /// out: with thousands of series per host fleet, the open chunks are
    /// most of the head's memory.
    pub chunk_bytes: usize,
    /// How far behind a series' newest sample a sample may arrive and still
    /// be accepted (out of order, or rewriting a timestamp).
    pub ooo_window: Duration,
    /// How long a series may go without a sample before it leaves the
    /// head (its data stays on disk, found through the index there; a new
    /// sample brings it back). At least `ooo_window`.
    pub series_idle: Duration,
    /// Size at which the WAL starts a new segment.
    pub wal_segment_bytes: u64,
    /// Sync the WAL to disk before acknowledging a commit (survives power
    /// loss, not just process death), at a cost in throughput.
    pub wal_fsync: bool,
    /// How long to keep raw samples.
    pub retention_raw: Duration,
    /// How long to keep 1-minute aggregates.
    pub retention_1m: Duration,
    /// How long to keep 1-hour aggregates.
    pub retention_1h: Duration,
    /// Upper bound of the data on disk; the oldest partitions go first.
    pub max_bytes: Option<u64>,
    /// Most series the database holds.
    pub max_series: usize,
    /// Most labels per series.
    pub max_labels_per_series: usize,
    /// Longest label name, in bytes.
    pub max_label_name_len: usize,
    /// Longest label value, in bytes.
    pub max_label_value_len: usize,
    /// Most samples in one commit.
    pub max_samples_per_commit: usize,
    /// Tiering of old partitions to blob storage; `None` keeps everything
    /// in RocksDB.
    pub blob: Option<BlobOptions>,
    /// Bytes of RocksDB's cache of uncompressed chunk blocks: dashboards
    /// re-read the same recent blocks, and a miss costs a read and a
    /// decompression.
    pub block_cache_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            partition: Duration::from_secs(24 * 3600),
            block: Duration::from_secs(2 * 3600),
            chunk_samples: 120,
            chunk_bytes: 128,
            ooo_window: Duration::from_secs(3600),
            series_idle: Duration::from_secs(3 * 3600),
            wal_segment_bytes: 64 << 20,
            wal_fsync: false,
            retention_raw: Duration::from_secs(15 * 24 * 3600),
            retention_1m: Duration::from_secs(90 * 24 * 3600),
            retention_1h: Duration::from_secs(2 * 365 * 24 * 3600),
            max_bytes: None,
            max_series: 20_000_000,
            max_labels_per_series: 64,
            max_label_name_len: 1024,
            max_label_value_len: 4096,
            max_samples_per_commit: 10_000_000,
            blob: None,
            block_cache_bytes: 128 << 20,
        }
    }
}

impl Options {
    pub(crate) fn partition_ms(&self) -> i64 {
        (self.partition.as_millis() as i64).max(1)
    }

    /// The block width, if open partitions are compacted in blocks.
    pub(crate) fn block_ms(&self) -> Option<i64> {
        let b = self.block.as_millis() as i64;
        (b > 0 && b < self.partition_ms()).then_some(b)
    }

    pub(crate) fn ooo_window_ms(&self) -> i64 {
        self.ooo_window.as_millis() as i64
    }
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// RocksDB failed.
    #[error("{what}: {source}")]
    Rocks {
        /// What was being done.
        what: &'static str,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// Stored data does not decode.
    #[error("corrupt data in {what}")]
    Corrupt {
        /// Which data.
        what: String,
    },
    /// A limit was reached; the message names it.
    #[error("limit {limit} ({value}) reached: {detail}")]
    Limit {
        /// The option, e.g. `max_series`.
        limit: &'static str,
        /// Its value.
        value: usize,
        /// What hit it.
        detail: String,
    },
    /// A label set is not acceptable.
    #[error("invalid series {series}: {reason}")]
    InvalidSeries {
        /// The series as given.
        series: String,
        /// Why.
        reason: String,
    },
    /// The blob store failed.
    #[error("{what} {path}: {source}")]
    Blob {
        /// What was being done.
        what: &'static str,
        /// The object or store.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// An uploaded block did not read back as written.
    #[error("verifying uploaded block {path}: {detail}")]
    BlobVerify {
        /// The object.
        path: String,
        /// What differed.
        detail: String,
    },
    /// An option is not acceptable; `key` names it.
    #[error("invalid storage option {key}: {detail}")]
    Config {
        /// The option.
        key: &'static str,
        /// Why.
        detail: String,
    },
    /// An unknown series reference.
    #[error("unknown series reference {0}")]
    UnknownRef(SeriesRef),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn rocks(what: &'static str) -> impl FnOnce(rocksdb::Error) -> Self {
        move |source| Error::Rocks { what, source }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
