//! `[agent]`: what the host agent collects and where it listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// Configuration of `tiermon agent`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Address to serve `/metrics` on.
    pub listen: SocketAddr,
    /// Root of the proc filesystem (a fixture folder in tests).
    pub procfs: PathBuf,
    /// Root of the sys filesystem.
    pub sysfs: PathBuf,
    /// Mount points to leave out of filesystem metrics (regex, anchored).
    pub filesystem_mount_points_exclude: String,
    /// Filesystem types to leave out (regex, anchored).
    pub filesystem_types_exclude: String,
    /// Network interfaces to leave out (regex, anchored).
    pub network_devices_exclude: String,
    /// Block devices to leave out of disk I/O metrics (regex, anchored).
    pub disk_devices_exclude: String,
    /// Critical processes to watch.
    pub processes: Vec<ProcessWatch>,
    /// Application access logs to count requests from.
    pub logs: Vec<LogSource>,
    /// Disk health through `smartctl --json`.
    pub smart: SmartConfig,
    /// Longest time a single collector may take before it is abandoned for
    /// this scrape (reported as an error of that collector).
    #[serde(with = "humantime_serde")]
    pub collector_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9190)),
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
            // node_exporter's defaults.
            filesystem_mount_points_exclude: "/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
                .to_owned(),
            filesystem_types_exclude: "autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs"
                .to_owned(),
            network_devices_exclude: String::new(),
            disk_devices_exclude: "(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\\d+n\\d+p)\\d+".to_owned(),
            processes: Vec::new(),
            logs: Vec::new(),
            smart: SmartConfig::default(),
            collector_timeout: Duration::from_secs(5),
        }
    }
}

/// A process that must be running. Exactly one of `comm`, `cmdline` and
/// `pidfile` selects it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessWatch {
    /// Value of the `name` label on this watch's series.
    pub name: String,
    /// Matches the process name (`/proc/PID/comm`) exactly.
    #[serde(default)]
    pub comm: Option<String>,
    /// Regex matched (unanchored) against the command line, arguments
    /// joined by spaces.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// File holding the PID of the process.
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
}

/// Format of an access log.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// NCSA common log format.
    Common,
    /// NCSA combined log format (common plus referer and user agent).
    Combined,
    /// One JSON object per line; the status is in `status_field`.
    Json,
}

/// An access log to follow.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSource {
    /// Value of the `log` label on this source's series.
    pub name: String,
    /// The file; rotation (rename or truncation) is followed.
    pub path: PathBuf,
    /// Line format.
    pub format: LogFormat,
    /// For `json`: the field that holds the HTTP status (dots for nesting).
    #[serde(default)]
    pub status_field: Option<String>,
    /// Read the file from its start instead of its end when first opened.
    #[serde(default)]
    pub from_start: bool,
}

/// SMART disk health.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmartConfig {
    /// Set false to never run smartctl.
    pub enabled: bool,
    /// The smartctl binary; when it is not installed, no SMART series.
    pub smartctl: PathBuf,
    /// Devices to query; empty means what `smartctl --scan` finds.
    pub devices: Vec<String>,
    /// How often to query (SMART data changes slowly and queries wake disks).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for SmartConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            smartctl: PathBuf::from("smartctl"),
            devices: Vec::new(),
            interval: Duration::from_secs(300),
        }
    }
}

fn check_regex(key: &str, re: &str) -> Result<()> {
    regex::Regex::new(re)
        .map(drop)
        .map_err(|e| Error::invalid(key, format!("invalid regular expression {re:?}: {e}")))
}

impl AgentConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        check_regex(
            &format!("{key}.filesystem_mount_points_exclude"),
            &self.filesystem_mount_points_exclude,
        )?;
        check_regex(
            &format!("{key}.filesystem_types_exclude"),
            &self.filesystem_types_exclude,
        )?;
        check_regex(
            &format!("{key}.network_devices_exclude"),
            &self.network_devices_exclude,
        )?;
        check_regex(
            &format!("{key}.disk_devices_exclude"),
            &self.disk_devices_exclude,
        )?;
        if self.collector_timeout.is_zero() {
            return Err(Error::invalid(
                format!("{key}.collector_timeout"),
                "must be greater than zero",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.processes.iter().enumerate() {
            let k = format!("{key}.processes[{i}]");
            if p.name.is_empty() {
                return Err(Error::invalid(format!("{k}.name"), "must not be empty"));
            }
            if !names.insert(&p.name) {
                return Err(Error::invalid(
                    format!("{k}.name"),
                    format!("{:?} is used by another process watch", p.name),
                ));
            }
            let n = [p.comm.is_some(), p.cmdline.is_some(), p.pidfile.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if n != 1 {
                return Err(Error::invalid(
                    k,
                    "set exactly one of comm, cmdline, pidfile",
                ));
            }
            if let Some(re) = &p.cmdline {
                check_regex(&format!("{k}.cmdline"), re)?;
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.logs.iter().enumerate() {
            let k = format!("{key}.logs[{i}]");
            if l.name.is_empty() {
                return Err(Error::invalid(format!("{k}.name"), "must not be empty"));
            }
            if !names.insert(&l.name) {
                return Err(Error::invalid(
                    format!("{k}.name"),
                    format!("{:?} is used by another log", l.name),
                ));
            }
            if !l.path.is_absolute() {
                return Err(Error::invalid(
                    format!("{k}.path"),
                    format!("{} is not an absolute path", l.path.display()),
                ));
            }
            match (l.format, &l.status_field) {
                (LogFormat::Json, None) => {
                    return Err(Error::invalid(
                        format!("{k}.status_field"),
                        "required when format is json",
                    ));
                }
                (LogFormat::Common | LogFormat::Combined, Some(_)) => {
                    return Err(Error::invalid(
                        format!("{k}.status_field"),
                        "only applies when format is json",
                    ));
                }
                _ => {}
            }
        }
        if self.smart.interval.is_zero() {
            return Err(Error::invalid(
                format!("{key}.smart.interval"),
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}
