//! Prometheus' scrape configuration (`global` and `scrape_configs` of a
//! `prometheus.yml`), for the parts tiermon supports. A key Prometheus knows
//! but tiermon does not support is refused with its path and that reason;
//! any other unknown key is refused as unknown. Durations and byte sizes are
//! written as Prometheus writes them (`15s`, `1h30m`, `10MB`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::discovery::consul::ConsulSdConfig;
use crate::discovery::dns::DnsSdConfig;
use crate::discovery::ec2::Ec2SdConfig;
use crate::discovery::kubernetes::KubernetesSdConfig;
use crate::relabel::RelabelConfig;
use crate::{Error, Result};

/// A scrape configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrapeFile {
    /// Defaults for every job.
    pub global: GlobalConfig,
    /// The jobs.
    pub scrape_configs: Vec<ScrapeConfig>,
}

/// The `global` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalConfig {
    /// Default interval between scrapes of a target.
    pub scrape_interval: PromDuration,
    /// Default scrape timeout; unset, 10s or the interval if shorter.
    pub scrape_timeout: Option<PromDuration>,
    /// Accepted for compatibility; rules are configured separately.
    pub evaluation_interval: PromDuration,
    /// Labels identifying this scraper; they also seed the scrape offsets,
    /// so that two scrapers with different labels spread differently.
    pub external_labels: BTreeMap<String, String>,
    /// Default of [`ScrapeConfig::body_size_limit`].
    pub body_size_limit: ByteSize,
    /// Default of [`ScrapeConfig::sample_limit`].
    pub sample_limit: u64,
    /// Default of [`ScrapeConfig::label_limit`].
    pub label_limit: u64,
    /// Default of [`ScrapeConfig::label_name_length_limit`].
    pub label_name_length_limit: u64,
    /// Default of [`ScrapeConfig::label_value_length_limit`].
    pub label_value_length_limit: u64,
    /// Default of [`ScrapeConfig::target_limit`].
    pub target_limit: u64,
    /// Default of [`ScrapeConfig::scrape_protocols`].
    pub scrape_protocols: Vec<ScrapeProtocol>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            scrape_interval: PromDuration(Duration::from_secs(60)),
            scrape_timeout: None,
            evaluation_interval: PromDuration(Duration::from_secs(60)),
            external_labels: BTreeMap::new(),
            body_size_limit: ByteSize(0),
            sample_limit: 0,
            label_limit: 0,
            label_name_length_limit: 0,
            label_value_length_limit: 0,
            target_limit: 0,
            scrape_protocols: Vec::new(),
        }
    }
}

/// One job: how to find its targets and how to scrape them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrapeConfig {
    /// The job name, also the default `job` label.
    pub job_name: String,
    /// Interval between scrapes; `global.scrape_interval` when unset.
    pub scrape_interval: Option<PromDuration>,
    /// Scrape timeout; `global.scrape_timeout` when unset (but never more
    /// than the interval).
    pub scrape_timeout: Option<PromDuration>,
    /// HTTP path of the metrics (`/metrics`).
    pub metrics_path: Option<String>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// URL query parameters.
    pub params: BTreeMap<String, Vec<String>>,
    /// Keep the target's own labels when they clash with the target labels.
    pub honor_labels: bool,
    /// Use the timestamps the target exposes (default true).
    pub honor_timestamps: Option<bool>,
    /// Ask for gzip (default true).
    pub enable_compression: Option<bool>,
    /// Formats to ask for, best first.
    pub scrape_protocols: Option<Vec<ScrapeProtocol>>,
    /// Largest uncompressed body; larger scrapes fail. 0: no limit.
    pub body_size_limit: Option<ByteSize>,
    /// Most samples per scrape after metric relabelling; more fails the
    /// scrape. 0: no limit.
    pub sample_limit: Option<u64>,
    /// Most labels per series. 0: no limit.
    pub label_limit: Option<u64>,
    /// Longest label name. 0: no limit.
    pub label_name_length_limit: Option<u64>,
    /// Longest label value. 0: no limit.
    pub label_value_length_limit: Option<u64>,
    /// Most targets after relabelling; more stops the whole job. 0: none.
    pub target_limit: Option<u64>,
    /// HTTP basic authentication.
    pub basic_auth: Option<BasicAuth>,
    /// The `Authorization` header.
    pub authorization: Option<Authorization>,
    /// TLS settings for `https`.
    pub tls_config: Option<TlsConfig>,
    /// Follow HTTP redirects (default true).
    pub follow_redirects: Option<bool>,
    /// Targets listed in the file.
    pub static_configs: Vec<StaticConfig>,
    /// Targets read from files.
    pub file_sd_configs: Vec<FileSdConfig>,
    /// Targets fetched from an HTTP endpoint.
    pub http_sd_configs: Vec<HttpSdConfig>,
    /// Targets from DNS records.
    pub dns_sd_configs: Vec<DnsSdConfig>,
    /// Targets from Consul's catalog.
    pub consul_sd_configs: Vec<ConsulSdConfig>,
    /// Targets from EC2's DescribeInstances.
    pub ec2_sd_configs: Vec<Ec2SdConfig>,
    /// Targets from a Kubernetes API server.
    pub kubernetes_sd_configs: Vec<KubernetesSdConfig>,
    /// Rewrites of target labels before scraping.
    pub relabel_configs: Vec<RelabelConfig>,
    /// Rewrites of scraped series before storing.
    pub metric_relabel_configs: Vec<RelabelConfig>,
}

