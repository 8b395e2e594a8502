//! Key layout of the RocksDB column families. See ARCHITECTURE.md, "On-disk
//! format".
//!
//! `chunks`: `resolution (1) | partition start (8, sign-flipped BE) | series
//! ref (4, BE) | chunk min time (8, sign-flipped BE) | seq (8, BE)`, so a
//! partition of a resolution is one contiguous range (retention deletes it
//! with one range delete) and a series' chunks in a partition are one
//! contiguous, time-ordered range.

use crate::head::SeriesRef;

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SERIES: &str = "series";
pub(crate) const CF_CHUNKS: &str = "chunks";
pub(crate) const CF_HEAD: &str = "head";

pub(crate) const META_NEXT_SEQ: &[u8] = b"next_seq";
pub(crate) const META_CHECKPOINT: &[u8] = b"checkpoint_segment";
pub(crate) const META_SERIES_PERSISTED: &[u8] = b"series_persisted";
pub(crate) const META_WAL_EPOCH: &[u8] = b"wal_epoch";
/// First partition whose every series is in the index on disk (`i64`, BE);
/// data before it was written by a version without the index.
pub(crate) const META_INDEX_FROM: &[u8] = b"index_from";
/// Present once a series has been evicted from the head.
pub(crate) const META_EVICTED: &[u8] = b"evicted";

/// Prefix of the cold partition records in `meta`: `"cold/" | partition
/// (8, sign-flipped BE)`, a partition holding data of evicted series (which
/// only the index on disk finds).
pub(crate) const META_COLD: &[u8] = b"cold/";

pub(crate) fn cold(partition: i64) -> [u8; 13] {
    partition_meta(META_COLD, partition)
}

pub(crate) fn parse_cold(k: &[u8]) -> Option<i64> {
    parse_partition_meta(META_COLD, k)
}

/// A per-partition record in `meta`: a 5-byte prefix, then the partition.
fn partition_meta(prefix: &[u8], partition: i64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..5].copy_from_slice(prefix);
    k[5..].copy_from_slice(&flip(partition));
    k
}

pub(crate) fn parse_partition_meta(prefix: &[u8], k: &[u8]) -> Option<i64> {
    let rest = k.strip_prefix(prefix)?;
    (rest.len() == 8).then(|| unflip(rest))
}

/// Prefix of the blob manifest in `meta`: `"tier/" | resolution (1) |
/// partition (8, sign-flipped BE) | generation (4, BE)`.
pub(crate) const META_TIER: &[u8] = b"tier/";

pub(crate) fn tier(res: u8, partition: i64, generation: u32) -> Vec<u8> {
    let mut k = META_TIER.to_vec();
    k.push(res);
    k.extend_from_slice(&flip(partition));
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

pub(crate) fn parse_tier(k: &[u8]) -> Option<(u8, i64, u32)> {
    let rest = k.strip_prefix(META_TIER)?;
    if rest.len() != 13 {
        return None;
    }
    Some((
        rest[0],
        unflip(&rest[1..9]),
        u32::from_be_bytes(rest[9..13].try_into().ok()?),
    ))
}

/// Prefix of the block compaction records in `meta`: `"blck/" | partition
/// (8, sign-flipped BE)` → the time (i64 BE) before which the open raw
/// partition's chunks may have been compacted into blocks, then the
/// blocks' width (i64 BE): a block chunk holds exactly the series' samples
/// of one aligned block.
pub(crate) const META_BLOCKS: &[u8] = b"blck/";

pub(crate) fn blocks(partition: i64) -> [u8; 13] {
    partition_meta(META_BLOCKS, partition)
}

/// Prefix of the records of raw partitions that received chunks since
/// their last compaction: `"wrtn/" | partition (8, sign-flipped BE)`, put
/// once the chunks are written, so that maintenance compacts a closed
/// partition again only when something arrived late for it.
pub(crate) const META_WRITTEN: &[u8] = b"wrtn/";

pub(crate) fn written(partition: i64) -> [u8; 13] {
    partition_meta(META_WRITTEN, partition)
}

/// Prefix of the chunk span records in `meta`: `"span/" | partition (8,
/// sign-flipped BE)`, the longest raw chunk of the partition (`max_t -
/// min_t`, i64 BE).
pub(crate) const META_SPAN: &[u8] = b"span/";

pub(crate) fn span(partition: i64) -> [u8; 13] {
    partition_meta(META_SPAN, partition)
}

pub(crate) fn flip(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn unflip(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

/// Full chunk key.
pub(crate) fn chunk(res: u8, partition: i64, r: SeriesRef, min_t: i64, seq: u64) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[0] = res;
    k[1..9].copy_from_slice(&flip(partition));
    k[9..13].copy_from_slice(&r.to_be_bytes());
    k[13..21].copy_from_slice(&flip(min_t));
    k[21..29].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Prefix of a series' chunks in a partition.
pub(crate) fn series_prefix(res: u8, partition: i64, r: SeriesRef) -> [u8; 13] {
    let mut k = [0u8; 13];
    k.copy_from_slice(&chunk(res, partition, r, 0, 0)[..13]);
    k
}

/// Prefix of a partition.
pub(crate) fn partition_prefix(res: u8, partition: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k.copy_from_slice(&chunk(res, partition, 0, 0, 0)[..9]);
    k
}

/// Decoded chunk key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkKey {
    pub res: u8,
    pub partition: i64,
    pub r: SeriesRef,
    pub min_t: i64,
    pub seq: u64,
}

pub(crate) fn parse_chunk(k: &[u8]) -> Option<ChunkKey> {
    if k.len() != 29 {
        return None;
    }
    Some(ChunkKey {
        res: k[0],
        partition: unflip(&k[1..9]),
        r: u32::from_be_bytes(k[9..13].try_into().ok()?),
        min_t: unflip(&k[13..21]),
        seq: u64::from_be_bytes(k[21..29].try_into().ok()?),
    })
}

pub(crate) fn series(r: SeriesRef) -> [u8; 4] {
    r.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_resolution_partition_series_time() {
        let a = chunk(0, -86_400_000, 5, -10, 1);
        let b = chunk(0, 0, 1, 0, 0);
        let c = chunk(0, 0, 1, 1, 0);
        let d = chunk(0, 0, 2, -5, 0);
        let e = chunk(1, i64::MIN, 0, 0, 0);
        assert!(a < b && b < c && c < d && d < e);
        assert_eq!(
            parse_chunk(&d),
            Some(ChunkKey {
                res: 0,
                partition: 0,
                r: 2,
                min_t: -5,
                seq: 0
            })
        );
        assert!(d.starts_with(&series_prefix(0, 0, 2)));
        assert!(d.starts_with(&partition_prefix(0, 0)));
        assert_eq!(parse_tier(&tier(2, -5, 7)), Some((2, -5, 7)));
        assert_eq!(parse_tier(b"tier/x"), None);
        assert_eq!(
            parse_partition_meta(META_SPAN, &span(-86_400_000)),
            Some(-86_400_000)
        );
        assert_eq!(
            parse_partition_meta(META_BLOCKS, &blocks(7_200_000)),
            Some(7_200_000)
        );
        assert!(span(-1) < span(0) && span(0) < span(i64::MAX));
        assert_eq!(parse_partition_meta(META_SPAN, b"span/x"), None);
        assert_eq!(parse_cold(&cold(-86_400_000)), Some(-86_400_000));
        assert_eq!(parse_cold(&span(0)), None);
    }
}
