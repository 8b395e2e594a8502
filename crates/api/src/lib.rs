//! The Prometheus HTTP API over a tiermon store, so that Grafana and other
//! Prometheus clients work unchanged: `/api/v1/query`, `query_range`,
//! `series`, `labels`, `label/<name>/values`, `metadata`,
//! `status/buildinfo`, `status/tsdb`, and remote_write intake at
//! `/api/v1/write`. GET and POST (form-encoded) are both accepted, and
//! errors have Prometheus' JSON shape and `errorType`s.
//!
//! Queries run on the blocking pool under a concurrency limit (an excess
//! query gets 503 at once instead of queueing behind the others) and a
//! timeout, so a heavy query cannot starve ingestion.

mod fanout;
mod grpc;
mod params;
mod write;

pub use fanout::{DATACENTER, Primaries};
pub use grpc::{QueryService, labels_pb};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use tiermon_model::Matcher;
use tiermon_promql::{Engine, Queryable, Series, Value, WindowField};
use tiermon_tsdb::{Db, Resolution};
use tokio::sync::Semaphore;

use params::Params;

/// API limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Queries evaluated at once; more get 503.
    pub max_concurrent_queries: usize,
    /// Longest a query may run.
    pub query_timeout: Duration,
    /// Largest remote_write body (compressed), in bytes.
    pub max_write_bytes: usize,
    /// Largest remote_write body once decompressed, in bytes.
    pub max_write_decoded_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_queries: 20,
            query_timeout: Duration::from_secs(120),
            max_write_bytes: 32 << 20,
            max_write_decoded_bytes: 256 << 20,
        }
    }
}

/// What the API serves.
#[derive(Clone, Debug)]
pub struct Api {
    inner: Arc<Inner>,
}

/// The tier's pending and firing alerts, for the gRPC `Alerts` call.
pub type AlertsFn = Arc<dyn Fn() -> Vec<tiermon_proto::v1::Alert> + Send + Sync>;

/// The tier's scrape targets (active, dropped), for the gRPC `Targets`
/// call.
pub type TargetsFn = Arc<
    dyn Fn() -> (
            Vec<tiermon_proto::v1::Target>,
            Vec<tiermon_proto::v1::Target>,
        ) + Send
        + Sync,
>;

/// What a target says about a metric family, as `/api/v1/metadata`
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricMetadata {
    /// `counter`, `gauge`, `histogram`, `summary`, … or `unknown`.
    pub kind: String,
    /// The help text.
    pub help: String,
    /// The unit (OpenMetrics), often empty.
    pub unit: String,
}

/// Metric metadata by family name (from the scrape targets).
pub type MetadataFn =
    Arc<dyn Fn() -> std::collections::BTreeMap<String, Vec<MetricMetadata>> + Send + Sync>;

/// What other parts of a tier serve through the API, set once they run.
#[derive(Default)]
struct Providers {
    alerts: std::sync::OnceLock<AlertsFn>,
    targets: std::sync::OnceLock<TargetsFn>,
    metadata: std::sync::OnceLock<MetadataFn>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("alerts", &self.alerts.get().is_some())
            .field("targets", &self.targets.get().is_some())
            .field("metadata", &self.metadata.get().is_some())
            .finish()
    }
}

#[derive(Debug)]
struct Inner {
    db: Db,
    engine: Engine,
    limits: Limits,
    queries: Arc<Semaphore>,
    version: &'static str,
    /// Where full-resolution queries go (the global tier's primaries).
    primaries: Primaries,
    providers: Providers,
    /// See [`Api::read_windows`].
    windows: AtomicBool,
    /// remote_write's series cache.
    writes: Arc<write::SeriesCache>,
}

async fn not_found(
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no gRPC method {}", uri.path()))
            .into_http::<axum::body::Body>()
            .into_response();
    }
    (
        axum::http::StatusCode::NOT_FOUND,
        format!("404 page not found: {}\n", uri.path()),
    )
        .into_response()
}

/// [`Queryable`] over a [`Db`].
#[derive(Debug, Clone)]
pub struct DbQueryable {
    db: Db,
    /// Whether the over-time functions read the minute windows received
    /// from below ([`Queryable::select_windows`]): at the global tier.
    windows: bool,
}

impl DbQueryable {
    /// Reads `db`'s raw samples.
    pub fn new(db: Db) -> Self {
        Self { db, windows: false }
    }

