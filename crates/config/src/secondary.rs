//! `[secondary]`: where a secondary listens, and its storage and query
//! limits. `[secondary.storage]` is the storage engine's configuration,
//! `[secondary.storage.blob]` its tiering to a local folder or S3.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// Configuration of `tiermon secondary`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecondaryConfig {
    /// Address of the HTTP API, remote_write intake and gRPC.
    pub listen: SocketAddr,
    /// Data folder (WAL and RocksDB).
    pub data: PathBuf,
    /// Storage engine settings.
    pub storage: StorageConfig,
    /// Query limits.
    pub query: QueryConfig,
    /// What to scrape: a Prometheus-style YAML file with `global` and
    /// `scrape_configs`. Unset: nothing is scraped (remote_write only).
    pub scrape_config: Option<PathBuf>,
    /// This secondary's share of the datacenter's targets.
    pub shard: ShardConfig,
    /// The datacenter this secondary belongs to.
    pub datacenter: String,
    /// Pushing everything stored to the datacenter's primaries.
    pub push: crate::PushConfig,
    /// Per-host rules, over what this secondary scrapes.
    pub rules: crate::RulesConfig,
    /// An alert manager of the secondary's own (usually one per
    /// datacenter, at the primary, is enough).
    pub alertmanager: crate::AlertmanagerConfig,
    /// A folder of dashboard files (JSON or YAML) shown beside the shipped
    /// ones.
    pub dashboards: Option<PathBuf>,
}

impl Default for SecondaryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9191)),
            data: PathBuf::from("tiermon-data/secondary"),
            storage: StorageConfig::default(),
            query: QueryConfig::default(),
            scrape_config: None,
            shard: ShardConfig::default(),
            datacenter: "default".into(),
            push: crate::PushConfig::default(),
            rules: crate::RulesConfig::default(),
            alertmanager: crate::AlertmanagerConfig::default(),
            dashboards: None,
        }
    }
}

/// Sharding of targets across secondaries (rendezvous hashing).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// This secondary's shard; both members of an HA pair name the same.
    pub name: String,
    /// Every shard of the datacenter. Empty: no sharding, scrape all.
    pub shards: Vec<String>,
    /// Tells the two members of a pair apart (spreads their scrapes in
    /// time); defaults to the host name.
    pub member: String,
}

/// Storage engine settings of a tier.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Width of a time partition.
    #[serde(with = "humantime_serde")]
    pub partition: Duration,
    /// Width of the blocks an open partition's data is compacted into
    /// once it is older than `out_of_order_window` (divides `partition`;
    /// 0s, or `partition` or more: open partitions are compacted only when
    /// they close).
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// How late a sample may arrive behind its series' newest one.
    #[serde(with = "humantime_serde")]
    pub out_of_order_window: Duration,
    /// How long a series may go without samples before it leaves memory
    /// (its data stays on disk and queryable).
    #[serde(with = "humantime_serde")]
    pub series_idle: Duration,
    /// Raw samples are kept this long.
    #[serde(with = "humantime_serde")]
    pub retention_raw: Duration,
    /// 1-minute aggregates are kept this long.
    #[serde(with = "humantime_serde")]
    pub retention_1m: Duration,
    /// 1-hour aggregates are kept this long.
    #[serde(with = "humantime_serde")]
    pub retention_1h: Duration,
    /// Upper bound of the local data in bytes (0: none).
    pub max_bytes: u64,
    /// Sync the WAL before acknowledging (survives power loss).
    pub wal_fsync: bool,
    /// Most series held.
    pub max_series: usize,
    /// How often closed partitions are compacted, downsampled, tiered and
    /// expired.
    #[serde(with = "humantime_serde")]
    pub maintain_every: Duration,
    /// How often the head is checkpointed (bounds WAL replay at restart).
    #[serde(with = "humantime_serde")]
    pub checkpoint_every: Duration,
    /// Tiering of old partitions to blob storage.
    pub blob: BlobConfig,
    /// Bytes of the cache of uncompressed chunk blocks that queries read.
    pub block_cache_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let day = 24 * 3600;
        Self {
            partition: Duration::from_secs(day),
            block: Duration::from_secs(2 * 3600),
            out_of_order_window: Duration::from_secs(3600),
            series_idle: Duration::from_secs(3 * 3600),
            retention_raw: Duration::from_secs(15 * day),
            retention_1m: Duration::from_secs(90 * day),
            retention_1h: Duration::from_secs(730 * day),
            max_bytes: 0,
            wal_fsync: false,
            max_series: 20_000_000,
            maintain_every: Duration::from_secs(300),
            checkpoint_every: Duration::from_secs(300),
            blob: BlobConfig::default(),
            block_cache_bytes: 128 << 20,
        }
    }
}

