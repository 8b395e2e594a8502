//! A storing tier's rules and alert manager, wired: rules read the tier's
//! storage and write recorded series and `ALERTS` back to it; their alerts
//! go to the tier's own alert manager (when `<tier>.alertmanager.
//! config_file` is set) and to every `<tier>.rules.alertmanagers` URL
//! through the Alertmanager v2 API (an existing Prometheus Alertmanager).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tiermon_config::{AlertmanagerConfig, QueryConfig, RulesConfig};
use tiermon_model::Labels;
use tiermon_rules::{Alert, Appendable, Notifier};
use tiermon_tsdb::Db;

/// Rule output into the tier's storage, one commit per evaluation.
struct DbOut(Db);

impl Appendable for DbOut {
    fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<(), String> {
        let mut app = self.0.appender();
        for (l, t, v) in samples {
            app.append(l, *t, *v).map_err(|e| e.to_string())?;
        }
        app.commit().map(drop).map_err(|e| e.to_string())
    }
}

/// Alerts into the in-process alert manager.
struct Local(tiermon_alertmanager::AlertManager);

impl Notifier for Local {
    fn send(&self, alerts: Vec<Alert>) {
        let alerts = alerts.into_iter().map(postable).collect();
        if let Err(e) = self.0.receive(alerts) {
            tracing::warn!(error = %e, "the alert manager refused alerts");
        }
    }
}

fn postable(a: Alert) -> tiermon_alertmanager::PostableAlert {
    tiermon_alertmanager::PostableAlert {
        labels: a.labels,
        annotations: a.annotations,
        starts_at: Some(a.starts_at),
        ends_at: Some(a.ends_at),
        generator_url: Some(a.generator_url),
    }
}

/// Alerts to an Alertmanager's v2 API: a bounded queue (the oldest batch
/// goes when it is full, as Prometheus' notifier drops), one sender task,
/// a few attempts per batch.
struct Remote {
    queue: tokio::sync::mpsc::Sender<Vec<Alert>>,
}

impl Remote {
    fn start(base: &str) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Alert>>(1000);
        let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while let Some(batch) = rx.recv().await {
                let body = match serde_json::to_vec(&batch) {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                for attempt in 0..3u32 {
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .timeout(Duration::from_secs(10))
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if r.status().is_client_error() => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            tracing::warn!(alertmanager = %url, %status, error = %text.trim(), "alerts refused");
                            break;
                        }
                        Ok(r) => {
                            tracing::warn!(alertmanager = %url, status = %r.status(), attempt, "sending alerts failed")
                        }
                        Err(e) => {
                            tracing::warn!(alertmanager = %url, error = %e, attempt, "sending alerts failed")
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        });
        Self { queue: tx }
    }
}

impl Notifier for Remote {
    fn send(&self, alerts: Vec<Alert>) {
        if self.queue.try_send(alerts).is_err() {
            tracing::warn!("alert queue to an Alertmanager is full; a batch is dropped");
        }
    }
}

/// The tier's rules and alert manager.
#[derive(Clone)]
pub(crate) struct Alerting {
    rules: tiermon_rules::http::Rules,
    am: Option<(tiermon_alertmanager::AlertManager, std::path::PathBuf)>,
}

/// What a tier passes to [`Alerting::start`].
pub(crate) struct Setup<'a> {
    pub(crate) db: &'a Db,
    pub(crate) query: &'a QueryConfig,
    pub(crate) rules: &'a RulesConfig,
    pub(crate) alertmanager: &'a AlertmanagerConfig,
    pub(crate) data: &'a Path,
    /// The configuration section, for errors (`secondary`).
    pub(crate) key: &'a str,
    pub(crate) listen: SocketAddr,
    /// Labels that name the tier on its alerts (`datacenter`, `tier`).
    pub(crate) external_labels: Vec<(String, String)>,
    /// Whether the rules read received minute windows (the global tier;
    /// see `tiermon_api::DbQueryable::windowed`).
    pub(crate) windows: bool,
}