    /// Reads `db`'s raw samples, and for the over-time functions the
    /// minute windows `Db::put_aggregates` stored (the global tier's).
    pub fn windowed(db: Db) -> Self {
        Self { db, windows: true }
    }
}

impl Queryable for DbQueryable {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, String> {
        let got = self
            .db
            .select_pairs(matchers, mint, maxt)
            .map_err(|e| e.to_string())?;
        Ok(got
            .into_iter()
            .map(|(labels, samples)| Series { labels, samples })
            .collect())
    }

    fn select_batches(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        batch: usize,
        f: &mut dyn FnMut(Vec<Series>) -> bool,
    ) -> Result<(), String> {
        self.db
            .select_batches(matchers, mint, maxt, batch, |b| {
                f(b.into_iter()
                    .map(|(labels, samples)| Series { labels, samples })
                    .collect())
            })
            .map_err(|e| e.to_string())
    }

    fn select_windows(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        field: WindowField,
    ) -> Result<Option<Vec<Series>>, String> {
        if !self.windows {
            return Ok(None);
        }
        let res = Resolution::OneMinute;
        // A window ends after it starts: its last sample may be in range
        // when its start is a window before.
        let windows = self
            .db
            .select_aggregates(matchers, res, mint.saturating_sub(res.window_ms()), maxt)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(windows.len());
        let mut have = std::collections::HashSet::with_capacity(windows.len());
        for (labels, aggs) in windows {
            let samples: Vec<(i64, f64)> = aggs
                .iter()
                .filter(|a| a.last_t >= mint && a.last_t <= maxt)
                .map(|a| {
                    let v = match field {
                        WindowField::Min => a.min,
                        WindowField::Max => a.max,
                        WindowField::Sum => a.sum,
                        WindowField::Count => a.count as f64,
                    };
                    (a.last_t, v)
                })
                .collect();
            if !samples.is_empty() {
                have.insert(labels.clone());
                out.push(Series { labels, samples });
            }
        }
        // The rest (the tier's own series): each raw sample a window of one.
        for mut s in self.select(matchers, mint, maxt)? {
            if have.contains(&s.labels) {
                continue;
            }
            if field == WindowField::Count {
                for x in &mut s.samples {
                    if x.1.to_bits() != tiermon_model::STALE_NAN.to_bits() {
                        x.1 = 1.0;
                    }
                }
            }
            out.push(s);
        }
        Ok(Some(out))
    }
}

impl Api {
    /// The API over `db`; queries asked at full resolution go to
    /// `primaries` (empty below the global tier).
    pub fn new(
        db: Db,
        engine: Engine,
        limits: Limits,
        version: &'static str,
        primaries: Primaries,
    ) -> Self {
        let queries = Arc::new(Semaphore::new(limits.max_concurrent_queries.max(1)));
        let writes = Arc::new(write::SeriesCache::new(db.options().max_series));
        Self {
            inner: Arc::new(Inner {
                db,
                engine,
                limits,
                queries,
                version,
                primaries,
                providers: Providers::default(),
                windows: AtomicBool::new(false),
                writes,
            }),
        }
    }

    /// Serves the tier's alerts over gRPC (the rules evaluator's); a
    /// second call is ignored.
    pub fn serve_alerts(&self, f: AlertsFn) {
        let _ = self.inner.providers.alerts.set(f);
    }

    /// Serves metric metadata at `/api/v1/metadata` (the scrape
    /// targets'); a second call is ignored.
    pub fn serve_metadata(&self, f: MetadataFn) {
        let _ = self.inner.providers.metadata.set(f);
    }

    /// Serves the tier's scrape targets over gRPC; a second call is
    /// ignored.
    pub fn serve_targets(&self, f: TargetsFn) {
        let _ = self.inner.providers.targets.set(f);
    }

    /// Makes queries read the minute windows received from below for the
    /// over-time functions (see [`DbQueryable::windowed`]): at the global
    /// tier, whose raw series hold only each window's last sample.
    pub fn read_windows(&self, on: bool) {
        self.inner.windows.store(on, Ordering::Relaxed);
    }

    /// The store a query reads: this tier's own, or — at full resolution,
    /// where primaries are known — the primaries with this tier's store
    /// for what they cannot answer. Warnings about parts of the hierarchy
    /// that did not answer collect in the returned list.
    pub(crate) fn store(&self, full_resolution: bool) -> (Box<dyn Queryable>, Warnings) {
        let warnings = Warnings::default();
        let local = DbQueryable {
            db: self.inner.db.clone(),
            windows: self.inner.windows.load(Ordering::Relaxed),
        };
        if !full_resolution || self.inner.primaries.is_empty() {
            return (Box::new(local), warnings);
        }
        let f = fanout::FanOut {
            local,
            primaries: self.inner.primaries.clone(),
            warnings: warnings.0.clone(),
            handle: tokio::runtime::Handle::current(),
        };
        (Box::new(f), warnings)
    }