/// A format a scrape may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ScrapeProtocol {
    /// `text/plain;version=0.0.4`.
    PrometheusText0_0_4,
    /// `application/openmetrics-text;version=1.0.0`.
    OpenMetricsText1_0_0,
    /// `application/openmetrics-text;version=0.0.1`.
    OpenMetricsText0_0_1,
}

impl ScrapeProtocol {
    fn media(self) -> &'static str {
        match self {
            ScrapeProtocol::PrometheusText0_0_4 => "text/plain;version=0.0.4",
            ScrapeProtocol::OpenMetricsText1_0_0 => "application/openmetrics-text;version=1.0.0",
            ScrapeProtocol::OpenMetricsText0_0_1 => "application/openmetrics-text;version=0.0.1",
        }
    }

    /// The `Accept` header for these protocols, best first, as Prometheus
    /// builds it (descending q values, then a catch-all).
    pub fn accept_header(protocols: &[ScrapeProtocol]) -> String {
        let mut out = String::new();
        let mut q = 0.5f32;
        for p in protocols {
            out.push_str(p.media());
            out.push_str(&format!(";q={q}, "));
            q = (q - 0.1).max(0.2);
        }
        out.push_str("*/*;q=0.1");
        out
    }
}

/// HTTP basic authentication.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// File holding the password (read at each scrape, so rotation works).
    pub password_file: Option<PathBuf>,
}

/// An `Authorization` header.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    /// The scheme (`Bearer`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The credentials.
    pub credentials: String,
    /// File holding the credentials.
    pub credentials_file: Option<PathBuf>,
}

impl Default for Authorization {
    fn default() -> Self {
        Self {
            kind: "Bearer".into(),
            credentials: String::new(),
            credentials_file: None,
        }
    }
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Skip verification of the target's certificate.
    pub insecure_skip_verify: bool,
}

/// `static_configs` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticConfig {
    /// `host:port` of each target.
    pub targets: Vec<String>,
    /// Labels of every target of the group.
    pub labels: BTreeMap<String, String>,
}

/// `file_sd_configs` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSdConfig {
    /// Files (JSON or YAML) or globs on the file name (`*`).
    pub files: Vec<String>,
    /// How often the files are re-read even when they seem unchanged.
    pub refresh_interval: PromDuration,
}

impl Default for FileSdConfig {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            refresh_interval: PromDuration(Duration::from_secs(300)),
        }
    }
}

/// `http_sd_configs` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSdConfig {
    /// The endpoint, answering a JSON list of target groups.
    pub url: String,
    /// How often it is polled.
    pub refresh_interval: PromDuration,
}

impl Default for HttpSdConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            refresh_interval: PromDuration(Duration::from_secs(60)),
        }
    }
}

/// A job with every default resolved: what the scrape loops use.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The configuration as written.
    pub config: ScrapeConfig,
    /// Interval between scrapes.
    pub interval: Duration,
    /// Scrape timeout.
    pub timeout: Duration,
    /// HTTP path.
    pub metrics_path: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Use exposed timestamps.
    pub honor_timestamps: bool,
    /// Ask for gzip.
    pub compression: bool,
    /// The `Accept` header.
    pub accept: String,
    /// Per-scrape limits.
    pub limits: Limits,
    /// Most targets; 0: no limit.
    pub target_limit: u64,
}

