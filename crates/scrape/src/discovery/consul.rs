//! Consul catalog discovery (`consul_sd_configs`), as Prometheus does it:
//! the service list is watched with a blocking query on
//! `/v1/catalog/services`, and each wanted service with a blocking query on
//! `/v1/health/service/<name>`, so a registration, a deregistration or a
//! health change is seen within moments, not at the next poll. Labels are
//! Prometheus' `__meta_consul_*`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Sink, TargetGroup, host_port, sanitize};
use crate::config::{Authorization, BasicAuth, PromDuration, TlsConfig};
use crate::{Error, Result};

/// `consul_sd_configs` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulSdConfig {
    /// `host:port` of the Consul agent.
    pub server: String,
    /// A prefix for every API path (Consul behind a proxy).
    pub path_prefix: String,
    /// ACL token.
    pub token: Option<String>,
    /// Datacenter to ask about; the agent's own when unset.
    pub datacenter: Option<String>,
    /// Consul Enterprise namespace.
    pub namespace: Option<String>,
    /// Consul Enterprise admin partition.
    pub partition: Option<String>,
    /// `http` or `https`.
    pub scheme: String,
    /// Services to keep; all when empty.
    pub services: Vec<String>,
    /// Tags a service must have (all of them).
    pub tags: Vec<String>,
    /// Node metadata a node must have.
    pub node_meta: BTreeMap<String, String>,
    /// Joins the tags in `__meta_consul_tags`.
    pub tag_separator: String,
    /// Let any server answer (stale reads), sparing the leader.
    pub allow_stale: bool,
    /// Longest wait of a blocking query, and the pause after a failure.
    pub refresh_interval: PromDuration,
    /// A Consul filter expression for the catalog.
    pub filter: Option<String>,
    /// HTTP basic authentication.
    pub basic_auth: Option<BasicAuth>,
    /// The `Authorization` header.
    pub authorization: Option<Authorization>,
    /// TLS settings for `https`.
    pub tls_config: Option<TlsConfig>,
}

impl Default for ConsulSdConfig {
    fn default() -> Self {
        Self {
            server: "localhost:8500".into(),
            path_prefix: String::new(),
            token: None,
            datacenter: None,
            namespace: None,
            partition: None,
            scheme: "http".into(),
            services: Vec::new(),
            tags: Vec::new(),
            node_meta: BTreeMap::new(),
            tag_separator: ",".into(),
            allow_stale: true,
            refresh_interval: PromDuration(Duration::from_secs(30)),
            filter: None,
            basic_auth: None,
            authorization: None,
            tls_config: None,
        }
    }
}

impl ConsulSdConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        if self.scheme != "http" && self.scheme != "https" {
            return Err(Error::config(
                format!("{key}.scheme"),
                format!("{:?}: use http or https", self.scheme),
            ));
        }
        if self.server.is_empty() || self.server.contains('/') {
            return Err(Error::config(
                format!("{key}.server"),
                format!("{:?} is not a host:port address", self.server),
            ));
        }
        url::Url::parse(&self.base()).map_err(|e| {
            Error::config(format!("{key}.server"), format!("{:?}: {e}", self.server))
        })?;
        if self.token.is_some() && (self.basic_auth.is_some() || self.authorization.is_some()) {
            return Err(Error::config(
                format!("{key}.token"),
                "token cannot be set with basic_auth or authorization",
            ));
        }
        if self.refresh_interval.0.is_zero() {
            return Err(Error::config(
                format!("{key}.refresh_interval"),
                "must be more than 0",
            ));
        }
        crate::client::discovery(self.tls_config.as_ref())
            .map_err(|e| Error::config(format!("{key}.tls_config"), e))?;
        Ok(())
    }

    fn base(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme,
            self.server,
            self.path_prefix.trim_end_matches('/')
        )
    }
}

