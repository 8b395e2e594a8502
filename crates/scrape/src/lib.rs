//! The scrape engine of `tiermon secondary`.
//!
//! A [`ScrapeFile`] is Prometheus' own `scrape_configs` YAML (the parts
//! tiermon supports; the rest is refused by name). The [`Manager`] runs its
//! service discovery (static, file_sd, http_sd, DNS, Consul, Kubernetes,
//! EC2), builds targets through
//! `relabel_configs`, keeps the share of them that this scraper's [`Shard`]
//! owns, and runs one loop per target: scrapes spread across the interval,
//! gzip and content negotiation (OpenMetrics or Prometheus text), limits on
//! body size, samples and labels, `honor_labels` and `honor_timestamps`,
//! `metric_relabel_configs`, the report series (`up`,
//! `scrape_duration_seconds`, …) and staleness markers when a series, a
//! scrape or a target goes away. Samples are appended to the storage engine
//! and acknowledged by its WAL.

mod client;
mod config;
mod discovery;
mod http1;
mod manager;
mod relabel;
mod scrape;
mod shard;
mod target;

pub use config::{
    Authorization, BasicAuth, ByteSize, FileSdConfig, GlobalConfig, HttpSdConfig, Job, Limits,
    PromDuration, ScrapeConfig, ScrapeFile, ScrapeProtocol, StaticConfig, TlsConfig,
};
pub use discovery::consul::ConsulSdConfig;
pub use discovery::dns::{DnsSdConfig, DnsType};
pub use discovery::ec2::{Ec2Filter, Ec2SdConfig};
pub use discovery::kubernetes::{AttachMetadata, KubernetesSdConfig, Namespaces, Role, Selector};
pub use discovery::{TargetGroup, parse_groups};
pub use manager::{Manager, PoolSummary, TargetView};
pub use relabel::{Action, RelabelConfig, RelabelRegex, relabel};
pub use scrape::{Health, MetricMeta, Status};
pub use shard::Shard;
pub use target::{Outcome, Target, build as build_target};

/// A scrape configuration problem; `key` names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key has a bad value, is unknown, or is unsupported.
    #[error("scrape config key `{key}`: {message}")]
    Config {
        /// Path of the key, e.g. `scrape_configs[0].scrape_timeout`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
