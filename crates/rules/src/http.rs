//! The rules service of a tier — rule files (globs, reloaded) and the
//! rules database feeding one [`Manager`] — and its HTTP routes:
//!
//! - `GET /api/v1/rules`, `GET /api/v1/alerts`: Prometheus' shapes, so
//!   Grafana lists rules and alerts;
//! - `/config/v1/rules[/{namespace}[/{group}]]` (also under
//!   `/prometheus/`): the Cortex/Mimir ruler configuration API — `GET`
//!   lists (YAML), `POST /{namespace}` creates or replaces one group (YAML
//!   body), `DELETE` removes a group or a namespace;
//! - `GET /api/tiermon/v1/rules/{namespace}/versions`,
//!   `GET …/versions/{n}`, `POST …/versions/{n}/restore`: the database's
//!   history.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value as Json, json};

use crate::db::{DbError, RulesDb};
use crate::eval::{ActiveAlert, GroupStatus, Manager, rfc3339};
use crate::file::{GroupSpec, RuleFile};

/// Rule files and the rules database, run by one manager.
#[derive(Debug, Clone)]
pub struct Rules {
    inner: Arc<Inner>,
}

/// Alerts evaluated elsewhere that `/api/v1/alerts` lists beside the
/// tier's own: those its children pushed to it.
pub type RelayedFn = Arc<dyn Fn() -> Vec<ActiveAlert> + Send + Sync>;

