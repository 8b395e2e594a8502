//! Tiering of old partitions to blob storage through `object_store`.
//!
//! A closed partition of one resolution older than [`BlobOptions::after`]
//! is written as one immutable **block** object, read back and checked,
//! and only then removed from RocksDB, in the same write that records the
//! block in the manifest (`meta` column family). Reads that reach a tiered
//! partition fetch the block's index once and then only the byte ranges of
//! the series they need, through a cache bounded in bytes.
//!
//! Block layout (integers little-endian):
//!
//! ```text
//! "TMBLK1" | resolution u8 | partition i64
//! per series: uvarint chunks, then per chunk: seq u64 | min_t i64 | bytes(chunk value)
//! index: uvarint series, then per series: ref u32 | offset u64 | len u32 | crc32 u32 | bytes(labels)
//! footer: index offset u64 | index len u64 | index crc32 u32 | "TMB1"
//! ```
//!
//! Object names are deterministic — `<prefix>/<resolution>/<partition>/<generation>.tmb` —
//! so an upload retried after a crash overwrites its own earlier attempt
//! instead of leaving an orphan. A partition that receives late samples
//! after it was tiered gets a further generation.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parking_lot::{Mutex, RwLock};
use rand::Rng;

use crate::head::SeriesRef;
use crate::wal::{get_bytes, get_uvarint, put_bytes, put_uvarint};
use crate::{Error, Result};

const MAGIC: &[u8; 6] = b"TMBLK1";
const FOOTER_MAGIC: &[u8; 4] = b"TMB1";
const FOOTER_LEN: u64 = 24;
/// Blocks up to this size go up in one PUT; larger ones in parts.
const SINGLE_PUT_MAX: u64 = 32 << 20;
const PART_BYTES: usize = 16 << 20;

/// Where and when old partitions go to blob storage.
#[derive(Clone)]
pub struct BlobOptions {
    /// The store: a local folder, S3 or any `object_store` backend.
    pub store: Arc<dyn ObjectStore>,
    /// Path inside the store under which this database writes its blocks.
    pub prefix: String,
    /// Age (from a partition's end) after which it moves to the store.
    /// Must cover the partition width plus the out-of-order window, so that
    /// a partition is closed and downsampled before it leaves.
    pub after: Duration,
    /// Bytes of block indexes and series data kept in memory for reads.
    pub cache_bytes: usize,
    /// Attempts per upload in one maintenance run, with exponential
    /// backoff and jitter between them; a partition whose upload still
    /// fails stays local and is tried again at the next run.
    pub upload_attempts: u32,
}

impl std::fmt::Debug for BlobOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobOptions")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .field("after", &self.after)
            .field("cache_bytes", &self.cache_bytes)
            .field("upload_attempts", &self.upload_attempts)
            .finish()
    }
}

impl BlobOptions {
    /// Options with the defaults for everything but the store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            prefix: "tiermon".into(),
            after: Duration::from_secs(3 * 24 * 3600),
            cache_bytes: 256 << 20,
            upload_attempts: 5,
        }
    }
}

/// Opens the store at `location`: a URL `object_store` knows (`s3://bucket`,
/// `file:///path`, …) with its options (for S3: `endpoint`, `region`,
/// `access_key_id`, `secret_access_key`, `allow_http`, …), or a plain folder
/// path, created if missing.
pub fn open_store<I, K, V>(location: &str, options: I) -> Result<Arc<dyn ObjectStore>>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let store_err = |source| Error::Blob {
        what: "opening the blob store",
        path: location.to_owned(),
        source,
    };
    if !location.contains("://") {
        let dir = PathBuf::from(location);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("creating the blob folder", &dir, e))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(store_err)?;
        return Ok(Arc::new(fs));
    }
    let url = url::Url::parse(location).map_err(|e| Error::Config {
        key: "blob.location",
        detail: format!("{location:?} is not a URL: {e}"),
    })?;
    let (store, path): (Arc<dyn ObjectStore>, String) = match url.scheme() {
        "s3" | "s3a" => {
            // A query must not hang for minutes on a dead store: a few
            // quick retries here, and the tier's own retries for uploads.
            let retry = object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            };
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(location)
                .with_retry(retry);
            for (k, v) in options {
                let key = k
                    .as_ref()
                    .parse::<object_store::aws::AmazonS3ConfigKey>()
                    .map_err(|e| Error::Config {
                        key: "blob.options",
                        detail: format!("{}: {e}", k.as_ref()),
                    })?;
                b = b.with_config(key, v);
            }
            let store = b.build().map_err(store_err)?;
            (Arc::new(store), url.path().trim_matches('/').to_owned())
        }
        _ => {
            let (store, path) = object_store::parse_url_opts(&url, options).map_err(store_err)?;
            (Arc::from(store), path.as_ref().to_owned())
        }
    };
    if path.is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store,
            ObjPath::from(path.as_str()),
        )))
    }
}

