//! The alert manager: takes alerts (from tiermon's rules, or from any
//! Prometheus through the Alertmanager v2 API), routes and groups them,
//! mutes what silences and inhibition rules say, lets on-call engineers
//! acknowledge firing alerts (no repeats until the alert resolves or fires
//! anew), and delivers notifications — webhook (Alertmanager payload v4),
//! Slack, email — with retries, keeping a notification log so that a
//! restart neither loses nor repeats one. Two instances given each other
//! as peers send each notification once.
//!
//! Configuration is Alertmanager's own file ([`Config`]).

mod api;
pub mod config;
mod dispatch;
pub mod matchers;
pub mod notify;
pub mod state;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use config::{Config, ConfigError};
use dispatch::now_ms;
pub use dispatch::{Alert, Options, Stats};
use dispatch::{Core, State, Tree};
use state::{Shared, Store};

/// An alert as POST /api/v2/alerts takes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostableAlert {
    /// Identity.
    pub labels: BTreeMap<String, String>,
    /// Descriptions.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// RFC 3339; now + `resolve_timeout` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Link to the source.
    #[serde(
        default,
        rename = "generatorURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub generator_url: Option<String>,
}

fn parse_time(what: &str, s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{what} {s:?} is not an RFC 3339 time: {e}"))
}

impl PostableAlert {
    /// Validates and converts, at `now` with `resolve_timeout`.
    pub fn into_alert(self, now: i64, resolve_timeout: Duration) -> Result<Alert, String> {
        if self.labels.is_empty() {
            return Err("an alert needs at least one label".into());
        }
        for (k, v) in &self.labels {
            if !tiermon_model::is_valid_label_name(k) {
                return Err(format!("invalid label name {k:?}"));
            }
            if v.is_empty() {
                return Err(format!("label {k:?} has an empty value"));
            }
        }
        let starts = match self
            .starts_at
            .as_deref()
            .filter(|s| !s.is_empty() && !s.starts_with("0001-"))
        {
            Some(s) => parse_time("startsAt", s)?,
            None => now,
        };
        let (ends, timeout) = match self
            .ends_at
            .as_deref()
            .filter(|s| !s.is_empty() && !s.starts_with("0001-"))
        {
            Some(s) => (parse_time("endsAt", s)?, false),
            None => (now + resolve_timeout.as_millis() as i64, true),
        };
        if ends < starts {
            return Err("endsAt is before startsAt".into());
        }
        Ok(Alert {
            labels: self.labels,
            annotations: self.annotations,
            starts_ms: starts,
            ends_ms: ends,
            timeout,
            generator_url: self.generator_url.unwrap_or_default(),
            updated_ms: now,
        })
    }
}

/// Why the alert manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The saved state cannot be read.
    #[error("alert manager state: {0}")]
    State(String),
}

/// A running alert manager.
#[derive(Debug, Clone)]
pub struct AlertManager {
    core: Arc<Core>,
    task: Arc<tokio::task::JoinHandle<()>>,
    peers: Arc<Vec<String>>,
}

impl AlertManager {
    /// Starts with `config`, keeping its state in `data_dir`, replicating
    /// to `peers` (base URLs of the other instances). Within a Tokio
    /// runtime.
    pub fn start(
        config: Config,
        data_dir: &Path,
        opts: Options,
        peers: Vec<String>,
    ) -> Result<Self, Error> {
        let tree = Tree::new(config)?;
        let store = Store::new(data_dir);
        let shared = store.load().map_err(Error::State)?;
        let core = Arc::new(Core {
            state: Mutex::new(State {
                tree,
                alerts: Default::default(),
                groups: Default::default(),
                shared,
                stats: Stats::default(),
            }),
            store,
            opts,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            wake: tokio::sync::Notify::new(),
            replicate: Mutex::new(None),
            deliveries: Mutex::new(tokio::task::JoinSet::new()),
        });
        if !peers.is_empty() {
            let http = core.http.clone();
            let targets = peers.clone();
            *core.replicate.lock() = Some(dispatch::Replicate(Arc::new(move |s: Shared| {
                let body = match serde_json::to_vec(&s) {
                    Ok(b) => b,
                    Err(_) => return,
                };
                for p in &targets {
                    let (http, url, body) = (
                        http.clone(),
                        format!("{}/api/tiermon/v1/peer/state", p.trim_end_matches('/')),
                        body.clone(),
                    );
                    tokio::spawn(async move {
                        let r = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .timeout(Duration::from_secs(5))
                            .body(body)
                            .send()
                            .await;
                        if let Err(e) = r.and_then(|r| r.error_for_status()) {
                            tracing::debug!(peer = %url, error = %e, "cannot replicate to a peer");
                        }
                    });
                }
            })));
            // What the peers know (silences made while this one was down).
            let c = core.clone();
            let targets = peers.clone();
            tokio::spawn(async move {
                for p in targets {
                    let url = format!("{}/api/tiermon/v1/peer/state", p.trim_end_matches('/'));
                    let got = async {
                        let r = c
                            .http
                            .get(&url)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await?
                            .error_for_status()?;
                        r.bytes().await
                    }
                    .await;
                    match got.map(|b| serde_json::from_slice::<Shared>(&b)) {
                        Ok(Ok(s)) => {
                            let merged = {
                                let mut st = c.state.lock();
                                st.shared.merge(s).then(|| st.shared.clone())
                            };
                            if let Some(m) = merged
                                && let Err(e) = c.store.save(&m)
                            {
                                tracing::warn!(error = %e, "cannot save the alert manager's state");
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(peer = %url, error = %e, "peer state unreadable")
                        }
                        Err(e) => {
                            tracing::info!(peer = %url, error = %e, "peer not reachable at start")
                        }
                    }
                }
            });
        }
        let task = tokio::spawn(core.clone().run());
        Ok(Self {
            core,
            task: Arc::new(task),
            peers: Arc::new(peers),
        })
    }

    /// Takes alerts; all or nothing: one invalid alert refuses the batch,
    /// naming it.
    pub fn receive(&self, alerts: Vec<PostableAlert>) -> Result<usize, String> {
        let now = now_ms();
        let timeout = self.core.state.lock().tree.config.global.resolve_timeout.0;
        let mut ok = Vec::with_capacity(alerts.len());
        for (i, a) in alerts.into_iter().enumerate() {
            ok.push(
                a.into_alert(now, timeout)
                    .map_err(|e| format!("alert [{i}]: {e}"))?,
            );
        }
        let n = ok.len();
        self.core.state.lock().insert(ok, now);
        self.core.wake.notify_one();
        Ok(n)
    }

    /// Applies a new configuration; groups are rebuilt, their schedules
    /// kept.
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let tree = Tree::new(config)?;
        self.core.state.lock().retree(tree, now_ms());
        self.core.wake.notify_one();
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.core.state.lock().stats.clone()
    }

    /// The HTTP routes (Alertmanager v2 API and tiermon's additions).
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Stops delivering: no new notification is started, and those under
    /// way (waiting on a peer, retrying, or sending) are abandoned, as if
    /// the process had died.
    pub fn stop(&self) {
        self.task.abort();
        self.core.deliveries.lock().abort_all();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let s = self.state.lock().shared.clone();
        let _ = self.store.save(&s);
    }
}

#[cfg(test)]
mod tests;
