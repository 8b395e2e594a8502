//! Kubernetes discovery (`kubernetes_sd_configs`) for the roles `node`,
//! `pod` and `endpointslice`, as Prometheus does it: every resource the role
//! needs is listed (in pages) and then watched from the list's
//! `resourceVersion`, so a pod that starts or goes away is seen at once. A
//! watch that ends is resumed where it stopped; one the server has expired
//! (410 Gone) lists again. Labels are Prometheus' `__meta_kubernetes_*`.
//!
//! Inside a cluster (no `api_server`), the pod's service account is used:
//! `KUBERNETES_SERVICE_HOST`/`_PORT`, its token and its CA.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Notify;

use super::{Sink, TargetGroup, host_port, sanitize};
use crate::config::{Authorization, BasicAuth, TlsConfig};
use crate::{Error, Result};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `kubernetes_sd_configs` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesSdConfig {
    /// What each target is.
    pub role: Option<Role>,
    /// The API server's URL; the cluster the pod runs in when unset.
    pub api_server: Option<String>,
    /// Not supported (refused at load): use api_server and the client
    /// settings.
    pub kubeconfig_file: Option<PathBuf>,
    /// Namespaces to watch; all when empty.
    pub namespaces: Namespaces,
    /// Label and field selectors per resource.
    pub selectors: Vec<Selector>,
    /// Node metadata on pod targets (not supported: refused when true).
    pub attach_metadata: AttachMetadata,
    /// HTTP basic authentication.
    pub basic_auth: Option<BasicAuth>,
    /// The `Authorization` header.
    pub authorization: Option<Authorization>,
    /// TLS settings.
    pub tls_config: Option<TlsConfig>,
}

/// Kubernetes discovery roles (Prometheus' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One target per node (its kubelet).
    Node,
    /// One target per declared container port of every pod.
    Pod,
    /// One target per address and port of every endpoint slice.
    #[serde(rename = "endpointslice")]
    EndpointSlice,
    /// Not supported by tiermon.
    Service,
    /// Not supported by tiermon (use endpointslice).
    Endpoints,
    /// Not supported by tiermon.
    Ingress,
}

/// Which namespaces are watched.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespaces {
    /// The namespace tiermon itself runs in.
    pub own_namespace: bool,
    /// These namespaces.
    pub names: Vec<String>,
}

/// A selector for the resources of one role.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The resource it applies to.
    pub role: Role,
    /// A label selector (`app=web,tier!=cache`).
    #[serde(default)]
    pub label: Option<String>,
    /// A field selector (`spec.nodeName=n1`).
    #[serde(default)]
    pub field: Option<String>,
}

/// `attach_metadata`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachMetadata {
    /// Attach the node's labels to pod targets.
    pub node: bool,
    /// Attach the namespace's labels.
    pub namespace: bool,
}

impl KubernetesSdConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        let role = match self.role {
            None => return Err(Error::config(format!("{key}.role"), "missing")),
            Some(r @ (Role::Node | Role::Pod | Role::EndpointSlice)) => r,
            Some(r) => {
                return Err(Error::config(
                    format!("{key}.role"),
                    format!("{r:?} is not supported by tiermon (node, pod and endpointslice are)")
                        .to_lowercase(),
                ));
            }
        };
        if self.kubeconfig_file.is_some() {
            return Err(Error::config(
                format!("{key}.kubeconfig_file"),
                "is not supported by tiermon: set api_server and the client settings (authorization, tls_config)",
            ));
        }
        if self.attach_metadata.node || self.attach_metadata.namespace {
            return Err(Error::config(
                format!("{key}.attach_metadata"),
                "is not supported by tiermon",
            ));
        }
        match &self.api_server {
            Some(u) => match url::Url::parse(u) {
                Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
                _ => {
                    return Err(Error::config(
                        format!("{key}.api_server"),
                        format!("{u:?} is not an http(s) URL"),
                    ));
                }
            },
            None => {
                if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
                    return Err(Error::config(
                        format!("{key}.api_server"),
                        "not set, and tiermon is not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)",
                    ));
                }
                if self.basic_auth.is_some() || self.authorization.is_some() {
                    return Err(Error::config(
                        format!("{key}.authorization"),
                        "inside a cluster the service account's token is used; set api_server to give other credentials",
                    ));
                }
            }
        }
        if self.basic_auth.is_some() && self.authorization.is_some() {
            return Err(Error::config(
                format!("{key}.authorization"),
                "basic_auth and authorization cannot both be set",
            ));
        }
        let allowed: &[Role] = match role {
            Role::Node => &[Role::Node],
            Role::Pod => &[Role::Pod],
            _ => &[Role::EndpointSlice, Role::Service, Role::Pod],
        };
        for (i, s) in self.selectors.iter().enumerate() {
            if !allowed.contains(&s.role) {
                return Err(Error::config(
                    format!("{key}.selectors[{i}].role"),
                    format!("{:?} selectors do not apply to the {:?} role", s.role, role)
                        .to_lowercase(),
                ));
            }
        }
        crate::client::discovery(self.tls_config.as_ref())
            .map_err(|e| Error::config(format!("{key}.tls_config"), e))?;
        Ok(())
    }

    fn selector(&self, role: Role) -> (Option<String>, Option<String>) {
        self.selectors
            .iter()
            .find(|s| s.role == role)
            .map_or((None, None), |s| (s.label.clone(), s.field.clone()))
    }
}

