//! The sending side: one task per destination, streaming a [`Source`]'s
//! batches with a bounded window of unacknowledged ones, reconnecting with
//! exponential backoff and jitter, and resuming after the last sequence the
//! receiver applied.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message;
use tiermon_proto::v1;
use tiermon_proto::v1::push_client::PushClient;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::alerts::{AlertFeed, Outbox};
use crate::codec::Encoder;
use crate::source::Source;
use crate::{Error, Identity, Metric, now_ms};

/// Largest gRPC message either side accepts.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Settings of a [`Forwarder`].
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// The receiver, e.g. `http://primary:9090`.
    pub url: String,
    /// Who we are.
    pub identity: Identity,
    /// Batches sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Samples per batch, at most.
    pub batch_samples: usize,
    /// How often to look for new data when there was none.
    pub poll: Duration,
    /// First and longest wait between connection attempts.
    pub backoff: (Duration, Duration),
    /// With nothing to send for this long, an empty batch tells the
    /// receiver that the sender is alive (and caught up).
    pub heartbeat: Duration,
    /// The sender's alert states, sent upward when they change.
    pub alerts: Option<AlertFeed>,
    /// An unchanged set of alerts is sent again after this long, so that
    /// a receiver that restarted has it again soon.
    pub alerts_refresh: Duration,
}

impl ForwarderOptions {
    /// Defaults for sending to `url` as `identity`.
    pub fn new(url: impl Into<String>, identity: Identity) -> Self {
        Self {
            url: url.into(),
            identity,
            max_in_flight: 4,
            batch_samples: 20_000,
            poll: Duration::from_millis(200),
            backoff: (Duration::from_millis(200), Duration::from_secs(30)),
            heartbeat: Duration::from_secs(2),
            alerts: None,
            alerts_refresh: Duration::from_secs(30),
        }
    }
}

/// What a forwarder has done, for metrics and the hierarchy view.
#[derive(Debug, Clone, Default)]
pub struct ForwarderStatus {
    /// The receiver's address.
    pub destination: String,
    /// The receiver's own name, from the handshake.
    pub receiver: String,
    /// Whether a stream is open.
    pub connected: bool,
    /// Last sequence the receiver applied.
    pub acked_seq: u64,
    /// When the last acknowledgement came (ms).
    pub last_ack_ms: i64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Raw samples acknowledged.
    pub samples: u64,
    /// Encoded bytes sent (before gRPC compression).
    pub bytes: u64,
    /// Batches the receiver rejected in part or whole.
    pub rejected: u64,
    /// Failed connections and broken streams.
    pub errors: u64,
    /// The last error.
    pub last_error: String,
}

/// A running sender to one destination.
#[derive(Debug)]
pub struct Forwarder {
    status: Arc<Mutex<ForwarderStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    source: Arc<dyn SourceDebug>,
}

trait SourceDebug: Source + std::fmt::Debug {}
impl<T: Source + std::fmt::Debug> SourceDebug for T {}