/// `[….storage.blob]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// Where blocks go: a folder, `file:///path` or `s3://bucket/prefix`.
    /// Empty: no tiering.
    pub location: String,
    /// Store options (S3: `endpoint`, `region`, `access_key_id`,
    /// `secret_access_key`, `allow_http`, …); credentials may also come from
    /// the usual `AWS_*` variables.
    pub options: BTreeMap<String, String>,
    /// Age after which a partition moves to the store.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Bytes of block indexes and series data cached for reads.
    pub cache_bytes: usize,
    /// Upload attempts per maintenance run.
    pub upload_attempts: u32,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            location: String::new(),
            options: BTreeMap::new(),
            after: Duration::from_secs(3 * 24 * 3600),
            cache_bytes: 256 << 20,
            upload_attempts: 5,
        }
    }
}

/// `[….query]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Queries evaluated at once; more get 503.
    pub max_concurrent: usize,
    /// Longest a query may run.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most samples one query may load.
    pub max_samples: usize,
    /// Most series one selector may select.
    pub max_series: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 20,
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
            max_series: 1_000_000,
        }
    }
}

pub(crate) fn positive(key: String, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

impl StorageConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        for (name, d) in [
            ("partition", self.partition),
            ("retention_raw", self.retention_raw),
            ("retention_1m", self.retention_1m),
            ("retention_1h", self.retention_1h),
            ("maintain_every", self.maintain_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            positive(format!("{key}.{name}"), d)?;
        }
        if self.partition < Duration::from_secs(3600) {
            return Err(Error::invalid(
                format!("{key}.partition"),
                "must be at least 1h (aggregates are per hour)",
            ));
        }
        if !self.block.is_zero()
            && self.block < self.partition
            && !self
                .partition
                .as_millis()
                .is_multiple_of(self.block.as_millis())
        {
            return Err(Error::invalid(
                format!("{key}.block"),
                format!(
                    "{} does not divide partition ({}): blocks are aligned within a partition",
                    humantime_serde::re::humantime::format_duration(self.block),
                    humantime_serde::re::humantime::format_duration(self.partition)
                ),
            ));
        }
        if self.series_idle < self.out_of_order_window {
            return Err(Error::invalid(
                format!("{key}.series_idle"),
                format!(
                    "{} is shorter than out_of_order_window ({}): a series must stay in memory while its samples may still arrive",
                    humantime_serde::re::humantime::format_duration(self.series_idle),
                    humantime_serde::re::humantime::format_duration(self.out_of_order_window)
                ),
            ));
        }
        if !self.blob.location.is_empty() {
            let need = self.partition + self.out_of_order_window;
            if self.blob.after < need {
                return Err(Error::invalid(
                    format!("{key}.blob.after"),
                    format!(
                        "{} is shorter than partition + out_of_order_window ({}): a partition must be closed before it moves",
                        humantime_serde::re::humantime::format_duration(self.blob.after),
                        humantime_serde::re::humantime::format_duration(need)
                    ),
                ));
            }
            if self.blob.upload_attempts == 0 {
                return Err(Error::invalid(
                    format!("{key}.blob.upload_attempts"),
                    "must be at least 1",
                ));
            }
        } else if !self.blob.options.is_empty() {
            return Err(Error::invalid(
                format!("{key}.blob.options"),
                "given without blob.location",
            ));
        }
        Ok(())
    }
}

impl SecondaryConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        self.storage.validate(&format!("{key}.storage"))?;
        if !self.shard.shards.is_empty() && !self.shard.shards.contains(&self.shard.name) {
            return Err(Error::invalid(
                format!("{key}.shard.name"),
                format!(
                    "{:?} is not one of shard.shards {:?}",
                    self.shard.name, self.shard.shards
                ),
            ));
        }
        if let Some(p) = &self.scrape_config
            && p.as_os_str().is_empty()
        {
            return Err(Error::invalid(format!("{key}.scrape_config"), "empty path"));
        }
        self.query.validate(&format!("{key}.query"))?;
        if self.datacenter.is_empty() {
            return Err(Error::invalid(format!("{key}.datacenter"), "empty"));
        }
        self.rules.validate(&format!("{key}.rules"))?;
        self.alertmanager.validate(&format!("{key}.alertmanager"))?;
        self.push.validate(&format!("{key}.push"))
    }
}

impl QueryConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        if self.max_concurrent == 0 {
            return Err(Error::invalid(
                format!("{key}.max_concurrent"),
                "must be at least 1",
            ));
        }
        positive(format!("{key}.timeout"), self.timeout)
    }
}
