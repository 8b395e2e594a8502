//! The receiving side: the `tiermon.v1.Push` service. Applies each batch
//! once (by sender, replica, epoch and sequence), acknowledges it after the
//! commit that makes it durable, de-duplicates the replicas of HA pairs per
//! series, and keeps when each child last reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tiermon_model::{Labels, is_stale_nan};
use tiermon_proto::v1;
use tiermon_tsdb::{Aggregate, Db, Resolution};
use tonic::codegen::tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::alerts::AlertBook;
use crate::codec::{Decoder, Slot};
use crate::forwarder::MAX_MESSAGE;
use crate::source::Children;
use crate::{Error, Identity, Metric, now_ms};

/// Settings of a [`Receiver`].
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// The receiver's name, e.g. `primary/dc1`.
    pub id: String,
    /// Folder of the applied-sequence state.
    pub state_dir: PathBuf,
    /// A child that has not reported for this long counts as gone.
    pub child_timeout: Duration,
    /// Largest batch accepted, in encoded bytes.
    pub max_batch_bytes: usize,
    /// When a replica takes over a series from the other replica of its
    /// pair and the series' interval is not known yet, the least gap after
    /// the last accepted sample.
    pub dedup_gap: Duration,
}

impl ReceiverOptions {
    /// Defaults for a receiver named `id` keeping its state in `state_dir`.
    pub fn new(id: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            state_dir: state_dir.into(),
            child_timeout: Duration::from_secs(60),
            max_batch_bytes: MAX_MESSAGE,
            dedup_gap: Duration::from_secs(5),
        }
    }
}

/// What the receiver knows of one child (or grandchild).
#[derive(Debug, Clone, Default)]
pub struct ChildStatus {
    /// Who.
    pub identity: Identity,
    /// The child that reported it, for grandchildren; empty for direct
    /// children.
    pub via: String,
    /// When it last reported (ms).
    pub last_report_ms: i64,
    /// See `Batch.complete_through_ms`.
    pub complete_through_ms: i64,
    /// Batches applied.
    pub batches: u64,
    /// Samples accepted.
    pub samples: u64,
    /// Samples rejected (too old, invalid).
    pub rejected: u64,
    /// Samples dropped as duplicates of the other replica.
    pub deduplicated: u64,
}

