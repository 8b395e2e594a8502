//! The index on disk, in the `index` column family: per time partition,
//! the postings of every label pair (which series have data in the
//! partition), and, across partitions, series by label hash. It is what
//! finds a series once the head has evicted it, so the head needs to hold
//! only the series that are still active.
//!
//! Keys (see ARCHITECTURE.md, "On-disk format"):
//! - `'p' | partition (8, sign-flipped BE) | name | 0xFF | value` → refs;
//! - `'p' | partition | 0xFF` → every ref of the partition;
//! - `'h' | label hash (8, BE)` → refs with that hash.
//!
//! 0xFF never occurs in UTF-8, so it ends a name unambiguously and the
//! values of one name are one contiguous range. A value is a sorted list
//! of refs (delta varints); writers only ever add to a list with a merge
//! operand, and the merge operator takes the union, so adding a series
//! twice (after a restart, or a retried write) changes nothing.

use std::collections::BTreeMap;

use rocksdb::{ColumnFamily, DB, MergeOperands, WriteBatch};
use tiermon_model::{Labels, MatchOp, Matcher};

use crate::head::{SeriesRef, difference, intersect, literal_prefix};
use crate::keys::flip;
use crate::wal::{get_uvarint, put_uvarint};
use crate::{Error, Result};

pub(crate) const CF_INDEX: &str = "index";

const POSTINGS: u8 = b'p';
const HASH: u8 = b'h';
const END: u8 = 0xFF;

/// Options of the column family: lz4, and the union merge operator.
pub(crate) fn options() -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_merge_operator_associative("tiermon.refs_union", merge_refs);
    o
}

fn partition_key(p: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.push(POSTINGS);
    k.extend_from_slice(&flip(p));
    k
}

fn name_key(p: i64, name: &str) -> Vec<u8> {
    let mut k = partition_key(p);
    k.extend_from_slice(name.as_bytes());
    k.push(END);
    k
}

fn postings_key(p: i64, name: &str, value: &str) -> Vec<u8> {
    let mut k = name_key(p, name);
    k.extend_from_slice(value.as_bytes());
    k
}

fn all_key(p: i64) -> Vec<u8> {
    let mut k = partition_key(p);
    k.push(END);
    k
}

fn hash_key(h: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = HASH;
    k[1..].copy_from_slice(&h.to_be_bytes());
    k
}

/// Encodes refs (ascending, distinct) as delta varints.
pub(crate) fn encode_refs(refs: &[SeriesRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * 2);
    let mut prev = 0u32;
    for (i, &r) in refs.iter().enumerate() {
        let d = if i == 0 { r } else { r - prev };
        put_uvarint(&mut out, u64::from(d));
        prev = r;
    }
    out
}

/// Decodes what [`encode_refs`] wrote; `None` if it is damaged.
pub(crate) fn decode_refs(mut b: &[u8]) -> Option<Vec<SeriesRef>> {
    let mut out = Vec::with_capacity(b.len());
    let mut prev = 0u64;
    while !b.is_empty() {
        let d = get_uvarint(&mut b)?;
        let r = if out.is_empty() {
            d
        } else {
            prev.checked_add(d)?
        };
        if r > u64::from(u32::MAX) || (!out.is_empty() && d == 0) {
            return None;
        }
        out.push(r as u32);
        prev = r;
    }
    Some(out)
}

/// The merge operator: the union of the lists. A damaged list fails the
/// merge, which RocksDB reports as corruption on the read.
fn merge_refs(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut all: Vec<SeriesRef> = match existing {
        Some(e) => decode_refs(e)?,
        None => Vec::new(),
    };
    let mut sorted = true;
    for op in operands {
        let refs = decode_refs(op)?;
        sorted &= all
            .last()
            .is_none_or(|&l| refs.first().is_none_or(|&f| f > l));
        all.extend(refs);
    }
    if !sorted {
        all.sort_unstable();
        all.dedup();
    }
    Some(encode_refs(&all))
}

/// Adds `series` (refs with their labels) to partition `p`'s index, in
/// `batch`.
pub(crate) fn add(
    batch: &mut WriteBatch,
    cf: &ColumnFamily,
    p: i64,
    series: &[(SeriesRef, Labels)],
) {
    if series.is_empty() {
        return;
    }
    let mut lists: BTreeMap<(&str, &str), Vec<SeriesRef>> = BTreeMap::new();
    let mut all: Vec<SeriesRef> = Vec::with_capacity(series.len());
    for (r, labels) in series {
        all.push(*r);
        for l in labels {
            lists.entry((&l.name, &l.value)).or_default().push(*r);
        }
    }
    for ((n, v), mut refs) in lists {
        refs.sort_unstable();
        refs.dedup();
        batch.merge_cf(cf, postings_key(p, n, v), encode_refs(&refs));
    }
    all.sort_unstable();
    all.dedup();
    batch.merge_cf(cf, all_key(p), encode_refs(&all));
}

/// Records that series `r` has label hash `h`, in `batch`.
pub(crate) fn add_hash(batch: &mut WriteBatch, cf: &ColumnFamily, h: u64, r: SeriesRef) {
    batch.merge_cf(cf, hash_key(h), encode_refs(&[r]));
}

/// Series recorded with label hash `h`.
pub(crate) fn by_hash(rocks: &DB, cf: &ColumnFamily, h: u64) -> Result<Vec<SeriesRef>> {
    get_refs(rocks, cf, &hash_key(h), "series by hash")
}

