//! The dashboard every tier serves at `/`: one page (`assets/`, built into
//! the binary; nothing is fetched from the internet) with the fleet heat
//! map, host pages, the query explorer, alerts and silences, the
//! hierarchy and scrape targets, and dashboards defined as files.
//!
//! The page reads the tier's own APIs (the Prometheus HTTP API, the
//! Alertmanager v2 API, `/api/v1/targets`); this crate adds only what the
//! page needs besides them: `/api/tiermon/v1/ui` (which tier this is) and
//! `/api/tiermon/v1/dashboards[/{name}]` — the dashboards shipped in
//! `dashboards/` plus any `*.json`, `*.yaml` or `*.yml` in the configured
//! folder (same name: the folder's wins).

use std::path::PathBuf;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The dashboards shipped with tiermon.
const SHIPPED: &[(&str, &str)] = &[
    ("host", include_str!("../dashboards/host.yaml")),
    ("datacenter", include_str!("../dashboards/datacenter.yaml")),
];

/// What the page is told about the tier serving it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `secondary`, `primary` or `global`.
    pub tier: String,
    /// The datacenter (empty at the global tier).
    pub datacenter: String,
    /// The `instance` label of the series the tier records about itself
    /// (`global`, `primary/dc1`, `secondary/dc1/a`).
    pub instance: String,
    /// A folder of more dashboards.
    pub dashboards: Option<PathBuf>,
}

/// Why a dashboard file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON or YAML, or not a dashboard.
    #[error("dashboard {name}: {message}")]
    Invalid {
        /// The dashboard.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses a dashboard (JSON or YAML) and checks its shape: a `title` and
/// `panels`, each with a `title` and a `query` (and optionally a `unit`).
pub fn parse(name: &str, text: &str, yaml: bool) -> Result<Value, Error> {
    let bad = |m: String| Error::Invalid {
        name: name.to_owned(),
        message: m,
    };
    let v: Value = if yaml {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        raw.try_deserialize().map_err(|e| bad(e.to_string()))?
    } else {
        serde_json::from_str(text).map_err(|e| bad(e.to_string()))?
    };
    if !v["title"].is_string() {
        return Err(bad("needs a `title`".into()));
    }
    let Some(panels) = v["panels"].as_array() else {
        return Err(bad("needs `panels`, a list".into()));
    };
    for (i, p) in panels.iter().enumerate() {
        if !p["title"].is_string() || !p["query"].is_string() {
            return Err(bad(format!("panels[{i}] needs a `title` and a `query`")));
        }
        if !(p["unit"].is_null() || p["unit"].is_string()) {
            return Err(bad(format!("panels[{i}].unit must be a string")));
        }
    }
    Ok(v)
}

fn all(opts: &Options) -> Vec<(String, Result<Value, Error>)> {
    let mut out: Vec<(String, Result<Value, Error>)> = SHIPPED
        .iter()
        .map(|(n, t)| (n.to_string(), parse(n, t, true)))
        .collect();
    if let Some(dir) = &opts.dashboards {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            let Some(name) = f.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let yaml = matches!(ext, "yaml" | "yml");
            if !yaml && ext != "json" {
                continue;
            }
            let parsed = std::fs::read_to_string(&f)
                .map_err(|e| Error::Invalid {
                    name: name.clone(),
                    message: e.to_string(),
                })
                .and_then(|t| parse(&name, &t, yaml));
            out.retain(|(n, _)| *n != name);
            out.push((name, parsed));
        }
    }
    out
}

/// The dashboard's routes.
pub fn router(opts: Options) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { page("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/api/tiermon/v1/ui", get(ui))
        .route("/api/tiermon/v1/dashboards", get(list))
        .route("/api/tiermon/v1/dashboards/{name}", get(one))
        .with_state(opts)
}

fn page(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ui(State(o): State<Options>) -> Response {
    axum::Json(
        json!({"tier": o.tier, "datacenter": o.datacenter, "instance": o.instance, "version": env!("CARGO_PKG_VERSION")}),
    )
    .into_response()
}

async fn list(State(o): State<Options>) -> Response {
    let items: Vec<Value> = all(&o)
        .into_iter()
        .map(|(name, d)| match d {
            Ok(v) => json!({"name": name, "title": v["title"]}),
            Err(e) => json!({"name": name, "error": e.to_string()}),
        })
        .collect();
    axum::Json(json!({"status": "success", "data": items})).into_response()
}

async fn one(State(o): State<Options>, Path(name): Path<String>) -> Response {
    match all(&o).into_iter().find(|(n, _)| *n == name) {
        Some((_, Ok(v))) => axum::Json(json!({"status": "success", "data": v})).into_response(),
        Some((_, Err(e))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"status": "error", "error": e.to_string()})),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"status": "error", "error": format!("no dashboard {name:?}")})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_dashboards_parse_and_their_queries_name_the_host() {
        for (name, text) in SHIPPED {
            let v = parse(name, text, true).unwrap();
            let panels = v["panels"].as_array().unwrap();
            assert!(panels.len() >= 5, "{name}");
            if *name == "host" {
                assert!(
                    panels
                        .iter()
                        .all(|p| p["query"].as_str().unwrap().contains("$instance"))
                );
            }
        }
    }

    #[test]
    fn a_folder_adds_and_overrides_and_bad_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.json"),
            r#"{"title": "Web", "panels": [{"title": "5xx", "query": "sum(rate(x[1m]))", "unit": "req/s"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("host.yml"), "title: My host\npanels: []\n").unwrap();
        std::fs::write(
            dir.path().join("broken.yaml"),
            "title: X\npanels:\n  - title: no query\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let got = all(&Options {
            dashboards: Some(dir.path().to_owned()),
            ..Options::default()
        });
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["datacenter", "broken", "host", "web"]);
        assert_eq!(got[2].1.as_ref().unwrap()["title"], "My host");
        let e = got[1].1.as_ref().unwrap_err().to_string();
        assert!(e.contains("panels[0] needs a `title` and a `query`"), "{e}");
        assert!(parse("x", "{", false).is_err());
    }
}