/// Limits applied to each scrape; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest uncompressed body, bytes.
    pub body_size: u64,
    /// Most samples after metric relabelling.
    pub samples: u64,
    /// Most labels per series.
    pub labels: u64,
    /// Longest label name.
    pub label_name_length: u64,
    /// Longest label value.
    pub label_value_length: u64,
}

/// Keys of Prometheus' scrape configuration that tiermon does not support.
const UNSUPPORTED: &[&str] = &[
    "oauth2",
    "proxy_url",
    "no_proxy",
    "proxy_from_environment",
    "proxy_connect_header",
    "enable_http2",
    "http_headers",
    "track_timestamps_staleness",
    "native_histogram_bucket_limit",
    "native_histogram_min_bucket_factor",
    "scrape_classic_histograms",
    "always_scrape_classic_histograms",
    "convert_classic_histograms_to_nhcb",
    "keep_dropped_targets",
    "metric_name_validation_scheme",
    "metric_name_escaping_scheme",
    "scrape_fallback_protocol",
    "scrape_failure_log_file",
    "scrape_native_histograms",
    "fallback_scrape_protocol",
    "cert_file",
    "key_file",
    "server_name",
    "min_version",
    "max_version",
    "ca",
    "cert",
    "key",
    "azure_sd_configs",
    "digitalocean_sd_configs",
    "docker_sd_configs",
    "dockerswarm_sd_configs",
    "eureka_sd_configs",
    "gce_sd_configs",
    "hetzner_sd_configs",
    "ionos_sd_configs",
    "kuma_sd_configs",
    "lightsail_sd_configs",
    "linode_sd_configs",
    "marathon_sd_configs",
    "nerve_sd_configs",
    "nomad_sd_configs",
    "openstack_sd_configs",
    "ovhcloud_sd_configs",
    "puppetdb_sd_configs",
    "scaleway_sd_configs",
    "serverset_sd_configs",
    "triton_sd_configs",
    "uyuni_sd_configs",
    "vultr_sd_configs",
    "rule_files",
    "alerting",
    "remote_write",
    "remote_read",
    "storage",
    "tracing",
    "scrape_config_files",
    "runtime",
    "otlp",
    "query_log_file",
    "rule_query_offset",
];

