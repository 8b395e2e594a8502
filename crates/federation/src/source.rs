//! What a sender forwards: batches with a sequence that orders them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tiermon_model::{Labels, MatchOp, Matcher};
use tiermon_proto::v1;
use tiermon_tsdb::{Db, Resolution};

use crate::{Entry, Error, Metric, now_ms};

/// A batch ready to send.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Its sequence: strictly greater than the `after` it was asked for.
    pub seq: u64,
    /// Resolution of the data.
    pub resolution: i32,
    /// The series, by the sender's storage reference.
    pub series: Vec<Entry>,
    /// Raw samples the batch carries or represents.
    pub samples: usize,
    /// See `Batch.complete_through_ms` in push.proto.
    pub complete_through_ms: i64,
    /// Reports of the sender's own children, forwarded upward.
    pub children: Vec<v1::ChildReport>,
}

/// Where a sender's batches come from. Called from blocking threads.
pub trait Source: Send + Sync + 'static {
    /// Identity of the sequence space; changes when the data folder does.
    fn epoch(&self) -> u64;
    /// The next batch after sequence `after` (0: the start), holding about
    /// `max_samples` samples at most; `None` when nothing is ready yet.
    fn next(&self, after: u64, max_samples: usize) -> Result<Option<Batch>, Error>;
    /// The receiver has applied everything through `seq`.
    fn acked(&self, seq: u64);
    /// The source's own metrics, labelled with `destination`.
    fn metrics(&self, destination: &str) -> Vec<Metric>;
    /// The labels of the series with reference `r`, as they are sent.
    fn labels(&self, r: u32) -> Option<Vec<v1::Label>>;
    /// What a heartbeat says when nothing was ready at `checked_ms`: the
    /// time through which the data is complete (0: unknown) and the
    /// children's reports.
    fn heartbeat(&self, checked_ms: i64) -> (i64, Vec<v1::ChildReport>);
}

/// Settings of a [`WalSource`].
#[derive(Debug, Clone)]
pub struct WalSourceOptions {
    /// Name of the destination: names the WAL hold and the state file.
    pub name: String,
    /// Folder of the state file (the acknowledged position).
    pub state_dir: PathBuf,
    /// Unsent data older than this is given up (and counted).
    pub max_age: Duration,
    /// Unsent data beyond this many bytes is given up, oldest first (and
    /// counted).
    pub max_bytes: u64,
    /// Labels added to every series sent (Prometheus' external labels: a
    /// series that has the label already keeps its own value).
    pub external_labels: Vec<(String, String)>,
}

