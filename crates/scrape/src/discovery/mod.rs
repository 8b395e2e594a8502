//! Service discovery: each provider turns its source into target groups —
//! Prometheus' model, with the same `__meta_*` labels — and sends its whole
//! current set whenever it changes.
//!
//! - static: the groups written in the configuration;
//! - file: Prometheus `file_sd` JSON or YAML files (globs allowed in the
//!   file name), re-read when they change and every `refresh_interval`;
//! - HTTP: Prometheus `http_sd`, polled every `refresh_interval`; a failed
//!   poll keeps the last good set;
//! - DNS (`dns`): SRV, A, AAAA, MX and NS records;
//! - Consul's catalog (`consul`), with blocking queries;
//! - Kubernetes nodes, pods and endpoint slices (`kubernetes`), listed and
//!   then watched through the API server;
//! - EC2 instances (`ec2`), through DescribeInstances.
//!
//! A provider that cannot reach its source keeps reporting its last good
//! set (logged), as Prometheus does, so an outage of the source never
//! empties a job.

pub(crate) mod consul;
pub(crate) mod dns;
pub(crate) mod ec2;
pub(crate) mod kubernetes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::{FileSdConfig, HttpSdConfig, ScrapeConfig};

/// A set of targets sharing labels, as every discovery mechanism reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetGroup {
    /// Where the group came from (file and index, URL), for logs.
    pub source: String,
    /// Each target's own labels; at least `__address__`.
    pub targets: Vec<BTreeMap<String, String>>,
    /// Labels of every target in the group.
    pub labels: BTreeMap<String, String>,
}

/// The wire/file form of a group (file_sd and http_sd).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// An update from one provider of one job.
#[derive(Debug)]
pub(crate) struct Update {
    pub job: String,
    pub generation: u64,
    pub provider: usize,
    pub groups: Vec<TargetGroup>,
}

/// Where a provider sends its current set of groups.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub tx: mpsc::UnboundedSender<Update>,
    pub job: String,
    pub generation: u64,
    pub provider: usize,
}

impl Sink {
    /// Sends the whole current set; false once the job is gone.
    pub fn send(&self, groups: Vec<TargetGroup>) -> bool {
        self.tx
            .send(Update {
                job: self.job.clone(),
                generation: self.generation,
                provider: self.provider,
                groups,
            })
            .is_ok()
    }

    /// After a failure: reports an empty set if nothing was reported yet
    /// (`reported`), so that the job does not wait for this provider; false
    /// once the job is gone.
    pub fn unblock(&self, reported: &mut bool) -> bool {
        if std::mem::replace(reported, true) {
            true
        } else {
            self.send(Vec::new())
        }
    }

