//! Typed configuration for every tiermon tier.
//!
//! One file (TOML or YAML, chosen by extension) holds a section per tier —
//! `[agent]`, `[secondary]`, `[primary]`, `[global]` — and environment variables override any key:
//! `TIERMON_AGENT__LISTEN=0.0.0.0:9190` sets `agent.listen`. [`load`] reads,
//! merges and deserialises (unknown keys are errors), then [`Config::validate`]
//! checks what types cannot (regular expressions compile, paths make
//! sense). Every error names the key it is about.

mod agent;
mod alerting;
mod prom;
mod secondary;
mod tiers;

pub use agent::{AgentConfig, LogFormat, LogSource, ProcessWatch, SmartConfig};
pub use alerting::{AlertmanagerConfig, RulesConfig};
pub use secondary::{BlobConfig, QueryConfig, SecondaryConfig, ShardConfig, StorageConfig};
pub use tiers::{GlobalConfig, PrimaryConfig, PushConfig};

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TIERMON";

/// A configuration problem; `key` is the dotted path of the offending key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or is not valid TOML/YAML.
    #[error("reading config file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A key has a bad value, is unknown, or is missing.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `agent.processes[0].cmdline`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole configuration: one section per tier.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `tiermon agent`.
    pub agent: AgentConfig,
    /// `tiermon secondary`.
    pub secondary: SecondaryConfig,
    /// `tiermon primary`.
    pub primary: PrimaryConfig,
    /// `tiermon global`.
    pub global: GlobalConfig,
}

impl Config {
    /// Checks what deserialisation cannot, naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        self.agent.validate("agent")?;
        self.secondary.validate("secondary")?;
        self.primary.validate("primary")?;
        self.global.validate("global")
    }
}

/// Loads `file` (if any) with environment overrides from `env` (pass
/// `std::env::vars()`), and validates the result.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config> {
    let mut b = config::Config::builder();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => config::FileFormat::Yaml,
            Some("toml") | None => config::FileFormat::Toml,
            Some(other) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    message: format!("unknown extension .{other}: use .toml, .yaml or .yml"),
                });
            }
        };
        b = b.add_source(config::File::from_str(&text, format));
    }
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")) && k.contains("__"))
        .collect();
    b = b.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(env)),
    );
    let raw = b.build().map_err(|e| match file {
        Some(path) => Error::Read {
            path: path.to_owned(),
            message: e.to_string(),
        },
        None => Error::invalid("<environment>", e.to_string()),
    })?;
    let cfg: Config = deserialize(raw)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Deserialises what the `config` crate read into `T`; an error names the
/// dotted path of the key at fault (`<root>` for the whole document).
pub fn deserialize<T: serde::de::DeserializeOwned>(raw: config::Config) -> Result<T> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        // The config crate appends its own location; the path says it better.
        let message = message
            .split(" for key `")
            .next()
            .unwrap_or(&message)
            .to_owned();
        Error::invalid(if key == "." { "<root>".to_owned() } else { key }, message)
    })
}

pub use prom::PromDuration;

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's folder, read when the test runs (`env!` would keep the
    /// folder of whichever checkout compiled the test, and a target folder
    /// shared between checkouts then reads another checkout's files).
    fn manifest_dir() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("cargo test sets CARGO_MANIFEST_DIR")
            .into()
    }

    fn load_str(name: &str, text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_without_a_file() {
        let c = load(None, []).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn testdata_good_files_load() {
        for f in ["agent.good.toml", "agent.good.yaml"] {
            let path = manifest_dir().join("testdata").join(f);
            let c = load(Some(&path), []).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(c.agent.processes.len(), 2, "{f}");
            assert_eq!(c.agent.logs.len(), 1, "{f}");
        }
    }

    #[test]
    fn secondary_section_loads_with_blob_and_query_settings() {
        let path = manifest_dir().join("testdata/secondary.good.toml");
        let c = load(
            Some(&path),
            [(
                "TIERMON_SECONDARY__STORAGE__BLOB__OPTIONS__ACCESS_KEY_ID".to_string(),
                "AKIA".to_string(),
            )],
        )
        .unwrap();
        let s = &c.secondary;
        assert_eq!(s.storage.retention_raw.as_secs(), 30 * 24 * 3600);
        assert_eq!(s.storage.block.as_secs(), 3 * 3600);
        assert_eq!(s.storage.blob.location, "s3://tiermon-blocks/dc1");
        assert_eq!(s.storage.blob.options["region"], "eu-west-1");
        assert_eq!(s.storage.blob.options["access_key_id"], "AKIA");
        assert_eq!(s.query.max_concurrent, 8);
        assert_eq!(
            s.storage.retention_1h,
            StorageConfig::default().retention_1h
        );
    }

    #[test]
    fn hierarchy_sections_load() {
        let path = manifest_dir().join("testdata/hierarchy.good.toml");
        let c = load(
            Some(&path),
            [("TIERMON_PRIMARY__DATACENTER".to_string(), "dc9".to_string())],
        )
        .unwrap();
        assert_eq!(c.secondary.push.destinations.len(), 2);
        assert_eq!(c.secondary.push.max_age.as_secs(), 24 * 3600);
        assert_eq!(c.secondary.push.external_labels["secondary"], "sec-1");
        assert_eq!(c.secondary.datacenter, "dc1");
        assert_eq!(c.primary.datacenter, "dc9", "the environment overrides");
        assert_eq!(c.primary.child_timeout.as_secs(), 45);
        assert_eq!(c.primary.push.destinations, ["http://global:9193"]);
        assert_eq!(c.global.primaries["dc2"], "http://primary-a.dc2:9192");
        assert_eq!(c.global.child_timeout.as_secs(), 180);
    }

    #[test]
    fn testdata_bad_files_name_the_key() {
        // Each bad file states the expected error in its first line.
        let dir = manifest_dir().join("testdata");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.contains(".bad.") {
                continue;
            }
            n += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let expect = text.lines().next().unwrap().trim_start_matches('#').trim();
            let err = load(Some(&path), []).expect_err(&name).to_string();
            assert!(
                err.contains(expect),
                "{name}: {err:?} should contain {expect:?}"
            );
        }
        assert!(n >= 5, "only {n} bad files");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load_str(
            "a.toml",
            "[agent]\nlisten = \"127.0.0.1:1\"\n",
            &[("TIERMON_AGENT__LISTEN", "127.0.0.1:2"), ("OTHER", "x")],
        )
        .unwrap();
        assert_eq!(c.agent.listen.to_string(), "127.0.0.1:2");
    }

    #[test]
    fn bad_environment_value_names_the_key() {
        let err = load(
            None,
            [("TIERMON_AGENT__LISTEN".to_string(), "nowhere".to_string())],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("agent.listen"), "{err}");
    }

    #[test]
    fn unreadable_and_malformed_files() {
        let err = load(Some(Path::new("/nonexistent/x.toml")), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
        let err = load_str("a.toml", "[agent\n", &[]).unwrap_err().to_string();
        assert!(err.contains("a.toml"), "{err}");
        let err = load_str("a.ini", "", &[]).unwrap_err().to_string();
        assert!(err.contains("unknown extension .ini"), "{err}");
    }
}