/// The push service over a database.
#[derive(Debug, Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    opts: ReceiverOptions,
    /// Serialises applying batches, so the sequence check and the commit
    /// are one step.
    apply: Mutex<Applied>,
    children: Mutex<HashMap<(String, String, String), ChildStatus>>,
    dedup: Mutex<Dedup>,
    /// The latest alert states of each child.
    alerts: Mutex<AlertBook>,
    /// When this process started (ms): children known from before a
    /// restart get `child_timeout` from then to come back before they stop
    /// holding back the watermark.
    started_ms: i64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Applied {
    /// `id \x1f replica \x1f epoch` → last applied sequence.
    applied: HashMap<String, u64>,
    /// The direct children, so that a restarted receiver knows whom to
    /// wait for before it closes a window.
    #[serde(default)]
    children: Vec<SavedChild>,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct SavedChild {
    id: String,
    tier: String,
    datacenter: String,
    replica: String,
    last_report_ms: i64,
    complete_through_ms: i64,
}

fn key(s: &v1::Sender) -> String {
    format!("{}\u{1f}{}\u{1f}{}", s.id, s.replica, s.epoch)
}

impl Receiver {
    /// A receiver storing into `db`, with its applied sequences in
    /// `opts.state_dir`.
    pub fn new(db: Db, opts: ReceiverOptions) -> Result<Self, Error> {
        std::fs::create_dir_all(&opts.state_dir).map_err(|e| Error::Io {
            what: "creating the receiver state folder",
            path: opts.state_dir.clone(),
            source: e,
        })?;
        let path = opts.state_dir.join("applied.json");
        let applied: Applied = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "unreadable receiver state; batches sent again are applied again (idempotent)");
                Applied::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => {
                return Err(Error::Io {
                    what: "reading the receiver state",
                    path,
                    source: e,
                });
            }
        };
        let children = applied
            .children
            .iter()
            .map(|c| {
                let status = ChildStatus {
                    identity: Identity {
                        id: c.id.clone(),
                        tier: c.tier.clone(),
                        datacenter: c.datacenter.clone(),
                        replica: c.replica.clone(),
                    },
                    last_report_ms: c.last_report_ms,
                    complete_through_ms: c.complete_through_ms,
                    ..ChildStatus::default()
                };
                ((c.id.clone(), c.replica.clone(), String::new()), status)
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                dedup: Mutex::new(Dedup::new(opts.dedup_gap.as_millis() as i64)),
                alerts: Mutex::new(AlertBook::default()),
                opts,
                apply: Mutex::new(applied),
                children: Mutex::new(children),
                started_ms: now_ms(),
            }),
        })
    }

    /// The tonic service.
    pub fn service(&self) -> v1::push_server::PushServer<Receiver> {
        v1::push_server::PushServer::new(self.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Zstd)
            .max_decoding_message_size(self.inner.opts.max_batch_bytes)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// What is known of every child and grandchild.
    pub fn children(&self) -> Vec<ChildStatus> {
        let mut v: Vec<ChildStatus> = self.inner.children.lock().values().cloned().collect();
        v.sort_by(|a, b| {
            (&a.via, &a.identity.id, &a.identity.replica).cmp(&(
                &b.via,
                &b.identity.id,
                &b.identity.replica,
            ))
        });
        v
    }

    /// Applies one batch (sent on its own, outside a stream); the
    /// acknowledgement to send back.
    pub fn apply(&self, batch: v1::Batch) -> Result<v1::PushAck, Error> {
        self.apply_stream(batch, &mut Decoder::default())
    }

    /// Applies one batch of a push stream whose dictionary is `dec`.
    pub(crate) fn apply_stream(
        &self,
        mut batch: v1::Batch,
        dec: &mut Decoder,
    ) -> Result<v1::PushAck, Error> {
        let inner = &self.inner;
        // The dictionary follows every batch, duplicates included.
        let compact = match batch.compact.take() {
            Some(c) => Some(dec.decode(&c, series_labels).map_err(Error::Protocol)?),
            None => None,
        };
        let sender = batch.sender.clone().unwrap_or_default();
        let seq = batch.sequence;
        let k = key(&sender);
        let now = now_ms();
        // Alert states are not data: any batch may replace them.
        if batch.alerts_snapshot {
            inner
                .alerts
                .lock()
                .replace(&identity(&sender), std::mem::take(&mut batch.alerts));
        }
        let mut applied = inner.apply.lock();
        self.touch(&sender, now, batch.complete_through_ms, &batch.children);
        if applied.applied.get(&k).is_some_and(|&last| seq <= last) {
            return Ok(v1::PushAck {
                sequence: seq,
                status: v1::push_ack::Status::Duplicate as i32,
                error: String::new(),
                accepted: 0,
            });
        }
        // Raw samples, or one sample per aggregate: its last value at its
        // last timestamp (see ARCHITECTURE.md). A series of a compact batch
        // is named by the stream's reference, whose labels, hash and local
        // reference the stream's dictionary keeps.
        // The windows themselves are stored too, once the series exist
        // (`Db::put_aggregates`), for the over-time functions.
        type Item = (Entry, Vec<(i64, f64)>, Vec<v1::Aggregate>);
        let entries: Vec<Item> = match compact {
            Some(decoded) => decoded
                .into_iter()
                .map(|d| (Entry::Stream(d.r), d.points, d.aggregates))
                .collect(),
            None => batch
                .series
                .iter_mut()
                .map(|s| {
                    let points = s
                        .samples
                        .iter()
                        .map(|x| (x.timestamp_ms, x.value))
                        .chain(s.aggregates.iter().map(|a| (a.last_timestamp_ms, a.last)))
                        .collect();
                    let aggs = std::mem::take(&mut s.aggregates);
                    (Entry::Plain(series_labels(s)), points, aggs)
                })
                .collect(),
        };
        let mut windows: Vec<(Resolution, tiermon_tsdb::SeriesRef, Aggregate)> = Vec::new();
        let mut app = inner.db.appender();
        let mut errors: Vec<String> = Vec::new();
        let mut deduplicated = 0u64;
        let mut invalid = 0u64;
        {
            let mut dedup = inner.dedup.lock();
            let replica = (!sender.replica.is_empty()).then(|| replica_hash(&sender));
            for (entry, points, aggs) in entries {
                let mut plain_local = None;
                let (labels, id, local) = match &entry {
                    Entry::Plain(l) => (
                        l,
                        l.as_ref().map_or(0, |l| l.series_id().0),
                        &mut plain_local,
                    ),
                    Entry::Stream(r) => match dec.slot_mut(*r) {
                        Some(Slot { labels, id, local }) => (&*labels, *id, local),
                        None => {
                            invalid += points.len() as u64;
                            continue;
                        }
                    },
                };
                let labels = match labels {
                    Ok(l) => l,
                    Err(e) => {
                        invalid += points.len() as u64;
                        if errors.len() < 3 {
                            errors.push(e.clone());
                        }
                        continue;
                    }
                };
                for (t, v) in points {
                    if let Some(rep) = replica
                        && !dedup.admit(id, rep, t, is_stale_nan(v))
                    {
                        deduplicated += 1;
                        continue;
                    }
                    match *local {
                        Some(r) => app.append_ref(r, t, v),
                        None => match app.append(labels, t, v) {
                            Ok(x) => *local = Some(x),
                            Err(e) => {
                                invalid += 1;
                                if errors.len() < 3 {
                                    errors.push(format!("series {labels}: {e}"));
                                }
                                break;
                            }
                        },
                    }
                }
                if let Some(r) = *local {
                    windows.extend(aggs.iter().filter_map(|a| {
                        let res = match a.end_ms.wrapping_sub(a.start_ms) {
                            60_000 => Resolution::OneMinute,
                            3_600_000 => Resolution::OneHour,
                            _ => return None,
                        };
                        Some((res, r, aggregate(a)))
                    }));
                }
            }
        }
        let res = app.commit()?;
        for want in [Resolution::OneMinute, Resolution::OneHour] {
            let these: Vec<_> = windows
                .iter()
                .filter(|w| w.0 == want)
                .map(|&(_, r, a)| (r, a))
                .collect();
            inner.db.put_aggregates(want, &these)?;
        }
        let rejected = res.rejected.len() as u64 + invalid;
        for (_, e) in res
            .rejected
            .iter()
            .take(3usize.saturating_sub(errors.len()))
        {
            errors.push(e.to_string());
        }
        applied.applied.insert(k, seq);
        self.save(&mut applied);
        drop(applied);
        if let Some(c) = inner.children.lock().get_mut(&child_key(&sender, "")) {
            c.batches += 1;
            c.samples += res.accepted as u64;
            c.rejected += rejected;
            c.deduplicated += deduplicated;
        }
        Ok(v1::PushAck {
            sequence: seq,
            status: if rejected == 0 {
                v1::push_ack::Status::Ok as i32
            } else {
                v1::push_ack::Status::Rejected as i32
            },
            error: if rejected == 0 {
                String::new()
            } else {
                format!("{rejected} samples rejected: {}", errors.join("; "))
            },
            accepted: res.accepted as u64,
        })
    }

    /// The pending and firing alerts of every child that reports (and of
    /// its children, which it relays), one per label set and child: the
    /// replicas of a pair give one. An alert gets its child's
    /// `datacenter` label unless it has one; `source` names where it was
    /// evaluated.
    pub fn alerts(&self) -> Vec<v1::Alert> {
        let live = self.reporting();
        self.inner
            .alerts
            .lock()
            .current(|c| live.contains(&key_of(c)))
    }

    /// The direct children that reported within the child timeout, by
    /// (id, replica).
    fn reporting(&self) -> std::collections::HashSet<(String, String)> {
        let now = now_ms();
        let timeout = self.inner.opts.child_timeout.as_millis() as i64;
        self.inner
            .children
            .lock()
            .values()
            .filter(|c| c.via.is_empty() && now - c.last_report_ms <= timeout)
            .map(|c| key_of(&c.identity))
            .collect()
    }

    fn touch(&self, s: &v1::Sender, now: i64, complete: i64, grandchildren: &[v1::ChildReport]) {
        let mut children = self.inner.children.lock();
        let c = children.entry(child_key(s, "")).or_default();
        c.identity = identity(s);
        c.last_report_ms = now;
        if complete > 0 {
            c.complete_through_ms = c.complete_through_ms.max(complete);
        }
        let via = Identity {
            id: s.id.clone(),
            replica: s.replica.clone(),
            ..Identity::default()
        }
        .display();
        for g in grandchildren {
            let id = Identity {
                id: g.child_id.clone(),
                tier: g.tier.clone(),
                datacenter: g.datacenter.clone(),
                replica: g.replica.clone(),
            };
            let e = children
                .entry((id.id.clone(), id.replica.clone(), via.clone()))
                .or_default();
            e.identity = id;
            e.via = via.clone();
            e.last_report_ms = e.last_report_ms.max(g.last_report_ms);
        }
    }

    fn save(&self, applied: &mut Applied) {
        applied.children = self
            .inner
            .children
            .lock()
            .values()
            .filter(|c| c.via.is_empty())
            .map(|c| SavedChild {
                id: c.identity.id.clone(),
                tier: c.identity.tier.clone(),
                datacenter: c.identity.datacenter.clone(),
                replica: c.identity.replica.clone(),
                last_report_ms: c.last_report_ms,
                complete_through_ms: c.complete_through_ms,
            })
            .collect();
        let path = self.inner.opts.state_dir.join("applied.json");
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(applied).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
            // The data is committed; a batch sent again is applied again,
            // which storage makes a no-op.
            tracing::warn!(path = %path.display(), error = %e, "cannot save the receiver state");
        }
    }

    /// Liveness and intake metrics, by child.
    pub fn metrics(&self) -> Vec<Metric> {
        let now = now_ms();
        let timeout = self.inner.opts.child_timeout.as_millis() as i64;
        let children = self.children();
        let labels = |c: &ChildStatus| {
            vec![
                ("child", c.identity.id.clone()),
                ("tier", c.identity.tier.clone()),
                ("datacenter", c.identity.datacenter.clone()),
                ("replica", c.identity.replica.clone()),
                ("via", c.via.clone()),
            ]
        };
        let direct = || children.iter().filter(|c| c.via.is_empty());
        let live = self.reporting();
        let (alerts, refused) = {
            let book = self.inner.alerts.lock();
            (book.counts(|c| live.contains(&key_of(c))), book.dropped)
        };
        vec![
            Metric {
                name: "tiermon_child_alerts",
                help: "Pending and firing alerts each reporting child holds (its own and those it relays).",
                kind: "gauge",
                series: alerts
                    .into_iter()
                    .map(|(id, state, n)| {
                        (
                            vec![
                                ("child", id.id),
                                ("tier", id.tier),
                                ("datacenter", id.datacenter),
                                ("replica", id.replica),
                                ("state", state.to_owned()),
                            ],
                            n as f64,
                        )
                    })
                    .collect(),
            },
            Metric {
                name: "tiermon_push_refused_alerts_total",
                help: "Alerts in children's sets that were refused (invalid labels, unknown state, too many).",
                kind: "counter",
                series: vec![(Vec::new(), refused as f64)],
            },
            Metric {
                name: "tiermon_child_last_report_timestamp_seconds",
                help: "When each child (via: the child that relayed it) last reported to this tier.",
                kind: "gauge",
                series: children
                    .iter()
                    .map(|c| (labels(c), c.last_report_ms as f64 / 1000.0))
                    .collect(),
            },
            Metric {
                name: "tiermon_child_up",
                help: "1 when the child reported within the child timeout, 0 when it has gone dark.",
                kind: "gauge",
                series: children
                    .iter()
                    .map(|c| {
                        (
                            labels(c),
                            f64::from(u8::from(now - c.last_report_ms <= timeout)),
                        )
                    })
                    .collect(),
            },
            Metric {
                name: "tiermon_push_received_samples_total",
                help: "Samples accepted from each child.",
                kind: "counter",
                series: direct().map(|c| (labels(c), c.samples as f64)).collect(),
            },
            Metric {
                name: "tiermon_push_rejected_samples_total",
                help: "Samples from each child rejected as invalid or too old.",
                kind: "counter",
                series: direct().map(|c| (labels(c), c.rejected as f64)).collect(),
            },
            Metric {
                name: "tiermon_push_deduplicated_samples_total",
                help: "Samples from each replica dropped because the other replica of its pair supplied them.",
                kind: "counter",
                series: direct()
                    .map(|c| (labels(c), c.deduplicated as f64))
                    .collect(),
            },
        ]
    }

    /// Reports of every child, for the tier above.
    pub fn reports(&self) -> Vec<v1::ChildReport> {
        self.children()
            .into_iter()
            .map(|c| v1::ChildReport {
                child_id: c.identity.id,
                last_report_ms: c.last_report_ms,
                tier: c.identity.tier,
                datacenter: c.identity.datacenter,
                replica: c.identity.replica,
            })
            .collect()
    }

    /// Time through which every live direct child's data has arrived: per
    /// child id the best of its replicas, then the least over ids. A child
    /// known from before a restart counts as live for `child_timeout` after
    /// the start, so that its backlog is waited for.
    pub fn watermark(&self) -> Option<i64> {
        let now = now_ms();
        let timeout = self.inner.opts.child_timeout.as_millis() as i64;
        let mut by_id: HashMap<String, i64> = HashMap::new();
        for c in self.children() {
            let seen = c.last_report_ms.max(self.inner.started_ms);
            if !c.via.is_empty() || now - seen > timeout {
                continue;
            }
            let e = by_id.entry(c.identity.id.clone()).or_insert(i64::MIN);
            *e = (*e).max(c.complete_through_ms);
        }
        by_id.into_values().min()
    }
}

