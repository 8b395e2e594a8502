//! One scrape loop per target: fetch on a fixed, spread-out schedule, parse,
//! relabel, append, and write the report series and staleness markers as
//! Prometheus does.
//!
//! The schedule: every target scrapes at `interval`, at an offset within the
//! interval derived from its identity (and the scraper's seed), so 5,000
//! targets spread evenly instead of firing together. A scrape's timestamp is
//! its scheduled time when it started within a few milliseconds of it — exact
//! intervals compress to almost nothing — and the actual time otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tiermon_exposition::{Entry, Format, MetricType, Parser, SeriesCache};
use tiermon_model::{Labels, LabelsBuilder, STALE_NAN};
use tiermon_tsdb::{Db, SeriesRef};
use tokio::sync::watch;

use crate::config::{Job, Limits};
use crate::relabel;
use crate::target::Target;

/// A job's settings and HTTP client, shared by its loops; replaced on reload.
#[derive(Debug)]
pub(crate) struct JobRuntime {
    pub job: Job,
    pub client: reqwest::Client,
}

/// What the manager tells a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmd {
    Run,
    /// The target is gone: mark its series stale and stop.
    Gone,
    /// The process stops: stop without staleness markers (the series did
    /// not end; the next start continues them).
    Shutdown,
}

/// Health of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Not scraped yet.
    #[default]
    Unknown,
    /// The last scrape succeeded.
    Up,
    /// The last scrape failed.
    Down,
}

impl Health {
    /// Prometheus' name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// A target's last scrape, for the targets view.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Health after the last scrape.
    pub health: Health,
    /// Why the last scrape failed; empty when it did not.
    pub last_error: String,
    /// Start of the last scrape, ms since the epoch (0: never).
    pub last_scrape_ms: i64,
    /// How long it took.
    pub last_duration: Duration,
    /// Samples stored by the last scrape.
    pub samples: u64,
    /// Samples the store refused (too old, series limit) in the last scrape.
    pub rejected: u64,
    /// The target's metric metadata, by family.
    pub metadata: Arc<BTreeMap<String, MetricMeta>>,
}

/// What the cache keeps per series: its reference, or [`DROPPED`] for a
/// series metric relabelling drops. Four bytes, so that an entry of a
/// target's cache is 20 bytes (the storage never hands out
/// `SeriesRef::MAX`).
type Cached = SeriesRef;

/// The cache's mark of a series that metric relabelling drops.
const DROPPED: Cached = SeriesRef::MAX;

/// What a target says about a metric family (`# TYPE`, `# HELP`,
/// `# UNIT`), for `/api/v1/metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricMeta {
    /// The declared type (`unknown` when only HELP was given).
    pub kind: MetricType,
    /// The help text.
    pub help: String,
    /// The unit (OpenMetrics).
    pub unit: String,
}

/// What a loop keeps between scrapes.
#[derive(Debug)]
struct LoopState {
    cache: SeriesCache<Cached>,
    /// Cached series that get no staleness markers: those with their own
    /// timestamps (honor_timestamps). Rare, so kept apart.
    untracked: HashSet<SeriesRef>,
    report: Option<[SeriesRef; 5]>,
    /// Metadata by family, with the number of the scrape that last saw it.
    meta: HashMap<String, (MetricMeta, u64)>,
    /// Scrapes so far.
    scrapes: u64,
    /// Set when `meta` changed in this scrape.
    meta_changed: bool,
}

impl LoopState {
    fn new() -> Self {
        Self {
            cache: SeriesCache::new(),
            untracked: HashSet::new(),
            report: None,
            meta: HashMap::new(),
            scrapes: 0,
            meta_changed: false,
        }
    }

    fn meta_entry(&mut self, name: &str) -> &mut MetricMeta {
        let scrape = self.scrapes;
        if !self.meta.contains_key(name) {
            self.meta
                .insert(name.to_owned(), (MetricMeta::default(), scrape));
            self.meta_changed = true;
        }
        let e = self.meta.get_mut(name).expect("inserted above");
        e.1 = scrape;
        &mut e.0
    }