/// Every series with data in partition `p`.
pub(crate) fn all(rocks: &DB, cf: &ColumnFamily, p: i64) -> Result<Vec<SeriesRef>> {
    get_refs(rocks, cf, &all_key(p), "series of a partition")
}

fn get_refs(rocks: &DB, cf: &ColumnFamily, key: &[u8], what: &str) -> Result<Vec<SeriesRef>> {
    match rocks
        .get_pinned_cf(cf, key)
        .map_err(Error::rocks("reading the index"))?
    {
        None => Ok(Vec::new()),
        Some(v) => decode_refs(&v).ok_or_else(|| Error::Corrupt {
            what: format!("index: {what}"),
        }),
    }
}

/// Deletes partition `p`'s postings.
pub(crate) fn delete_partition(rocks: &DB, cf: &ColumnFamily, p: i64) -> Result<()> {
    let end = match p.checked_add(1) {
        Some(n) => partition_key(n),
        None => vec![POSTINGS + 1],
    };
    rocks
        .delete_range_cf(cf, partition_key(p), end)
        .map_err(Error::rocks("deleting a partition's index"))
}

/// Series of partition `p` matching all `matchers`, ascending: the same
/// selection as the head's, over the partition's postings.
pub(crate) fn select(
    rocks: &DB,
    cf: &ColumnFamily,
    p: i64,
    matchers: &[Matcher],
) -> Result<Vec<SeriesRef>> {
    let mut result: Option<Vec<SeriesRef>> = None;
    let mut subtract = Vec::new();
    for m in matchers {
        if m.matches_empty() {
            subtract.push(union_values(rocks, cf, p, m, false)?);
        } else {
            let good = union_values(rocks, cf, p, m, true)?;
            result = Some(match result {
                None => good,
                Some(prev) => intersect(&prev, &good),
            });
            if result.as_ref().is_some_and(Vec::is_empty) {
                return Ok(Vec::new());
            }
        }
    }
    let mut refs = match result {
        Some(r) => r,
        None => all(rocks, cf, p)?,
    };
    for s in subtract {
        refs = difference(&refs, &s);
    }
    Ok(refs)
}

/// Union of the postings of the values of `m`'s label that match it
/// (`keep`) or do not.
fn union_values(
    rocks: &DB,
    cf: &ColumnFamily,
    p: i64,
    m: &Matcher,
    keep: bool,
) -> Result<Vec<SeriesRef>> {
    let corrupt = || Error::Corrupt {
        what: format!("index: postings of {}", m.name()),
    };
    let mut out: Vec<SeriesRef> = Vec::new();
    if keep && let Some(set) = m.set_matches() {
        for v in set {
            out.extend(get_refs(
                rocks,
                cf,
                &postings_key(p, m.name(), v),
                "postings",
            )?);
        }
    } else {
        let base = name_key(p, m.name());
        let mut from = base.clone();
        let prefix = if keep && m.op() == MatchOp::Regex {
            literal_prefix(m)
        } else {
            None
        };
        if let Some(lp) = prefix {
            from.extend_from_slice(lp.as_bytes());
        }
        let mut it = rocks.raw_iterator_cf(cf);
        it.seek(&from);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(&from) {
                break;
            }
            let value = std::str::from_utf8(&k[base.len()..]).map_err(|_| corrupt())?;
            if m.matches(value) == keep {
                out.extend(decode_refs(v).ok_or_else(corrupt)?);
            }
            it.next();
        }
        it.status().map_err(Error::rocks("reading the index"))?;
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Which partitions' index holds which refs, in memory: one bit per
/// series for each partition being written, so that each series is added
/// to a partition's index once, not with every chunk.
#[derive(Debug, Default)]
pub(crate) struct Indexed {
    bits: std::collections::HashMap<i64, Vec<u64>>,
}

impl Indexed {
    pub(crate) fn has(&self, p: i64, r: SeriesRef) -> bool {
        self.bits
            .get(&p)
            .and_then(|b| b.get(r as usize / 64))
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    pub(crate) fn set(&mut self, p: i64, r: SeriesRef) {
        let b = self.bits.entry(p).or_default();
        let i = r as usize / 64;
        if b.len() <= i {
            b.resize(i + 1, 0);
        }
        b[i] |= 1 << (r % 64);
    }

    /// Forgets partitions before `p`: a late write there adds its series
    /// again, which the merge makes harmless.
    pub(crate) fn forget_before(&mut self, p: i64) {
        self.bits.retain(|&q, _| q >= p);
    }

    pub(crate) fn heap_size(&self) -> usize {
        self.bits.values().map(|b| b.capacity() * 8 + 48).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn refs_round_trip(mut refs in proptest::collection::vec(any::<u32>(), 0..200)) {
            refs.sort_unstable();
            refs.dedup();
            prop_assert_eq!(decode_refs(&encode_refs(&refs)), Some(refs));
        }

        #[test]
        fn damaged_lists_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(refs) = decode_refs(&b) {
                prop_assert!(refs.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }

    #[test]
    fn keys_keep_names_apart() {
        // "a" with value "b=c" and "a=b" with value "c" must not meet.
        assert_ne!(postings_key(0, "a", "b"), postings_key(0, "ab", ""));
        assert!(!postings_key(0, "ab", "x").starts_with(&name_key(0, "a")));
        assert!(postings_key(0, "a", "zz") < all_key(0));
        assert!(all_key(0) < partition_key(1));
        assert!(all_key(-1) < partition_key(0));
    }
}