impl Children for Receiver {
    fn reports(&self) -> Vec<v1::ChildReport> {
        Receiver::reports(self)
    }

    fn watermark(&self) -> Option<i64> {
        Receiver::watermark(self)
    }
}

fn key_of(c: &Identity) -> (String, String) {
    (c.id.clone(), c.replica.clone())
}

fn identity(s: &v1::Sender) -> Identity {
    Identity {
        id: s.id.clone(),
        tier: s.tier.clone(),
        datacenter: s.datacenter.clone(),
        replica: s.replica.clone(),
    }
}

fn child_key(s: &v1::Sender, via: &str) -> (String, String, String) {
    (s.id.clone(), s.replica.clone(), via.to_owned())
}

fn replica_hash(s: &v1::Sender) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.replica.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A window as the storage keeps it.
fn aggregate(a: &v1::Aggregate) -> Aggregate {
    Aggregate {
        start: a.start_ms,
        min: a.min,
        max: a.max,
        sum: a.sum,
        count: a.count,
        last: a.last,
        last_t: a.last_timestamp_ms,
        counter: a.counter,
    }
}

/// The labels of a pushed series, checked as remote_write intake checks
/// them.
fn series_labels(s: &v1::Series) -> Result<Labels, String> {
    if s.labels.is_empty() {
        return Err("a series without labels".into());
    }
    for l in &s.labels {
        let ok = !l.name.is_empty()
            && l.name.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            });
        if !ok {
            return Err(format!("invalid label name {:?}", l.name));
        }
    }
    let labels = Labels::from_pairs(s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())));
    if labels.is_empty() {
        return Err("a series whose labels are all empty".into());
    }
    Ok(labels)
}