/// How to reach the API server.
#[derive(Debug, Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
    cfg: Arc<KubernetesSdConfig>,
    in_cluster: bool,
}

impl Api {
    fn new(cfg: KubernetesSdConfig) -> std::result::Result<Self, String> {
        let (base, in_cluster, tls) = match &cfg.api_server {
            Some(u) => (
                u.trim_end_matches('/').to_owned(),
                false,
                cfg.tls_config.clone(),
            ),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST")
                    .map_err(|_| "KUBERNETES_SERVICE_HOST is not set")?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let tls = TlsConfig {
                    ca_file: Some(PathBuf::from(format!("{SA_DIR}/ca.crt"))),
                    insecure_skip_verify: false,
                };
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                (format!("https://{host}:{port}"), true, Some(tls))
            }
        };
        let http = crate::client::discovery(tls.as_ref())?;
        Ok(Api {
            base,
            http,
            cfg: Arc::new(cfg),
            in_cluster,
        })
    }

    fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> std::result::Result<reqwest::RequestBuilder, String> {
        let url = crate::client::with_query(&format!("{}{path}", self.base), query)?;
        let req = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if self.in_cluster {
            let f = format!("{SA_DIR}/token");
            let token = std::fs::read_to_string(&f).map_err(|e| format!("reading {f}: {e}"))?;
            return Ok(req.bearer_auth(token.trim()));
        }
        crate::client::authorize(
            req,
            self.cfg.basic_auth.as_ref(),
            self.cfg.authorization.as_ref(),
        )
    }
}

/// The kinds of object the roles read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Pod,
    EndpointSlice,
    Service,
}

impl Kind {
    fn path(self, namespace: Option<&str>) -> String {
        let (group, plural) = match self {
            Kind::Node => return "/api/v1/nodes".into(),
            Kind::Pod => ("/api/v1", "pods"),
            Kind::Service => ("/api/v1", "services"),
            Kind::EndpointSlice => ("/apis/discovery.k8s.io/v1", "endpointslices"),
        };
        match namespace {
            Some(ns) => format!("{group}/namespaces/{ns}/{plural}"),
            None => format!("{group}/{plural}"),
        }
    }

    fn role(self) -> Role {
        match self {
            Kind::Node => Role::Node,
            Kind::Pod => Role::Pod,
            Kind::EndpointSlice => Role::EndpointSlice,
            Kind::Service => Role::Service,
        }
    }
}

/// One watched resource (a kind in a namespace) and what it holds now.
#[derive(Debug)]
struct Store {
    kind: Kind,
    /// By `namespace/name`.
    items: HashMap<String, Value>,
    /// Listed at least once (or failed once, so as not to hold the others).
    synced: bool,
}

fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        str_at(obj, &["metadata", "namespace"]).unwrap_or(""),
        str_at(obj, &["metadata", "name"]).unwrap_or("")
    )
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str()
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    Some(v)
}

fn array<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map_or(&[], |a| a.as_slice())
}