/// Forwards everything a database commits by reading its WAL, which it
/// holds until the receiver has applied it.
#[derive(Debug)]
pub struct WalSource {
    db: Db,
    opts: WalSourceOptions,
    acked: Mutex<(u64, std::time::Instant)>,
    dropped_bytes: AtomicU64,
    lost_reads: AtomicU64,
    /// When the bounds were last enforced.
    bounds_checked: Mutex<Option<std::time::Instant>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPosition {
    epoch: u64,
    position: u64,
}

impl WalSource {
    /// A source over `db`'s WAL; holds the WAL from the last position
    /// acknowledged before a restart.
    pub fn new(db: Db, opts: WalSourceOptions) -> Result<Arc<Self>, Error> {
        std::fs::create_dir_all(&opts.state_dir).map_err(|e| Error::Io {
            what: "creating the push state folder",
            path: opts.state_dir.clone(),
            source: e,
        })?;
        let path = state_path(&opts);
        let position = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<SavedPosition>(&b)
                .ok()
                .filter(|s| s.epoch == db.wal_epoch())
                .map_or(0, |s| s.position),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(Error::Io {
                    what: "reading the push position",
                    path,
                    source: e,
                });
            }
        };
        db.wal_hold(&opts.name, Some(position));
        Ok(Arc::new(Self {
            db,
            opts,
            acked: Mutex::new((position, std::time::Instant::now())),
            dropped_bytes: AtomicU64::new(0),
            lost_reads: AtomicU64::new(0),
            bounds_checked: Mutex::new(None),
        }))
    }

    /// Segments this source still holds: (start position, bytes, mtime).
    fn held(&self) -> Vec<(u64, u64, SystemTime)> {
        let acked = self.acked.lock().0;
        let segs = self.db.wal_segments();
        // The segment holding `acked` and everything after it.
        let first = segs.iter().rposition(|s| s.0 <= acked).unwrap_or_default();
        segs.into_iter().skip(first).collect()
    }

    /// Gives up the oldest held segments while over the age or size bound;
    /// looks at the WAL folder at most once a second.
    fn enforce_bounds(&self) {
        {
            let mut last = self.bounds_checked.lock();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let held = self.held();
        let total: u64 = held.iter().map(|s| s.1).sum();
        let now = SystemTime::now();
        let mut excess = total.saturating_sub(self.opts.max_bytes);
        // Never the newest segment: it is being written.
        for w in held.windows(2) {
            let (seg, bytes, mtime) = w[0];
            let too_old = now.duration_since(mtime).unwrap_or_default() > self.opts.max_age;
            if excess == 0 && !too_old {
                break;
            }
            let next = w[1].0;
            let mut acked = self.acked.lock();
            if acked.0 >= next {
                continue;
            }
            tracing::error!(
                destination = %self.opts.name,
                segment = seg >> 32,
                bytes,
                reason = if too_old { "older than forward.max_age" } else { "over forward.max_bytes" },
                "store-and-forward bound reached: giving up unsent data for this destination"
            );
            self.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
            acked.0 = next;
            self.db.wal_hold(&self.opts.name, Some(next));
            excess = excess.saturating_sub(bytes);
        }
    }

    fn save(&self, position: u64) {
        let path = state_path(&self.opts);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(&SavedPosition {
            epoch: self.db.wal_epoch(),
            position,
        })
        .unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the push position; a restart resends more");
        }
    }
}

fn state_path(opts: &WalSourceOptions) -> PathBuf {
    let safe: String = opts
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    opts.state_dir.join(format!("{safe}.position"))
}

/// `l` with the external labels it lacks, as sent.
fn with_external(l: &Labels, external: &[(String, String)]) -> Vec<v1::Label> {
    if external.is_empty() {
        return labels_pb(l);
    }
    let mut labels = tiermon_model::LabelsBuilder::with_capacity(l.len() + external.len());
    for x in l.iter() {
        labels.set(x.name.clone(), x.value.clone());
    }
    for (n, v) in external {
        if labels.get(n).is_none() {
            labels.set(n.as_str(), v.as_str());
        }
    }
    labels_pb(&labels.build())
}

pub(crate) fn labels_pb(l: &Labels) -> Vec<v1::Label> {
    l.iter()
        .map(|x| v1::Label {
            name: x.name.to_string(),
            value: x.value.to_string(),
        })
        .collect()
}

impl Source for WalSource {
    fn epoch(&self) -> u64 {
        self.db.wal_epoch()
    }

    fn next(&self, after: u64, max_samples: usize) -> Result<Option<Batch>, Error> {
        self.enforce_bounds();
        // Data given up at a bound is skipped even while still on disk.
        let after = after.max(self.acked.lock().0);
        let started = now_ms();
        let b = self.db.wal_read(after, max_samples)?;
        if b.truncated {
            self.lost_reads.fetch_add(1, Ordering::Relaxed);
            tracing::error!(destination = %self.opts.name, from = after, "unsent WAL segments were deleted before they were sent (store-and-forward bound); continuing with the oldest kept");
        }
        if b.end <= after {
            return Ok(None);
        }
        let caught_up = b.samples < max_samples;
        Ok(Some(Batch {
            seq: b.end,
            resolution: v1::Resolution::Raw as i32,
            samples: b.samples,
            complete_through_ms: if caught_up { started } else { 0 },
            children: Vec::new(),
            series: b
                .series
                .into_iter()
                .map(|(r, s)| Entry {
                    r,
                    samples: s
                        .into_iter()
                        .map(|(t, v)| v1::Sample {
                            timestamp_ms: t,
                            value: v,
                        })
                        .collect(),
                    aggregates: Vec::new(),
                })
                .collect(),
        }))
    }