    /// After a good scrape: families it no longer has are forgotten.
    fn end_meta(&mut self) {
        let scrape = self.scrapes;
        let before = self.meta.len();
        self.meta.retain(|_, (_, seen)| *seen == scrape);
        self.meta_changed |= self.meta.len() != before;
    }
}

const REPORT_NAMES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Pages up to this size are ingested on the async worker itself.
const INLINE_INGEST_BYTES: usize = 256 << 10;

/// How close to its scheduled time a scrape must start to be stamped with it.
const TIMESTAMP_TOLERANCE_MS: i64 = 25;

pub(crate) use tiermon_model::now_ms as wall_ms;

/// The first scheduled time after `now` for a target: the target's slot
/// within the interval, the same in every interval.
pub(crate) fn first_slot(now: i64, interval_ms: i64, key: u64, seed: u64) -> i64 {
    let iv = interval_ms.max(1);
    let offset = ((key ^ seed) % iv as u64) as i64;
    let mut next = now - now.rem_euclid(iv) + offset;
    if next <= now {
        next += iv;
    }
    next
}

pub(crate) async fn run(
    target: Arc<Target>,
    mut rt: watch::Receiver<Arc<JobRuntime>>,
    db: Db,
    status: Arc<Mutex<Status>>,
    mut cmd: watch::Receiver<Cmd>,
    seed: u64,
) {
    let iv = target.interval.as_millis() as i64;
    let mut state = Some(LoopState::new());
    let mut runtime = rt.borrow_and_update().clone();
    let mut idle = crate::http1::Idle::default();
    let mut next = first_slot(wall_ms(), iv, target.key, seed);
    loop {
        let wait = Duration::from_millis((next - wall_ms()).max(0) as u64);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = cmd.changed() => {}
        }
        match *cmd.borrow() {
            Cmd::Run => {}
            Cmd::Shutdown => return,
            Cmd::Gone => break,
        }
        if rt.has_changed().unwrap_or(false) {
            runtime = rt.borrow_and_update().clone();
            // Limits or metric relabelling may have changed: decide every
            // series afresh (the store still knows their references).
            if let Some(s) = state.as_mut() {
                s.cache = SeriesCache::new();
                s.untracked.clear();
            }
        }
        let now = wall_ms();
        if now < next {
            continue;
        }
        let t = if now - next <= TIMESTAMP_TOLERANCE_MS {
            next
        } else {
            now
        };
        let started = Instant::now();
        // Boxed: the exchange's state (kilobytes) exists during the scrape
        // only, not in the loop's task between scrapes.
        let fetched = tokio::select! {
            r = Box::pin(fetch(&runtime, &target, &mut idle)) => r,
            _ = cmd.changed() => match *cmd.borrow() {
                Cmd::Shutdown => return,
                // Gone mid-scrape: discard it and go stale.
                _ => break,
            },
        };
        let duration = started.elapsed();
        let mut st = state.take().expect("state is returned after every scrape");
        // A typical page (hundreds of series) is parsed and committed in
        // tens of microseconds: cheaper on this worker than a hand-off to
        // the blocking pool, which costs two thread wake-ups per scrape.
        // Large pages, or a WAL that syncs to disk, go to the blocking pool.
        let small = fetched
            .as_ref()
            .map_or(true, |(b, _)| b.len() <= INLINE_INGEST_BYTES);
        let (mut st, report) = if small && !db.options().wal_fsync {
            let report = ingest(&mut st, &db, &runtime.job, &target, fetched, t, duration);
            (st, report)
        } else {
            let (db2, rt2, tg) = (db.clone(), runtime.clone(), target.clone());
            let joined = tokio::task::spawn_blocking(move || {
                let report = ingest(&mut st, &db2, &rt2.job, &tg, fetched, t, duration);
                (st, report)
            })
            .await;
            match joined {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(target = %target.url, error = %e, "scrape ingestion failed");
                    return;
                }
            }
        };
        let metadata = std::mem::take(&mut st.meta_changed).then(|| {
            Arc::new(
                st.meta
                    .iter()
                    .map(|(k, (m, _))| (k.clone(), m.clone()))
                    .collect::<BTreeMap<_, _>>(),
            )
        });
        state = Some(st);
        {
            let mut s = status.lock();
            if let Some(m) = metadata {
                s.metadata = m;
            }
            s.health = if report.error.is_none() {
                Health::Up
            } else {
                Health::Down
            };
            s.last_error = report.error.clone().unwrap_or_default();
            s.last_scrape_ms = t;
            s.last_duration = duration;
            s.samples = report.stored;
            s.rejected = report.rejected;
        }
        if let Some(e) = &report.error {
            tracing::debug!(target = %target.url, error = %e, "scrape failed");
        }
        next += iv;
        let now = wall_ms();
        if next <= now {
            // Fell behind (a long stall): skip the missed slots.
            next += ((now - next) / iv + 1) * iv;
        }
    }
    // The target is gone: its series and its report series end now.
    if let Some(mut st) = state {
        let t = wall_ms();
        let _ = tokio::task::spawn_blocking(move || {
            let mut app = db.appender();
            mark_stale(&mut app, st.cache.drain(), &mut st.untracked, t);
            for r in st.report.into_iter().flatten() {
                app.append_ref(r, t, STALE_NAN);
            }
            if let Err(e) = app.commit() {
                tracing::warn!(error = %e, "writing staleness markers of a removed target");
            }
        })
        .await;
    }
}