impl ScrapeFile {
    /// Reads and validates a scrape configuration file (YAML).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            key: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|Error::Config { key, message }| Error::Config {
            key: format!("{}: {key}", path.display()),
            message,
        })
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| Error::Config {
                key: "<file>".into(),
                message: e.to_string(),
            })?;
        let file: ScrapeFile = tiermon_config::deserialize(raw).map_err(|e| match e {
            tiermon_config::Error::Invalid { key, message } => explain_unknown(key, message),
            other => Error::config("<file>", other.to_string()),
        })?;
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> Result<()> {
        let g = &self.global;
        if let Some(t) = g.scrape_timeout
            && t > g.scrape_interval
        {
            return Err(Error::config(
                "global.scrape_timeout",
                format!(
                    "{t} is longer than global.scrape_interval {}",
                    g.scrape_interval
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, job) in self.scrape_configs.iter().enumerate() {
            let key = format!("scrape_configs[{i}]");
            if job.job_name.is_empty() {
                return Err(Error::config(format!("{key}.job_name"), "missing"));
            }
            if !names.insert(job.job_name.as_str()) {
                return Err(Error::config(
                    format!("{key}.job_name"),
                    format!("{:?} is used by an earlier job", job.job_name),
                ));
            }
            self.job(i)?;
        }
        Ok(())
    }

    /// The `i`-th job with every default resolved and checked.
    pub fn job(&self, i: usize) -> Result<Job> {
        let c = &self.scrape_configs[i];
        let g = &self.global;
        let key = format!("scrape_configs[{i}]");
        let interval = c.scrape_interval.unwrap_or(g.scrape_interval).0;
        if interval.is_zero() {
            return Err(Error::config(
                format!("{key}.scrape_interval"),
                "must be more than 0",
            ));
        }
        let timeout = match c.scrape_timeout {
            Some(t) if t.0 > interval => {
                return Err(Error::config(
                    format!("{key}.scrape_timeout"),
                    format!(
                        "{t} is longer than the scrape interval {}",
                        PromDuration(interval)
                    ),
                ));
            }
            Some(t) => t.0,
            // Prometheus: the global timeout (10s unless set), capped at
            // the job's interval.
            None => g
                .scrape_timeout
                .map_or(Duration::from_secs(10), |t| t.0)
                .min(interval),
        };
        if timeout.is_zero() {
            return Err(Error::config(
                format!("{key}.scrape_timeout"),
                "must be more than 0",
            ));
        }
        let scheme = c.scheme.clone().unwrap_or_else(|| "http".into());
        if scheme != "http" && scheme != "https" {
            return Err(Error::config(
                format!("{key}.scheme"),
                format!("{scheme:?}: use http or https"),
            ));
        }
        let metrics_path = c.metrics_path.clone().unwrap_or_else(|| "/metrics".into());
        if !metrics_path.starts_with('/') {
            return Err(Error::config(
                format!("{key}.metrics_path"),
                format!("{metrics_path:?} must start with /"),
            ));
        }
        if c.basic_auth.is_some() && c.authorization.is_some() {
            return Err(Error::config(
                format!("{key}.authorization"),
                "basic_auth and authorization cannot both be set",
            ));
        }
        for (j, s) in c.static_configs.iter().enumerate() {
            for (k, t) in s.targets.iter().enumerate() {
                if t.is_empty() || t.contains('/') {
                    return Err(Error::config(
                        format!("{key}.static_configs[{j}].targets[{k}]"),
                        format!("{t:?} is not a host:port address"),
                    ));
                }
            }
            for name in s.labels.keys() {
                if !tiermon_model::is_valid_label_name(name) {
                    return Err(Error::config(
                        format!("{key}.static_configs[{j}].labels"),
                        format!("{name:?} is not a valid label name"),
                    ));
                }
            }
        }
        for (j, f) in c.file_sd_configs.iter().enumerate() {
            if f.files.is_empty() {
                return Err(Error::config(
                    format!("{key}.file_sd_configs[{j}].files"),
                    "no files listed",
                ));
            }
            for (k, file) in f.files.iter().enumerate() {
                let ok = [".json", ".yml", ".yaml"]
                    .iter()
                    .any(|ext| file.ends_with(ext));
                if !ok {
                    return Err(Error::config(
                        format!("{key}.file_sd_configs[{j}].files[{k}]"),
                        format!("{file:?} must end in .json, .yml or .yaml"),
                    ));
                }
            }
        }
        for (j, h) in c.http_sd_configs.iter().enumerate() {
            match url::Url::parse(&h.url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                Ok(_) | Err(_) => {
                    return Err(Error::config(
                        format!("{key}.http_sd_configs[{j}].url"),
                        format!("{:?} is not an http(s) URL", h.url),
                    ));
                }
            }
        }
        for (j, d) in c.dns_sd_configs.iter().enumerate() {
            d.validate(&format!("{key}.dns_sd_configs[{j}]"))?;
        }
        for (j, d) in c.consul_sd_configs.iter().enumerate() {
            d.validate(&format!("{key}.consul_sd_configs[{j}]"))?;
        }
        for (j, d) in c.ec2_sd_configs.iter().enumerate() {
            d.validate(&format!("{key}.ec2_sd_configs[{j}]"))?;
        }
        for (j, d) in c.kubernetes_sd_configs.iter().enumerate() {
            d.validate(&format!("{key}.kubernetes_sd_configs[{j}]"))?;
        }
        for (j, r) in c.relabel_configs.iter().enumerate() {
            r.validate()
                .map_err(|m| Error::config(format!("{key}.relabel_configs[{j}]"), m))?;
        }
        for (j, r) in c.metric_relabel_configs.iter().enumerate() {
            r.validate()
                .map_err(|m| Error::config(format!("{key}.metric_relabel_configs[{j}]"), m))?;
        }
        let protocols = c
            .scrape_protocols
            .clone()
            .filter(|p| !p.is_empty())
            .or_else(|| (!g.scrape_protocols.is_empty()).then(|| g.scrape_protocols.clone()))
            .unwrap_or_else(|| {
                vec![
                    ScrapeProtocol::OpenMetricsText1_0_0,
                    ScrapeProtocol::OpenMetricsText0_0_1,
                    ScrapeProtocol::PrometheusText0_0_4,
                ]
            });
        Ok(Job {
            config: c.clone(),
            interval,
            timeout,
            metrics_path,
            scheme,
            honor_timestamps: c.honor_timestamps.unwrap_or(true),
            compression: c.enable_compression.unwrap_or(true),
            accept: ScrapeProtocol::accept_header(&protocols),
            limits: Limits {
                body_size: c.body_size_limit.unwrap_or(g.body_size_limit).0,
                samples: c.sample_limit.unwrap_or(g.sample_limit),
                labels: c.label_limit.unwrap_or(g.label_limit),
                label_name_length: c
                    .label_name_length_limit
                    .unwrap_or(g.label_name_length_limit),
                label_value_length: c
                    .label_value_length_limit
                    .unwrap_or(g.label_value_length_limit),
            },
            target_limit: c.target_limit.unwrap_or(g.target_limit),
        })
    }
}

/// Turns serde's "unknown field" into a message that says whether the key
/// is a Prometheus setting tiermon lacks or a typo.
fn explain_unknown(key: String, message: String) -> Error {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        let full = if key == "<root>" {
            field.to_owned()
        } else if key == field || key.ends_with(&format!(".{field}")) {
            key.clone()
        } else {
            format!("{key}.{field}")
        };
        let message = if UNSUPPORTED.contains(&field) {
            "is a Prometheus setting that tiermon does not support".to_owned()
        } else {
            "unknown key".to_owned()
        };
        return Error::Config { key: full, message };
    }
    Error::Config { key, message }
}

pub use tiermon_config::PromDuration;

/// A byte size as Prometheus writes it: `10MB`, `512KiB`, `1GB` (powers of
/// 1024), or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses a size.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let bad = || format!("{s:?} is not a size (write it like 10MB or 512KB)");
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let mult: u64 = match t[digits..].trim() {
            "" | "B" => 1,
            "KB" | "KiB" | "K" => 1 << 10,
            "MB" | "MiB" | "M" => 1 << 20,
            "GB" | "GiB" | "G" => 1 << 30,
            "TB" | "TiB" | "T" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ByteSize::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_prometheus() {
        let ms = |s: &str| PromDuration::parse(s).map(|d| d.0.as_millis() as u64);
        assert_eq!(ms("15s"), Ok(15_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("1m500ms"), Ok(60_500));
        assert_eq!(ms("2d"), Ok(172_800_000));
        assert_eq!(ms("0"), Ok(0));
        for bad in ["", "15", "s", "1s1m", "1.5s", "15 s", "-1s", "1x"] {
            assert!(ms(bad).is_err(), "{bad}");
        }
        assert_eq!(PromDuration::parse("1h30m").unwrap().to_string(), "1h30m");
    }

    #[test]
    fn sizes_parse_in_powers_of_two() {
        assert_eq!(ByteSize::parse("10MB"), Ok(ByteSize(10 << 20)));
        assert_eq!(ByteSize::parse("512KiB"), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("123"), Ok(ByteSize(123)));
        assert!(ByteSize::parse("10 parsecs").is_err());
    }

    #[test]
    fn a_prometheus_file_loads_with_defaults_resolved() {
        let f = ScrapeFile::parse(
            r#"
global:
  scrape_interval: 15s
  external_labels: {dc: dc1}
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["10.0.0.1:9100", "10.0.0.2:9100"]
        labels: {rack: r1}
    relabel_configs:
      - source_labels: [__address__]
        regex: "(.*):9100"
        target_label: host
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: "go_.*"
        action: drop
  - job_name: app
    scrape_interval: 5s
    scrape_timeout: 2s
    metrics_path: /internal/metrics
    sample_limit: 1000
    body_size_limit: 10MB
    honor_labels: true
    params: {module: [http_2xx]}
    file_sd_configs:
      - files: [/etc/tiermon/targets/*.json]
"#,
        )
        .unwrap();
        let node = f.job(0).unwrap();
        assert_eq!(node.interval, Duration::from_secs(15));
        assert_eq!(node.timeout, Duration::from_secs(10));
        assert_eq!(node.metrics_path, "/metrics");
        assert!(node.honor_timestamps);
        let app = f.job(1).unwrap();
        assert_eq!(app.interval, Duration::from_secs(5));
        assert_eq!(app.timeout, Duration::from_secs(2));
        assert_eq!(app.limits.samples, 1000);
        assert_eq!(app.limits.body_size, 10 << 20);
        assert_eq!(f.scrape_configs[1].params["module"], ["http_2xx"]);
        assert!(
            app.accept
                .starts_with("application/openmetrics-text;version=1.0.0;q=0.5")
        );
    }

    #[test]
    fn the_global_timeout_is_capped_at_a_shorter_job_interval() {
        let f = ScrapeFile::parse(
            "global: {scrape_interval: 1m, scrape_timeout: 10s}\nscrape_configs: [{job_name: a, scrape_interval: 5s}]",
        )
        .unwrap();
        assert_eq!(f.job(0).unwrap().timeout, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "scrape_configs: [{job_name: a, azure_sd_configs: [{subscription_id: x}]}]",
                "scrape_configs[0].azure_sd_configs",
                "does not support",
            ),
            (
                "scrape_configs: [{job_name: a, kubernetes_sd_configs: [{role: ingress, api_server: 'https://k:6443'}]}]",
                "scrape_configs[0].kubernetes_sd_configs[0].role",
                "not supported",
            ),
            (
                "scrape_configs: [{job_name: a, dns_sd_configs: [{names: [x.example], type: A}]}]",
                "scrape_configs[0].dns_sd_configs[0].port",
                "port is required",
            ),
            (
                "scrape_configs: [{job_name: a, dns_sd_configs: [{names: [x.example], type: TXT}]}]",
                "scrape_configs[0].dns_sd_configs[0].type",
                "TXT",
            ),
            (
                "scrape_configs: [{job_name: a, ec2_sd_configs: [{region: eu-west-1, role_arn: 'arn:x'}]}]",
                "scrape_configs[0].ec2_sd_configs[0].role_arn",
                "not supported",
            ),
            (
                "scrape_configs: [{job_name: a, consul_sd_configs: [{servr: 'c:8500'}]}]",
                "scrape_configs[0].consul_sd_configs[0].servr",
                "unknown key",
            ),
            (
                "scrape_configs: [{job_name: a, scrape_intervall: 5s}]",
                "scrape_configs[0].scrape_intervall",
                "unknown key",
            ),
            (
                "rule_files: [a.yml]\nscrape_configs: []",
                "rule_files",
                "does not support",
            ),
            (
                "scrape_configs: [{job_name: a, scrape_interval: 5s, scrape_timeout: 10s}]",
                "scrape_configs[0].scrape_timeout",
                "longer than",
            ),
            (
                "scrape_configs: [{job_name: a}, {job_name: a}]",
                "scrape_configs[1].job_name",
                "earlier job",
            ),
            (
                "scrape_configs: [{job_name: a, scrape_interval: soon}]",
                "scrape_configs[0].scrape_interval",
                "not a duration",
            ),
            (
                "scrape_configs: [{job_name: a, relabel_configs: [{action: replace, regex: '('}]}]",
                "scrape_configs[0].relabel_configs[0].regex",
                "regex",
            ),
            (
                "scrape_configs: [{job_name: a, relabel_configs: [{action: hashmod, target_label: x}]}]",
                "scrape_configs[0].relabel_configs[0]",
                "modulus",
            ),
            (
                "scrape_configs: [{job_name: a, relabel_configs: [{action: explode}]}]",
                "scrape_configs[0].relabel_configs[0].action",
                "explode",
            ),
            (
                "scrape_configs: [{job_name: a, static_configs: [{targets: ['http://x:1/metrics']}]}]",
                "scrape_configs[0].static_configs[0].targets[0]",
                "host:port",
            ),
        ];
        // Outside a pod, a Kubernetes job needs its API server named.
        let outside = std::env::var_os("KUBERNETES_SERVICE_HOST").is_none();
        let k8s = (
            "scrape_configs: [{job_name: a, kubernetes_sd_configs: [{role: pod}]}]",
            "scrape_configs[0].kubernetes_sd_configs[0].api_server",
            "KUBERNETES_SERVICE_HOST",
        );
        for (text, key, what) in cases.into_iter().chain(outside.then_some(k8s)) {
            let err = ScrapeFile::parse(text).expect_err(text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
            assert!(err.contains(what), "{text}: {err}");
        }
    }
}