    fn acked(&self, seq: u64) {
        let save = {
            let mut a = self.acked.lock();
            if seq <= a.0 {
                return;
            }
            a.0 = seq;
            self.db.wal_hold(&self.opts.name, Some(seq));
            // The saved position only needs to be no later than the truth:
            // once a second is plenty.
            (a.1.elapsed() >= Duration::from_secs(1)).then(|| {
                a.1 = std::time::Instant::now();
                seq
            })
        };
        if let Some(p) = save {
            self.save(p);
        }
    }

    fn labels(&self, r: u32) -> Option<Vec<v1::Label>> {
        let l = self.db.labels_of(r)?;
        Some(with_external(&l, &self.opts.external_labels))
    }

    fn heartbeat(&self, checked_ms: i64) -> (i64, Vec<v1::ChildReport>) {
        // Nothing was unread when the check started: everything committed
        // before it has been sent.
        (checked_ms, Vec::new())
    }

    fn metrics(&self, destination: &str) -> Vec<Metric> {
        let held = self.held();
        let bytes: u64 = held.iter().map(|s| s.1).sum();
        let oldest = held
            .first()
            .and_then(|s| SystemTime::now().duration_since(s.2).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let l = || vec![("destination", destination.to_owned())];
        vec![
            Metric {
                name: "tiermon_forward_buffer_bytes",
                help: "Bytes of WAL held for this destination (sent or not yet acknowledged).",
                kind: "gauge",
                series: vec![(l(), bytes as f64)],
            },
            Metric {
                name: "tiermon_forward_buffer_oldest_age_seconds",
                help: "Age of the oldest WAL segment held for this destination.",
                kind: "gauge",
                series: vec![(l(), oldest)],
            },
            Metric {
                name: "tiermon_forward_buffer_dropped_bytes_total",
                help: "Unsent bytes given up because the store-and-forward bound (forward.max_age, forward.max_bytes) was reached.",
                kind: "counter",
                series: vec![(l(), self.dropped_bytes.load(Ordering::Relaxed) as f64)],
            },
            Metric {
                name: "tiermon_forward_buffer_truncated_reads_total",
                help: "Reads that found unsent WAL segments already deleted.",
                kind: "counter",
                series: vec![(l(), self.lost_reads.load(Ordering::Relaxed) as f64)],
            },
        ]
    }
}

/// Reports of the children a tier forwards with its batches, and the time
/// through which all of its live children's data has arrived.
pub trait Children: Send + Sync + 'static {
    /// The reports.
    fn reports(&self) -> Vec<v1::ChildReport>;
    /// Time through which every live child has reported; `None` with no
    /// live child.
    fn watermark(&self) -> Option<i64>;
}

/// Forwards one aggregate per series and closed window, computed from the
/// database; a window closes once its end is `grace` behind and every live
/// child has reported past it.
pub struct DownsampleSource {
    db: Db,
    window_ms: i64,
    grace_ms: i64,
    external: Vec<(String, String)>,
    children: Arc<dyn Children>,
    /// Series per batch; a window with more is sent in parts.
    part_series: usize,
    cache: Mutex<Option<WindowCache>>,
    windows: AtomicU64,
}

impl std::fmt::Debug for DownsampleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownsampleSource")
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

/// A window's series.
type WindowSeries = Arc<Vec<Entry>>;

/// A computed window: its number, its series, the raw samples they stand
/// for.
type WindowCache = (i64, WindowSeries, usize);

/// Bits of a sequence that number the parts of a window.
const PART_BITS: u32 = 16;