pub(crate) async fn run(cfg: KubernetesSdConfig, sink: Sink) {
    let api = match Api::new(cfg) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(job = %sink.job, error = %e, "kubernetes_sd: cannot reach the API server");
            sink.send(Vec::new());
            return;
        }
    };
    let role = api.cfg.role.unwrap_or(Role::Pod);
    let namespaces: Vec<Option<String>> = {
        let mut names: Vec<Option<String>> =
            api.cfg.namespaces.names.iter().cloned().map(Some).collect();
        if api.cfg.namespaces.own_namespace {
            match std::fs::read_to_string(format!("{SA_DIR}/namespace")) {
                Ok(ns) => names.push(Some(ns.trim().to_owned())),
                Err(e) => {
                    tracing::error!(job = %sink.job, error = %e, "kubernetes_sd: cannot read the pod's own namespace")
                }
            }
        }
        if names.is_empty() { vec![None] } else { names }
    };
    let kinds: &[Kind] = match role {
        Role::Node => &[Kind::Node],
        Role::Pod => &[Kind::Pod],
        _ => &[Kind::EndpointSlice, Kind::Service, Kind::Pod],
    };
    let mut stores = Vec::new();
    let mut watched = Vec::new();
    for &kind in kinds {
        let spaces: Vec<Option<String>> = if kind == Kind::Node {
            vec![None]
        } else {
            namespaces.clone()
        };
        for ns in spaces {
            watched.push((stores.len(), kind, kind.path(ns.as_deref())));
            stores.push(Store {
                kind,
                items: HashMap::new(),
                synced: false,
            });
        }
    }
    let stores = Arc::new(Mutex::new(stores));
    let changed = Arc::new(Notify::new());
    let tasks: Vec<_> = watched
        .into_iter()
        .map(|(idx, kind, path)| {
            tokio::spawn(informer(
                api.clone(),
                idx,
                kind,
                path,
                stores.clone(),
                changed.clone(),
                sink.job.clone(),
            ))
        })
        .collect();
    loop {
        changed.notified().await;
        let groups = {
            let st = stores.lock();
            if !st.iter().all(|s| s.synced) {
                continue;
            }
            build(role, &st)
        };
        if !sink.send(groups) {
            break;
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// Lists, then watches, one resource; forever.
async fn informer(
    api: Api,
    idx: usize,
    kind: Kind,
    path: String,
    stores: Arc<Mutex<Vec<Store>>>,
    changed: Arc<Notify>,
    job: String,
) {
    let (label, field) = api.cfg.selector(kind.role());
    let mut selectors: Vec<(&str, String)> = Vec::new();
    if let Some(l) = label {
        selectors.push(("labelSelector", l));
    }
    if let Some(f) = field {
        selectors.push(("fieldSelector", f));
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        let version = match list(&api, &path, &selectors).await {
            Ok((items, version)) => {
                {
                    let mut st = stores.lock();
                    st[idx].items = items.into_iter().map(|o| (key_of(&o), o)).collect();
                    st[idx].synced = true;
                }
                changed.notify_one();
                backoff = Duration::from_millis(500);
                version
            }
            Err(e) => {
                tracing::warn!(job = %job, resource = %path, error = %e, "kubernetes_sd: list failed; keeping the last good targets");
                {
                    let mut st = stores.lock();
                    if !st[idx].synced {
                        st[idx].synced = true;
                        changed.notify_one();
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut version = version;
        // Watch until the server says the version is too old, or fails.
        loop {
            match watch(
                &api,
                &path,
                &selectors,
                &mut version,
                idx,
                &stores,
                &changed,
            )
            .await
            {
                Ok(WatchEnd::Timeout) => continue,
                Ok(WatchEnd::Gone) => break,
                Err(e) => {
                    tracing::warn!(job = %job, resource = %path, error = %e, "kubernetes_sd: watch failed; listing again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break;
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct List {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

async fn list(
    api: &Api,
    path: &str,
    selectors: &[(&str, String)],
) -> std::result::Result<(Vec<Value>, String), String> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut q: Vec<(&str, String)> = selectors.to_vec();
        q.push(("limit", "500".into()));
        if let Some(n) = &next {
            q.push(("continue", n.clone()));
        }
        let resp = api
            .get(path, &q)?
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let l: List = serde_json::from_slice(&body).map_err(|e| format!("bad list answer: {e}"))?;
        out.extend(l.items.unwrap_or_default());
        match l.metadata.next.filter(|n| !n.is_empty()) {
            Some(n) => next = Some(n),
            None => return Ok((out, l.metadata.resource_version)),
        }
    }
}

/// The `Status` object the API server answers with an error.
fn status_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    let msg = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    format!("HTTP status {status}: {msg}")
}

enum WatchEnd {
    /// The server closed the watch (its timeout): resume from `version`.
    Timeout,
    /// The version is too old: list again.
    Gone,
}

async fn watch(
    api: &Api,
    path: &str,
    selectors: &[(&str, String)],
    version: &mut String,
    idx: usize,
    stores: &Mutex<Vec<Store>>,
    changed: &Notify,
) -> std::result::Result<WatchEnd, String> {
    let secs = 300 + rand::random_range(0..300u64);
    let mut q: Vec<(&str, String)> = selectors.to_vec();
    q.push(("watch", "1".into()));
    q.push(("allowWatchBookmarks", "true".into()));
    q.push(("timeoutSeconds", secs.to_string()));
    if !version.is_empty() {
        q.push(("resourceVersion", version.clone()));
    }
    let mut resp = api
        .get(path, &q)?
        .timeout(Duration::from_secs(secs + 30))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == reqwest::StatusCode::GONE {
        return Ok(WatchEnd::Gone);
    }
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        return Err(status_error(status, &body));
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        let chunk: &[u8] = &chunk;
        buf.extend_from_slice(chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let ev: Value =
                serde_json::from_slice(&line).map_err(|e| format!("bad watch event: {e}"))?;
            let obj = ev.get("object").cloned().unwrap_or(Value::Null);
            let ty = ev.get("type").and_then(Value::as_str).unwrap_or("");
            if ty == "ERROR" {
                let code = obj.get("code").and_then(Value::as_u64).unwrap_or(0);
                if code == 410 {
                    return Ok(WatchEnd::Gone);
                }
                return Err(status_error(
                    reqwest::StatusCode::from_u16(code as u16)
                        .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR),
                    obj.to_string().as_bytes(),
                ));
            }
            if let Some(v) = str_at(&obj, &["metadata", "resourceVersion"]) {
                *version = v.to_owned();
            }
            let moved = {
                let mut st = stores.lock();
                let items = &mut st[idx].items;
                match ty {
                    "ADDED" | "MODIFIED" => {
                        items.insert(key_of(&obj), obj);
                        true
                    }
                    "DELETED" => items.remove(&key_of(&obj)).is_some(),
                    // BOOKMARK: only the version moves.
                    _ => false,
                }
            };
            if moved {
                changed.notify_one();
            }
        }
    }
    Ok(WatchEnd::Timeout)
}

/// Every group of the role from what the stores hold.
fn build(role: Role, stores: &[Store]) -> Vec<TargetGroup> {
    let of = |k: Kind| {
        stores
            .iter()
            .filter(move |s| s.kind == k)
            .flat_map(|s| s.items.values())
    };
    let mut out: Vec<TargetGroup> = match role {
        Role::Node => of(Kind::Node).filter_map(node_group).collect(),
        Role::Pod => of(Kind::Pod).map(pod_group).collect(),
        _ => {
            let index =
                |k: Kind| -> HashMap<String, &Value> { of(k).map(|o| (key_of(o), o)).collect() };
            let (services, pods) = (index(Kind::Service), index(Kind::Pod));
            of(Kind::EndpointSlice)
                .map(|s| slice_group(s, &services, &pods))
                .collect()
        }
    };
    out.sort_by(|a, b| a.source.cmp(&b.source));
    out
}

/// `<prefix>_label_<name>`, `_labelpresent_`, `_annotation_`,
/// `_annotationpresent_` of an object's metadata.
fn meta_labels(prefix: &str, obj: &Value, out: &mut BTreeMap<String, String>) {
    for (field, what) in [("labels", "label"), ("annotations", "annotation")] {
        if let Some(m) = at(obj, &["metadata", field]).and_then(Value::as_object) {
            for (k, v) in m {
                let k = sanitize(k);
                out.insert(
                    format!("{prefix}_{what}_{k}"),
                    v.as_str().unwrap_or("").to_owned(),
                );
                out.insert(format!("{prefix}_{what}present_{k}"), "true".into());
            }
        }
    }
}

const NODE_ADDRESS_ORDER: [&str; 6] = [
    "InternalIP",
    "InternalDNS",
    "ExternalIP",
    "ExternalDNS",
    "LegacyHostIP",
    "Hostname",
];

fn node_group(node: &Value) -> Option<TargetGroup> {
    let name = str_at(node, &["metadata", "name"])?.to_owned();
    let mut labels = BTreeMap::from([
        ("__meta_kubernetes_node_name".to_owned(), name.clone()),
        (
            "__meta_kubernetes_node_provider_id".to_owned(),
            str_at(node, &["spec", "providerID"])
                .unwrap_or("")
                .to_owned(),
        ),
    ]);
    meta_labels("__meta_kubernetes_node", node, &mut labels);
    let mut by_type: BTreeMap<&str, &str> = BTreeMap::new();
    for a in array(node, &["status", "addresses"]) {
        if let (Some(t), Some(addr)) = (str_at(a, &["type"]), str_at(a, &["address"])) {
            by_type.entry(t).or_insert(addr);
        }
    }
    let mut group = TargetGroup {
        source: format!("node/{name}"),
        targets: Vec::new(),
        labels,
    };
    let Some(addr) = NODE_ADDRESS_ORDER.iter().find_map(|t| by_type.get(t)) else {
        tracing::warn!(node = %name, "kubernetes_sd: node has no address; skipped");
        return Some(group);
    };
    let port = at(
        node,
        &["status", "daemonEndpoints", "kubeletEndpoint", "Port"],
    )
    .and_then(Value::as_u64)
    .unwrap_or(10250) as u16;
    let mut t = BTreeMap::from([
        ("__address__".to_owned(), host_port(addr, port)),
        ("instance".to_owned(), name),
    ]);
    for (ty, a) in &by_type {
        t.insert(
            format!("__meta_kubernetes_node_address_{}", sanitize(ty)),
            (*a).to_owned(),
        );
    }
    group.targets.push(t);
    Some(group)
}

/// The labels every target of a pod carries.
fn pod_labels(pod: &Value) -> BTreeMap<String, String> {
    let s = |p: &[&str]| str_at(pod, p).unwrap_or("").to_owned();
    let ready = array(pod, &["status", "conditions"])
        .iter()
        .find(|c| str_at(c, &["type"]) == Some("Ready"))
        .and_then(|c| str_at(c, &["status"]))
        .unwrap_or("unknown")
        .to_lowercase();
    let mut l = BTreeMap::from([
        (
            "__meta_kubernetes_namespace".to_owned(),
            s(&["metadata", "namespace"]),
        ),
        (
            "__meta_kubernetes_pod_name".to_owned(),
            s(&["metadata", "name"]),
        ),
        (
            "__meta_kubernetes_pod_ip".to_owned(),
            s(&["status", "podIP"]),
        ),
        ("__meta_kubernetes_pod_ready".to_owned(), ready),
        (
            "__meta_kubernetes_pod_phase".to_owned(),
            s(&["status", "phase"]),
        ),
        (
            "__meta_kubernetes_pod_node_name".to_owned(),
            s(&["spec", "nodeName"]),
        ),
        (
            "__meta_kubernetes_pod_host_ip".to_owned(),
            s(&["status", "hostIP"]),
        ),
        (
            "__meta_kubernetes_pod_uid".to_owned(),
            s(&["metadata", "uid"]),
        ),
    ]);
    if let Some(owner) = array(pod, &["metadata", "ownerReferences"])
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
    {
        l.insert(
            "__meta_kubernetes_pod_controller_kind".into(),
            str_at(owner, &["kind"]).unwrap_or("").into(),
        );
        l.insert(
            "__meta_kubernetes_pod_controller_name".into(),
            str_at(owner, &["name"]).unwrap_or("").into(),
        );
    }
    meta_labels("__meta_kubernetes_pod", pod, &mut l);
    l
}

/// The pod's containers (init containers flagged), with their IDs.
fn containers(pod: &Value) -> Vec<(&Value, bool, String)> {
    let mut out = Vec::new();
    for (spec, status, init) in [
        ("containers", "containerStatuses", false),
        ("initContainers", "initContainerStatuses", true),
    ] {
        for c in array(pod, &["spec", spec]) {
            let name = str_at(c, &["name"]).unwrap_or("");
            let id = array(pod, &["status", status])
                .iter()
                .find(|s| str_at(s, &["name"]) == Some(name))
                .and_then(|s| str_at(s, &["containerID"]))
                .unwrap_or("")
                .to_owned();
            out.push((c, init, id));
        }
    }
    out
}

fn container_labels(c: &Value, init: bool, id: &str, t: &mut BTreeMap<String, String>) {
    t.insert(
        "__meta_kubernetes_pod_container_name".into(),
        str_at(c, &["name"]).unwrap_or("").into(),
    );
    t.insert(
        "__meta_kubernetes_pod_container_image".into(),
        str_at(c, &["image"]).unwrap_or("").into(),
    );
    t.insert("__meta_kubernetes_pod_container_id".into(), id.into());
    t.insert(
        "__meta_kubernetes_pod_container_init".into(),
        init.to_string(),
    );
}

fn port_labels(p: &Value, t: &mut BTreeMap<String, String>) {
    t.insert(
        "__meta_kubernetes_pod_container_port_name".into(),
        str_at(p, &["name"]).unwrap_or("").into(),
    );
    t.insert(
        "__meta_kubernetes_pod_container_port_number".into(),
        p.get("containerPort")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string(),
    );
    t.insert(
        "__meta_kubernetes_pod_container_port_protocol".into(),
        str_at(p, &["protocol"]).unwrap_or("TCP").into(),
    );
}

fn pod_group(pod: &Value) -> TargetGroup {
    let key = key_of(pod);
    let mut group = TargetGroup {
        source: format!("pod/{key}"),
        targets: Vec::new(),
        labels: BTreeMap::new(),
    };
    let Some(ip) = str_at(pod, &["status", "podIP"]).filter(|ip| !ip.is_empty()) else {
        // Not scheduled or not started yet: nothing to scrape.
        return group;
    };
    group.labels = pod_labels(pod);
    for (c, init, id) in containers(pod) {
        let ports = array(c, &["ports"]);
        if ports.is_empty() {
            let mut t = BTreeMap::from([("__address__".to_owned(), ip.to_owned())]);
            container_labels(c, init, &id, &mut t);
            group.targets.push(t);
            continue;
        }
        for p in ports {
            let port = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0) as u16;
            let mut t = BTreeMap::from([("__address__".to_owned(), host_port(ip, port))]);
            container_labels(c, init, &id, &mut t);
            port_labels(p, &mut t);
            group.targets.push(t);
        }
    }
    group
}

/// The (port, protocol) pairs of a pod an endpoint slice covers.
type Covered = Vec<(u64, String)>;

fn slice_group(
    slice: &Value,
    services: &HashMap<String, &Value>,
    pods: &HashMap<String, &Value>,
) -> TargetGroup {
    let key = key_of(slice);
    let ns = str_at(slice, &["metadata", "namespace"]).unwrap_or("");
    let mut labels = BTreeMap::from([
        ("__meta_kubernetes_namespace".to_owned(), ns.to_owned()),
        (
            "__meta_kubernetes_endpointslice_name".to_owned(),
            str_at(slice, &["metadata", "name"])
                .unwrap_or("")
                .to_owned(),
        ),
        (
            "__meta_kubernetes_endpointslice_address_type".to_owned(),
            str_at(slice, &["addressType"]).unwrap_or("").to_owned(),
        ),
    ]);
    meta_labels("__meta_kubernetes_endpointslice", slice, &mut labels);
    if let Some(svc) = str_at(slice, &["metadata", "labels", "kubernetes.io/service-name"]) {
        labels.insert("__meta_kubernetes_service_name".into(), svc.into());
        if let Some(s) = services.get(&format!("{ns}/{svc}")) {
            meta_labels("__meta_kubernetes_service", s, &mut labels);
        }
    }
    let mut group = TargetGroup {
        source: format!("endpointslice/{key}"),
        targets: Vec::new(),
        labels,
    };
    let ports = array(slice, &["ports"]);
    // Pods the slice points at, with the (port, protocol) pairs it covers.
    let mut seen: BTreeMap<String, (&Value, Covered)> = BTreeMap::new();
    for ep in array(slice, &["endpoints"]) {
        let mut base = BTreeMap::new();
        for (cond, name) in [
            ("ready", "ready"),
            ("serving", "serving"),
            ("terminating", "terminating"),
        ] {
            if let Some(b) = at(ep, &["conditions", cond]).and_then(Value::as_bool) {
                base.insert(
                    format!("__meta_kubernetes_endpointslice_endpoint_conditions_{name}"),
                    b.to_string(),
                );
            }
        }
        for (field, name) in [
            ("hostname", "hostname"),
            ("nodeName", "node_name"),
            ("zone", "zone"),
        ] {
            if let Some(v) = str_at(ep, &[field]) {
                base.insert(
                    format!("__meta_kubernetes_endpointslice_endpoint_{name}"),
                    v.into(),
                );
            }
        }
        let target_ref = at(ep, &["targetRef"]);
        let mut pod = None;
        if let Some(r) = target_ref {
            let kind = str_at(r, &["kind"]).unwrap_or("");
            let name = str_at(r, &["name"]).unwrap_or("");
            base.insert(
                "__meta_kubernetes_endpointslice_address_target_kind".into(),
                kind.into(),
            );
            base.insert(
                "__meta_kubernetes_endpointslice_address_target_name".into(),
                name.into(),
            );
            if kind == "Pod" {
                let pns = str_at(r, &["namespace"]).unwrap_or(ns);
                pod = pods.get(&format!("{pns}/{name}")).copied();
            }
        }
        for p in ports {
            let Some(port) = p.get("port").and_then(Value::as_u64) else {
                continue;
            };
            let proto = str_at(p, &["protocol"]).unwrap_or("TCP");
            let mut with_port = base.clone();
            with_port.insert(
                "__meta_kubernetes_endpointslice_port".into(),
                port.to_string(),
            );
            with_port.insert(
                "__meta_kubernetes_endpointslice_port_name".into(),
                str_at(p, &["name"]).unwrap_or("").into(),
            );
            with_port.insert(
                "__meta_kubernetes_endpointslice_port_protocol".into(),
                proto.into(),
            );
            if let Some(app) = str_at(p, &["appProtocol"]) {
                with_port.insert(
                    "__meta_kubernetes_endpointslice_port_app_protocol".into(),
                    app.into(),
                );
            }
            if let Some(pod) = pod {
                seen.entry(key_of(pod))
                    .or_insert((pod, Vec::new()))
                    .1
                    .push((port, proto.to_owned()));
                with_port.extend(pod_labels(pod));
                // The container that declares this port, if any.
                'found: for (c, init, id) in containers(pod) {
                    for cp in array(c, &["ports"]) {
                        let n = cp.get("containerPort").and_then(Value::as_u64);
                        let cproto = str_at(cp, &["protocol"]).unwrap_or("TCP");
                        if n == Some(port) && cproto == proto {
                            container_labels(c, init, &id, &mut with_port);
                            port_labels(cp, &mut with_port);
                            break 'found;
                        }
                    }
                }
            }
            for addr in array(ep, &["addresses"]) {
                let Some(a) = addr.as_str() else { continue };
                let mut t = with_port.clone();
                t.insert("__address__".into(), host_port(a, port as u16));
                group.targets.push(t);
            }
        }
    }
    // As Prometheus: the other declared ports of those pods are targets too
    // (a metrics port is often not part of the service).
    for (pod, covered) in seen.values() {
        let Some(ip) = str_at(pod, &["status", "podIP"]).filter(|ip| !ip.is_empty()) else {
            continue;
        };
        for (c, init, id) in containers(pod) {
            for cp in array(c, &["ports"]) {
                let n = cp.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
                let proto = str_at(cp, &["protocol"]).unwrap_or("TCP");
                if covered.iter().any(|(p, pr)| *p == n && pr == proto) {
                    continue;
                }
                let mut t = pod_labels(pod);
                container_labels(c, init, &id, &mut t);
                port_labels(cp, &mut t);
                t.insert("__address__".into(), host_port(ip, n as u16));
                group.targets.push(t);
            }
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {
                "name": "web-1", "namespace": "prod", "uid": "u-1",
                "labels": {"app": "web", "app.kubernetes.io/name": "web"},
                "annotations": {"prometheus.io/scrape": "true"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9", "controller": true}]
            },
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {"name": "app", "image": "web:1", "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9100}
                    ]},
                    {"name": "sidecar", "image": "envoy:1"}
                ]
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.5", "hostIP": "192.168.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "containerID": "containerd://abc"}]
            }
        })
    }

    #[test]
    fn a_pod_gives_a_target_per_port_and_one_per_portless_container() {
        let g = pod_group(&pod());
        assert_eq!(g.source, "pod/prod/web-1");
        assert_eq!(g.labels["__meta_kubernetes_pod_ready"], "true");
        assert_eq!(
            g.labels["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
            "web"
        );
        assert_eq!(g.labels["__meta_kubernetes_pod_labelpresent_app"], "true");
        assert_eq!(
            g.labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
            "true"
        );
        assert_eq!(
            g.labels["__meta_kubernetes_pod_controller_kind"],
            "ReplicaSet"
        );
        let addrs: Vec<&str> = g
            .targets
            .iter()
            .map(|t| t["__address__"].as_str())
            .collect();
        assert_eq!(addrs, ["10.0.0.5:8080", "10.0.0.5:9100", "10.0.0.5"]);
        assert_eq!(
            g.targets[1]["__meta_kubernetes_pod_container_port_protocol"],
            "TCP"
        );
        assert_eq!(
            g.targets[0]["__meta_kubernetes_pod_container_id"],
            "containerd://abc"
        );
        // A pod without an IP has nothing to scrape.
        let mut p = pod();
        p["status"]["podIP"] = json!("");
        assert!(pod_group(&p).targets.is_empty());
    }

    #[test]
    fn a_node_is_reached_at_its_preferred_address() {
        let n = json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/role": "worker"}},
            "spec": {"providerID": "aws:///i-1"},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.1.0.1"}
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}
            }
        });
        let g = node_group(&n).unwrap();
        let t = &g.targets[0];
        assert_eq!(t["__address__"], "10.1.0.1:10250");
        assert_eq!(t["instance"], "n1");
        assert_eq!(t["__meta_kubernetes_node_address_Hostname"], "n1");
        assert_eq!(
            g.labels["__meta_kubernetes_node_label_kubernetes_io_role"],
            "worker"
        );
        assert_eq!(g.labels["__meta_kubernetes_node_provider_id"], "aws:///i-1");
    }

    #[test]
    fn a_slice_joins_its_service_and_pods() {
        let slice = json!({
            "metadata": {"name": "web-abc", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP"}],
            "endpoints": [{
                "addresses": ["10.0.0.5"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "n1", "zone": "a",
                "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "prod"}
            }]
        });
        let svc =
            json!({"metadata": {"name": "web", "namespace": "prod", "labels": {"team": "sre"}}});
        let p = pod();
        let services = HashMap::from([("prod/web".to_owned(), &svc)]);
        let pods = HashMap::from([("prod/web-1".to_owned(), &p)]);
        let g = slice_group(&slice, &services, &pods);
        assert_eq!(g.labels["__meta_kubernetes_service_name"], "web");
        assert_eq!(g.labels["__meta_kubernetes_service_label_team"], "sre");
        let t = &g.targets[0];
        assert_eq!(t["__address__"], "10.0.0.5:9100");
        assert_eq!(
            t["__meta_kubernetes_endpointslice_endpoint_conditions_ready"],
            "true"
        );
        assert_eq!(t["__meta_kubernetes_endpointslice_endpoint_zone"], "a");
        assert_eq!(t["__meta_kubernetes_pod_name"], "web-1");
        assert_eq!(t["__meta_kubernetes_pod_container_name"], "app");
        assert_eq!(t["__meta_kubernetes_pod_container_port_name"], "metrics");
        // The pod's other declared port (http, not in the slice) is a
        // target too, without endpoint labels.
        assert_eq!(g.targets.len(), 2, "{:?}", g.targets);
        let other = &g.targets[1];
        assert_eq!(other["__address__"], "10.0.0.5:8080");
        assert_eq!(other["__meta_kubernetes_pod_container_port_name"], "http");
        assert!(!other.contains_key("__meta_kubernetes_endpointslice_port"));
    }

    fn node(name: &str, ip: &str) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": "1"},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    }

    /// Pages of a list, a watch that adds a node and then expires (410),
    /// and the list again: every node is found, through both paths.
    #[tokio::test]
    async fn lists_in_pages_watches_and_lists_again_when_expired() {
        use axum::extract::{Query, State};
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Clone, Default)]
        struct Server {
            lists: Arc<AtomicUsize>,
            watches: Arc<AtomicUsize>,
        }
        async fn nodes(
            State(s): State<Server>,
            Query(q): Query<BTreeMap<String, String>>,
        ) -> String {
            if q.contains_key("watch") {
                let n = s.watches.fetch_add(1, Ordering::SeqCst);
                return if n == 0 {
                    assert_eq!(q["resourceVersion"], "7", "{q:?}");
                    let add = json!({"type": "ADDED", "object": node("n3", "10.0.0.3")});
                    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}});
                    format!("{add}\n{gone}\n")
                } else {
                    // Hold the watch open: nothing changes any more.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    String::new()
                };
            }
            s.lists.fetch_add(1, Ordering::SeqCst);
            let relisted = s.watches.load(Ordering::SeqCst) > 0;
            match q.get("continue").map(String::as_str) {
                None => json!({"metadata": {"resourceVersion": "7", "continue": "p2"},
                               "items": [node("n1", "10.0.0.1")]}),
                Some("p2") => {
                    let mut items = vec![node("n2", "10.0.0.2")];
                    if relisted {
                        items.push(node("n3", "10.0.0.3"));
                    }
                    json!({"metadata": {"resourceVersion": "7"}, "items": items})
                }
                Some(other) => panic!("unexpected continue token {other}"),
            }
            .to_string()
        }
        let server = Server::default();
        let app = axum::Router::new()
            .route("/api/v1/nodes", axum::routing::get(nodes))
            .with_state(server.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = Sink {
            tx,
            job: "k".into(),
            generation: 1,
            provider: 0,
        };
        let cfg = KubernetesSdConfig {
            role: Some(Role::Node),
            api_server: Some(url),
            ..KubernetesSdConfig::default()
        };
        let task = tokio::spawn(run(cfg, sink));
        let names = |u: &crate::discovery::Update| -> Vec<String> {
            u.groups.iter().map(|g| g.source.clone()).collect()
        };
        let mut seen = Vec::new();
        let all = ["node/n1", "node/n2", "node/n3"];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen != all {
            let u = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("all three nodes")
                .unwrap();
            seen = names(&u);
        }
        // Listed once at the start and once after the 410.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.lists.load(Ordering::SeqCst), 4, "two pages, twice");
        assert!(server.watches.load(Ordering::SeqCst) >= 2);
        task.abort();
    }

    #[test]
    fn unsupported_settings_are_refused_by_key() {
        let c = KubernetesSdConfig {
            role: Some(Role::Service),
            api_server: Some("http://127.0.0.1:1".into()),
            ..KubernetesSdConfig::default()
        };
        let e = c.validate("j").unwrap_err().to_string();
        assert!(e.contains("j.role") && e.contains("service"), "{e}");
        let c = KubernetesSdConfig {
            role: Some(Role::Pod),
            api_server: Some("http://127.0.0.1:1".into()),
            selectors: vec![Selector {
                role: Role::Node,
                label: None,
                field: None,
            }],
            ..KubernetesSdConfig::default()
        };
        let e = c.validate("j").unwrap_err().to_string();
        assert!(e.contains("j.selectors[0].role"), "{e}");
    }
}