    /// True once the job is gone (the manager dropped its receiver).
    pub fn closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs a provider that fetches its whole set every `every`. A failed fetch
/// is logged and keeps the last good set; if the very first fetch fails, an
/// empty set is reported so that the job does not wait for it.
pub(crate) async fn run_polling<F, Fut>(what: String, every: Duration, sink: Sink, mut fetch: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<TargetGroup>, String>>,
{
    let mut reported = false;
    loop {
        match fetch().await {
            Ok(groups) => {
                reported = true;
                if !sink.send(groups) {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(job = %sink.job, discovery = %what, error = %e, "refresh failed; keeping the last good targets");
                if !sink.unblock(&mut reported) {
                    return;
                }
            }
        }
        if sink.closed() {
            return;
        }
        tokio::time::sleep(every.max(Duration::from_secs(1))).await;
    }
}

/// `host:port`, with brackets around an IPv6 host (Go's `net.JoinHostPort`).
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A label name made valid: every character outside `[a-zA-Z0-9_]` becomes
/// `_` (Prometheus' `strutil.SanitizeLabelName`).
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Parses a list of groups in file_sd/http_sd form; `source` names them.
pub fn parse_groups(text: &[u8], yaml: bool, source: &str) -> Result<Vec<TargetGroup>, String> {
    let raw: Vec<RawGroup> = if yaml {
        let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8: {e}"))?;
        let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
        let value = docs
            .into_iter()
            .next()
            .map_or(serde_json::Value::Null, yaml_to_json);
        if value.is_null() {
            Vec::new()
        } else {
            serde_path_to_error::deserialize(value)
                .map_err(|e| format!("at {}: {}", e.path(), e.inner()))?
        }
    } else {
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| format!("at {}: {}", e.path(), e.inner()))?
    };
    let mut out = Vec::with_capacity(raw.len());
    for (i, g) in raw.into_iter().enumerate() {
        for name in g.labels.keys() {
            if !tiermon_model::is_valid_label_name(name) {
                return Err(format!("group {i}: {name:?} is not a valid label name"));
            }
        }
        for t in &g.targets {
            if t.is_empty() || t.contains('/') {
                return Err(format!("group {i}: {t:?} is not a host:port address"));
            }
        }
        out.push(TargetGroup {
            source: format!("{source}:{i}"),
            targets: g
                .targets
                .into_iter()
                .map(|t| BTreeMap::from([("__address__".to_owned(), t)]))
                .collect(),
            labels: g.labels,
        });
    }
    Ok(out)
}

fn yaml_to_json(y: yaml_rust2::Yaml) -> serde_json::Value {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) | Yaml::String(s) => Value::String(s),
        Yaml::Integer(i) => Value::String(i.to_string()),
        Yaml::Boolean(b) => Value::String(b.to_string()),
        Yaml::Array(a) => Value::Array(a.into_iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.into_iter()
                .map(|(k, v)| {
                    let k = match yaml_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

/// The static groups of a job.
pub(crate) fn static_groups(c: &ScrapeConfig) -> Vec<TargetGroup> {
    c.static_configs
        .iter()
        .enumerate()
        .map(|(i, s)| TargetGroup {
            source: i.to_string(),
            targets: s
                .targets
                .iter()
                .map(|t| BTreeMap::from([("__address__".to_owned(), t.clone())]))
                .collect(),
            labels: s.labels.clone(),
        })
        .collect()
}

/// The files a file_sd pattern names now (a `*` in the file name is a glob).
fn expand(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains('*') {
        return vec![path.to_owned()];
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| glob_match(name, n)))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Reads every file of a file_sd config. A file that cannot be read or
/// parsed is logged and contributes its last good groups (Prometheus keeps
/// them too), so a half-written file never empties a job.
fn read_files(
    cfg: &FileSdConfig,
    last: &mut BTreeMap<PathBuf, Vec<TargetGroup>>,
) -> Vec<TargetGroup> {
    let mut now = BTreeMap::new();
    for pattern in &cfg.files {
        for path in expand(pattern) {
            let yaml = path.extension().is_none_or(|e| e != "json");
            let groups = match std::fs::read(&path) {
                Ok(text) => match parse_groups(&text, yaml, &path.display().to_string()) {
                    Ok(mut g) => {
                        for grp in &mut g {
                            grp.labels
                                .insert("__meta_filepath".into(), path.display().to_string());
                        }
                        g
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "file_sd: cannot parse; keeping its last good targets");
                        last.get(&path).cloned().unwrap_or_default()
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "file_sd: cannot read; keeping its last good targets");
                    last.get(&path).cloned().unwrap_or_default()
                }
            };
            now.insert(path, groups);
        }
    }
    *last = now;
    last.values().flatten().cloned().collect()
}

/// The state of the files, to notice changes between reads.
fn fingerprint(cfg: &FileSdConfig) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    cfg.files
        .iter()
        .flat_map(|p| expand(p))
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let mtime = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map_or(0, |m| m.len());
            (p, mtime, len)
        })
        .collect()
}

/// How often files are checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

pub(crate) async fn run_file(cfg: FileSdConfig, sink: Sink) {
    let mut last = BTreeMap::new();
    let mut seen = None;
    let mut since_read = Duration::MAX;
    loop {
        let fp = fingerprint(&cfg);
        if seen.as_ref() != Some(&fp) || since_read >= cfg.refresh_interval.0 {
            let c = cfg.clone();
            let mut l = std::mem::take(&mut last);
            let (groups, l) = tokio::task::spawn_blocking(move || {
                let g = read_files(&c, &mut l);
                (g, l)
            })
            .await
            .unwrap_or_default();
            last = l;
            seen = Some(fp);
            since_read = Duration::ZERO;
            if !sink.send(groups) {
                return;
            }
        }
        tokio::time::sleep(FILE_POLL).await;
        since_read = since_read.saturating_add(FILE_POLL);
    }
}

pub(crate) async fn run_http(cfg: HttpSdConfig, client: reqwest::Client, sink: Sink) {
    let every = cfg.refresh_interval.0;
    let what = format!("http_sd {}", cfg.url);
    run_polling(what, every, sink, || async {
        let mut groups = fetch_http(&cfg, &client).await?;
        for g in &mut groups {
            g.labels.insert("__meta_url".into(), cfg.url.clone());
        }
        Ok(groups)
    })
    .await
}

async fn fetch_http(
    cfg: &HttpSdConfig,
    client: &reqwest::Client,
) -> Result<Vec<TargetGroup>, String> {
    let resp = client
        .get(&cfg.url)
        .header(
            "X-Prometheus-Refresh-Interval-Seconds",
            cfg.refresh_interval.0.as_secs().to_string(),
        )
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("server returned HTTP status {status}"));
    }
    if let Some(ct) = resp.headers().get(reqwest::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(format!(
                "unsupported Content-Type {ct:?}; http_sd answers application/json"
            ));
        }
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    parse_groups(&body, false, &cfg.url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sd_json_and_yaml_parse_the_same() {
        let json =
            br#"[{"targets": ["a:1", "b:2"], "labels": {"env": "prod"}}, {"targets": ["c:3"]}]"#;
        let yaml = b"- targets: ['a:1', 'b:2']\n  labels:\n    env: prod\n- targets: ['c:3']\n";
        let a = parse_groups(json, false, "f").unwrap();
        let b = parse_groups(yaml, true, "f").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].targets[1]["__address__"], "b:2");
        assert_eq!(a[0].labels["env"], "prod");
        assert!(parse_groups(b"", true, "f").unwrap().is_empty());
    }

    #[test]
    fn bad_groups_are_refused_with_the_reason() {
        let e = parse_groups(br#"[{"targets": ["a:1"], "lables": {}}]"#, false, "f").unwrap_err();
        assert!(e.contains("lables"), "{e}");
        let e = parse_groups(
            br#"[{"targets": ["a:1"], "labels": {"0x": "y"}}]"#,
            false,
            "f",
        )
        .unwrap_err();
        assert!(e.contains("0x"), "{e}");
        let e = parse_groups(br#"{"targets": []}"#, false, "f").unwrap_err();
        assert!(e.contains("sequence"), "{e}");
        let e = parse_groups(b"- targets: [http://x/y]\n", true, "f").unwrap_err();
        assert!(e.contains("host:port"), "{e}");
    }

    #[test]
    fn globs_match_file_names() {
        assert!(glob_match("*.json", "a.json"));
        assert!(glob_match("nodes-*.yml", "nodes-dc1.yml"));
        assert!(!glob_match("nodes-*.yml", "nodes-dc1.yaml"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "ac"));
    }

    #[test]
    fn unreadable_files_keep_their_last_groups() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.json");
        std::fs::write(&f, br#"[{"targets": ["a:1"]}]"#).unwrap();
        let cfg = FileSdConfig {
            files: vec![dir.path().join("*.json").display().to_string()],
            ..FileSdConfig::default()
        };
        let mut last = BTreeMap::new();
        let g = read_files(&cfg, &mut last);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].labels["__meta_filepath"], f.display().to_string());
        std::fs::write(&f, b"[{\"targets\": [").unwrap();
        assert_eq!(read_files(&cfg, &mut last), g);
        std::fs::remove_file(&f).unwrap();
        assert!(read_files(&cfg, &mut last).is_empty());
    }
}
