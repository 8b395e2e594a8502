//! The write-ahead log: what a commit acknowledged, before it reaches
//! RocksDB.
//!
//! Segments `wal/00000001`, `wal/00000002`… hold records framed as
//! `length (u32 LE) | crc32 (u32 LE) | payload`. A record is either the
//! creation of a series (its reference and labels) or a batch of samples by
//! reference. A commit is acknowledged after its record is written to the
//! segment file: that survives the death of the process (SIGKILL) at any
//! moment. With `fsync = true` the file is also synced before the
//! acknowledgement, which makes it survive power loss too.
//!
//! Replay reads segments in order and stops at the first torn or corrupt
//! record of the last segment (a write cut short by a crash); corruption in
//! an earlier segment is an error, since acknowledged data would be lost.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest record accepted on replay; anything larger is corruption.
const MAX_RECORD: usize = 256 << 20;

/// A record of the log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// A series was created.
    Series {
        r: u32,
        labels: Vec<(String, String)>,
    },
    /// Samples appended, by series reference.
    Samples(Vec<(u32, i64, f64)>),
}

const SERIES: u8 = 1;
const SAMPLES: u8 = 2;

/// A [`Record::Samples`] of `s`, encoded without owning them.
fn encode_samples(s: &[(u32, i64, f64)], out: &mut Vec<u8>) {
    out.push(SAMPLES);
    put_uvarint(out, s.len() as u64);
    let mut prev_t = 0i64;
    for &(r, t, v) in s {
        put_uvarint(out, u64::from(r));
        put_uvarint(out, zigzag(t.wrapping_sub(prev_t)));
        out.extend_from_slice(&v.to_bits().to_le_bytes());
        prev_t = t;
    }
}

/// A [`Record::Series`] of `r` and its `(name, value)` pairs, encoded
/// without owning them.
fn encode_series<'a>(
    r: u32,
    labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    out: &mut Vec<u8>,
) {
    out.push(SERIES);
    put_uvarint(out, u64::from(r));
    put_uvarint(out, labels.len() as u64);
    for (n, v) in labels {
        put_bytes(out, n.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

impl Record {
    #[cfg(test)]
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Series { r, labels } => encode_series(
                *r,
                labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                out,
            ),
            Record::Samples(s) => encode_samples(s, out),
        }
    }

    fn decode(mut b: &[u8]) -> Option<Record> {
        let (&kind, rest) = b.split_first()?;
        b = rest;
        match kind {
            SERIES => {
                let r = u32::try_from(get_uvarint(&mut b)?).ok()?;
                let n = get_uvarint(&mut b)? as usize;
                let mut labels = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    let name = String::from_utf8(get_bytes(&mut b)?.to_vec()).ok()?;
                    let value = String::from_utf8(get_bytes(&mut b)?.to_vec()).ok()?;
                    labels.push((name, value));
                }
                b.is_empty().then_some(Record::Series { r, labels })
            }
            SAMPLES => {
                let n = get_uvarint(&mut b)? as usize;
                let mut s = Vec::with_capacity(n.min(1 << 20));
                let mut t = 0i64;
                for _ in 0..n {
                    let r = u32::try_from(get_uvarint(&mut b)?).ok()?;
                    t = t.wrapping_add(unzigzag(get_uvarint(&mut b)?));
                    let (v, rest) = b.split_at_checked(8)?;
                    b = rest;
                    s.push((r, t, f64::from_bits(u64::from_le_bytes(v.try_into().ok()?))));
                }
                b.is_empty().then_some(Record::Samples(s))
            }
            _ => None,
        }
    }
}

/// Appends records to the current segment.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    segment: u64,
    size: u64,
    segment_bytes: u64,
    fsync: bool,
    buf: Vec<u8>,
}

/// Where replay starts: a segment number.
pub(crate) type Position = u64;