/// Per-series choice between the replicas of an HA pair: the replica that
/// supplied a series' last sample keeps supplying it; the other replica
/// takes over once its sample is at least half an interval after the last
/// one accepted (or right after a staleness marker), so a pair yields one
/// sample per scrape interval, and the death of either replica costs at
/// most one interval.
#[derive(Debug)]
pub(crate) struct Dedup {
    series: HashMap<u64, SeriesChoice>,
    default_gap: i64,
}

#[derive(Debug, Clone, Copy)]
struct SeriesChoice {
    replica: u64,
    last_t: i64,
    interval: i64,
    stale: bool,
}

impl Dedup {
    pub(crate) fn new(default_gap_ms: i64) -> Self {
        Self {
            series: HashMap::new(),
            default_gap: default_gap_ms.max(1),
        }
    }

    /// Whether a sample at `t` from `replica` is kept.
    pub(crate) fn admit(&mut self, id: u64, replica: u64, t: i64, stale: bool) -> bool {
        let c = self.series.entry(id).or_insert(SeriesChoice {
            replica,
            last_t: i64::MIN,
            interval: 0,
            stale: false,
        });
        if c.replica == replica {
            if t > c.last_t {
                if c.last_t != i64::MIN {
                    c.interval = t - c.last_t;
                }
                c.last_t = t;
                c.stale = stale;
            }
            return true;
        }
        let gap = if c.interval > 0 {
            (c.interval / 2).max(1)
        } else {
            self.default_gap
        };
        if c.stale || t >= c.last_t.saturating_add(gap) {
            c.replica = replica;
            c.last_t = t;
            c.stale = stale;
            return true;
        }
        false
    }
}