    /// The routes.
    pub fn router(&self) -> Router {
        self.router_with(|r| r)
    }

    /// The routes, with more gRPC services (e.g. the push intake) added by
    /// `grpc` beside the query service on the same port.
    pub fn router_with(
        &self,
        grpc: impl FnOnce(tonic::service::Routes) -> tonic::service::Routes,
    ) -> Router {
        let write_limit = self.inner.limits.max_write_bytes;
        Router::new()
            .route("/api/v1/query", get(query).post(query))
            .route("/api/v1/query_range", get(query_range).post(query_range))
            .route("/api/v1/series", get(series).post(series))
            .route("/api/v1/labels", get(labels).post(labels))
            .route("/api/v1/label/{name}/values", get(label_values))
            .route("/api/v1/metadata", get(metadata))
            .route("/api/v1/status/buildinfo", get(buildinfo))
            .route("/api/v1/status/tsdb", get(tsdb_status))
            .route(
                "/api/v1/write",
                post(write::handle).layer(DefaultBodyLimit::max(write_limit)),
            )
            .route("/-/healthy", get(|| async { "tiermon is healthy.\n" }))
            .route("/-/ready", get(|| async { "tiermon is ready.\n" }))
            .with_state(self.clone())
            // gRPC on the same port: HTTP/2 requests to /tiermon.v1.Query/*.
            .merge(
                grpc(tonic::service::Routes::new(
                    tiermon_proto::v1::query_server::QueryServer::new(QueryService::new(
                        self.clone(),
                    )),
                ))
                .into_axum_router(),
            )
            // tonic answers every unknown path as an unimplemented gRPC
            // call (HTTP 200); an HTTP client must get a 404.
            .fallback(not_found)
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn write_cache(&self) -> Arc<write::SeriesCache> {
        self.inner.writes.clone()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }
}

/// Warnings collected while a query ran (parts of the hierarchy that did
/// not answer).
#[derive(Debug, Clone, Default)]
pub(crate) struct Warnings(pub(crate) Arc<parking_lot::Mutex<Vec<(String, String)>>>);

impl Warnings {
    /// (source, message) pairs: the source names the part of the hierarchy.
    pub(crate) fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock())
    }

    /// The messages, for the HTTP API's `warnings`.
    pub(crate) fn messages(&self) -> Vec<String> {
        self.take().into_iter().map(|(_, m)| m).collect()
    }
}

/// Whether the request asks for full resolution (`resolution=raw`).
fn full_resolution(p: &Params) -> Result<bool, ApiError> {
    match p.get("resolution") {
        None | Some("" | "auto") => Ok(false),
        Some("raw" | "full") => Ok(true),
        Some(other) => Err(ApiError::bad_data(format!(
            "invalid parameter \"resolution\": {other:?} (use \"raw\" or \"auto\")"
        ))),
    }
}

/// A Prometheus API error.
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn bad_data(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_data",
            message: message.into(),
        }
    }

    /// A storage failure (Prometheus' `internal`).
    pub(crate) fn storage(e: tiermon_tsdb::Error) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: e.to_string(),
        }
    }

    fn from_promql(e: tiermon_promql::Error) -> Self {
        let status = match e.kind() {
            "bad_data" => StatusCode::BAD_REQUEST,
            "execution" => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "errorType": self.kind, "error": self.message});
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn success(data: Json) -> Response {
    success_with(data, Vec::new())
}