/// `GET /v1/health/service/<name>`: one entry per instance.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
    #[serde(default)]
    checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    node: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
    #[serde(default)]
    partition: Option<String>,
    #[serde(default)]
    tagged_addresses: Option<BTreeMap<String, String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    tagged_addresses: Option<BTreeMap<String, TaggedAddress>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaggedAddress {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    #[serde(rename = "CheckID", default)]
    check_id: String,
    #[serde(default)]
    status: String,
}

/// Consul's aggregated status of a set of checks.
fn health(checks: &[Check]) -> &'static str {
    let maintenance = checks.iter().any(|c| {
        c.check_id == "_node_maintenance" || c.check_id.starts_with("_service_maintenance:")
    });
    if maintenance {
        "maintenance"
    } else if checks.iter().any(|c| c.status == "critical") {
        "critical"
    } else if checks.iter().any(|c| c.status == "warning") {
        "warning"
    } else {
        "passing"
    }
}

/// The API client of one config.
#[derive(Debug, Clone)]
struct Api {
    cfg: Arc<ConsulSdConfig>,
    http: reqwest::Client,
    datacenter: String,
}

impl Api {
    /// A blocking GET: waits up to the refresh interval for a change past
    /// `index`; answers the body and the new index.
    async fn get(
        &self,
        path: &str,
        extra: &[(&str, &str)],
        index: u64,
    ) -> std::result::Result<(bytes::Bytes, u64), String> {
        let cfg = &self.cfg;
        let mut q: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
        if !self.datacenter.is_empty() {
            q.push(("dc", self.datacenter.clone()));
        }
        if cfg.allow_stale {
            q.push(("stale", String::new()));
        }
        if let Some(ns) = &cfg.namespace {
            q.push(("ns", ns.clone()));
        }
        if let Some(p) = &cfg.partition {
            q.push(("partition", p.clone()));
        }
        if let Some(f) = &cfg.filter {
            q.push(("filter", f.clone()));
        }
        for (k, v) in &cfg.node_meta {
            q.push(("node-meta", format!("{k}:{v}")));
        }
        let wait = cfg.refresh_interval.0;
        if index > 0 {
            q.push(("index", index.to_string()));
            q.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let url = crate::client::with_query(&format!("{}{path}", cfg.base()), &q)?;
        let mut req = self
            .http
            .get(url)
            // Consul adds up to wait/16 of jitter to a blocking query.
            .timeout(wait + wait / 16 + Duration::from_secs(10));
        req = auth(req, cfg)?;
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let new_index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{path}: HTTP status {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        // An index that goes backwards (a restored snapshot) resets the
        // watch, as Consul's documentation asks.
        let new_index = if new_index < index { 0 } else { new_index };
        Ok((body, new_index))
    }

    async fn own_datacenter(&self) -> std::result::Result<String, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct SelfConfig {
            datacenter: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct AgentSelf {
            config: SelfConfig,
        }
        let req = auth(
            self.http
                .get(format!("{}/v1/agent/self", self.cfg.base()))
                .timeout(Duration::from_secs(30)),
            &self.cfg,
        )?;
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("/v1/agent/self: HTTP status {status}"));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let s: AgentSelf =
            serde_json::from_slice(&body).map_err(|e| format!("/v1/agent/self: {e}"))?;
        Ok(s.config.datacenter)
    }
}

fn auth(
    req: reqwest::RequestBuilder,
    cfg: &ConsulSdConfig,
) -> std::result::Result<reqwest::RequestBuilder, String> {
    let req = match &cfg.token {
        Some(t) => req.header("X-Consul-Token", t),
        None => req,
    };
    crate::client::authorize(req, cfg.basic_auth.as_ref(), cfg.authorization.as_ref())
}

/// What the watches found: one group per service.
#[derive(Debug, Default)]
struct Found {
    groups: BTreeMap<String, TargetGroup>,
    /// How many services the latest list wants; `None` before the first.
    expected: Option<usize>,
    /// True once a whole set has been sent.
    published: bool,
}

impl Found {
    /// The set to send, once every wanted service has answered at least
    /// once (later, at every change).
    fn ready(&mut self) -> Option<Vec<TargetGroup>> {
        let complete = self.expected.is_some_and(|n| self.groups.len() >= n);
        if !self.published && !complete {
            return None;
        }
        self.published = true;
        Some(self.groups.values().cloned().collect())
    }
}

pub(crate) async fn run(cfg: ConsulSdConfig, sink: Sink) {
    let http = match crate::client::discovery(cfg.tls_config.as_ref()) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(job = %sink.job, error = %e, "consul_sd: cannot build an HTTP client");
            sink.send(Vec::new());
            return;
        }
    };
    let pause = cfg
        .refresh_interval
        .0
        .clamp(Duration::from_secs(1), Duration::from_secs(15));
    let mut api = Api {
        cfg: Arc::new(cfg),
        http,
        datacenter: String::new(),
    };
    let mut reported = false;
    // The agent's own datacenter, when none is configured.
    api.datacenter = match api.cfg.datacenter.clone() {
        Some(dc) => dc,
        None => loop {
            match api.own_datacenter().await {
                Ok(dc) => break dc,
                Err(e) => {
                    tracing::warn!(job = %sink.job, server = %api.cfg.server, error = %e, "consul_sd: cannot learn the agent's datacenter");
                    if !sink.unblock(&mut reported) || sink.closed() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        },
    };
    let found = Arc::new(Mutex::new(Found::default()));
    let changed = Arc::new(Notify::new());
    let publisher = {
        let (found, changed, sink) = (found.clone(), changed.clone(), sink.clone());
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                let Some(groups) = found.lock().ready() else {
                    continue;
                };
                if !sink.send(groups) {
                    return;
                }
            }
        })
    };
    let mut watches: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut index = 0;
    loop {
        if sink.closed() {
            break;
        }
        match api.get("/v1/catalog/services", &[], index).await {
            Ok((body, new_index)) => {
                let services: BTreeMap<String, Option<Vec<String>>> = match serde_json::from_slice(
                    &body,
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(job = %sink.job, error = %e, "consul_sd: bad answer from /v1/catalog/services");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                index = new_index;
                let cfg = &api.cfg;
                let wanted: Vec<String> = services
                    .into_iter()
                    .filter(|(name, tags)| {
                        (cfg.services.is_empty() || cfg.services.contains(name))
                            && cfg
                                .tags
                                .iter()
                                .all(|t| tags.as_ref().is_some_and(|have| have.contains(t)))
                    })
                    .map(|(name, _)| name)
                    .collect();
                watches.retain(|name, task| {
                    let keep = wanted.contains(name);
                    if !keep {
                        task.abort();
                        found.lock().groups.remove(name);
                    }
                    keep
                });
                for name in wanted {
                    if let std::collections::hash_map::Entry::Vacant(e) = watches.entry(name) {
                        let task = tokio::spawn(watch_service(
                            api.clone(),
                            e.key().clone(),
                            found.clone(),
                            changed.clone(),
                            pause,
                        ));
                        e.insert(task);
                    }
                }
                found.lock().expected = Some(watches.len());
                changed.notify_one();
                reported = true;
            }
            Err(e) => {
                tracing::warn!(job = %sink.job, server = %api.cfg.server, error = %e, "consul_sd: refresh failed; keeping the last good targets");
                if !sink.unblock(&mut reported) {
                    break;
                }
                index = 0;
                tokio::time::sleep(pause).await;
            }
        }
    }
    publisher.abort();
    for (_, t) in watches {
        t.abort();
    }
}

