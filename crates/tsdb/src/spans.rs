//! The longest raw chunk of each partition, so that a read seeks straight
//! to the first chunk that can reach its range instead of walking every
//! chunk a series has in the partition (a day of them, for an instant
//! query at the end of the day).
//!
//! A chunk whose newest sample is at or after `mint` starts at or after
//! `mint - span`, where `span` bounds every chunk of the partition
//! (`max_t - min_t`). The bound is kept in `meta` under
//! [`keys::META_SPAN`] and only ever grows; it is raised in the same
//! RocksDB write as the chunk that raises it, so a chunk is never readable
//! with a bound too small for it. A partition without a record is read
//! from its start.
//!
//! Block chunks (an open partition's sealed chunks compacted into one
//! pcodec chunk per series and aligned block, see `Db::compact_blocks`)
//! do not raise the bound: each holds exactly the samples of its block, so
//! one that reaches `mint` starts at or after `mint`'s block. The time
//! before which blocks may be compacted, and their width, are kept under
//! [`keys::META_BLOCKS`], recorded before the first block chunk below it is
//! written, so a read's seek only ever starts earlier than it needs to.
//! Reads use the recorded width, so a changed `block` setting (or none)
//! still reads what an earlier one compacted.

use std::collections::HashMap;

use parking_lot::RwLock;
use rocksdb::{ColumnFamily, DB, IteratorMode, WriteBatch};

use crate::keys;
use crate::{Error, Result};

pub(crate) struct Spans {
    /// Partition width: no chunk spans more, so the bound of a partition
    /// without a record.
    width: i64,
    /// Read for every series a query reads; written rarely.
    known: RwLock<HashMap<i64, i64>>,
    /// Per partition, the time before which its chunks may be blocks, and
    /// the blocks' width.
    blocks: RwLock<HashMap<i64, (i64, i64)>>,
}

impl Spans {
    /// The bounds recorded in `meta`.
    pub(crate) fn load(rocks: &DB, meta: &ColumnFamily, width: i64) -> Result<Spans> {
        let int = |v: &[u8]| Some(i64::from_be_bytes(v.try_into().ok()?));
        // A record of one i64 was written before the width was kept: its
        // blocks' width is not known, so reads seek from the partition's
        // start and maintenance leaves the rest to the partition's close.
        let pair = |v: &[u8]| match v.len() {
            8 => Some((int(v)?, width)),
            _ => Some((int(v.get(..8)?)?, int(v.get(8..)?)?)),
        };
        Ok(Spans {
            width,
            known: RwLock::new(load_records(
                rocks,
                meta,
                keys::META_SPAN,
                "chunk span",
                int,
            )?),
            blocks: RwLock::new(load_records(rocks, meta, keys::META_BLOCKS, "block", pair)?),
        })
    }

    /// Whether any bound is recorded (a database written before bounds
    /// were kept has none).
    pub(crate) fn is_empty(&self) -> bool {
        self.known.read().is_empty()
    }

    /// Longest chunk of raw partition `p`, at most the partition width.
    pub(crate) fn get(&self, p: i64) -> i64 {
        self.known.read().get(&p).copied().unwrap_or(self.width)
    }

    /// Where a read of raw partition `p` from `mint` on starts: no chunk
    /// keyed before it holds a sample at or after `mint`.
    pub(crate) fn seek_from(&self, p: i64, mint: i64) -> i64 {
        let mint = mint.max(p);
        let mut from = mint.saturating_sub(self.get(p));
        if let Some((until, b)) = self.compacted(p)
            && mint < until
        {
            from = from.min(p + (mint - p).div_euclid(b) * b);
        }
        from.max(p)
    }

    /// The time before which partition `p`'s chunks may be blocks, and
    /// the blocks' width, if any were compacted.
    pub(crate) fn compacted(&self, p: i64) -> Option<(i64, i64)> {
        self.blocks.read().get(&p).copied()
    }

    /// Records that partition `p`'s chunks before `until` may be blocks of
    /// `width`, before any of them is written.
    pub(crate) fn claim_blocks(
        &self,
        rocks: &DB,
        meta: &ColumnFamily,
        p: i64,
        until: i64,
        width: i64,
    ) -> Result<()> {
        let mut blocks = self.blocks.write();
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&until.to_be_bytes());
        v[8..].copy_from_slice(&width.to_be_bytes());
        rocks
            .put_cf(meta, keys::blocks(p), v)
            .map_err(Error::rocks("recording compacted blocks"))?;
        blocks.insert(p, (until, width));
        Ok(())
    }

    /// Writes `batch`, which puts raw chunks of the given `(partition,
    /// max_t - min_t)`, adding the records of the bounds they raise.
    pub(crate) fn write(
        &self,
        rocks: &DB,
        meta: &ColumnFamily,
        mut batch: WriteBatch,
        chunks: impl IntoIterator<Item = (i64, i64)>,
        what: &'static str,
    ) -> Result<()> {
        let mut raise: Vec<(i64, i64)> = Vec::new();
        for (p, span) in chunks {
            match raise.iter_mut().find(|(q, _)| *q == p) {
                Some(e) => e.1 = e.1.max(span),
                None => raise.push((p, span)),
            }
        }
        let mut known = self.known.write();
        raise.retain(|(p, span)| known.get(p).is_none_or(|k| span > k));
        if raise.is_empty() {
            drop(known);
            return rocks.write(batch).map_err(Error::rocks(what));
        }
        // Held through the write: a smaller bound written concurrently
        // must not land after a larger one.
        for &(p, span) in &raise {
            batch.put_cf(meta, keys::span(p), span.to_be_bytes());
        }
        rocks.write(batch).map_err(Error::rocks(what))?;
        known.extend(raise);
        Ok(())
    }

    /// Records the widest bound for partitions written before bounds were
    /// kept.
    pub(crate) fn assume_widest(&self, rocks: &DB, meta: &ColumnFamily, ps: &[i64]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for &p in ps {
            batch.put_cf(meta, keys::span(p), self.width.to_be_bytes());
        }
        let mut known = self.known.write();
        rocks
            .write(batch)
            .map_err(Error::rocks("recording chunk spans"))?;
        known.extend(ps.iter().map(|&p| (p, self.width)));
        Ok(())
    }

    /// Forgets partition `p` (deleted by retention).
    pub(crate) fn forget(&self, rocks: &DB, meta: &ColumnFamily, p: i64) -> Result<()> {
        let mut known = self.known.write();
        let mut blocks = self.blocks.write();
        let mut batch = WriteBatch::default();
        batch.delete_cf(meta, keys::span(p));
        batch.delete_cf(meta, keys::blocks(p));
        rocks
            .write(batch)
            .map_err(Error::rocks("deleting a chunk span"))?;
        known.remove(&p);
        blocks.remove(&p);
        Ok(())
    }
}

/// The records under `prefix` in `meta`, by partition, each value read by
/// `parse`.
fn load_records<T>(
    rocks: &DB,
    meta: &ColumnFamily,
    prefix: &[u8],
    what: &str,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Result<HashMap<i64, T>> {
    let mut out = HashMap::new();
    for item in rocks.iterator_cf(
        meta,
        IteratorMode::From(prefix, rocksdb::Direction::Forward),
    ) {
        let (k, v) = item.map_err(Error::rocks("reading partition records"))?;
        if !k.starts_with(prefix) {
            break;
        }
        let corrupt = || Error::Corrupt {
            what: format!("{what} record"),
        };
        let p = keys::parse_partition_meta(prefix, &k).ok_or_else(corrupt)?;
        out.insert(p, parse(&v).ok_or_else(corrupt)?);
    }
    Ok(out)
}
