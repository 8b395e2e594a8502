//! `[<tier>.rules]` and `[<tier>.alertmanager]`: the rules a storing tier
//! evaluates over its own data, and the alert manager it may run.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secondary::positive;
use crate::{Error, Result};

/// Rules evaluated by a tier.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Prometheus rule files (globs in the file name, as
    /// `rule_files`); reloaded on SIGHUP and `POST /-/reload`.
    pub files: Vec<String>,
    /// Interval of groups without one.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// Least time between two sends of an unchanged firing alert.
    #[serde(with = "humantime_serde")]
    pub resend_delay: Duration,
    /// Alertmanager v2 API base URLs alerts are sent to besides the tier's
    /// own alert manager (e.g. an existing Prometheus Alertmanager).
    pub alertmanagers: Vec<String>,
    /// The URL alerts link back to (default: the tier's listen address).
    pub external_url: String,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            evaluation_interval: Duration::from_secs(15),
            resend_delay: Duration::from_secs(60),
            alertmanagers: Vec::new(),
            external_url: String::new(),
        }
    }
}

fn http_url(key: String, u: &str) -> Result<()> {
    let ok = (u.starts_with("http://") || u.starts_with("https://")) && u.len() > "https://".len();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            key,
            format!("{u:?} is not an http:// or https:// address"),
        ))
    }
}

impl RulesConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        positive(
            format!("{key}.evaluation_interval"),
            self.evaluation_interval,
        )?;
        positive(format!("{key}.resend_delay"), self.resend_delay)?;
        for (i, f) in self.files.iter().enumerate() {
            if f.trim().is_empty() {
                return Err(Error::invalid(format!("{key}.files[{i}]"), "empty path"));
            }
        }
        for (i, u) in self.alertmanagers.iter().enumerate() {
            http_url(format!("{key}.alertmanagers[{i}]"), u)?;
        }
        if !self.external_url.is_empty() {
            http_url(format!("{key}.external_url"), &self.external_url)?;
        }
        Ok(())
    }
}

/// The tier's own alert manager.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// An Alertmanager configuration file (`route`, `receivers`,
    /// `inhibit_rules`). Unset: the tier runs no alert manager.
    pub config_file: Option<PathBuf>,
    /// Base URLs of the other alert managers of an HA pair.
    pub peers: Vec<String>,
    /// This instance's position in the pair (0 sends first, 1 waits
    /// `peer_timeout` for 0's notification log).
    pub position: usize,
    /// How long each position waits for the ones before it.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// How long silences, acknowledgements and the notification log are
    /// kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        Self {
            config_file: None,
            peers: Vec::new(),
            position: 0,
            peer_timeout: Duration::from_secs(15),
            retention: Duration::from_secs(120 * 3600),
        }
    }
}

impl AlertmanagerConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        if let Some(p) = &self.config_file
            && p.as_os_str().is_empty()
        {
            return Err(Error::invalid(format!("{key}.config_file"), "empty path"));
        }
        for (i, u) in self.peers.iter().enumerate() {
            http_url(format!("{key}.peers[{i}]"), u)?;
        }
        if self.position > self.peers.len() {
            return Err(Error::invalid(
                format!("{key}.position"),
                format!(
                    "{} is past the end of a pair of {} (peers + this one)",
                    self.position,
                    self.peers.len() + 1
                ),
            ));
        }
        positive(format!("{key}.peer_timeout"), self.peer_timeout)?;
        positive(format!("{key}.retention"), self.retention)
    }
}