/// A series to store: with its labels (or why they are invalid), or by
/// its reference on the stream.
enum Entry {
    Plain(Result<Labels, String>),
    Stream(u32),
}

type AckStream = Pin<Box<dyn Stream<Item = Result<v1::PushAck, Status>> + Send>>;

#[tonic::async_trait]
impl v1::push_server::Push for Receiver {
    async fn handshake(
        &self,
        req: Request<v1::HandshakeRequest>,
    ) -> Result<Response<v1::HandshakeResponse>, Status> {
        let sender = req
            .into_inner()
            .sender
            .ok_or_else(|| Status::invalid_argument("handshake without a sender"))?;
        if sender.id.is_empty() {
            return Err(Status::invalid_argument("handshake: sender.id is empty"));
        }
        let last = self
            .inner
            .apply
            .lock()
            .applied
            .get(&key(&sender))
            .copied()
            .unwrap_or(0);
        self.touch(&sender, now_ms(), 0, &[]);
        tracing::info!(sender = %sender.id, replica = %sender.replica, last_applied = last, "child connected");
        Ok(Response::new(v1::HandshakeResponse {
            receiver_id: self.inner.opts.id.clone(),
            last_applied_sequence: last,
            max_batch_bytes: self.inner.opts.max_batch_bytes as u64,
        }))
    }