impl Alerting {
    /// Loads the rules and the alert manager's file and starts both; a
    /// broken file stops the start-up, naming what is wrong.
    pub(crate) fn start(s: Setup<'_>) -> anyhow::Result<Self> {
        let external_url = if s.rules.external_url.is_empty() {
            let ip = if s.listen.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                s.listen.ip()
            };
            format!("http://{}", SocketAddr::new(ip, s.listen.port()))
        } else {
            s.rules.external_url.clone()
        };
        let mut notifiers: Vec<Arc<dyn Notifier>> = Vec::new();
        let am = match &s.alertmanager.config_file {
            Some(path) => {
                let cfg = tiermon_alertmanager::Config::load(path)
                    .with_context(|| format!("config key `{}.alertmanager.config_file`", s.key))?;
                let am = tiermon_alertmanager::AlertManager::start(
                    cfg,
                    &s.data.join("alertmanager"),
                    tiermon_alertmanager::Options {
                        external_url: external_url.clone(),
                        position: s.alertmanager.position,
                        peer_timeout: s.alertmanager.peer_timeout,
                        retention: s.alertmanager.retention,
                    },
                    s.alertmanager.peers.clone(),
                )
                .with_context(|| {
                    format!("starting the alert manager (`{}.alertmanager`)", s.key)
                })?;
                notifiers.push(Arc::new(Local(am.clone())));
                Some((am, path.clone()))
            }
            None => None,
        };
        for url in &s.rules.alertmanagers {
            notifiers.push(Arc::new(Remote::start(url)));
        }
        let engine = tiermon_promql::Engine::new(tiermon_promql::Options {
            max_samples: s.query.max_samples,
            max_series: s.query.max_series,
            ..tiermon_promql::Options::default()
        });
        let manager = tiermon_rules::Manager::new(
            tiermon_rules::Context {
                engine,
                store: Arc::new(if s.windows {
                    tiermon_api::DbQueryable::windowed(s.db.clone())
                } else {
                    tiermon_api::DbQueryable::new(s.db.clone())
                }),
                out: Arc::new(DbOut(s.db.clone())),
                notifiers,
            },
            tiermon_rules::Options {
                default_interval: s.rules.evaluation_interval,
                external_labels: s.external_labels.into_iter().collect(),
                external_url,
                state_dir: Some(s.data.join("rules").join("state")),
                resend_delay: s.rules.resend_delay,
                ..tiermon_rules::Options::default()
            },
        );
        let rules = tiermon_rules::http::Rules::new(
            manager,
            s.rules.files.clone(),
            &s.data.join("rules").join("db"),
        )
        .with_context(|| format!("opening the rules database of `{}`", s.key))?;
        let groups = rules
            .reload()
            .with_context(|| format!("config key `{}.rules.files`", s.key))?;
        if groups > 0 {
            tracing::info!(groups, "evaluating rules");
        }
        Ok(Self { rules, am })
    }

    /// Re-reads the rule files and the alert manager's file; a broken one
    /// is refused and what runs is kept.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        match self.rules.reload() {
            Ok(groups) => tracing::info!(groups, "rules reloaded"),
            Err(e) => errors.push(format!("rules: {e}")),
        }
        if let Some((am, path)) = &self.am {
            match tiermon_alertmanager::Config::load(path) {
                Ok(cfg) => match am.reload(cfg) {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), "alert manager configuration reloaded")
                    }
                    Err(e) => errors.push(format!("alert manager: {e}")),
                },
                Err(e) => errors.push(format!("alert manager: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let e = errors.join("; ");
            tracing::error!(error = %e, "reload refused; the running configuration is kept");
            Err(e)
        }
    }

    /// The rules' pending and firing alerts, as they travel; `source`
    /// names where they were evaluated (`secondary/dc1/a`).
    fn own_alerts(&self, source: &str) -> Vec<tiermon_proto::v1::Alert> {
        use tiermon_proto::v1;
        let pb = |m: &std::collections::BTreeMap<String, String>| -> Vec<v1::Label> {
            m.iter()
                .map(|(name, value)| v1::Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        };
        self.rules
            .manager()
            .alerts()
            .into_iter()
            .filter_map(|a| {
                let state = match a.state {
                    tiermon_rules::AlertState::Pending => v1::alert::State::Pending,
                    tiermon_rules::AlertState::Firing => v1::alert::State::Firing,
                    tiermon_rules::AlertState::Inactive => return None,
                };
                Some(v1::Alert {
                    labels: pb(&a.labels),
                    annotations: pb(&a.annotations),
                    state: state as i32,
                    active_at_ms: a.active_at,
                    value: a.value,
                    source: source.to_owned(),
                })
            })
            .collect()
    }

    /// The tier's alerts and, after them, those its children pushed to it
    /// (`relayed`): what the tier shows and what it sends upward.
    pub(crate) fn feed(
        &self,
        source: String,
        relayed: Option<tiermon_federation::Receiver>,
    ) -> tiermon_federation::AlertFeed {
        let this = self.clone();
        tiermon_federation::AlertFeed::new(move || {
            let mut all = this.own_alerts(&source);
            if let Some(r) = &relayed {
                all.extend(r.alerts());
            }
            all
        })
    }

    /// Serves the rules' pending and firing alerts, and the children's
    /// (`relayed`), through the gRPC API and at `/api/v1/alerts`; `source`
    /// names where the tier's own were evaluated (`secondary/dc1/a`).
    pub(crate) fn serve_on(
        &self,
        api: &tiermon_api::Api,
        source: String,
        relayed: Option<tiermon_federation::Receiver>,
    ) {
        if let Some(r) = &relayed {
            let r = r.clone();
            self.rules.relay(Arc::new(move || {
                r.alerts().into_iter().filter_map(active).collect()
            }));
        }
        let feed = self.feed(source, relayed);
        api.serve_alerts(Arc::new(move || feed.get()));
    }

    pub(crate) fn router(&self) -> Router {
        let r = self.rules.router();
        match &self.am {
            Some((am, _)) => r.merge(am.router()),
            None => r,
        }
    }

    /// Metrics of the rules and the alert manager.
    pub(crate) fn metrics(&self) -> Vec<tiermon_federation::Metric> {
        use tiermon_federation::Metric;
        let m = |name, help, kind, series| Metric {
            name,
            help,
            kind,
            series,
        };
        let groups = self.rules.manager().groups();
        let rules = groups.iter().map(|g| g.rules.len()).sum::<usize>() as f64;
        let failing = groups
            .iter()
            .flat_map(|g| &g.rules)
            .filter(|r| !r.health.last_error.is_empty())
            .count() as f64;
        let mut states = std::collections::BTreeMap::from([("firing", 0.0), ("pending", 0.0)]);
        for a in self.rules.manager().alerts() {
            *states.entry(a.state.as_str()).or_default() += 1.0;
        }
        let mut out = vec![
            m(
                "tiermon_rules",
                "Rules loaded.",
                "gauge",
                vec![(vec![], rules)],
            ),
            m(
                "tiermon_rules_failing",
                "Rules whose last evaluation failed.",
                "gauge",
                vec![(vec![], failing)],
            ),
            m(
                "tiermon_rule_alerts",
                "Alerts of the rules, by state.",
                "gauge",
                states
                    .into_iter()
                    .map(|(k, v)| (vec![("state", k.to_owned())], v))
                    .collect(),
            ),
        ];
        if let Some((am, _)) = &self.am {
            let st = am.stats();
            let by = |c: &std::collections::BTreeMap<String, u64>| {
                c.iter()
                    .map(|(k, v)| (vec![("integration", k.clone())], *v as f64))
                    .collect()
            };
            out.push(m(
                "tiermon_notifications_total",
                "Notifications delivered, by integration.",
                "counter",
                by(&st.sent),
            ));
            out.push(m(
                "tiermon_notifications_failed_total",
                "Delivery attempts that failed, by integration.",
                "counter",
                by(&st.failed),
            ));
        }
        out
    }

    /// `POST /-/reload`, for tiers that have no other reload.
    pub(crate) fn reload_route(&self) -> Router {
        let me = self.clone();
        Router::new().route(
            "/-/reload",
            axum::routing::post(move || {
                let me = me.clone();
                async move {
                    use axum::http::StatusCode;
                    match tokio::task::spawn_blocking(move || me.reload()).await {
                        Ok(Ok(())) => (StatusCode::OK, "configuration reloaded\n".to_owned()),
                        Ok(Err(e)) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("failed to reload config: {e}\n"),
                        ),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                    }
                }
            }),
        )
    }

    /// Reloads on every SIGHUP.
    pub(crate) fn reload_on_sighup(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let me = me.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            }
        });
    }

    /// Stops evaluating (saving alert state) and delivering.
    pub(crate) fn stop(&self) {
        self.rules.manager().stop();
        if let Some((am, _)) = &self.am {
            am.stop();
        }
    }
}

/// A pushed alert as the rules API lists it; `None` for a state that is
/// neither pending nor firing (the receiver keeps no others).
fn active(a: tiermon_proto::v1::Alert) -> Option<tiermon_rules::ActiveAlert> {
    use tiermon_proto::v1::alert::State;
    let state = match State::try_from(a.state) {
        Ok(State::Pending) => tiermon_rules::AlertState::Pending,
        Ok(State::Firing) => tiermon_rules::AlertState::Firing,
        _ => return None,
    };
    let map = |l: Vec<tiermon_proto::v1::Label>| l.into_iter().map(|l| (l.name, l.value)).collect();
    Some(tiermon_rules::ActiveAlert {
        labels: map(a.labels),
        annotations: map(a.annotations),
        state,
        value: a.value,
        active_at: a.active_at_ms,
        fired_at: 0,
        resolved_at: 0,
        last_sent_at: 0,
        keep_firing_since: 0,
    })
}
