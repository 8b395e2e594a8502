//! `[secondary.push]`, `[primary]` and `[global]`: the hierarchy above the
//! secondaries. A secondary pushes raw samples to every primary of its
//! datacenter; a primary pushes one-minute aggregates to the global tier.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secondary::{QueryConfig, StorageConfig, positive};
use crate::{Error, Result};

/// Where and how a tier pushes to the tier above it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// gRPC addresses of the receivers, e.g. `["http://primary-a:9192"]`.
    /// Every destination gets everything (two primaries of one datacenter
    /// both hold all of it). Empty: nothing is pushed.
    pub destinations: Vec<String>,
    /// Tells the two members of an HA pair apart at the receiver (which
    /// keeps one copy). Defaults to `shard.member` (the host name) when
    /// the secondary has a shard, and to none otherwise.
    pub replica: String,
    /// Unsent data older than this is given up (counted in
    /// `tiermon_forward_buffer_dropped_bytes_total`, and logged).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Unsent bytes kept per destination, at most (0: no bound but
    /// `max_age`).
    pub max_bytes: u64,
    /// Samples per batch, at most.
    pub batch_samples: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Longest wait between reconnection attempts (the backoff doubles up
    /// to it, with jitter).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Labels added to every series pushed, unless the series has them
    /// (Prometheus' external labels), e.g. `{ secondary = "dc1-s3" }` so
    /// that the primary can tell which pair scrapes a host. Both members of
    /// a pair must give the same.
    pub external_labels: BTreeMap<String, String>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            destinations: Vec::new(),
            replica: String::new(),
            max_age: Duration::from_secs(48 * 3600),
            max_bytes: 32 << 30,
            batch_samples: 20_000,
            max_in_flight: 4,
            max_backoff: Duration::from_secs(30),
            external_labels: BTreeMap::new(),
        }
    }
}

impl PushConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        for (i, d) in self.destinations.iter().enumerate() {
            let ok = (d.starts_with("http://") || d.starts_with("https://"))
                && d.len() > "https://".len();
            if !ok {
                return Err(Error::invalid(
                    format!("{key}.destinations[{i}]"),
                    format!("{d:?} is not an http:// or https:// address"),
                ));
            }
        }
        if let Some(i) = (1..self.destinations.len())
            .find(|&i| self.destinations[..i].contains(&self.destinations[i]))
        {
            return Err(Error::invalid(
                format!("{key}.destinations[{i}]"),
                "listed twice",
            ));
        }
        positive(format!("{key}.max_age"), self.max_age)?;
        positive(format!("{key}.max_backoff"), self.max_backoff)?;
        for (name, value) in &self.external_labels {
            if !tiermon_model::is_valid_label_name(name) || name.starts_with("__") {
                return Err(Error::invalid(
                    format!("{key}.external_labels"),
                    format!("{name:?} is not a valid label name"),
                ));
            }
            if value.is_empty() {
                return Err(Error::invalid(
                    format!("{key}.external_labels.{name}"),
                    "an external label needs a value",
                ));
            }
        }
        if self.batch_samples == 0 {
            return Err(Error::invalid(
                format!("{key}.batch_samples"),
                "must be at least 1",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(Error::invalid(
                format!("{key}.max_in_flight"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Configuration of `tiermon primary`: one per datacenter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrimaryConfig {
    /// Address of the HTTP API, gRPC (queries and the push intake).
    pub listen: SocketAddr,
    /// Data folder.
    pub data: PathBuf,
    /// The datacenter's name: the `datacenter` label of everything it
    /// pushes to the global tier.
    pub datacenter: String,
    /// Storage engine settings.
    pub storage: StorageConfig,
    /// Query limits.
    pub query: QueryConfig,
    /// A child (secondary) that has not pushed for this long counts as gone
    /// (`tiermon_child_up` 0) and no longer holds back the aggregates.
    #[serde(with = "humantime_serde")]
    pub child_timeout: Duration,
    /// Pushing aggregates to the global tier.
    pub push: PushConfig,
    /// An aggregate window is sent once its end is this far behind and
    /// every live child has reported past it.
    #[serde(with = "humantime_serde")]
    pub window_grace: Duration,
    /// Datacenter rules, over the datacenter's data.
    pub rules: crate::RulesConfig,
    /// The datacenter's alert manager.
    pub alertmanager: crate::AlertmanagerConfig,
    /// A folder of dashboard files (JSON or YAML).
    pub dashboards: Option<PathBuf>,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9192)),
            data: PathBuf::from("tiermon-data/primary"),
            datacenter: "default".into(),
            storage: StorageConfig::default(),
            query: QueryConfig::default(),
            child_timeout: Duration::from_secs(60),
            push: PushConfig::default(),
            window_grace: Duration::from_secs(10),
            rules: crate::RulesConfig::default(),
            alertmanager: crate::AlertmanagerConfig::default(),
            dashboards: None,
        }
    }
}

/// Configuration of `tiermon global`: one view of every datacenter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalConfig {
    /// Address of the HTTP API, gRPC (queries and the push intake).
    pub listen: SocketAddr,
    /// Data folder.
    pub data: PathBuf,
    /// Storage engine settings (the aggregates of every datacenter).
    pub storage: StorageConfig,
    /// Query limits.
    pub query: QueryConfig,
    /// A datacenter whose primary has not pushed for this long has gone
    /// dark (`tiermon_child_up` 0).
    #[serde(with = "humantime_serde")]
    pub child_timeout: Duration,
    /// Each datacenter's primary, by datacenter name, for drill-down
    /// queries at full resolution (`resolution=raw`).
    pub primaries: BTreeMap<String, String>,
    /// Cross-datacenter rules (over the aggregates).
    pub rules: crate::RulesConfig,
    /// The global alert manager.
    pub alertmanager: crate::AlertmanagerConfig,
    /// A folder of dashboard files (JSON or YAML).
    pub dashboards: Option<PathBuf>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9193)),
            data: PathBuf::from("tiermon-data/global"),
            storage: StorageConfig::default(),
            query: QueryConfig::default(),
            child_timeout: Duration::from_secs(180),
            primaries: BTreeMap::new(),
            rules: crate::RulesConfig::default(),
            alertmanager: crate::AlertmanagerConfig::default(),
            dashboards: None,
        }
    }
}

fn datacenter_name(key: String, dc: &str) -> Result<()> {
    let ok = !dc.is_empty()
        && dc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(Error::invalid(
            key,
            format!("{dc:?}: a datacenter name is letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

impl PrimaryConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        datacenter_name(format!("{key}.datacenter"), &self.datacenter)?;
        self.storage.validate(&format!("{key}.storage"))?;
        self.query.validate(&format!("{key}.query"))?;
        positive(format!("{key}.child_timeout"), self.child_timeout)?;
        self.rules.validate(&format!("{key}.rules"))?;
        self.alertmanager.validate(&format!("{key}.alertmanager"))?;
        self.push.validate(&format!("{key}.push"))
    }
}

impl GlobalConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        self.storage.validate(&format!("{key}.storage"))?;
        self.query.validate(&format!("{key}.query"))?;
        positive(format!("{key}.child_timeout"), self.child_timeout)?;
        for (dc, url) in &self.primaries {
            datacenter_name(format!("{key}.primaries.{dc}"), dc)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::invalid(
                    format!("{key}.primaries.{dc}"),
                    format!("{url:?} is not an http:// or https:// address"),
                ));
            }
        }
        self.rules.validate(&format!("{key}.rules"))?;
        self.alertmanager.validate(&format!("{key}.alertmanager"))
    }
}