    type PushStream = AckStream;

    async fn push(
        &self,
        req: Request<Streaming<v1::Batch>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let mut batches = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let this = self.clone();
        let dec = Arc::new(Mutex::new(Decoder::default()));
        tokio::spawn(async move {
            loop {
                let batch = match batches.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "push stream ended");
                        return;
                    }
                };
                if batch.sender.as_ref().is_none_or(|s| s.id.is_empty()) {
                    let _ = tx
                        .send(Err(Status::invalid_argument("a batch without sender.id")))
                        .await;
                    return;
                }
                let (r, d) = (this.clone(), dec.clone());
                let ack = match tokio::task::spawn_blocking(move || {
                    r.apply_stream(batch, &mut d.lock())
                })
                .await
                {
                    Ok(Ok(ack)) => Ok(ack),
                    Ok(Err(Error::Protocol(e))) => {
                        tracing::error!(error = %e, "malformed batch; ending the push stream (the sender reconnects and resends)");
                        Err(Status::invalid_argument(e))
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "applying a pushed batch failed; the sender retries it");
                        Err(Status::unavailable(format!("storing the batch: {e}")))
                    }
                    Err(e) => Err(Status::internal(format!("applying the batch: {e}"))),
                };
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_yields_one_sample_per_interval_and_survives_either_replica() {
        let (a, b) = (1u64, 2u64);
        let mut d = Dedup::new(5000);
        let mut kept = Vec::new();
        // Both replicas scrape every 15 s, b 4 s after a.
        for i in 0..10i64 {
            let t = i * 15_000;
            if d.admit(7, a, t, false) {
                kept.push(t);
            }
            if d.admit(7, b, t + 4000, false) {
                kept.push(t + 4000);
            }
        }
        assert_eq!(kept, (0..10).map(|i| i * 15_000).collect::<Vec<_>>());
        // a dies: b takes over at its next sample.
        kept.clear();
        for i in 10..14i64 {
            if d.admit(7, b, i * 15_000 + 4000, false) {
                kept.push(i * 15_000 + 4000);
            }
        }
        assert_eq!(kept.len(), 4, "no gap when a replica dies");
        // a returns and backfills what b already supplied: dropped.
        assert!(!d.admit(7, a, 12 * 15_000, false));
        // a staleness marker from the supplier lets the other take over at once.
        assert!(d.admit(7, b, 14 * 15_000 + 4000, true));
        assert!(d.admit(7, a, 14 * 15_000 + 5000, false));
    }

