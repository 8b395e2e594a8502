//! The push path between tiers.
//!
//! A sender ([`Forwarder`]) streams [`Source`] batches to the tier above
//! over gRPC (`tiermon.v1.Push`); the receiver ([`Receiver`]) applies each
//! batch once and acknowledges it only after its storage's WAL holds it.
//!
//! - A secondary forwards everything it commits: [`WalSource`] reads its
//!   storage's write-ahead log, so scraped samples and remote_write pushes
//!   take the same road, and the log *is* the store-and-forward buffer —
//!   the sender holds its segments until the receiver has applied them
//!   (bounded by age and size), which also makes a restarted sender resume
//!   exactly where the receiver stopped.
//! - A primary forwards one-minute aggregates: [`DownsampleSource`] closes a
//!   window once its children have reported past it and computes the
//!   aggregates from storage, so a global tier that was away gets every
//!   window it missed, in order, for as long as raw retention lasts.
//!
//! - Alert states ride along: every sender attaches its set of pending and
//!   firing alerts (its own and its children's, see [`AlertFeed`]) when it
//!   changes, and the receiver keeps each live child's latest set
//!   ([`Receiver::alerts`]), so the global tier lists every datacenter's.
//!
//! A batch's sequence is the sender's position (the WAL position after the
//! batch, or the window number); the receiver remembers the last it applied
//! per sender, replica and epoch, which makes retries idempotent.

mod alerts;
mod codec;
mod forwarder;
mod receiver;
mod source;

pub use alerts::AlertFeed;
pub use codec::Entry;
pub use forwarder::{Forwarder, ForwarderOptions, ForwarderStatus};
pub use receiver::{ChildStatus, Receiver, ReceiverOptions};
pub use source::{Batch, Children, DownsampleSource, Source, WalSource, WalSourceOptions};

/// Who sends, as the receiver knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Identity {
    /// Stable across restarts, shared by the two replicas of an HA pair:
    /// `secondary/<member>`, `primary/<datacenter>`.
    pub id: String,
    /// `secondary`, `primary` or `global`.
    pub tier: String,
    /// The datacenter the sender belongs to.
    pub datacenter: String,
    /// Tells the replicas of a pair apart; empty without HA.
    pub replica: String,
}

impl Identity {
    pub(crate) fn pb(&self, epoch: u64) -> tiermon_proto::v1::Sender {
        tiermon_proto::v1::Sender {
            id: self.id.clone(),
            tier: self.tier.clone(),
            datacenter: self.datacenter.clone(),
            replica: self.replica.clone(),
            epoch,
        }
    }

    /// `id` with the replica, as logs and labels show it.
    pub fn display(&self) -> String {
        if self.replica.is_empty() {
            self.id.clone()
        } else {
            format!("{}#{}", self.id, self.replica)
        }
    }
}

/// Errors of the push path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] tiermon_tsdb::Error),
    /// A file of the push state could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A batch that cannot be decoded.
    #[error("malformed batch: {0}")]
    Protocol(String),
    /// A destination address is not a URL.
    #[error("destination `{url}`: {message}")]
    Destination {
        /// The address.
        url: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Decodes `data` as a push stream of compact batches (each a
/// length-delimited `Compact` message) through one stream dictionary, as a
/// receiver would; returns the samples decoded or the first error. For the
/// fuzz target: it must never panic.
#[doc(hidden)]
pub fn fuzz_compact_stream(mut data: &[u8]) -> Result<usize, String> {
    use prost::Message;
    let mut dec = codec::Decoder::default();
    let mut n = 0;
    while !data.is_empty() {
        let c = tiermon_proto::v1::Compact::decode_length_delimited(&mut data)
            .map_err(|e| e.to_string())?;
        let got = dec.decode(&c, |s| {
            Ok(tiermon_model::Labels::from_pairs(
                s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
            ))
        })?;
        n += got.iter().map(|d| d.points.len()).sum::<usize>();
    }
    Ok(n)
}

pub(crate) use tiermon_model::now_ms;

/// One metric of the push path, for `/metrics` and the tier's own series.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// Labels and value of each series.
    pub series: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Prometheus text of `metrics`.
pub fn render(metrics: &[Metric], out: &mut String) {
    use std::fmt::Write;
    for m in metrics {
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
        for (labels, v) in &m.series {
            out.push_str(m.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (n, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let val = val
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let _ = write!(out, "{n}=\"{val}\"");
                }
                out.push('}');
            }
            let _ = writeln!(out, " {v}");
        }
    }
}

/// Appends `metrics` to `db` as the tier's own series at time `t`, so that
/// rules can alert on the push path like on anything else.
pub fn record(db: &tiermon_tsdb::Db, metrics: &[Metric], t: i64) -> Result<(), Error> {
    let mut app = db.appender();
    for m in metrics {
        for (labels, v) in &m.series {
            let mut pairs: Vec<(&str, &str)> = vec![("__name__", m.name)];
            pairs.extend(labels.iter().map(|(n, v)| (*n, v.as_str())));
            app.append(&tiermon_model::Labels::from_pairs(pairs), t, *v)?;
        }
    }
    app.commit()?;
    Ok(())
}