/// A success with Prometheus' `warnings` (shown by Grafana) when any.
fn success_with(data: Json, warnings: Vec<String>) -> Response {
    let body = if warnings.is_empty() {
        json!({"status": "success", "data": data})
    } else {
        json!({"status": "success", "data": data, "warnings": warnings})
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Seconds with up to millisecond precision, as Prometheus prints them.
fn ts_json(t: i64) -> Json {
    let (sign, a) = if t < 0 {
        (-1.0, -(t as i128))
    } else {
        (1.0, t as i128)
    };
    let secs = (a / 1000) as f64;
    let ms = (a % 1000) as f64;
    let v = sign * (secs + ms / 1000.0);
    serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
}

fn metric_json(l: &tiermon_model::Labels) -> Json {
    let mut m = serde_json::Map::new();
    for x in l {
        m.insert(x.name.to_string(), Json::String(x.value.to_string()));
    }
    Json::Object(m)
}

fn result_json(v: Value) -> Json {
    match v {
        Value::Scalar(t, v) => {
            json!({"resultType": "scalar", "result": [ts_json(t), tiermon_promql::format_float(v)]})
        }
        Value::String(t, s) => json!({"resultType": "string", "result": [ts_json(t), s]}),
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples.into_iter().map(|s| json!({
                "metric": metric_json(&s.labels),
                "value": [ts_json(s.t), tiermon_promql::format_float(s.v)],
            })).collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series.into_iter().map(|s| json!({
                "metric": metric_json(&s.labels),
                "values": s.samples.iter().map(|&(t, v)| json!([ts_json(t), tiermon_promql::format_float(v)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    }
}

/// Runs `f` on the blocking pool under the query limits. `f` gets a flag
/// that is set when the query times out or its client goes away, so that
/// the evaluation stops and frees its slot instead of running on unseen.
async fn run_query<T: Send + 'static>(
    api: &Api,
    timeout: Option<Duration>,
    f: impl FnOnce(Arc<AtomicBool>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = api
        .inner
        .queries
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            message: format!(
                "too many concurrent queries (limit {}); retry later",
                api.inner.limits.max_concurrent_queries
            ),
        })?;
    let limit = timeout
        .unwrap_or(api.inner.limits.query_timeout)
        .min(api.inner.limits.query_timeout);
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let task = tokio::task::spawn_blocking(move || {
        let r = f(flag);
        drop(permit);
        r
    });
    let _cancel_on_drop = CancelOnDrop(cancel);
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: format!("query failed: {e}"),
        }),
        Err(_) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "timeout",
            message: format!("query timed out in expression evaluation (limit {limit:?})"),
        }),
    }
}

/// Sets the flag when dropped: at a timeout, or when the request's future
/// is dropped because the client went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn query(
    State(api): State<Api>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(&method, &headers, q.as_deref(), &body)?;
    let query = p.required("query")?.to_owned();
    let t = match p.get("time") {
        Some(t) => params::parse_time(t)?,
        None => now_ms(),
    };
    let timeout = p.get("timeout").map(params::parse_duration).transpose()?;
    let a = api.clone();
    let (store, warnings) = api.store(full_resolution(&p)?);
    let v = run_query(&api, timeout, move |c| {
        a.inner.engine.with_cancel(c).instant(&*store, &query, t)
    })
    .await?;
    Ok(success_with(
        result_json(v.map_err(ApiError::from_promql)?),
        warnings.messages(),
    ))
}

async fn query_range(
    State(api): State<Api>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(&method, &headers, q.as_deref(), &body)?;
    let query = p.required("query")?.to_owned();
    let start = params::parse_time(p.required("start")?)?;
    let end = params::parse_time(p.required("end")?)?;
    let step = params::parse_duration(p.required("step")?)?;
    let step_ms = step.as_millis() as i64;
    let timeout = p.get("timeout").map(params::parse_duration).transpose()?;
    let a = api.clone();
    let (store, warnings) = api.store(full_resolution(&p)?);
    let v = run_query(&api, timeout, move |c| {
        a.inner
            .engine
            .with_cancel(c)
            .range(&*store, &query, start, end, step_ms)
    })
    .await?;
    Ok(success_with(
        result_json(v.map_err(ApiError::from_promql)?),
        warnings.messages(),
    ))
}

/// The sorted, de-duplicated union of `f` over each selector (over all
/// series when there is none).
pub(crate) fn union<T: Ord, E>(
    sets: &[Vec<Matcher>],
    f: impl Fn(&[Matcher]) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let mut all = std::collections::BTreeSet::new();
    if sets.is_empty() {
        all.extend(f(&[])?);
    }
    for m in sets {
        all.extend(f(m)?);
    }
    Ok(all.into_iter().collect())
}

use tiermon_model::now_ms;

/// `match[]` selectors (each a list of matchers), start and end.
fn selection(p: &Params) -> Result<(Vec<Vec<Matcher>>, i64, i64), ApiError> {
    let mut sets = Vec::new();
    for m in p.all("match[]") {
        sets.push(params::parse_selector(m)?);
    }
    let start = p
        .get("start")
        .map(params::parse_time)
        .transpose()?
        .unwrap_or(i64::MIN / 2);
    let end = p
        .get("end")
        .map(params::parse_time)
        .transpose()?
        .unwrap_or(i64::MAX / 2);
    Ok((sets, start, end))
}