struct Inner {
    manager: Manager,
    db: RulesDb,
    files: Vec<String>,
    /// Serialises reloads.
    reload: Mutex<()>,
    relayed: std::sync::OnceLock<RelayedFn>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("manager", &self.manager)
            .field("db", &self.db)
            .field("files", &self.files)
            .field("relayed", &self.relayed.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Why rules could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// The files `patterns` name (globs in the last path element, as in
/// Prometheus' `rule_files`), sorted.
pub fn expand_globs(patterns: &[String]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in patterns {
        let paths =
            glob::glob(p).map_err(|e| LoadError(format!("rule file pattern {p:?}: {e}")))?;
        let mut found: Vec<PathBuf> = paths.flatten().collect();
        if found.is_empty() && !p.contains(['*', '?', '[']) {
            // A plain path that does not exist is an error, not nothing.
            return Err(LoadError(format!("rule file {p}: no such file")));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

impl Rules {
    /// Rules from `files` (glob patterns) and from the database in
    /// `db_dir`, evaluated by `manager`. Nothing runs until
    /// [`Rules::reload`].
    pub fn new(manager: Manager, files: Vec<String>, db_dir: &Path) -> Result<Self, LoadError> {
        let db = RulesDb::open(db_dir).map_err(|e| LoadError(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                manager,
                db,
                files,
                reload: Mutex::new(()),
                relayed: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Reads every rule file again and runs them with the database's
    /// namespaces. A file that does not check is refused with every
    /// problem, and the rules that run stay as they were.
    pub fn reload(&self) -> Result<usize, LoadError> {
        let _g = self.inner.reload.lock();
        let mut sets = Vec::new();
        for path in expand_globs(&self.inner.files)? {
            let f = RuleFile::load(&path).map_err(|e| LoadError(e.to_string()))?;
            sets.push((path.display().to_string(), f));
        }
        sets.extend(self.inner.db.rule_files());
        let groups = sets.iter().map(|(_, f)| f.groups.len()).sum();
        self.inner.manager.update(&sets).map_err(LoadError)?;
        Ok(groups)
    }

    /// Lists the alerts `f` gives at `/api/v1/alerts` after the tier's
    /// own; a second call is ignored.
    pub fn relay(&self, f: RelayedFn) {
        let _ = self.inner.relayed.set(f);
    }

    /// The manager.
    pub fn manager(&self) -> &Manager {
        &self.inner.manager
    }

    /// The database.
    pub fn db(&self) -> &RulesDb {
        &self.inner.db
    }

    /// The routes.
    pub fn router(&self) -> Router {
        let cfg = Router::new()
            .route("/", get(list_all))
            .route("/{ns}", get(list_ns).post(put_group).delete(delete_ns))
            .route("/{ns}/{group}", get(get_group).delete(delete_group));
        Router::new()
            .route("/api/v1/rules", get(api_rules))
            .route("/api/v1/alerts", get(api_alerts))
            .nest("/config/v1/rules", cfg.clone())
            .nest("/prometheus/config/v1/rules", cfg)
            .route("/api/tiermon/v1/rules/{ns}/versions", get(versions))
            .route("/api/tiermon/v1/rules/{ns}/versions/{v}", get(version))
            .route(
                "/api/tiermon/v1/rules/{ns}/versions/{v}/restore",
                post(restore),
            )
            .with_state(self.clone())
    }
}

fn alert_json(a: &ActiveAlert) -> Json {
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "keepFiringSince": (a.keep_firing_since != 0).then(|| rfc3339(a.keep_firing_since)),
        "value": go_e(a.value),
    })
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, as Prometheus prints an
/// alert's value: `1e+00`, `2.5e-03`.
fn go_e(v: f64) -> String {
    if !v.is_finite() {
        return tiermon_promql::format_float(v);
    }
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn group_json(g: &GroupStatus, want: Option<&str>) -> Json {
    let rules: Vec<Json> = g
        .rules
        .iter()
        .filter(|r| match want {
            Some("alert") => r.spec.is_alert(),
            Some("record") => !r.spec.is_alert(),
            _ => true,
        })
        .map(|r| {
            let health = if r.health.last_evaluation == 0 {
                "unknown"
            } else if r.health.last_error.is_empty() {
                "ok"
            } else {
                "err"
            };
            let mut j = json!({
                "name": r.spec.name(),
                "query": r.spec.expr,
                "labels": r.spec.labels,
                "health": health,
                "lastError": r.health.last_error,
                "evaluationTime": r.health.evaluation_time,
                "lastEvaluation": rfc3339(r.health.last_evaluation),
            });
            if r.spec.is_alert() {
                let state = if r.alerts.iter().any(|a| a.state.as_str() == "firing") {
                    "firing"
                } else if r.alerts.is_empty() {
                    "inactive"
                } else {
                    "pending"
                };
                j["type"] = "alerting".into();
                j["state"] = state.into();
                j["duration"] = r.spec.for_.map(|d| d.0.as_secs_f64()).unwrap_or(0.0).into();
                j["keepFiringFor"] = r
                    .spec
                    .keep_firing_for
                    .map(|d| d.0.as_secs_f64())
                    .unwrap_or(0.0)
                    .into();
                j["annotations"] = json!(r.spec.annotations);
                j["alerts"] = r.alerts.iter().map(alert_json).collect();
            } else {
                j["type"] = "recording".into();
            }
            j
        })
        .collect();
    json!({
        "name": g.name,
        "file": g.source,
        "interval": g.interval.as_secs_f64(),
        "limit": g.limit,
        "rules": rules,
        "evaluationTime": g.health.evaluation_time,
        "lastEvaluation": rfc3339(g.health.last_evaluation),
    })
}

fn ok(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn fail(code: StatusCode, kind: &str, msg: String) -> Response {
    (
        code,
        axum::Json(json!({"status": "error", "errorType": kind, "error": msg})),
    )
        .into_response()
}

async fn api_rules(State(r): State<Rules>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let want = q.iter().find(|(k, _)| k == "type").map(|(_, v)| v.as_str());
    if let Some(w) = want
        && w != "alert"
        && w != "record"
    {
        return fail(
            StatusCode::BAD_REQUEST,
            "bad_data",
            format!("unsupported type {w:?}: use alert or record"),
        );
    }
    let names: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "rule_group[]")
        .map(|(_, v)| v.as_str())
        .collect();
    let groups: Vec<Json> = r
        .inner
        .manager
        .groups()
        .iter()
        .filter(|g| names.is_empty() || names.contains(&g.name.as_str()))
        .map(|g| group_json(g, want))
        .collect();
    ok(json!({ "groups": groups }))
}

async fn api_alerts(State(r): State<Rules>) -> Response {
    let mut alerts: Vec<Json> = r.inner.manager.alerts().iter().map(alert_json).collect();
    if let Some(f) = r.inner.relayed.get() {
        alerts.extend(f().iter().map(alert_json));
    }
    ok(json!({ "alerts": alerts }))
}

/// JSON is YAML: the ruler API's YAML answers are written as JSON, which
/// every YAML reader (mimirtool's included) reads.
fn yaml(v: &impl serde::Serialize) -> Response {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/yaml")], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn db_error(e: DbError) -> Response {
    let code = match &e {
        DbError::Invalid(_) | DbError::BadName(_) => StatusCode::BAD_REQUEST,
        DbError::NotFound(_) => StatusCode::NOT_FOUND,
        DbError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{e}\n")).into_response()
}

fn applied(r: &Rules) -> Response {
    match r.reload() {
        Ok(_) => (StatusCode::ACCEPTED, "").into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored, but the rules could not be applied: {e}\n"),
        )
            .into_response(),
    }
}

async fn list_all(State(r): State<Rules>) -> Response {
    let all: std::collections::BTreeMap<String, Vec<GroupSpec>> = r
        .inner
        .db
        .rule_files()
        .into_iter()
        .map(|(ns, f)| (ns, f.groups))
        .collect();
    if all.is_empty() {
        return (StatusCode::NOT_FOUND, "no rule groups found\n").into_response();
    }
    yaml(&all)
}

async fn list_ns(State(r): State<Rules>, UrlPath(ns): UrlPath<String>) -> Response {
    match r.inner.db.get(&ns) {
        Some((_, groups)) => yaml(&std::collections::BTreeMap::from([(ns, groups)])),
        None => (StatusCode::NOT_FOUND, "no rule groups found\n").into_response(),
    }
}

async fn get_group(
    State(r): State<Rules>,
    UrlPath((ns, group)): UrlPath<(String, String)>,
) -> Response {
    match r
        .inner
        .db
        .get(&ns)
        .and_then(|(_, gs)| gs.into_iter().find(|g| g.name == group))
    {
        Some(g) => yaml(&g),
        None => (StatusCode::NOT_FOUND, "group does not exist\n").into_response(),
    }
}

/// Runs `f` (database writes and the reload after them: file reads and
/// fsyncs) on the blocking pool, off the async workers.
async fn blocking(r: &Rules, f: impl FnOnce(&Rules) -> Response + Send + 'static) -> Response {
    let r = r.clone();
    match tokio::task::spawn_blocking(move || f(&r)).await {
        Ok(resp) => resp,
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn put_group(State(r): State<Rules>, UrlPath(ns): UrlPath<String>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not UTF-8\n").into_response();
    };
    let g = match GroupSpec::parse(text) {
        Ok(g) => g,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    blocking(&r, move |r| match r.inner.db.put_group(&ns, g) {
        Ok(_) => applied(r),
        Err(e) => db_error(e),
    })
    .await
}

async fn delete_group(
    State(r): State<Rules>,
    UrlPath((ns, group)): UrlPath<(String, String)>,
) -> Response {
    blocking(&r, move |r| match r.inner.db.delete_group(&ns, &group) {
        Ok(_) => applied(r),
        Err(e) => db_error(e),
    })
    .await
}

async fn delete_ns(State(r): State<Rules>, UrlPath(ns): UrlPath<String>) -> Response {
    blocking(&r, move |r| match r.inner.db.delete_namespace(&ns) {
        Ok(_) => applied(r),
        Err(e) => db_error(e),
    })
    .await
}

async fn versions(State(r): State<Rules>, UrlPath(ns): UrlPath<String>) -> Response {
    let v = r.inner.db.versions(&ns);
    if v.is_empty() {
        return fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("namespace {ns:?} has no versions"),
        );
    }
    ok(json!(
        v.iter()
            .map(|v| json!({"version": v.version, "updated": rfc3339(v.updated_ms)}))
            .collect::<Vec<_>>()
    ))
}

async fn version(State(r): State<Rules>, UrlPath((ns, v)): UrlPath<(String, u64)>) -> Response {
    blocking(&r, move |r| match r.inner.db.at_version(&ns, v) {
        Ok(groups) => yaml(&json!({ "groups": groups })),
        Err(e) => db_error(e),
    })
    .await
}

async fn restore(State(r): State<Rules>, UrlPath((ns, v)): UrlPath<(String, u64)>) -> Response {
    blocking(&r, move |r| match r.inner.db.restore(&ns, v) {
        Ok(_) => applied(r),
        Err(e) => db_error(e),
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_print_as_prometheus_prints_them() {
        assert_eq!(super::go_e(1.0), "1e+00");
        assert_eq!(super::go_e(0.0), "0e+00");
        assert_eq!(super::go_e(314.5), "3.145e+02");
        assert_eq!(super::go_e(-0.0025), "-2.5e-03");
        assert_eq!(super::go_e(f64::NAN), "NaN");
    }
}
