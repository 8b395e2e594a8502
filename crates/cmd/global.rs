//! `tiermon global`: one view of every datacenter. Takes the primaries'
//! one-minute aggregates, records when each datacenter (and, through it,
//! each secondary) last reported, and answers the Prometheus HTTP API and
//! gRPC queries over all of it.

use std::time::Duration;

use anyhow::Context;
use tiermon_config::GlobalConfig;
use tiermon_federation::{Receiver, ReceiverOptions};

use crate::tier;

pub(crate) async fn run(args: tier::Args) -> anyhow::Result<()> {
    let (cfg, listener) = args
        .load(|c| c.global, |c| (&mut c.listen, &mut c.data))
        .await?;
    serve(cfg, listener, crate::shutdown_signal()).await
}

/// Runs the global tier on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    cfg: GlobalConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let id = "global".to_owned();
    let db = tier::open_db(&cfg.data, &cfg.storage, "global.storage").await?;
    let primaries = tiermon_api::Primaries::new(&cfg.primaries, cfg.query.timeout)
        .map_err(|e| anyhow::anyhow!("config key `global.primaries`: {e}"))?;
    let api = tier::api(&db, &cfg.query, primaries);
    // The primaries send minute windows: the over-time functions read them.
    api.read_windows(true);
    let receiver = Receiver::new(
        db.clone(),
        ReceiverOptions {
            child_timeout: cfg.child_timeout,
            ..ReceiverOptions::new(id.clone(), cfg.data.join("receiver"))
        },
    )
    .context("starting the push intake")?;
    let alerting = crate::alerting::Alerting::start(crate::alerting::Setup {
        db: &db,
        query: &cfg.query,
        rules: &cfg.rules,
        alertmanager: &cfg.alertmanager,
        data: &cfg.data,
        key: "global",
        listen: listener.local_addr()?,
        external_labels: vec![("tier".into(), "global".into())],
        windows: true,
    })?;
    alerting.reload_on_sighup();
    // Every datacenter's alerts, as the primaries relay them.
    alerting.serve_on(&api, id.clone(), Some(receiver.clone()));
    let own = {
        let (r, a, d) = (receiver.clone(), alerting.clone(), db.clone());
        tier::MetricsFn::new(move || {
            let mut m = tier::storage_metrics(&d);
            m.extend(r.metrics());
            m.extend(a.metrics());
            m
        })
    };
    let recorder = tier::record_own(&db, id.clone(), Duration::from_secs(10), own.clone());
    let background = tier::housekeeping(&db, &cfg.storage);
    let push = receiver.service();
    let router = api
        .router_with(|r| r.add_service(push))
        .merge(tier::metrics_route(own))
        .merge(alerting.router())
        .merge(alerting.reload_route())
        .merge(tiermon_dashboard::router(tiermon_dashboard::Options {
            tier: "global".into(),
            datacenter: String::new(),
            instance: id.clone(),
            dashboards: cfg.dashboards.clone(),
        }));
    let addr = listener.local_addr()?;
    tracing::info!(tier = "global", listen = %addr, url = %format!("http://{addr}/"), "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")?;
    recorder.abort();
    alerting.stop();
    background.abort();
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await?
        .context("writing the final checkpoint")?;
    Ok(())
}