/// A scrape's body and its format, or why there is none.
type Fetched = Result<(Vec<u8>, Format), String>;

async fn fetch(rt: &JobRuntime, target: &Target, idle: &mut crate::http1::Idle) -> Fetched {
    let job = &rt.job;
    let timeout = target.timeout;
    let fut = async {
        if target.url.scheme() == "http" {
            match fetch_plain(rt, target, idle).await? {
                crate::http1::Answer::Page { body, content_type } => {
                    return Ok((body, format_of(content_type.as_ref())));
                }
                // Followed by the general client, from the start.
                crate::http1::Answer::Redirect => {}
            }
        }
        let mut resp = request(rt, target)?.send().await.map_err(describe)?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("server returned HTTP status {status}"));
        }
        let format = format_of(resp.headers().get(reqwest::header::CONTENT_TYPE));
        let limit = job.limits.body_size;
        let mut body = Vec::with_capacity(
            resp.content_length()
                .map_or(64 << 10, |n| n.min(16 << 20) as usize),
        );
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            body.extend_from_slice(&chunk);
            crate::http1::within(body.len(), limit)?;
        }
        Ok((body, format))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "context deadline exceeded: no complete answer within the scrape timeout of {}",
            crate::config::PromDuration(timeout)
        )),
    }
}

/// A plain-HTTP scrape on the target's own connection (see [`crate::http1`]),
/// with the headers the general client would send.
async fn fetch_plain(
    rt: &JobRuntime,
    target: &Target,
    idle: &mut crate::http1::Idle,
) -> Result<crate::http1::Answer, String> {
    let job = &rt.job;
    let mut req = request(rt, target)?.build().map_err(describe)?;
    let mut headers = std::mem::take(req.headers_mut());
    headers.insert(
        reqwest::header::USER_AGENT,
        reqwest::header::HeaderValue::from_static(crate::client::USER_AGENT),
    );
    if job.compression {
        headers.insert(
            reqwest::header::ACCEPT_ENCODING,
            reqwest::header::HeaderValue::from_static("gzip"),
        );
    }
    crate::http1::get(
        idle,
        &target.url,
        &headers,
        job.limits.body_size,
        job.config.follow_redirects != Some(false),
    )
    .await
}

/// A scrape's request as the job's client sends it: `Accept` by the
/// job's formats, Prometheus' timeout header, the job's credentials.
fn request(rt: &JobRuntime, target: &Target) -> Result<reqwest::RequestBuilder, String> {
    let job = &rt.job;
    crate::client::authorize(
        rt.client
            .get(target.url.clone())
            .header(reqwest::header::ACCEPT, job.accept.as_str())
            .header(
                "X-Prometheus-Scrape-Timeout-Seconds",
                format!("{}", target.timeout.as_secs_f64()),
            ),
        job.config.basic_auth.as_ref(),
        job.config.authorization.as_ref(),
    )
}