impl Forwarder {
    /// Starts sending `source` to `opts.url`.
    pub fn spawn<S: Source + std::fmt::Debug>(
        opts: ForwarderOptions,
        source: Arc<S>,
    ) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(opts.url.clone())
            .map_err(|e| Error::Destination {
                url: opts.url.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        let status = Arc::new(Mutex::new(ForwarderStatus {
            destination: opts.url.clone(),
            ..ForwarderStatus::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            opts,
            endpoint,
            source.clone() as Arc<dyn Source>,
            status.clone(),
            stopped,
        ));
        Ok(Self {
            status,
            stop,
            task,
            source,
        })
    }

    /// A copy of the status.
    pub fn status(&self) -> ForwarderStatus {
        self.status.lock().clone()
    }

    /// Stops: batches in flight get up to `grace` for their acks; what is
    /// not acknowledged is sent again after the next start.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }

    /// Metrics of these forwarders and their sources.
    pub fn metrics(all: &[&Forwarder]) -> Vec<Metric> {
        type Get = fn(&ForwarderStatus) -> f64;
        let defs: [(&'static str, &'static str, &'static str, Get); 7] = [
            (
                "tiermon_forward_connected",
                "Whether a push stream to the destination is open.",
                "gauge",
                |s| f64::from(u8::from(s.connected)),
            ),
            (
                "tiermon_forward_last_ack_timestamp_seconds",
                "When the destination last acknowledged a batch.",
                "gauge",
                |s| s.last_ack_ms as f64 / 1000.0,
            ),
            (
                "tiermon_forward_batches_total",
                "Batches the destination acknowledged.",
                "counter",
                |s| s.batches as f64,
            ),
            (
                "tiermon_forward_samples_total",
                "Raw samples (sent, or represented by aggregates) the destination acknowledged.",
                "counter",
                |s| s.samples as f64,
            ),
            (
                "tiermon_forward_sent_bytes_total",
                "Bytes of encoded batches sent, before gRPC compression.",
                "counter",
                |s| s.bytes as f64,
            ),
            (
                "tiermon_forward_rejected_batches_total",
                "Batches the destination rejected in part or whole (not retried).",
                "counter",
                |s| s.rejected as f64,
            ),
            (
                "tiermon_forward_errors_total",
                "Failed connections and broken push streams.",
                "counter",
                |s| s.errors as f64,
            ),
        ];
        let statuses: Vec<ForwarderStatus> = all.iter().map(|f| f.status()).collect();
        let mut out: Vec<Metric> = defs
            .iter()
            .map(|&(name, help, kind, get)| Metric {
                name,
                help,
                kind,
                series: statuses
                    .iter()
                    .map(|s| (vec![("destination", s.destination.clone())], get(s)))
                    .collect(),
            })
            .collect();
        for f in all {
            for m in f.source.metrics(&f.status.lock().destination) {
                match out.iter_mut().find(|o| o.name == m.name) {
                    Some(o) => o.series.extend(m.series),
                    None => out.push(m),
                }
            }
        }
        out
    }
}

async fn run(
    opts: ForwarderOptions,
    endpoint: Endpoint,
    source: Arc<dyn Source>,
    status: Arc<Mutex<ForwarderStatus>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = opts.backoff.0;
    loop {
        if *stopped.borrow() {
            return;
        }
        let result = session(
            &opts,
            &endpoint,
            &source,
            &status,
            &mut stopped,
            &mut backoff,
        )
        .await;
        {
            let mut st = status.lock();
            st.connected = false;
            if let Err(e) = &result {
                st.errors += 1;
                st.last_error = e.clone();
            }
        }
        match result {
            Ok(()) => return,
            Err(e) => {
                // Full jitter: a fleet of senders does not come back in step.
                let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
                tracing::warn!(destination = %opts.url, error = %e, retry_in_ms = wait.as_millis() as u64, "push to the next tier failed; data stays buffered");
                backoff = (backoff * 2).min(opts.backoff.1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

async fn session(
    opts: &ForwarderOptions,
    endpoint: &Endpoint,
    source: &Arc<dyn Source>,
    status: &Mutex<ForwarderStatus>,
    stopped: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let mut client = PushClient::new(channel)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let sender = opts.identity.pb(source.epoch());
    let hs = client
        .handshake(v1::HandshakeRequest {
            sender: Some(sender.clone()),
        })
        .await
        .map_err(|e| format!("handshake: {}", e.message()))?
        .into_inner();
    let max_bytes = if hs.max_batch_bytes == 0 {
        MAX_MESSAGE
    } else {
        (hs.max_batch_bytes as usize).min(MAX_MESSAGE)
    };
    let mut after = hs.last_applied_sequence;
    {
        let s2 = source.clone();
        let _ = tokio::task::spawn_blocking(move || s2.acked(after)).await;
        let mut st = status.lock();
        st.connected = true;
        st.receiver = hs.receiver_id.clone();
        st.acked_seq = after;
    }
    tracing::info!(destination = %opts.url, receiver = %hs.receiver_id, resume_after = after, "push stream open");
    *backoff = opts.backoff.0;

    let (tx, rx) = tokio::sync::mpsc::channel::<v1::Batch>(opts.max_in_flight.max(1));
    let mut acks = client
        .push(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("opening the push stream: {}", e.message()))?
        .into_inner();
    // (sequence, raw samples, heartbeat)
    let mut in_flight: VecDeque<(u64, usize, bool)> = VecDeque::new();
    let mut budget = opts.batch_samples.max(1);
    let mut stopping = *stopped.borrow();
    let mut last_sent = std::time::Instant::now();
    // The labels the receiver knows on this stream.
    let mut encoder = Encoder::default();
    // The alert states the receiver has from this stream.
    let mut outbox = Outbox::new(opts.alerts.clone(), opts.alerts_refresh);
    // An alert set never takes more than a quarter of a batch.
    let alert_bytes = max_bytes / 4;
    loop {
        // Fill the window.
        while !stopping && in_flight.len() < opts.max_in_flight.max(1) {
            let s2 = source.clone();
            let b = budget;
            let checked = now_ms();
            let got = tokio::task::spawn_blocking(move || s2.next(after, b))
                .await
                .map_err(|e| format!("reading the buffer: {e}"))?
                .map_err(|e| format!("reading the buffer: {e}"))?;
            let Some(batch) = got else {
                if in_flight.is_empty() && last_sent.elapsed() >= opts.heartbeat {
                    // Same sequence as the last batch: the receiver takes
                    // it as a duplicate and only notes that we are alive.
                    let (complete, children) = source.heartbeat(checked);
                    let mut pb = v1::Batch {
                        sender: Some(sender.clone()),
                        sequence: after,
                        created_ms: now_ms(),
                        complete_through_ms: complete,
                        children,
                        ..v1::Batch::default()
                    };
                    let attached = outbox.attach(&mut pb, alert_bytes);
                    last_sent = std::time::Instant::now();
                    in_flight.push_back((after, 0, true));
                    tx.send(pb)
                        .await
                        .map_err(|_| "the push stream closed".to_owned())?;
                    outbox.sent(attached);
                }
                break;
            };
            let (compact, defined) = encoder.encode(&batch.series, |r| {
                let l = source.labels(r);
                if l.is_none() {
                    tracing::error!(destination = %opts.url, series_ref = r, "a series to send has no labels; its samples in this batch are not sent");
                }
                l
            });
            let mut pb = v1::Batch {
                sender: Some(sender.clone()),
                sequence: batch.seq,
                created_ms: now_ms(),
                resolution: batch.resolution,
                series: Vec::new(),
                alerts: Vec::new(),
                children: batch.children,
                complete_through_ms: batch.complete_through_ms,
                compact: Some(compact),
                alerts_snapshot: false,
            };
            let attached = outbox.attach(&mut pb, alert_bytes);
            let len = pb.encoded_len();
            if len > max_bytes && budget > 1 {
                // Too big for the receiver: ask for smaller batches.
                budget = (budget / 2).max(1);
                continue;
            }
            budget = opts.batch_samples.max(1);
            encoder.commit(defined);
            after = batch.seq;
            last_sent = std::time::Instant::now();
            in_flight.push_back((batch.seq, batch.samples, false));
            status.lock().bytes += len as u64;
            tx.send(pb)
                .await
                .map_err(|_| "the push stream closed".to_owned())?;
            outbox.sent(attached);
        }
        if stopping && in_flight.is_empty() {
            return Ok(());
        }
        tokio::select! {
            ack = acks.message() => {
                let ack = ack.map_err(|e| format!("push stream: {}", e.message()))?
                    .ok_or_else(|| "the receiver closed the push stream".to_owned())?;
                let Some((seq, samples, heartbeat)) = in_flight.pop_front() else {
                    return Err(format!("unexpected acknowledgement of sequence {}", ack.sequence));
                };
                if ack.sequence != seq {
                    return Err(format!("acknowledgement of sequence {} while {seq} was expected", ack.sequence));
                }
                match v1::push_ack::Status::try_from(ack.status) {
                    Ok(v1::push_ack::Status::Ok | v1::push_ack::Status::Duplicate) => {}
                    _ => {
                        tracing::error!(destination = %opts.url, sequence = seq, accepted = ack.accepted, error = %ack.error, "the next tier rejected (part of) a batch; it is not retried");
                        status.lock().rejected += 1;
                    }
                }
                if !heartbeat {
                    let s2 = source.clone();
                    let _ = tokio::task::spawn_blocking(move || s2.acked(seq)).await;
                }
                let mut st = status.lock();
                st.acked_seq = seq;
                st.last_ack_ms = now_ms();
                if !heartbeat {
                    st.batches += 1;
                    st.samples += samples as u64;
                }
            }
            _ = tokio::time::sleep(opts.poll), if !stopping && in_flight.len() < opts.max_in_flight.max(1) => {}
            _ = stopped.changed(), if !stopping => { stopping = true; }
        }
    }
}