impl DownsampleSource {
    /// A source of `resolution` aggregates of `db`, with `external` labels
    /// added to every series (e.g. `datacenter`).
    pub fn new(
        db: Db,
        resolution: Resolution,
        grace: Duration,
        external: Vec<(String, String)>,
        children: Arc<dyn Children>,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            window_ms: resolution.window_ms().max(1),
            grace_ms: grace.as_millis() as i64,
            external,
            children,
            part_series: 20_000,
            cache: Mutex::new(None),
            windows: AtomicU64::new(0),
        })
    }

    fn window(&self, w: i64) -> Result<(WindowSeries, usize), Error> {
        if let Some((cw, s, n)) = &*self.cache.lock()
            && *cw == w
        {
            return Ok((s.clone(), *n));
        }
        let start = w * self.window_ms;
        let all = Matcher::new(MatchOp::Regex, "__name__", ".+").map_err(|e| {
            Error::Storage(tiermon_tsdb::Error::Corrupt {
                what: format!("matcher: {e}"),
            })
        })?;
        let got = self.db.select(&[all], start, start + self.window_ms - 1)?;
        let mut out = Vec::with_capacity(got.len());
        let mut raw = 0usize;
        for s in got {
            let samples: Vec<(i64, f64)> = s.samples.iter().map(|x| (x.t, x.v)).collect();
            let Some(a) = tiermon_tsdb::downsample(&samples, self.window_ms)
                .into_iter()
                .next()
            else {
                continue; // only staleness markers
            };
            raw += a.count as usize;
            out.push(Entry {
                r: self.db.series_ref(&s.labels)?,
                samples: Vec::new(),
                aggregates: vec![v1::Aggregate {
                    start_ms: a.start,
                    end_ms: a.start + self.window_ms,
                    min: a.min,
                    max: a.max,
                    sum: a.sum,
                    count: a.count,
                    last: a.last,
                    last_timestamp_ms: a.last_t,
                    counter: a.counter,
                }],
            });
        }
        // In reference order: the compact form's reference column is then
        // a run of small steps.
        out.sort_by_key(|e| e.r);
        let out = Arc::new(out);
        *self.cache.lock() = Some((w, out.clone(), raw));
        Ok((out, raw))
    }
}

impl Source for DownsampleSource {
    fn epoch(&self) -> u64 {
        self.db.wal_epoch()
    }

    fn next(&self, after: u64, _max_samples: usize) -> Result<Option<Batch>, Error> {
        let now = now_ms();
        // Sequence: (window number + 1) << PART_BITS | part.
        let (w, part) = if after == 0 {
            ((now - self.grace_ms).div_euclid(self.window_ms) - 1, 0usize)
        } else {
            let w = (after >> PART_BITS) as i64 - 1;
            let part = (after & ((1 << PART_BITS) - 1)) as usize;
            let (series, _) = self.window(w)?;
            let parts = series.len().div_ceil(self.part_series).max(1);
            if part + 1 < parts {
                (w, part + 1)
            } else {
                (w + 1, 0)
            }
        };
        let end = (w + 1) * self.window_ms;
        if now < end + self.grace_ms {
            return Ok(None);
        }
        if let Some(mark) = self.children.watermark()
            && mark < end
        {
            return Ok(None);
        }
        let (series, raw) = self.window(w)?;
        let chunk: Vec<Entry> = series
            .iter()
            .skip(part * self.part_series)
            .take(self.part_series)
            .cloned()
            .collect();
        let parts = series.len().div_ceil(self.part_series).max(1);
        if part + 1 == parts {
            self.windows.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(Batch {
            seq: (((w + 1) as u64) << PART_BITS) | part as u64,
            resolution: v1::Resolution::Resolution1m as i32,
            samples: if part == 0 { raw } else { 0 },
            complete_through_ms: end,
            children: if part == 0 {
                self.children.reports()
            } else {
                Vec::new()
            },
            series: chunk,
        }))
    }

    fn acked(&self, _seq: u64) {}

    fn labels(&self, r: u32) -> Option<Vec<v1::Label>> {
        let l = self.db.labels_of(r)?;
        Some(with_external(&l, &self.external))
    }

    fn heartbeat(&self, _checked_ms: i64) -> (i64, Vec<v1::ChildReport>) {
        (0, self.children.reports())
    }