    fn batch(seq: u64, name: &str, t: i64) -> v1::Batch {
        v1::Batch {
            sender: Some(v1::Sender {
                id: "secondary/dc1/pair-1".into(),
                tier: "secondary".into(),
                datacenter: "dc1".into(),
                replica: String::new(),
                epoch: 7,
            }),
            sequence: seq,
            series: vec![v1::Series {
                labels: vec![v1::Label {
                    name: "__name__".into(),
                    value: name.into(),
                }],
                samples: vec![v1::Sample {
                    timestamp_ms: t,
                    value: 1.0,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn count(db: &Db, name: &str) -> usize {
        let m =
            tiermon_model::Matcher::new(tiermon_model::MatchOp::Equal, "__name__", name).unwrap();
        db.select(&[m], 0, i64::MAX / 2)
            .unwrap()
            .iter()
            .map(|s| s.samples.len())
            .sum()
    }

    #[test]
    fn alert_states_ride_on_any_batch_and_leave_with_a_silent_child() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db"), tiermon_tsdb::Options::default()).unwrap();
        let opts = ReceiverOptions {
            child_timeout: Duration::from_millis(300),
            ..ReceiverOptions::new("primary/dc1", dir.path().join("receiver"))
        };
        let r = Receiver::new(db, opts).unwrap();
        let firing = |name: &str| v1::Alert {
            labels: vec![v1::Label {
                name: "alertname".into(),
                value: name.into(),
            }],
            state: v1::alert::State::Firing as i32,
            source: "secondary/dc1/a".into(),
            ..v1::Alert::default()
        };
        let mut b = batch(5, "m", 1000);
        b.alerts = vec![firing("HostDown")];
        b.alerts_snapshot = true;
        r.apply(b).unwrap();
        let got = r.alerts();
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .labels
                .iter()
                .any(|l| l.name == "datacenter" && l.value == "dc1")
        );
        // A duplicate (a heartbeat) still replaces the set.
        let mut hb = batch(5, "m", 1000);
        hb.series.clear();
        hb.alerts = vec![firing("DiskFull"), firing("HostDown")];
        hb.alerts_snapshot = true;
        let ack = r.apply(hb).unwrap();
        assert_eq!(ack.status, v1::push_ack::Status::Duplicate as i32);
        assert_eq!(r.alerts().len(), 2);
        // Alerts not flagged as a set change nothing.
        let mut stray = batch(6, "m", 2000);
        stray.alerts = vec![firing("Other")];
        r.apply(stray).unwrap();
        assert_eq!(r.alerts().len(), 2);
        let m = r.metrics();
        let held = m.iter().find(|m| m.name == "tiermon_child_alerts").unwrap();
        assert!(
            held.series
                .iter()
                .any(|(l, v)| *v == 2.0 && l.contains(&("state", "firing".to_owned())))
        );
        // A batch without a set keeps the child, and so its set, alive.
        std::thread::sleep(Duration::from_millis(200));
        r.apply(batch(7, "m", 3000)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(r.alerts().len(), 2, "reported 200 ms ago");
        // The child falls silent: its alerts go with it.
        std::thread::sleep(Duration::from_millis(400));
        assert!(r.alerts().is_empty());
    }

    #[test]
    fn a_batch_is_applied_once_across_a_restart_and_bad_series_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db"), tiermon_tsdb::Options::default()).unwrap();
        let opts = ReceiverOptions::new("primary/dc1", dir.path().join("receiver"));
        let r = Receiver::new(db.clone(), opts.clone()).unwrap();
        let ack = r.apply(batch(10, "m", 1000)).unwrap();
        assert_eq!(ack.status, v1::push_ack::Status::Ok as i32);
        assert_eq!(ack.accepted, 1);
        assert_eq!(count(&db, "m"), 1, "stored when acknowledged");
        // The same sequence again, or an older one, is a duplicate.
        let again = r.apply(batch(10, "m", 2000)).unwrap();
        assert_eq!(again.status, v1::push_ack::Status::Duplicate as i32);
        assert_eq!(count(&db, "m"), 1);
        // After a restart the receiver still knows what it applied.
        drop(r);
        let r = Receiver::new(db.clone(), opts).unwrap();
        let again = r.apply(batch(9, "m", 3000)).unwrap();
        assert_eq!(again.status, v1::push_ack::Status::Duplicate as i32);
        assert_eq!(count(&db, "m"), 1);
        assert_eq!(r.children().len(), 1, "the child is remembered");
        // A series with a bad label name is rejected, and named.
        let mut bad = batch(11, "m", 4000);
        bad.series[0].labels.push(v1::Label {
            name: "0bad".into(),
            value: "x".into(),
        });
        let bad = r.apply(bad).unwrap();
        assert_eq!(bad.status, v1::push_ack::Status::Rejected as i32);
        assert!(bad.error.contains("0bad"), "{}", bad.error);
        // A malformed compact batch is a protocol error (the stream ends).
        let mut broken = batch(12, "m", 5000);
        broken.series.clear();
        broken.compact = Some(v1::Compact {
            refs: vec![2],
            counts: vec![1],
            ..Default::default()
        });
        assert!(matches!(r.apply(broken), Err(Error::Protocol(_))));
    }

    #[test]
    fn bad_labels_are_named() {
        let s = v1::Series {
            labels: vec![v1::Label {
                name: "0bad".into(),
                value: "x".into(),
            }],
            ..Default::default()
        };
        assert!(series_labels(&s).unwrap_err().contains("0bad"));
        assert!(series_labels(&v1::Series::default()).is_err());
    }
}