/// A block in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockMeta {
    pub generation: u32,
    pub size: u64,
    pub crc: u32,
}

/// One stored chunk of a series, as read back from a block.
#[derive(Debug, Clone)]
pub(crate) struct StoredChunk {
    pub seq: u64,
    pub min_t: i64,
    /// The chunk value exactly as RocksDB held it.
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    len: u32,
    crc: u32,
}

type Index = HashMap<SeriesRef, IndexEntry>;

#[derive(Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Index(String),
    Series(String, SeriesRef),
}

#[derive(Clone)]
enum Cached {
    Index(Arc<Index>),
    Series(Bytes),
}

/// Least-recently-used cache bounded in bytes.
struct Cache {
    cap: usize,
    used: usize,
    tick: u64,
    map: HashMap<CacheKey, (Cached, usize, u64)>,
    order: BTreeMap<u64, CacheKey>,
}

impl Cache {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            used: 0,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn get(&mut self, k: &CacheKey) -> Option<Cached> {
        self.tick += 1;
        let tick = self.tick;
        let (v, _, t) = self.map.get_mut(k)?;
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, k.clone());
        Some(v.clone())
    }

    fn put(&mut self, k: CacheKey, v: Cached, size: usize) {
        if size > self.cap {
            return;
        }
        self.remove(&k);
        while self.used + size > self.cap {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, s, _)) = self.map.remove(&old) {
                self.used -= s;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, k.clone());
        self.map.insert(k, (v, size, self.tick));
        self.used += size;
    }

    fn remove(&mut self, k: &CacheKey) {
        if let Some((_, s, t)) = self.map.remove(k) {
            self.order.remove(&t);
            self.used -= s;
        }
    }

    fn remove_block(&mut self, path: &str) {
        let keys: Vec<CacheKey> = self
            .map
            .keys()
            .filter(|k| match k {
                CacheKey::Index(p) | CacheKey::Series(p, _) => p == path,
            })
            .cloned()
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

/// A tokio runtime for the store's async API, callable from any thread
/// (inside or outside another runtime) and dropped without blocking.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The blob tier of one database.
pub(crate) struct Tier {
    rt: Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    pub after_ms: i64,
    attempts: u32,
    cache: Mutex<Cache>,
    manifest: RwLock<BTreeMap<(u8, i64), Vec<BlockMeta>>>,
}

impl Tier {
    pub fn new(opts: &BlobOptions, manifest: BTreeMap<(u8, i64), Vec<BlockMeta>>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tiermon-blob")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the blob runtime", std::path::Path::new(""), e))?;
        Ok(Self {
            rt: Runtime(Some(rt)),
            store: opts.store.clone(),
            prefix: opts.prefix.trim_matches('/').to_owned(),
            after_ms: opts.after.as_millis() as i64,
            attempts: opts.upload_attempts.max(1),
            cache: Mutex::new(Cache::new(opts.cache_bytes)),
            manifest: RwLock::new(manifest),
        })
    }

    /// Runs `fut` on the blob runtime and waits for it.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let rt = self.rt.0.as_ref().ok_or_else(|| Error::Corrupt {
            what: "blob runtime stopped".into(),
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| Error::Corrupt {
            what: "blob task ended without an answer".into(),
        })
    }

    pub fn path(&self, res: u8, p: i64, generation: u32) -> String {
        let name = format!("{}/{p}/{generation:06}.tmb", res_name(res));
        if self.prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    pub fn blocks(&self, res: u8, p: i64) -> Vec<BlockMeta> {
        self.manifest
            .read()
            .get(&(res, p))
            .cloned()
            .unwrap_or_default()
    }

    pub fn has(&self, res: u8, p: i64) -> bool {
        self.manifest.read().contains_key(&(res, p))
    }

    pub fn partitions(&self, res: u8) -> Vec<i64> {
        self.manifest
            .read()
            .keys()
            .filter(|(r, _)| *r == res)
            .map(|&(_, p)| p)
            .collect()
    }

    /// (blocks, bytes) in the store.
    pub fn totals(&self) -> (usize, u64) {
        let m = self.manifest.read();
        let blocks = m.values().map(Vec::len).sum();
        let bytes = m.values().flatten().map(|b| b.size).sum();
        (blocks, bytes)
    }

    pub fn next_generation(&self, res: u8, p: i64) -> u32 {
        self.blocks(res, p)
            .iter()
            .map(|b| b.generation + 1)
            .max()
            .unwrap_or(0)
    }

    pub fn record(&self, res: u8, p: i64, meta: BlockMeta) {
        self.manifest
            .write()
            .entry((res, p))
            .or_default()
            .push(meta);
    }

    pub fn forget(&self, res: u8, p: i64) -> Vec<BlockMeta> {
        let removed = self.manifest.write().remove(&(res, p)).unwrap_or_default();
        let mut cache = self.cache.lock();
        for b in &removed {
            cache.remove_block(&self.path(res, p, b.generation));
        }
        removed
    }

    /// Uploads the block in `file` to `path`, retrying with backoff, and
    /// verifies it by reading it back. Returns only once the stored object
    /// has the size and checksum of the file.
    pub fn upload(&self, path: &str, file: &std::path::Path, size: u64, crc: u32) -> Result<()> {
        let mut last = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                let base = 100u64 << attempt.min(6);
                let jitter = rand::rng().random_range(0..=base / 2);
                std::thread::sleep(Duration::from_millis((base + jitter).min(10_000)));
            }
            match self
                .put_file(path, file, size)
                .and_then(|()| self.verify(path, size, crc))
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(path, attempt = attempt + 1, error = %e, "block upload failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Corrupt {
            what: "no upload attempt".into(),
        }))
    }

    fn put_file(&self, path: &str, file: &std::path::Path, size: u64) -> Result<()> {
        let mut f =
            std::fs::File::open(file).map_err(|e| Error::io("opening a block file", file, e))?;
        let store = self.store.clone();
        let loc = ObjPath::from(path);
        let blob_err = |source| Error::Blob {
            what: "uploading a block",
            path: path.to_owned(),
            source,
        };
        if size <= SINGLE_PUT_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| Error::io("reading a block file", file, e))?;
            self.run(async move { store.put(&loc, PutPayload::from(buf)).await })?
                .map_err(blob_err)?;
            return Ok(());
        }
        let upload = self
            .run({
                let store = store.clone();
                let loc = loc.clone();
                async move { store.put_multipart(&loc).await }
            })?
            .map_err(blob_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; PART_BYTES];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error::io("reading a block file", file, e))?;
            if n == 0 {
                break;
            }
            let part = Bytes::copy_from_slice(&buf[..n]);
            // Back-pressure: at most two parts in flight.
            writer = self
                .run(async move {
                    writer.wait_for_capacity(2).await.map(|()| {
                        writer.put(part);
                        writer
                    })
                })?
                .map_err(blob_err)?;
        }
        self.run(async move { writer.finish().await })?
            .map_err(blob_err)?;
        Ok(())
    }

    fn verify(&self, path: &str, size: u64, crc: u32) -> Result<()> {
        let store = self.store.clone();
        let loc = ObjPath::from(path);
        let verify_err = |detail: String| Error::BlobVerify {
            path: path.to_owned(),
            detail,
        };
        let meta = self
            .run({
                let store = store.clone();
                let loc = loc.clone();
                async move { store.head(&loc).await }
            })?
            .map_err(|source| Error::Blob {
                what: "checking an uploaded block",
                path: path.to_owned(),
                source,
            })?;
        if meta.size != size {
            return Err(verify_err(format!(
                "stored size {} differs from the {size} bytes written",
                meta.size
            )));
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut off = 0u64;
        while off < size {
            let end = (off + PART_BYTES as u64).min(size);
            let store = store.clone();
            let loc = loc.clone();
            let bytes = self
                .run(async move { store.get_range(&loc, off..end).await })?
                .map_err(|source| Error::Blob {
                    what: "reading back an uploaded block",
                    path: path.to_owned(),
                    source,
                })?;
            hasher.update(&bytes);
            off = end;
        }
        let got = hasher.finalize();
        if got != crc {
            return Err(verify_err(format!(
                "checksum {got:08x} read back, {crc:08x} written"
            )));
        }
        Ok(())
    }

    /// Deletes the objects of `blocks` (already removed from the manifest).
    pub fn delete(&self, res: u8, p: i64, blocks: &[BlockMeta]) -> Result<()> {
        for b in blocks {
            let path = self.path(res, p, b.generation);
            let store = self.store.clone();
            let loc = ObjPath::from(path.as_str());
            match self.run(async move { store.delete(&loc).await })? {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(Error::Blob {
                        what: "deleting a block",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn get_ranges(&self, path: &str, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>> {
        let store = self.store.clone();
        let loc = ObjPath::from(path);
        self.run(async move { store.get_ranges(&loc, &ranges).await })?
            .map_err(|source| Error::Blob {
                what: "reading a block",
                path: path.to_owned(),
                source,
            })
    }

    fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let store = self.store.clone();
        let loc = ObjPath::from(path);
        self.run(async move { store.get_range(&loc, range).await })?
            .map_err(|source| Error::Blob {
                what: "reading a block",
                path: path.to_owned(),
                source,
            })
    }

    fn index(&self, path: &str, meta: &BlockMeta) -> Result<Arc<Index>> {
        let key = CacheKey::Index(path.to_owned());
        if let Some(Cached::Index(i)) = self.cache.lock().get(&key) {
            return Ok(i);
        }
        let corrupt = |what: &str| Error::Corrupt {
            what: format!("block {path}: {what}"),
        };
        if meta.size < FOOTER_LEN + MAGIC.len() as u64 {
            return Err(corrupt("too short"));
        }
        let f = self.get_range(path, meta.size - FOOTER_LEN..meta.size)?;
        if f.len() != FOOTER_LEN as usize || &f[20..24] != FOOTER_MAGIC {
            return Err(corrupt("bad footer"));
        }
        let off = u64::from_le_bytes(f[0..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(f[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(f[16..20].try_into().unwrap_or_default());
        if off.checked_add(len) != Some(meta.size - FOOTER_LEN) {
            return Err(corrupt("index out of bounds"));
        }
        let raw = self.get_range(path, off..off + len)?;
        if crc32fast::hash(&raw) != crc {
            return Err(corrupt("index checksum mismatch"));
        }
        let index = Arc::new(parse_index(&raw).ok_or_else(|| corrupt("index does not decode"))?);
        self.cache
            .lock()
            .put(key, Cached::Index(index.clone()), 64 + index.len() * 32);
        Ok(index)
    }

    /// Chunks of `refs` in the tiered partition `(res, p)`, across all its
    /// blocks. Series data not in the cache is fetched with one ranged
    /// request per block (coalesced by `object_store`).
    pub fn read(
        &self,
        res: u8,
        p: i64,
        refs: &[SeriesRef],
    ) -> Result<HashMap<SeriesRef, Vec<StoredChunk>>> {
        let mut out: HashMap<SeriesRef, Vec<StoredChunk>> = HashMap::new();
        for meta in self.blocks(res, p) {
            let path = self.path(res, p, meta.generation);
            let index = self.index(&path, &meta)?;
            let mut missing = Vec::new();
            let mut found = Vec::new();
            {
                let mut cache = self.cache.lock();
                for &r in refs {
                    let Some(e) = index.get(&r) else { continue };
                    match cache.get(&CacheKey::Series(path.clone(), r)) {
                        Some(Cached::Series(b)) => found.push((r, b)),
                        _ => missing.push((r, *e)),
                    }
                }
            }
            if !missing.is_empty() {
                let ranges = missing
                    .iter()
                    .map(|(_, e)| e.offset..e.offset + u64::from(e.len))
                    .collect();
                let got = self.get_ranges(&path, ranges)?;
                let mut cache = self.cache.lock();
                for ((r, e), b) in missing.into_iter().zip(got) {
                    if b.len() != e.len as usize || crc32fast::hash(&b) != e.crc {
                        return Err(Error::Corrupt {
                            what: format!("block {path}: checksum mismatch in series {r}"),
                        });
                    }
                    cache.put(
                        CacheKey::Series(path.clone(), r),
                        Cached::Series(b.clone()),
                        b.len() + 64,
                    );
                    found.push((r, b));
                }
            }
            for (r, b) in found {
                let chunks = parse_series(&b).ok_or_else(|| Error::Corrupt {
                    what: format!("block {path}: series {r} does not decode"),
                })?;
                out.entry(r).or_default().extend(chunks);
            }
        }
        Ok(out)
    }
}

fn res_name(res: u8) -> &'static str {
    match res {
        0 => "raw",
        1 => "1m",
        2 => "1h",
        _ => "other",
    }
}

fn parse_index(mut b: &[u8]) -> Option<Index> {
    let n = get_uvarint(&mut b)? as usize;
    let mut out = HashMap::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let (head, rest) = b.split_at_checked(20)?;
        b = rest;
        let r = u32::from_le_bytes(head[0..4].try_into().ok()?);
        let offset = u64::from_le_bytes(head[4..12].try_into().ok()?);
        let len = u32::from_le_bytes(head[12..16].try_into().ok()?);
        let crc = u32::from_le_bytes(head[16..20].try_into().ok()?);
        get_bytes(&mut b)?; // labels: for readers without the local index
        out.insert(r, IndexEntry { offset, len, crc });
    }
    Some(out)
}

fn parse_series(mut b: &[u8]) -> Option<Vec<StoredChunk>> {
    let n = get_uvarint(&mut b)? as usize;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let (head, rest) = b.split_at_checked(16)?;
        b = rest;
        let seq = u64::from_le_bytes(head[0..8].try_into().ok()?);
        let min_t = i64::from_le_bytes(head[8..16].try_into().ok()?);
        let value = get_bytes(&mut b)?.to_vec();
        out.push(StoredChunk { seq, min_t, value });
    }
    Some(out)
}

/// Writes a block to a local file, series by series.
pub(crate) struct BlockWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hasher: crc32fast::Hasher,
    offset: u64,
    index: Vec<u8>,
    series: u64,
}

impl BlockWriter {
    pub fn create(path: PathBuf, res: u8, p: i64) -> Result<Self> {
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::io("creating a block file", &path, e))?;
        let mut w = Self {
            path,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: crc32fast::Hasher::new(),
            offset: 0,
            index: Vec::new(),
            series: 0,
        };
        let mut header = MAGIC.to_vec();
        header.push(res);
        header.extend_from_slice(&p.to_le_bytes());
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.file
            .write_all(b)
            .map_err(|e| Error::io("writing a block file", &self.path, e))?;
        self.hasher.update(b);
        self.offset += b.len() as u64;
        Ok(())
    }

    /// Adds a series with its chunks `(seq, min_t, value)`.
    pub fn add(&mut self, r: SeriesRef, labels: &[u8], chunks: &[(u64, i64, &[u8])]) -> Result<()> {
        let mut rec = Vec::new();
        put_uvarint(&mut rec, chunks.len() as u64);
        for (seq, min_t, value) in chunks {
            rec.extend_from_slice(&seq.to_le_bytes());
            rec.extend_from_slice(&min_t.to_le_bytes());
            put_bytes(&mut rec, value);
        }
        let len = u32::try_from(rec.len()).map_err(|_| Error::Corrupt {
            what: format!("series {r} has more than 4 GiB in one partition"),
        })?;
        self.index.extend_from_slice(&r.to_le_bytes());
        self.index.extend_from_slice(&self.offset.to_le_bytes());
        self.index.extend_from_slice(&len.to_le_bytes());
        self.index
            .extend_from_slice(&crc32fast::hash(&rec).to_le_bytes());
        put_bytes(&mut self.index, labels);
        self.series += 1;
        self.write(&rec)
    }

    /// Writes the index and footer; returns (size, crc32 of the file).
    pub fn finish(mut self) -> Result<(u64, u32)> {
        let mut index = Vec::with_capacity(self.index.len() + 10);
        put_uvarint(&mut index, self.series);
        index.extend_from_slice(&std::mem::take(&mut self.index));
        let index_off = self.offset;
        self.write(&index)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.extend_from_slice(&index_off.to_le_bytes());
        footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
        footer.extend_from_slice(&crc32fast::hash(&index).to_le_bytes());
        footer.extend_from_slice(FOOTER_MAGIC);
        self.write(&footer)?;
        self.file
            .flush()
            .map_err(|e| Error::io("writing a block file", &self.path, e))?;
        Ok((self.offset, self.hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_evicts_least_recently_used_within_its_bound() {
        let mut c = Cache::new(100);
        let key = |r| CacheKey::Series("b".into(), r);
        let val = || Cached::Series(Bytes::from_static(b"x"));
        c.put(key(1), val(), 40);
        c.put(key(2), val(), 40);
        assert!(c.get(&key(1)).is_some()); // 2 is now the oldest
        c.put(key(3), val(), 40);
        assert!(c.get(&key(2)).is_none());
        assert!(c.get(&key(1)).is_some() && c.get(&key(3)).is_some());
        assert_eq!(c.used, 80);
        c.put(key(4), val(), 1000); // larger than the cache: not kept
        assert!(c.get(&key(4)).is_none());
        c.remove_block("b");
        assert_eq!((c.used, c.map.len(), c.order.len()), (0, 0, 0));
    }

    #[test]
    fn block_round_trips_through_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(
            dir.path().join("blobs").to_str().unwrap(),
            std::iter::empty::<(&str, &str)>(),
        )
        .unwrap();
        let tier = Tier::new(&BlobOptions::new(store), BTreeMap::new()).unwrap();
        let file = dir.path().join("b.tmb");
        let mut w = BlockWriter::create(file.clone(), 0, 86_400_000).unwrap();
        w.add(3, b"l3", &[(7, 10, b"abc"), (9, 20, b"defg")])
            .unwrap();
        w.add(5, b"l5", &[(1, 0, b"")]).unwrap();
        let (size, crc) = w.finish().unwrap();
        assert_eq!(size, std::fs::metadata(&file).unwrap().len());
        let path = tier.path(0, 86_400_000, 0);
        tier.upload(&path, &file, size, crc).unwrap();
        // A wrong checksum is caught by verification.
        let err = tier.verify(&path, size, crc ^ 1).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        tier.record(
            0,
            86_400_000,
            BlockMeta {
                generation: 0,
                size,
                crc,
            },
        );
        let got = tier.read(0, 86_400_000, &[3, 4, 5]).unwrap();
        assert_eq!(got.len(), 2);
        let s3: Vec<_> = got[&3]
            .iter()
            .map(|c| (c.seq, c.min_t, c.value.clone()))
            .collect();
        assert_eq!(
            s3,
            vec![(7, 10, b"abc".to_vec()), (9, 20, b"defg".to_vec())]
        );
        assert_eq!(got[&5].len(), 1);
        // Second read is served from the cache, even with the object gone.
        std::fs::remove_dir_all(dir.path().join("blobs")).unwrap();
        assert_eq!(tier.read(0, 86_400_000, &[3]).unwrap()[&3].len(), 2);
    }
}
