//! The secondary's scraping at the binary edge: loading the scrape file,
//! reloading it (SIGHUP, `POST /-/reload`), and the routes that show it —
//! `/api/v1/targets`, the `/targets` page and the scraper's own `/metrics`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use serde_json::json;
use tiermon_scrape::{Manager, ScrapeFile};

/// Scraping as configured by one file.
#[derive(Debug, Clone)]
pub(crate) struct Scraping {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    manager: Manager,
    path: Option<PathBuf>,
    reload: Mutex<ReloadState>,
    /// More of the tier's metrics for `/metrics` (the push path's).
    extra: Mutex<Option<crate::tier::MetricsFn>>,
    /// More to reload with the scrape file (rules, the alert manager).
    also: Mutex<Option<Hook>>,
}

/// A reload hook.
#[derive(Clone)]
struct Hook(Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

#[derive(Debug, Default)]
struct ReloadState {
    ok: bool,
    last_success_s: f64,
    failures: u64,
    last_error: String,
}

impl Scraping {
    /// Starts scraping what `path` lists (nothing when `None`). A broken
    /// file stops the start-up with the key at fault.
    pub(crate) fn start(manager: Manager, path: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(p) = &path {
            let file = ScrapeFile::load(p)?;
            manager.apply(&file)?;
            tracing::info!(file = %p.display(), jobs = file.scrape_configs.len(), "scraping");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                manager,
                path,
                reload: Mutex::new(ReloadState {
                    ok: true,
                    last_success_s: now_s(),
                    ..ReloadState::default()
                }),
                extra: Mutex::new(None),
                also: Mutex::new(None),
            }),
        })
    }

    /// Adds `f`'s metrics to `/metrics`.
    pub(crate) fn add_metrics(&self, f: crate::tier::MetricsFn) {
        *self.inner.extra.lock() = Some(f);
    }

    /// Runs `f` on every reload too; its error fails the reload.
    pub(crate) fn also_reload(&self, f: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        *self.inner.also.lock() = Some(Hook(Arc::new(f)));
    }

    pub(crate) fn manager(&self) -> &Manager {
        &self.inner.manager
    }

    /// Re-reads the scrape file and applies it; an invalid file is refused
    /// and the running configuration kept.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let also = self.inner.also.lock().clone();
        let also = also.map(|f| (f.0)()).unwrap_or(Ok(()));
        let scrape = self.reload_scrape();
        match (scrape, also) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }

    fn reload_scrape(&self) -> Result<(), String> {
        let Some(path) = &self.inner.path else {
            return if self.inner.also.lock().is_some() {
                Ok(())
            } else {
                Err("no scrape_config file is configured".into())
            };
        };
        let result = ScrapeFile::load(path).and_then(|f| {
            self.inner
                .manager
                .apply(&f)
                .map(|()| f.scrape_configs.len())
        });
        let mut st = self.inner.reload.lock();
        match result {
            Ok(jobs) => {
                st.ok = true;
                st.last_success_s = now_s();
                st.last_error.clear();
                tracing::info!(file = %path.display(), jobs, "scrape configuration reloaded");
                Ok(())
            }
            Err(e) => {
                st.ok = false;
                st.failures += 1;
                st.last_error = e.to_string();
                tracing::error!(error = %e, "reload refused; the running scrape configuration is kept");
                Err(e.to_string())
            }
        }
    }

    /// Reloads on every SIGHUP.
    pub(crate) fn reload_on_sighup(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot watch SIGHUP; reload with POST /-/reload");
                return;
            };
            while hup.recv().await.is_some() {
                let _ = me.reload();
            }
        });
    }

    /// The routes of scraping, to merge into the tier's router.
    /// Serves the targets through the gRPC API, and their metric
    /// metadata at `/api/v1/metadata`.
    pub(crate) fn serve_on(&self, api: &tiermon_api::Api) {
        use tiermon_proto::v1;
        let manager = self.inner.manager.clone();
        let m = manager.clone();
        api.serve_metadata(std::sync::Arc::new(move || {
            m.metadata()
                .into_iter()
                .map(|(name, list)| {
                    let list = list
                        .into_iter()
                        .map(|x| tiermon_api::MetricMetadata {
                            kind: x.kind.to_string(),
                            help: x.help,
                            unit: x.unit,
                        })
                        .collect();
                    (name, list)
                })
                .collect()
        }));
        let pb = tiermon_api::labels_pb;
        api.serve_targets(std::sync::Arc::new(move || {
            let (active, dropped) = manager.targets();
            let target = |t: tiermon_scrape::TargetView| {
                let s = t.status.unwrap_or_default();
                v1::Target {
                    discovered_labels: pb(&t.discovered),
                    labels: pb(&t.labels),
                    scrape_url: t.url,
                    scrape_pool: t.pool,
                    health: if t.labels.is_empty() {
                        String::new()
                    } else {
                        s.health.as_str().to_owned()
                    },
                    last_error: if t.error.is_empty() {
                        s.last_error
                    } else {
                        t.error
                    },
                    last_scrape_ms: s.last_scrape_ms,
                    last_scrape_duration_seconds: s.last_duration.as_secs_f64(),
                }
            };
            (
                active.into_iter().map(target).collect(),
                dropped.into_iter().map(target).collect(),
            )
        }));
    }

    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/api/v1/targets", get(targets_api))
            .route("/targets", get(targets_page))
            .route("/metrics", get(metrics))
            .route("/-/reload", axum::routing::post(reload).put(reload))
            .with_state(self.clone())
    }
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn reload(State(s): State<Scraping>) -> Response {
    match tokio::task::spawn_blocking(move || s.reload()).await {
        Ok(Ok(())) => (StatusCode::OK, "configuration reloaded\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn targets_api(State(s): State<Scraping>, RawQuery(q): RawQuery) -> Response {
    let mut state = None;
    let mut pool = None;
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match &*k {
            "state" => state = Some(v.into_owned()),
            "scrapePool" => pool = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(st) = &state
        && !matches!(st.as_str(), "active" | "dropped" | "any" | "")
    {
        let body = json!({
            "status": "error",
            "errorType": "bad_data",
            "error": format!("invalid state {st:?}: use active, dropped or any"),
        });
        return json_response(StatusCode::BAD_REQUEST, &body);
    }
    let data = s.manager().targets_json(state.as_deref(), pool.as_deref());
    json_response(StatusCode::OK, &json!({"status": "success", "data": data}))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn targets_page(State(s): State<Scraping>) -> Html<String> {
    let data = s.manager().targets_json(Some("active"), None);
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>tiermon targets</title>\
         <style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}\
         td,th{border-bottom:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}\
         .up{color:#1a7f37}.down{color:#b35900;font-weight:bold}.unknown{color:#666}\
         code{font-size:.85em}</style></head><body><h1>Targets</h1>",
    );
    for p in s.manager().pools() {
        let _ = write!(
            html,
            "<p><b>{}</b>: {} scraped here ({} up, {} down), {} dropped, {} on other shards{}</p>",
            esc(&p.job),
            p.active,
            p.up,
            p.down,
            p.dropped,
            p.other_shards,
            p.error
                .map(|e| format!(" — <span class=down>{}</span>", esc(&e)))
                .unwrap_or_default()
        );
    }
    html.push_str(
        "<table><tr><th>Job</th><th>Endpoint</th><th>State</th><th>Labels</th>\
         <th>Last scrape</th><th>Duration</th><th>Error</th></tr>",
    );
    for t in data["activeTargets"].as_array().into_iter().flatten() {
        let health = t["health"].as_str().unwrap_or("unknown");
        let labels: Vec<String> = t["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td><a href=\"{url}\">{url}</a></td>\
             <td class={health}>{}</td><td><code>{}</code></td><td>{}</td><td>{:.3} s</td><td>{}</td></tr>",
            esc(t["scrapePool"].as_str().unwrap_or("")),
            health.to_uppercase(),
            esc(&labels.join(", ")),
            esc(t["lastScrape"].as_str().unwrap_or("")),
            t["lastScrapeDuration"].as_f64().unwrap_or(0.0),
            esc(t["lastError"].as_str().unwrap_or("")),
            url = esc(t["scrapeUrl"].as_str().unwrap_or("")),
        );
    }
    html.push_str("</table></body></html>");
    Html(html)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn metrics(State(s): State<Scraping>) -> Response {
    let mut out = String::new();
    {
        let st = s.inner.reload.lock();
        out.push_str("# HELP tiermon_config_last_reload_successful Whether the last reload of the scrape configuration succeeded.\n# TYPE tiermon_config_last_reload_successful gauge\n");
        let _ = writeln!(
            out,
            "tiermon_config_last_reload_successful {}",
            u8::from(st.ok)
        );
        out.push_str("# HELP tiermon_config_last_reload_success_timestamp_seconds When the scrape configuration was last applied.\n# TYPE tiermon_config_last_reload_success_timestamp_seconds gauge\n");
        let _ = writeln!(
            out,
            "tiermon_config_last_reload_success_timestamp_seconds {}",
            st.last_success_s
        );
        out.push_str("# HELP tiermon_config_reload_failures_total Reloads refused because the new configuration was invalid.\n# TYPE tiermon_config_reload_failures_total counter\n");
        let _ = writeln!(out, "tiermon_config_reload_failures_total {}", st.failures);
    }
    out.push_str("# HELP tiermon_scrape_targets Targets of each job by state.\n# TYPE tiermon_scrape_targets gauge\n");
    for p in s.manager().pools() {
        let job = p.job.replace('\\', "\\\\").replace('"', "\\\"");
        for (state, n) in [
            ("up", p.up),
            ("down", p.down),
            ("unknown", p.active - p.up - p.down),
            ("dropped", p.dropped),
            ("other_shard", p.other_shards),
        ] {
            let _ = writeln!(
                out,
                "tiermon_scrape_targets{{job=\"{job}\",state=\"{state}\"}} {n}"
            );
        }
    }
    let extra = s.inner.extra.lock().clone();
    if let Some(f) = extra {
        tiermon_federation::render(&f.get(), &mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
