//! What the alert manager keeps on disk, and shares with its HA peers:
//! silences, acknowledgements and the notification log. Each is a JSON
//! file written atomically (temporary file, fsync, rename) on every
//! change; merging keeps the newer version of every entry, so applying a
//! peer's state in any order converges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::matchers::{ApiMatcher, Matchers};

/// A silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Id (random, hex).
    pub id: String,
    /// Which alerts it mutes.
    pub matchers: Vec<ApiMatcher>,
    /// From (ms).
    pub starts_ms: i64,
    /// Until (ms).
    pub ends_ms: i64,
    /// Who.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// Last change (ms), the version for merging.
    pub updated_ms: i64,
}

impl Silence {
    /// `pending`, `active` or `expired` at `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if now < self.starts_ms {
            "pending"
        } else if now < self.ends_ms {
            "active"
        } else {
            "expired"
        }
    }

    /// The matchers, compiled.
    pub fn compiled(&self) -> Result<Matchers, String> {
        self.matchers
            .iter()
            .map(ApiMatcher::to_matcher)
            .collect::<Result<Vec<_>, _>>()
            .map(Matchers)
    }
}

/// An acknowledgement of a firing alert: its repeats stop until it
/// resolves or fires anew (a new `startsAt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The alert's fingerprint.
    pub fingerprint: u64,
    /// The alert's start when acknowledged.
    pub starts_ms: i64,
    /// Who.
    pub by: String,
    /// Why.
    pub comment: String,
    /// When (ms), the version for merging.
    pub at_ms: i64,
}

/// One notification log entry: what a receiver's integration was last
/// told about a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Fingerprints of the firing alerts notified.
    pub firing: Vec<u64>,
    /// Fingerprints of the resolved alerts notified.
    pub resolved: Vec<u64>,
    /// When (ms).
    pub at_ms: i64,
}

/// Everything kept and shared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Shared {
    /// Silences by id.
    pub silences: BTreeMap<String, Silence>,
    /// Acknowledgements by fingerprint (hex).
    pub acks: BTreeMap<String, Ack>,
    /// The notification log by `group key/receiver/integration/index`.
    pub nflog: BTreeMap<String, Entry>,
}

impl Shared {
    /// Merges `other` in, keeping the newer of each entry; returns whether
    /// anything changed.
    pub fn merge(&mut self, other: Shared) -> bool {
        let mut changed = false;
        for (k, s) in other.silences {
            match self.silences.get(&k) {
                Some(old) if old.updated_ms >= s.updated_ms => {}
                _ => {
                    self.silences.insert(k, s);
                    changed = true;
                }
            }
        }
        for (k, a) in other.acks {
            match self.acks.get(&k) {
                Some(old) if old.at_ms >= a.at_ms => {}
                _ => {
                    self.acks.insert(k, a);
                    changed = true;
                }
            }
        }
        for (k, e) in other.nflog {
            match self.nflog.get(&k) {
                Some(old) if old.at_ms >= e.at_ms => {}
                _ => {
                    self.nflog.insert(k, e);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Drops expired silences and log entries older than `retention_ms`.
    pub fn gc(&mut self, now: i64, retention_ms: i64) {
        self.silences.retain(|_, s| s.ends_ms + retention_ms > now);
        self.nflog.retain(|_, e| e.at_ms + retention_ms > now);
        self.acks.retain(|_, a| a.at_ms + retention_ms > now);
    }
}

/// The state file in a data folder. Saves are serialised: deliveries of
/// several groups end at once, and two writers of one temporary file
/// would lose a rename.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    writing: std::sync::Arc<parking_lot::Mutex<()>>,
}

impl Store {
    /// The store in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("alertmanager-state.json"),
            writing: Default::default(),
        }
    }

    /// What was saved (nothing on a first start).
    pub fn load(&self) -> Result<Shared, String> {
        match std::fs::read(&self.path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", self.path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Shared::default()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    /// Saves durably.
    pub fn save(&self, s: &Shared) -> Result<(), String> {
        let _one_at_a_time = self.writing.lock();
        let write = || -> std::io::Result<()> {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = self.path.with_extension("json.tmp");
            let f = std::fs::File::create(&tmp)?;
            serde_json::to_writer(std::io::BufWriter::new(&f), s)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: i64) -> Entry {
        Entry {
            firing: vec![1],
            resolved: vec![],
            at_ms: at,
        }
    }

    #[test]
    fn merging_keeps_the_newer_entry_in_any_order() {
        let mut a = Shared::default();
        a.nflog.insert("g".into(), entry(10));
        let mut b = Shared::default();
        b.nflog.insert("g".into(), entry(20));
        b.nflog.insert("h".into(), entry(5));
        let mut ab = a.clone();
        assert!(ab.merge(b.clone()));
        let mut ba = b.clone();
        ba.merge(a.clone());
        assert_eq!(ab, ba);
        assert_eq!(ab.nflog["g"].at_ms, 20);
        assert!(!ab.merge(a), "nothing newer");
    }

    #[test]
    fn concurrent_saves_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::new(dir.path());
        let mut s = Shared::default();
        s.nflog.insert("g".into(), entry(1));
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..20 {
                        st.save(&s).unwrap();
                    }
                });
            }
        });
        assert_eq!(st.load().unwrap(), s);
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::new(dir.path());
        assert_eq!(st.load().unwrap(), Shared::default());
        let mut s = Shared::default();
        s.nflog.insert("g".into(), entry(1));
        st.save(&s).unwrap();
        assert_eq!(st.load().unwrap(), s);
        std::fs::write(dir.path().join("alertmanager-state.json"), b"{broken").unwrap();
        assert!(st.load().unwrap_err().contains("alertmanager-state.json"));
    }
}