async fn series(
    State(api): State<Api>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(&method, &headers, q.as_deref(), &body)?;
    let (sets, start, end) = selection(&p)?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let db = api.inner.db.clone();
    let out = run_query(&api, None, move |_| {
        union(&sets, |m| db.series(m, start, end))
            .map(|all| all.iter().map(metric_json).collect::<Vec<_>>())
    })
    .await?
    .map_err(ApiError::storage)?;
    Ok(success(Json::Array(out)))
}

async fn labels(
    State(api): State<Api>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(&method, &headers, q.as_deref(), &body)?;
    let (sets, start, end) = selection(&p)?;
    let db = api.inner.db.clone();
    let out = run_query(&api, None, move |_| {
        union(&sets, |m| db.label_names(m, start, end))
    })
    .await?
    .map_err(ApiError::storage)?;
    Ok(success(json!(out)))
}

async fn label_values(
    State(api): State<Api>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::new(&method, &headers, q.as_deref(), &[])?;
    let (sets, start, end) = selection(&p)?;
    let db = api.inner.db.clone();
    let out = run_query(&api, None, move |_| {
        union(&sets, |m| db.label_values(&name, m, start, end))
    })
    .await?
    .map_err(ApiError::storage)?;
    Ok(success(json!(out)))
}

/// Prometheus' `/api/v1/metadata`: `metric` (one family), `limit` (most
/// families) and `limit_per_metric`; families in name order.
async fn metadata(
    State(api): State<Api>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let limit = |key: &str| -> Result<Option<usize>, ApiError> {
        match q.get(key).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => match v.parse::<i64>() {
                // Prometheus: 0 or less means no limit.
                Ok(n) if n <= 0 => Ok(None),
                Ok(n) => Ok(Some(n as usize)),
                Err(_) => Err(ApiError::bad_data(format!("invalid {key} {v:?}"))),
            },
        }
    };
    let (limit, per_metric) = match (limit("limit"), limit("limit_per_metric")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let all = api
        .inner
        .providers
        .metadata
        .get()
        .map(|f| f())
        .unwrap_or_default();
    let metric = q.get("metric").filter(|m| !m.is_empty());
    let mut data = serde_json::Map::new();
    for (name, list) in all {
        if metric.is_some_and(|m| *m != name) {
            continue;
        }
        if limit.is_some_and(|l| data.len() >= l) {
            break;
        }
        let entries: Vec<Json> = list
            .iter()
            .take(per_metric.unwrap_or(usize::MAX))
            .map(|m| json!({"type": m.kind, "help": m.help, "unit": m.unit}))
            .collect();
        data.insert(name, Json::Array(entries));
    }
    success(Json::Object(data))
}

async fn buildinfo(State(api): State<Api>) -> Response {
    success(json!({
        "version": api.inner.version,
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

async fn tsdb_status(State(api): State<Api>) -> Result<Response, ApiError> {
    let db = api.inner.db.clone();
    let stats = run_query(&api, None, move |_| db.stats(10)).await?;
    let pairs = |v: &[(String, usize)]| {
        v.iter()
            .map(|(n, c)| json!({"name": n, "value": c}))
            .collect::<Vec<_>>()
    };
    Ok(success(json!({
        "headStats": {
            "numSeries": stats.series,
        },
        "seriesCountByMetricName": pairs(&stats.top_metrics),
        "labelValueCountByLabelName": pairs(&stats.top_label_names_by_values),
        "memoryInBytesByLabelName": [],
        "seriesCountByLabelValuePair": pairs(&stats.top_label_pairs),
    })))
}

/// A series selector (`name{a="b"}`) to matchers, with the error text an
/// operator can act on.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, String> {
    params::parse_selector(s).map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_values_print_like_prometheus() {
        assert_eq!(ts_json(1_435_781_451_781).to_string(), "1435781451.781");
        assert_eq!(ts_json(0).to_string(), "0.0");
        assert_eq!(ts_json(-1500).to_string(), "-1.5");
        assert_eq!(tiermon_promql::format_float(f64::INFINITY), "+Inf");
        assert_eq!(tiermon_promql::format_float(1e21), "1000000000000000000000");
        assert_eq!(tiermon_promql::format_float(0.1), "0.1");
    }
}