/// The exposition format a `Content-Type` names (text 0.0.4 when none).
fn format_of(content_type: Option<&reqwest::header::HeaderValue>) -> Format {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(Format::from_content_type)
        .unwrap_or_default()
}

/// The error of a request with its causes (reqwest's own message is terse).
fn describe(e: reqwest::Error) -> String {
    crate::client::with_causes(&e)
}

/// What one scrape did.
#[derive(Debug, Default)]
struct Report {
    error: Option<String>,
    stored: u64,
    rejected: u64,
}

struct Counts {
    scraped: u64,
    post_relabel: u64,
    added: u64,
}

fn ingest(
    st: &mut LoopState,
    db: &Db,
    job: &Job,
    target: &Target,
    fetched: Fetched,
    t: i64,
    duration: Duration,
) -> Report {
    let mut app = db.appender();
    // About the last page's samples and the report series: one allocation
    // (growing step by step was a fifth of the scraper's CPU, in malloc).
    app.reserve(st.cache.len() + REPORT_NAMES.len());
    let mut rejected = 0u64;
    let mut first_rejection = None;
    let result = fetched.and_then(|(body, format)| {
        append_samples(
            st,
            db,
            &mut app,
            job,
            target,
            &body,
            format,
            t,
            &mut rejected,
            &mut first_rejection,
        )
    });
    let (up, counts, error) = match result {
        Ok(c) => {
            mark_stale(&mut app, st.cache.end_scrape(), &mut st.untracked, t);
            st.end_meta();
            (1.0, c, None)
        }
        Err(e) => {
            // Nothing of a failed scrape is kept, and everything the last
            // good scrape had goes stale (as in Prometheus).
            app = db.appender();
            mark_stale(&mut app, st.cache.drain(), &mut st.untracked, t);
            let zero = Counts {
                scraped: 0,
                post_relabel: 0,
                added: 0,
            };
            (0.0, zero, Some(e))
        }
    };
    let refs = match st.report {
        Some(r) => Some(r),
        None => report_refs(db, &target.labels).ok(),
    };
    st.report = refs;
    if let Some(r) = refs {
        let values = [
            up,
            duration.as_secs_f64(),
            counts.scraped as f64,
            counts.post_relabel as f64,
            counts.added as f64,
        ];
        for (r, v) in r.iter().zip(values) {
            app.append_ref(*r, t, v);
        }
    }
    let stored = app.len() as u64;
    match app.commit() {
        Ok(res) => {
            rejected += res.rejected.len() as u64;
            if first_rejection.is_none() {
                first_rejection = res.rejected.into_iter().next().map(|(_, e)| e.to_string());
            }
        }
        Err(e) => {
            return Report {
                error: Some(format!("storing the scrape: {e}")),
                stored: 0,
                rejected: stored,
            };
        }
    }
    if rejected > 0 {
        tracing::warn!(
            target = %target.url,
            rejected,
            first = first_rejection.as_deref().unwrap_or(""),
            "samples refused by the store"
        );
    }
    Report {
        error,
        stored: stored.saturating_sub(rejected),
        rejected,
    }
}

/// Appends staleness markers at `t` for the `ended` series that track
/// staleness; the untracked ones leave `untracked`.
fn mark_stale(
    app: &mut tiermon_tsdb::Appender<'_>,
    ended: Vec<Cached>,
    untracked: &mut HashSet<SeriesRef>,
    t: i64,
) {
    for r in ended {
        if r != DROPPED && !untracked.remove(&r) {
            app.append_ref(r, t, STALE_NAN);
        }
    }
}