impl Wal {
    /// Opens the log in `dir`, starting a new segment after the last one.
    pub(crate) fn open(dir: &Path, segment_bytes: u64, fsync: bool) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io("creating the WAL folder", dir, e))?;
        let next = segments(dir)?.last().map_or(1, |(n, _)| n + 1);
        let (file, path) = create_segment(dir, next)?;
        sync_dir(dir)?;
        tracing::debug!(segment = %path.display(), "WAL segment opened");
        Ok(Self {
            dir: dir.to_owned(),
            file,
            segment: next,
            size: 0,
            segment_bytes,
            fsync,
            buf: Vec::new(),
        })
    }

    /// Writes records as one unit; returns once they are in the file (and
    /// synced, with `fsync`). Storage logs through [`Self::log_series`] and
    /// [`Self::log_samples`], which encode without copying.
    #[cfg(test)]
    pub(crate) fn log(&mut self, records: &[Record]) -> Result<()> {
        self.buf.clear();
        for rec in records {
            self.frame(|out| rec.encode(out));
        }
        self.write_buf()
    }

    /// Logs one [`Record::Series`] per `(reference, labels)`, as one
    /// write, without copying the labels.
    pub(crate) fn log_series<'a>(
        &mut self,
        series: impl Iterator<Item = (u32, &'a tiermon_model::Labels)>,
    ) -> Result<()> {
        self.buf.clear();
        for (r, labels) in series {
            self.frame(|out| encode_series(r, labels.iter().map(|l| (&*l.name, &*l.value)), out));
        }
        self.write_buf()
    }

    /// Logs one [`Record::Samples`] of `samples`, which stay the caller's:
    /// a commit whose samples are all accepted logs them without a copy.
    pub(crate) fn log_samples(&mut self, samples: &[(u32, i64, f64)]) -> Result<()> {
        self.buf.clear();
        self.frame(|out| encode_samples(samples, out));
        self.write_buf()
    }

    /// Appends a record to the buffer, framed by its length and checksum.
    fn frame(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        encode(&mut self.buf);
        let payload = &self.buf[start + 8..];
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes the buffer's records to the segment (a new one if it is full).
    fn write_buf(&mut self) -> Result<()> {
        if self.size > 0 && self.size + self.buf.len() as u64 > self.segment_bytes {
            self.cut()?;
        }
        let path = segment_path(&self.dir, self.segment);
        self.file
            .write_all(&self.buf)
            .map_err(|e| Error::io("writing the WAL", &path, e))?;
        if self.fsync {
            self.file
                .sync_data()
                .map_err(|e| Error::io("syncing the WAL", &path, e))?;
        }
        self.size += self.buf.len() as u64;
        Ok(())
    }

    /// Starts a new segment; returns its number. Everything logged from now
    /// on is in it or later ones.
    pub(crate) fn cut(&mut self) -> Result<Position> {
        let path = segment_path(&self.dir, self.segment);
        self.file
            .sync_all()
            .map_err(|e| Error::io("syncing the WAL", &path, e))?;
        let (file, _) = create_segment(&self.dir, self.segment + 1)?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.segment += 1;
        self.size = 0;
        Ok(self.segment)
    }

    /// Deletes the segments before `keep_from`.
    pub(crate) fn truncate_before(&self, keep_from: Position) -> Result<()> {
        for (n, path) in segments(&self.dir)? {
            if n < keep_from {
                fs::remove_file(&path)
                    .map_err(|e| Error::io("removing a WAL segment", &path, e))?;
            }
        }
        Ok(())
    }

    /// Total bytes of all segments.
    pub(crate) fn disk_size(&self) -> u64 {
        segments(&self.dir)
            .map(|s| {
                s.iter()
                    .filter_map(|(_, p)| fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Reads every record from segment `from` on, in order, calling `f`.
pub(crate) fn replay(
    dir: &Path,
    from: Position,
    mut f: impl FnMut(Record) -> Result<()>,
) -> Result<ReplayStats> {
    let mut stats = ReplayStats::default();
    let segs: Vec<_> = segments(dir)?
        .into_iter()
        .filter(|(n, _)| *n >= from)
        .collect();
    let last = segs.last().map(|(n, _)| *n);
    for (n, path) in segs {
        let file = File::open(&path).map_err(|e| Error::io("opening a WAL segment", &path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        loop {
            let mut head = [0u8; 8];
            match read_full(&mut r, &mut head)
                .map_err(|e| Error::io("reading the WAL", &path, e))?
            {
                0 => break,
                8 => {}
                _ => {
                    stats.torn = Some((path.clone(), offset));
                    break;
                }
            }
            let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
            let mut payload = vec![0u8; len.min(MAX_RECORD)];
            let got = read_full(&mut r, &mut payload)
                .map_err(|e| Error::io("reading the WAL", &path, e))?;
            let record = (len <= MAX_RECORD && got == len && crc32fast::hash(&payload) == crc)
                .then(|| Record::decode(&payload))
                .flatten();
            match record {
                Some(rec) => {
                    stats.records += 1;
                    f(rec)?;
                }
                None if Some(n) == last => {
                    // A write cut short by a crash: nothing after it was
                    // acknowledged.
                    tracing::warn!(segment = %path.display(), offset, "WAL ends with a torn record; ignoring it");
                    stats.torn = Some((path.clone(), offset));
                    break;
                }
                None => {
                    return Err(Error::Corrupt {
                        what: format!("WAL segment {} at offset {offset}", path.display()),
                    });
                }
            }
            offset += 8 + len as u64;
        }
        stats.segments += 1;
    }
    Ok(stats)
}

/// A reader's place in the log: `segment << 32 | byte offset`. Positions
/// only grow, so a position doubles as a sequence number of what was read.
pub(crate) fn pack(segment: u64, offset: u64) -> u64 {
    (segment << 32) | (offset & 0xffff_ffff)
}

/// The segment and offset of a packed position.
pub(crate) fn unpack(pos: u64) -> (u64, u64) {
    (pos >> 32, pos & 0xffff_ffff)
}

/// What [`read_from`] found.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// Where the next read starts.
    pub end: u64,
    /// Bytes that could not be read: segments deleted before the reader got
    /// to them, or a damaged end of a sealed segment.
    pub skipped_bytes: u64,
    /// Whether the segments were deleted before the reader got to them.
    pub truncated: bool,
}

/// Reads records after position `from` (0: the oldest segment) until about
/// `max_samples` samples were read or the log's end, calling `f`. A record
/// still being written to the live segment is left for the next call.
pub(crate) fn read_from(
    dir: &Path,
    from: u64,
    max_samples: usize,
    mut f: impl FnMut(Record),
) -> Result<Tail> {
    let segs = segments(dir)?;
    let mut tail = Tail {
        end: from,
        ..Tail::default()
    };
    let Some(&(oldest, _)) = segs.first() else {
        return Ok(tail);
    };
    let (mut seg, mut off) = unpack(from);
    if seg < oldest {
        if from != 0 {
            tail.truncated = true;
        }
        seg = oldest;
        off = 0;
    }
    let mut samples = 0usize;
    loop {
        let path = segment_path(dir, seg);
        // Looked at before reading: a segment with a successor is complete.
        // One without may still grow, so the reader never moves past it.
        let sealed = segment_path(dir, seg + 1).exists();
        let mut data = Vec::new();
        match File::open(&path) {
            Ok(mut file) => {
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(off))
                    .and_then(|_| file.read_to_end(&mut data))
                    .map_err(|e| Error::io("reading the WAL", &path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && sealed => {
                seg += 1;
                off = 0;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::io("opening a WAL segment", &path, e)),
        }
        let (o, n, stop, bad) = read_records(&data, max_samples.saturating_sub(samples), &mut f);
        samples += n;
        tail.end = pack(seg, off + o as u64);
        if stop || !sealed {
            break;
        }
        if bad {
            tracing::error!(segment = %path.display(), offset = off + o as u64, "WAL segment damaged; skipping its rest");
            tail.skipped_bytes += (data.len() - o) as u64;
        }
        seg += 1;
        off = 0;
        tail.end = pack(seg, 0);
    }
    Ok(tail)
}

/// Decodes the records of `data`; returns the offset after the last
/// whole record, the samples read, whether the sample budget stopped it,
/// and whether it stopped at damage (or a record still being written).
fn read_records(
    data: &[u8],
    budget: usize,
    f: &mut impl FnMut(Record),
) -> (usize, usize, bool, bool) {
    let mut n = 0usize;
    let mut off = 0usize;
    while off < data.len() {
        if n >= budget {
            return (off, n, true, false);
        }
        let Some(head) = data.get(off..off + 8) else {
            return (off, n, false, true);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = data.get(off + 8..off + 8 + len) else {
            return (off, n, false, true);
        };
        if crc32fast::hash(payload) != crc {
            return (off, n, false, true);
        }
        let Some(rec) = Record::decode(payload) else {
            return (off, n, false, true);
        };
        if let Record::Samples(s) = &rec {
            n += s.len();
        }
        f(rec);
        off += 8 + len;
    }
    (off, n, false, false)
}

/// What a replay read.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReplayStats {
    pub segments: usize,
    pub records: usize,
    /// The segment and offset of a torn final record, if any.
    pub torn: Option<(PathBuf, u64)>,
}

impl ReplayStats {
    /// Cuts a torn final record off its segment, so that the segment reads
    /// cleanly once later segments follow it.
    pub(crate) fn repair(&self) -> Result<()> {
        if let Some((path, offset)) = &self.torn {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io("repairing a WAL segment", path, e))?;
            f.set_len(*offset)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io("repairing a WAL segment", path, e))?;
        }
        Ok(())
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Segments with the position of their start, size and modification time.
pub(crate) fn segment_list(dir: &Path) -> Vec<(u64, u64, std::time::SystemTime)> {
    segments(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(n, p)| {
            let m = fs::metadata(p).ok()?;
            Some((pack(n, 0), m.len(), m.modified().ok()?))
        })
        .collect()
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}"))
}

fn create_segment(dir: &Path, n: u64) -> Result<(File, PathBuf)> {
    let path = segment_path(dir, n);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("creating a WAL segment", &path, e))?;
    Ok((file, path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing the WAL folder", dir, e))
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing the WAL folder", dir, e)),
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    Ok(v)
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_uvarint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn get_bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = get_uvarint(b)? as usize;
    let (v, rest) = b.split_at_checked(n)?;
    *b = rest;
    Some(v)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(dir: &Path, from: Position) -> Result<Vec<Record>> {
        let mut v = Vec::new();
        replay(dir, from, |r| {
            v.push(r);
            Ok(())
        })?;
        Ok(v)
    }

    fn same(a: &[Record], b: &[Record]) -> bool {
        // Compare float bits, so NaNs round-trip too.
        format!("{:?}", bits(a)) == format!("{:?}", bits(b))
    }

    fn bits(r: &[Record]) -> Vec<String> {
        r.iter()
            .map(|r| match r {
                Record::Samples(s) => format!(
                    "{:?}",
                    s.iter()
                        .map(|&(r, t, v)| (r, t, v.to_bits()))
                        .collect::<Vec<_>>()
                ),
                other => format!("{other:?}"),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn records_round_trip(samples in proptest::collection::vec((any::<u32>(), any::<i64>(), any::<f64>()), 0..50),
                              labels in proptest::collection::vec(("[a-z_]{1,5}", ".{0,8}"), 0..5)) {
            let recs = vec![Record::Series { r: 7, labels }, Record::Samples(samples)];
            for rec in &recs {
                let mut b = Vec::new();
                rec.encode(&mut b);
                let back = Record::decode(&b).unwrap();
                prop_assert!(same(&[back], std::slice::from_ref(rec)));
            }
        }

        #[test]
        fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Record::decode(&b);
        }
    }

    #[test]
    fn log_cut_replay_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 1 << 20, false).unwrap();
        let a = Record::Series {
            r: 1,
            labels: vec![("__name__".into(), "up".into())],
        };
        let b = Record::Samples(vec![
            (1, 1000, 1.0),
            (1, 2000, f64::from_bits(0x7ff0_0000_0000_0002)),
        ]);
        w.log(&[a.clone(), b.clone()]).unwrap();
        let pos = w.cut().unwrap();
        let c = Record::Samples(vec![(1, 3000, 3.0)]);
        w.log(std::slice::from_ref(&c)).unwrap();
        assert!(same(&collect(dir.path(), 0).unwrap(), &[a, b, c.clone()]));
        assert!(same(
            &collect(dir.path(), pos).unwrap(),
            std::slice::from_ref(&c)
        ));
        w.truncate_before(pos).unwrap();
        assert!(same(&collect(dir.path(), 0).unwrap(), &[c]));
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 1 << 20, false).unwrap();
        let rec = Record::Samples(vec![(1, 1, 1.0)]);
        w.log(std::slice::from_ref(&rec)).unwrap();
        w.log(std::slice::from_ref(&rec)).unwrap();
        drop(w);
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        // Cut the last record in half (a crash mid-write): replay keeps the
        // first, and repair makes the segment clean for later replays.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 5).unwrap();
        let stats = replay(dir.path(), 0, |_| Ok(())).unwrap();
        assert_eq!(stats.records, 1);
        stats.repair().unwrap();
        let mut w = Wal::open(dir.path(), 1 << 20, false).unwrap();
        w.log(std::slice::from_ref(&rec)).unwrap();
        assert_eq!(collect(dir.path(), 0).unwrap().len(), 2);

        // Damage inside a segment that others follow loses acknowledged
        // data: that is an error, not something to skip.
        let mut bytes = fs::read(&seg).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        assert!(matches!(collect(dir.path(), 0), Err(Error::Corrupt { .. })));
    }
}
