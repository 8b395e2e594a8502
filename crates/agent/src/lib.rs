//! `tiermon agent`: the collector that runs on every host.
//!
//! [`Agent`] gathers host health (CPU, memory, load, filesystems, disk I/O,
//! network, file descriptors, pressure stalls), watched processes, hardware
//! faults (EDAC memory errors, hwmon sensors, power supplies, SMART disk
//! health) and request counts from application access logs, and serves them
//! at `/metrics` in the Prometheus text format or OpenMetrics (by content
//! negotiation, gzip-compressed when asked).
//!
//! Host metrics keep node_exporter's names, so dashboards and alert rules
//! written for node_exporter work unchanged; metrics node_exporter has no
//! name for are `tiermon_*`.
//!
//! Collection happens at scrape time, each collector on the blocking pool
//! under a time limit, except for what has to watch continuously (log
//! followers) or is too slow to run per scrape (SMART), which run in the
//! background and are read at scrape time. Each collector's duration and
//! success are exported, so a broken collector is itself visible.

mod hardware;
mod host;
mod logs;
mod out;
mod process;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use regex::Regex;
use tiermon_config::AgentConfig;
use tiermon_exposition::MetricFamily;

pub use server::serve;

/// A collector failed; says which file or command and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file did not have the expected content.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A configured regular expression does not compile.
    #[error("config key `{key}`: {source}")]
    Regex {
        /// The key.
        key: String,
        /// The compiler's error.
        #[source]
        source: Box<regex::Error>,
    },
    /// A collector took longer than `collector_timeout`.
    #[error("collector {0} timed out")]
    Timeout(&'static str),
    /// A collector task ended abnormally.
    #[error("collector {0} failed: {1}")]
    Task(&'static str, String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn parse(path: &Path, e: impl std::fmt::Display) -> Self {
        Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What collectors need: where /proc and /sys are, kernel constants, and
/// compiled filters.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub ticks: u64,
    pub page_size: u64,
    pub fs_mount_exclude: Option<Regex>,
    pub fs_type_exclude: Option<Regex>,
    pub net_exclude: Option<Regex>,
    pub disk_exclude: Option<Regex>,
}

fn anchored(key: &str, re: &str) -> Result<Option<Regex>> {
    if re.is_empty() {
        return Ok(None);
    }
    Regex::new(&format!("^(?:{re})$"))
        .map(Some)
        .map_err(|e| Error::Regex {
            key: key.to_owned(),
            source: Box::new(e),
        })
}

impl Ctx {
    pub(crate) fn new(cfg: &AgentConfig) -> Result<Self> {
        Ok(Self {
            procfs: cfg.procfs.clone(),
            sysfs: cfg.sysfs.clone(),
            ticks: rustix::param::clock_ticks_per_second(),
            page_size: rustix::param::page_size() as u64,
            fs_mount_exclude: anchored(
                "agent.filesystem_mount_points_exclude",
                &cfg.filesystem_mount_points_exclude,
            )?,
            fs_type_exclude: anchored(
                "agent.filesystem_types_exclude",
                &cfg.filesystem_types_exclude,
            )?,
            net_exclude: anchored(
                "agent.network_devices_exclude",
                &cfg.network_devices_exclude,
            )?,
            disk_exclude: anchored("agent.disk_devices_exclude", &cfg.disk_devices_exclude)?,
        })
    }
}

type CollectFn = fn(&Inner, &mut out::Out) -> Result<()>;

/// The collectors run at every scrape, by name.
const COLLECTORS: &[(&str, CollectFn)] = &[
    ("cpu", |i, o| host::stat(&i.ctx, o)),
    ("meminfo", |i, o| host::meminfo(&i.ctx, o)),
    ("loadavg", |i, o| host::loadavg(&i.ctx, o)),
    ("filefd", |i, o| host::filefd(&i.ctx, o)),
    ("pressure", |i, o| host::pressure(&i.ctx, o)),
    ("netdev", |i, o| host::netdev(&i.ctx, o)),
    ("diskstats", |i, o| host::diskstats(&i.ctx, o)),
    ("filesystem", |i, o| host::filesystems(&i.ctx, o)),
    ("processes", |i, o| i.processes.collect(&i.ctx, o)),
    ("edac", |i, o| hardware::edac(&i.ctx, o)),
    ("hwmon", |i, o| hardware::hwmon(&i.ctx, o)),
    ("power_supply", |i, o| hardware::power_supply(&i.ctx, o)),
    ("smart", |i, o| {
        i.smart.collect(o);
        Ok(())
    }),
    ("logs", |i, o| {
        for l in &i.logs {
            l.collect(o);
        }
        Ok(())
    }),
];

#[derive(Debug)]
struct Inner {
    cfg: AgentConfig,
    ctx: Ctx,
    processes: process::Watcher,
    logs: Vec<Arc<logs::LogCounter>>,
    smart: Arc<hardware::Smart>,
    /// Failures per collector since start.
    errors: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
}

/// The host agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl Agent {
    /// An agent for `cfg` (already validated by the config crate).
    pub fn new(cfg: AgentConfig) -> Result<Self> {
        let ctx = Ctx::new(&cfg)?;
        let processes = process::Watcher::new(&cfg.processes)?;
        let logs = cfg
            .logs
            .iter()
            .map(|l| Arc::new(logs::LogCounter::new(l.clone())))
            .collect();
        let smart = Arc::new(hardware::Smart::new(cfg.smart.clone()));
        let errors = std::sync::Mutex::new(COLLECTORS.iter().map(|(n, _)| (*n, 0)).collect());
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                ctx,
                processes,
                logs,
                smart,
                errors,
            }),
        })
    }

    /// Starts the background work (log followers, SMART polling). It stops
    /// when the returned handles are dropped or aborted.
    pub fn start_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for l in &self.inner.logs {
            tasks.push(tokio::spawn(logs::follow(l.clone())));
        }
        if self.inner.cfg.smart.enabled {
            tasks.push(tokio::spawn(hardware::poll_smart(self.inner.smart.clone())));
        }
        tasks
    }

    /// Runs every collector (concurrently, each under the configured time
    /// limit) and returns the families, the agent's own health included.
    pub async fn gather(&self) -> Vec<MetricFamily> {
        let timeout = self.inner.cfg.collector_timeout;
        let runs = COLLECTORS.iter().map(|&(name, f)| {
            let inner = self.inner.clone();
            async move {
                let start = Instant::now();
                let task = tokio::task::spawn_blocking(move || {
                    let mut o = out::Out::default();
                    f(&inner, &mut o).map(|()| o)
                });
                let r = match tokio::time::timeout(timeout, task).await {
                    Err(_) => Err(Error::Timeout(name)),
                    Ok(Err(e)) => Err(Error::Task(name, e.to_string())),
                    Ok(Ok(r)) => r,
                };
                (name, start.elapsed(), r)
            }
        });
        let handles: Vec<_> = runs.map(tokio::spawn).collect();
        let mut results = Vec::with_capacity(handles.len());
        for h in handles {
            // The task itself only awaits; a collector's panic surfaces as
            // its JoinError above.
            if let Ok(r) = h.await {
                results.push(r);
            }
        }
        let mut all = out::Out::default();
        let mut health = out::Out::default();
        let mut errors = self.inner.errors.lock().unwrap_or_else(|e| e.into_inner());
        for (name, took, r) in results {
            let l = [("collector", name)];
            health.gauge(
                "tiermon_agent_collector_duration_seconds",
                "How long the collector took at this scrape.",
                &l,
                took.as_secs_f64(),
            );
            match r {
                Ok(o) => {
                    all.merge(o);
                    health.gauge(
                        "tiermon_agent_collector_success",
                        "Whether the collector succeeded at this scrape.",
                        &l,
                        1.0,
                    );
                }
                Err(e) => {
                    tracing::warn!(collector = name, error = %e, "collector failed");
                    health.gauge(
                        "tiermon_agent_collector_success",
                        "Whether the collector succeeded at this scrape.",
                        &l,
                        0.0,
                    );
                    *errors.entry(name).or_default() += 1;
                }
            }
            let n = errors.get(name).copied().unwrap_or(0);
            health.counter(
                "tiermon_agent_collector_errors_total",
                "Scrapes at which the collector failed, since the agent started.",
                &l,
                n as f64,
            );
        }
        drop(errors);
        health.gauge(
            "tiermon_build_info",
            "A metric with a constant '1' value labeled by version.",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("component", "agent"),
            ],
            1.0,
        );
        all.merge(health);
        all.into_families()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(fams: &[MetricFamily], name: &str, collector: &str) -> Option<f64> {
        fams.iter()
            .flat_map(|f| &f.samples)
            .find(|s| {
                s.name == name
                    && s.labels
                        .iter()
                        .any(|(n, v)| n == "collector" && v == collector)
            })
            .map(|s| s.value)
    }

    #[tokio::test]
    async fn failing_collectors_are_reported_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            procfs: dir.path().to_owned(),
            sysfs: dir.path().to_owned(),
            ..Default::default()
        };
        let agent = Agent::new(cfg).unwrap();
        agent.gather().await;
        let fams = agent.gather().await;
        assert_eq!(
            value(&fams, "tiermon_agent_collector_success", "loadavg"),
            Some(0.0)
        );
        assert_eq!(
            value(&fams, "tiermon_agent_collector_errors_total", "loadavg"),
            Some(2.0)
        );
        // Absent hardware is not a failure.
        assert_eq!(
            value(&fams, "tiermon_agent_collector_success", "hwmon"),
            Some(1.0)
        );
        assert_eq!(
            value(&fams, "tiermon_agent_collector_errors_total", "hwmon"),
            Some(0.0)
        );
        assert!(value(&fams, "tiermon_agent_collector_duration_seconds", "cpu").is_some());
    }
}