fn report_refs(db: &Db, target: &Labels) -> Result<[SeriesRef; 5], tiermon_tsdb::Error> {
    let mut out = [0; 5];
    for (i, name) in REPORT_NAMES.iter().enumerate() {
        let mut lb = target.to_builder();
        lb.set(tiermon_model::METRIC_NAME, *name);
        out[i] = db.series_ref(&lb.build())?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn append_samples(
    st: &mut LoopState,
    db: &Db,
    app: &mut tiermon_tsdb::Appender<'_>,
    job: &Job,
    target: &Target,
    body: &[u8],
    format: Format,
    t: i64,
    rejected: &mut u64,
    first_rejection: &mut Option<String>,
) -> Result<Counts, String> {
    let mut parser = Parser::from_bytes(body, format).map_err(|e| format!("parse error: {e}"))?;
    let mut c = Counts {
        scraped: 0,
        post_relabel: 0,
        added: 0,
    };
    let limit = job.limits.samples;
    st.scrapes += 1;
    // Series new to this target: created together once the page is read.
    let mut fresh: Vec<Fresh<'_>> = Vec::new();
    let mut fresh_labels: Vec<Labels> = Vec::new();
    while let Some(entry) = parser
        .next_entry()
        .map_err(|e| format!("parse error: {e}"))?
    {
        let s = match entry {
            Entry::Sample(s) => s,
            Entry::Type { name, kind } => {
                let m = st.meta_entry(name);
                if m.kind != kind {
                    m.kind = kind;
                    st.meta_changed = true;
                }
                continue;
            }
            Entry::Help { name, help } => {
                let m = st.meta_entry(name);
                if m.help != help {
                    m.help = help.into_owned();
                    st.meta_changed = true;
                }
                continue;
            }
            Entry::Unit { name, unit } => {
                let m = st.meta_entry(name);
                if m.unit != unit {
                    m.unit = unit.to_owned();
                    st.meta_changed = true;
                }
                continue;
            }
            _ => continue,
        };
        c.scraped += 1;
        let known = match st.cache.get(s.series) {
            Some(&DROPPED) => continue,
            Some(&r) => Some(r),
            None => match series_labels(&s, target, job)? {
                Some(labels) => {
                    fresh_labels.push(labels);
                    None
                }
                None => {
                    st.cache.insert(s.series, DROPPED);
                    continue;
                }
            },
        };
        c.post_relabel += 1;
        if limit > 0 && c.post_relabel > limit {
            return Err(format!(
                "sample_limit exceeded: more than {limit} samples after metric relabelling"
            ));
        }
        let ts = match (job.honor_timestamps, s.timestamp) {
            (true, Some(ts)) => ts,
            _ => t,
        };
        match known {
            Some(r) => app.append_ref(r, ts, s.value),
            // Created with the page's other new series, after it.
            None => fresh.push(Fresh {
                series: s.series,
                line: st.cache.skip_line(),
                t: ts,
                value: s.value,
                untracked: job.honor_timestamps && s.timestamp.is_some(),
            }),
        }
    }
    if fresh.is_empty() {
        return Ok(c);
    }
    let refs = match db.series_refs(&fresh_labels) {
        Ok(refs) => refs,
        Err(e) => {
            // Storage failed, not the target: its new series are refused.
            *rejected += fresh.len() as u64;
            first_rejection.get_or_insert_with(|| e.to_string());
            return Ok(c);
        }
    };
    for (f, r) in fresh.iter().zip(refs) {
        match r {
            Ok(r) => {
                if st.cache.insert_seen(f.series, r, f.line) {
                    c.added += 1;
                }
                if f.untracked {
                    st.untracked.insert(r);
                }
                app.append_ref(r, f.t, f.value);
            }
            Err(e) => {
                *rejected += 1;
                first_rejection.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok(c)
}

/// A sample of a series new to its target, waiting for the series to be
/// created with the page's other new ones.
struct Fresh<'a> {
    series: &'a str,
    /// Its line in the scrape cache's count.
    line: u32,
    t: i64,
    value: f64,
    /// It carries its own timestamp, so gets no staleness marker.
    untracked: bool,
}

/// The stored labels of a scraped sample: its own, merged with the
/// target's (honor_labels decides clashes), then metric relabelling.
/// `None` when relabelling drops it.
fn series_labels(
    s: &tiermon_exposition::SampleRef<'_>,
    target: &Target,
    job: &Job,
) -> Result<Option<Labels>, String> {
    let mut lb = LabelsBuilder::with_capacity(8 + target.labels.len());
    lb.set(tiermon_model::METRIC_NAME, s.name);
    for (n, v) in s.labels() {
        lb.set(n, v.as_ref());
    }
    if job.config.honor_labels {
        for l in target.labels.iter() {
            if lb.get(&l.name).is_none() {
                lb.set(l.name.clone(), l.value.clone());
            }
        }
    } else {
        let mut clashes = Vec::new();
        for l in target.labels.iter() {
            if let Some(v) = lb.get(&l.name) {
                clashes.push((l.name.to_string(), v.to_owned()));
            }
            lb.set(l.name.clone(), l.value.clone());
        }
        for (name, value) in clashes {
            let mut new = format!("exported_{name}");
            while lb.get(&new).is_some() {
                new = format!("exported_{new}");
            }
            lb.set(new, value);
        }
    }
    if !relabel::relabel(&job.config.metric_relabel_configs, &mut lb) {
        return Ok(None);
    }
    if lb.get(tiermon_model::METRIC_NAME).is_none() {
        return Ok(None);
    }
    check_limits(&lb, &job.limits)?;
    Ok(Some(lb.build()))
}

fn check_limits(lb: &LabelsBuilder, l: &Limits) -> Result<(), String> {
    if l.labels > 0 && lb.len() as u64 > l.labels {
        return Err(format!(
            "label_limit exceeded: a series has {} labels, the limit is {}",
            lb.len(),
            l.labels
        ));
    }
    for (n, v) in lb.iter() {
        if l.label_name_length > 0 && n.len() as u64 > l.label_name_length {
            return Err(format!(
                "label_name_length_limit exceeded: label name {n:?} is longer than {}",
                l.label_name_length
            ));
        }
        if l.label_value_length > 0 && v.len() as u64 > l.label_value_length {
            return Err(format!(
                "label_value_length_limit exceeded: value of label {n:?} is longer than {}",
                l.label_value_length
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of one static target, with `extra` lines of job YAML.
    fn job_and_target(extra: &str) -> (Job, Target) {
        let job = crate::ScrapeFile::parse(&format!(
            "scrape_configs:\n  - job_name: j\n    static_configs: [{{targets: ['127.0.0.1:9']}}]\n{extra}"
        ))
        .unwrap()
        .job(0)
        .unwrap();
        let own = BTreeMap::from([("__address__".to_string(), "127.0.0.1:9".to_string())]);
        let crate::target::Outcome::Active(target) =
            crate::target::build(&job, &BTreeMap::new(), &own)
        else {
            panic!("the target is active");
        };
        (job, target)
    }

    /// A fetched Prometheus text page.
    fn page(s: &str) -> Fetched {
        Ok((
            s.as_bytes().to_vec(),
            tiermon_exposition::Format::Prometheus,
        ))
    }

    /// The samples of metric `name`, as (time, value bits).
    fn samples(db: &Db, name: &str) -> Vec<(i64, u64)> {
        let m =
            tiermon_model::Matcher::new(tiermon_model::MatchOp::Equal, "__name__", name).unwrap();
        db.select(&[m], 0, 10_000)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.samples)
            .map(|s| (s.t, s.v.to_bits()))
            .collect()
    }

    /// (time, value bits) of each (time, value).
    fn bits<const N: usize>(v: [(i64, f64); N]) -> Vec<(i64, u64)> {
        v.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    /// A series that leaves the page gets a staleness marker, unless it
    /// came with its own timestamps (as in Prometheus), and a series that
    /// relabelling drops gets nothing either.
    #[test]
    fn series_that_leave_go_stale_unless_they_bring_their_timestamps() {
        let (job, target) = job_and_target(
            "    metric_relabel_configs: [{source_labels: [__name__], regex: dropped, action: drop}]\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), tiermon_tsdb::Options::default()).unwrap();
        let mut st = LoopState::new();
        let d = Duration::from_millis(1);
        let r = ingest(
            &mut st,
            &db,
            &job,
            &target,
            page("a 1\nb 2 500\ndropped 3\n"),
            1000,
            d,
        );
        assert_eq!(r.error, None);
        let r = ingest(&mut st, &db, &job, &target, page("c 4\n"), 2000, d);
        assert_eq!(r.error, None);
        assert_eq!(samples(&db, "a"), bits([(1000, 1.0), (2000, STALE_NAN)]));
        assert_eq!(samples(&db, "b"), bits([(500, 2.0)]));
        assert_eq!(samples(&db, "dropped"), []);
        assert!(st.untracked.is_empty(), "b left the cache and the set");
    }

    /// New series are created together after the page is read: each
    /// is counted once in scrape_series_added (a line twice included), and
    /// a page over sample_limit creates none of them.
    #[test]
    fn new_series_are_created_together_and_counted_once() {
        let d = Duration::from_millis(1);
        let (job, target) = job_and_target("");
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), tiermon_tsdb::Options::default()).unwrap();
        let mut st = LoopState::new();
        for (t, body) in [
            (1000, "a 1\nb 2\n"),
            (2000, "a 1\nx 5\nb 2\nx 5\ny 7\n"),
            (3000, "a 1\nx 5\nb 2\ny 7\n"),
        ] {
            let r = ingest(&mut st, &db, &job, &target, page(body), t, d);
            assert_eq!(r.error, None);
        }
        assert_eq!(
            samples(&db, "scrape_series_added"),
            bits([(1000, 2.0), (2000, 2.0), (3000, 0.0)])
        );
        assert_eq!(samples(&db, "y"), bits([(2000, 7.0), (3000, 7.0)]));
        assert_eq!(samples(&db, "x"), bits([(2000, 5.0), (3000, 5.0)]));

        let (job, target) = job_and_target("    sample_limit: 2\n");
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), tiermon_tsdb::Options::default()).unwrap();
        let mut st = LoopState::new();
        let r = ingest(
            &mut st,
            &db,
            &job,
            &target,
            page("a 1\nb 2\nc 3\n"),
            1000,
            d,
        );
        assert!(r.error.unwrap().contains("sample_limit"));
        for name in ["a", "b", "c"] {
            let m = tiermon_model::Matcher::new(tiermon_model::MatchOp::Equal, "__name__", name)
                .unwrap();
            assert!(
                db.series(&[m], 0, 10_000).unwrap().is_empty(),
                "{name} created"
            );
        }
        assert_eq!(samples(&db, "up"), bits([(1000, 0.0)]));
    }

    /// A target's loop is a task that lives as long as the target: between
    /// scrapes it must hold its state, not room for a scrape's HTTP
    /// exchange (which would be kilobytes per target, all the time).
    #[tokio::test]
    async fn a_loop_between_scrapes_is_small() {
        let (job, target) = job_and_target("");
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), tiermon_tsdb::Options::default()).unwrap();
        let runtime = Arc::new(JobRuntime {
            job,
            client: reqwest::Client::new(),
        });
        let (_rt, rt_rx) = watch::channel(runtime);
        let (_cmd, cmd_rx) = watch::channel(Cmd::Run);
        let status = Arc::new(Mutex::new(Status::default()));
        let fut = run(Arc::new(target), rt_rx, db, status, cmd_rx, 0);
        let size = std::mem::size_of_val(&fut);
        eprintln!("loop future: {size} bytes");
        assert!(size <= 1024, "a target's loop takes {size} bytes");
    }

    #[test]
    fn slots_spread_targets_across_the_interval() {
        let iv = 15_000;
        let now = 1_700_000_000_123;
        let mut buckets = [0u32; 15];
        for key in 0..5000u64 {
            let k = xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes());
            let s = first_slot(now, iv, k, 7);
            assert!(s > now && s <= now + iv, "{s}");
            buckets[((s % iv) / 1000) as usize] += 1;
        }
        // Each second of the interval gets about 5000/15 = 333 targets.
        for b in buckets {
            assert!((250..420).contains(&b), "{buckets:?}");
        }
        // The slot is stable from interval to interval.
        let k = 12345;
        let a = first_slot(now, iv, k, 0);
        let b = first_slot(now + iv, iv, k, 0);
        assert_eq!(b - a, iv);
    }
}