    fn metrics(&self, destination: &str) -> Vec<Metric> {
        vec![Metric {
            name: "tiermon_forward_windows_total",
            help: "Downsampled windows computed and sent.",
            kind: "counter",
            series: vec![(
                vec![("destination", destination.to_owned())],
                self.windows.load(Ordering::Relaxed) as f64,
            )],
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiermon_tsdb::Options;

    fn db(dir: &std::path::Path) -> Db {
        Db::open(
            dir,
            Options {
                wal_segment_bytes: 4096,
                ..Options::default()
            },
        )
        .unwrap()
    }

    fn commit_rounds(db: &Db, rounds: i64) {
        let l = Labels::from_pairs([("__name__", "m"), ("k", "v")]);
        for r in 0..rounds {
            let mut app = db.appender();
            for i in 0..50 {
                app.append(&l, r * 1000 + i, i as f64).unwrap();
            }
            app.commit().unwrap();
        }
    }

    fn source(db: &Db, dir: &std::path::Path, max_bytes: u64) -> Arc<WalSource> {
        WalSource::new(
            db.clone(),
            WalSourceOptions {
                name: "http://primary:9192".into(),
                state_dir: dir.join("push"),
                max_age: Duration::from_secs(3600),
                max_bytes,
                external_labels: Vec::new(),
            },
        )
        .unwrap()
    }

    #[test]
    fn unsent_data_survives_checkpoints_and_a_restart_resumes_after_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let d = db(&dir.path().join("db"));
        let src = source(&d, dir.path(), u64::MAX);
        commit_rounds(&d, 40);
        d.checkpoint().unwrap();
        // Nothing was acknowledged: the checkpoint kept every segment.
        let mut after = 0;
        let mut samples = 0;
        while let Some(b) = src.next(after, 300).unwrap() {
            samples += b.samples;
            assert!(b.series.iter().all(|e| src.labels(e.r).is_some()));
            after = b.seq;
        }
        assert_eq!(samples, 40 * 50);
        // Half is acknowledged, the source restarts: it holds from there.
        let mut half = 0;
        let mut n = 0;
        while n < 1000 {
            let b = src.next(half, 100).unwrap().unwrap();
            n += b.samples;
            half = b.seq;
        }
        src.acked(half);
        src.save(half);
        drop(src);
        let src = source(&d, dir.path(), u64::MAX);
        assert_eq!(src.acked.lock().0, half);
        d.checkpoint().unwrap();
        let mut rest = 0;
        let mut at = half;
        while let Some(b) = src.next(at, 300).unwrap() {
            rest += b.samples;
            at = b.seq;
        }
        assert_eq!(rest, 40 * 50 - n);
    }

    #[test]
    fn external_labels_are_added_unless_the_series_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = db(&dir.path().join("db"));
        let src = WalSource::new(
            d.clone(),
            WalSourceOptions {
                name: "http://primary:9192".into(),
                state_dir: dir.path().join("push"),
                max_age: Duration::from_secs(3600),
                max_bytes: u64::MAX,
                external_labels: vec![
                    ("secondary".into(), "s1".into()),
                    ("k".into(), "external".into()),
                ],
            },
        )
        .unwrap();
        commit_rounds(&d, 1);
        let b = src.next(0, 100).unwrap().unwrap();
        let got = src.labels(b.series[0].r).unwrap();
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("__name__", "m"), ("k", "v"), ("secondary", "s1")],
            "the series' own k wins"
        );
    }

    #[test]
    fn the_size_bound_gives_up_the_oldest_data_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let d = db(&dir.path().join("db"));
        let src = source(&d, dir.path(), 8192);
        commit_rounds(&d, 60);
        let held: u64 = src.held().iter().map(|s| s.1).sum();
        assert!(held > 8192, "{held} bytes held");
        // The next read enforces the bound: it starts later than 0.
        let b = src.next(0, 1_000_000).unwrap().unwrap();
        assert!(b.samples < 60 * 50, "{} samples still there", b.samples);
        let dropped = src.dropped_bytes.load(Ordering::Relaxed);
        assert!(dropped > 0);
        let m = src.metrics("d");
        let series = |name: &str| {
            m.iter()
                .find(|x| x.name == name)
                .map(|x| x.series[0].1)
                .unwrap()
        };
        assert_eq!(
            series("tiermon_forward_buffer_dropped_bytes_total"),
            dropped as f64
        );
        assert!(series("tiermon_forward_buffer_bytes") <= 8192.0 + 4096.0);
    }
}