async fn watch_service(
    api: Api,
    name: String,
    found: Arc<Mutex<Found>>,
    changed: Arc<Notify>,
    pause: Duration,
) {
    let path = format!("/v1/health/service/{}", urlencode(&name));
    let tags: Vec<(&str, &str)> = api.cfg.tags.iter().map(|t| ("tag", t.as_str())).collect();
    let mut index = 0;
    loop {
        match api.get(&path, &tags, index).await {
            Ok((body, new_index)) => match serde_json::from_slice::<Vec<Entry>>(&body) {
                Ok(entries) => {
                    index = new_index;
                    let g = group(&api, &name, entries);
                    found.lock().groups.insert(name.clone(), g);
                    changed.notify_one();
                }
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "consul_sd: bad answer from {path}");
                    tokio::time::sleep(pause).await;
                }
            },
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "consul_sd: refresh failed; keeping the last good targets");
                // A service that never answered counts as empty, so that
                // the others are not held back.
                {
                    let mut f = found.lock();
                    if !f.groups.contains_key(&name) {
                        f.groups.insert(
                            name.clone(),
                            TargetGroup {
                                source: name.clone(),
                                ..TargetGroup::default()
                            },
                        );
                        changed.notify_one();
                    }
                }
                index = 0;
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn group(api: &Api, name: &str, entries: Vec<Entry>) -> TargetGroup {
    let sep = &api.cfg.tag_separator;
    let targets = entries
        .into_iter()
        .map(|e| {
            let (n, s) = (e.node, e.service);
            let host = if s.address.is_empty() {
                &n.address
            } else {
                &s.address
            };
            let mut t = BTreeMap::from([
                ("__address__".to_owned(), host_port(host, s.port)),
                ("__meta_consul_address".into(), n.address.clone()),
                ("__meta_consul_dc".into(), n.datacenter.clone()),
                ("__meta_consul_health".into(), health(&e.checks).into()),
                ("__meta_consul_node".into(), n.node.clone()),
                ("__meta_consul_service_address".into(), s.address.clone()),
                ("__meta_consul_service_id".into(), s.id.clone()),
                ("__meta_consul_service_port".into(), s.port.to_string()),
                (
                    "__meta_consul_tags".into(),
                    format!("{sep}{}{sep}", s.tags.unwrap_or_default().join(sep)),
                ),
            ]);
            if let Some(p) = n.partition {
                t.insert("__meta_consul_partition".into(), p);
            }
            if let Some(ns) = s.namespace {
                t.insert("__meta_consul_namespace".into(), ns);
            }
            for (k, v) in n.meta.unwrap_or_default() {
                t.insert(format!("__meta_consul_metadata_{}", sanitize(&k)), v);
            }
            for (k, v) in s.meta.unwrap_or_default() {
                t.insert(
                    format!("__meta_consul_service_metadata_{}", sanitize(&k)),
                    v,
                );
            }
            for (k, v) in n.tagged_addresses.unwrap_or_default() {
                t.insert(format!("__meta_consul_tagged_address_{}", sanitize(&k)), v);
            }
            for (k, a) in s.tagged_addresses.unwrap_or_default() {
                t.insert(
                    format!("__meta_consul_service_tagged_address_{}", sanitize(&k)),
                    host_port(&a.address, a.port),
                );
            }
            t
        })
        .collect();
    TargetGroup {
        source: name.to_owned(),
        targets,
        labels: BTreeMap::from([("__meta_consul_service".to_owned(), name.to_owned())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_aggregates_as_consul_does() {
        let c = |id: &str, st: &str| Check {
            check_id: id.into(),
            status: st.into(),
        };
        assert_eq!(health(&[]), "passing");
        assert_eq!(health(&[c("a", "passing"), c("b", "warning")]), "warning");
        assert_eq!(health(&[c("a", "critical"), c("b", "warning")]), "critical");
        assert_eq!(
            health(&[c("_service_maintenance:web", "critical")]),
            "maintenance"
        );
    }

    #[test]
    fn bad_settings_name_their_key() {
        let c = ConsulSdConfig {
            scheme: "ftp".into(),
            ..ConsulSdConfig::default()
        };
        assert!(
            c.validate("j")
                .unwrap_err()
                .to_string()
                .contains("j.scheme")
        );
        let c = ConsulSdConfig {
            server: "http://x:8500".into(),
            ..ConsulSdConfig::default()
        };
        assert!(
            c.validate("j")
                .unwrap_err()
                .to_string()
                .contains("j.server")
        );
        ConsulSdConfig::default().validate("j").unwrap();
    }
}
