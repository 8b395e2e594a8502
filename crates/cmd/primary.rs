//! `tiermon primary`: one per datacenter. Takes the secondaries' pushes
//! (de-duplicating HA pairs), stores the datacenter's data at full
//! resolution, answers the Prometheus HTTP API and gRPC queries over it,
//! and pushes one-minute aggregates with the `datacenter` label to the
//! global tier (`primary.push`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tiermon_config::PrimaryConfig;
use tiermon_federation::{DownsampleSource, Identity, Receiver, ReceiverOptions};
use tiermon_tsdb::Resolution;

use crate::tier;

pub(crate) async fn run(args: tier::Args) -> anyhow::Result<()> {
    let (cfg, listener) = args
        .load(|c| c.primary, |c| (&mut c.listen, &mut c.data))
        .await?;
    serve(cfg, listener, crate::shutdown_signal()).await
}

/// Runs a primary on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    cfg: PrimaryConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dc = cfg.datacenter.clone();
    let id = format!("primary/{dc}");
    let db = tier::open_db(&cfg.data, &cfg.storage, "primary.storage").await?;
    let api = tier::api(&db, &cfg.query, tiermon_api::Primaries::default());
    let receiver = Receiver::new(
        db.clone(),
        ReceiverOptions {
            child_timeout: cfg.child_timeout,
            ..ReceiverOptions::new(id.clone(), cfg.data.join("receiver"))
        },
    )
    .context("starting the push intake")?;
    let identity = Identity {
        id: id.clone(),
        tier: "primary".into(),
        datacenter: dc.clone(),
        replica: String::new(),
    };
    let alerting = crate::alerting::Alerting::start(crate::alerting::Setup {
        db: &db,
        query: &cfg.query,
        rules: &cfg.rules,
        alertmanager: &cfg.alertmanager,
        data: &cfg.data,
        key: "primary",
        listen: listener.local_addr()?,
        external_labels: vec![("datacenter".into(), dc.clone())],
        windows: false,
    })?;
    let children = Arc::new(receiver.clone());
    // Its own alerts and its secondaries' go to the global tier.
    let feed = alerting.feed(id.clone(), Some(receiver.clone()));
    let pushing = tier::Pushing::start(&cfg.push, "primary.push", &identity, feed, |_| {
        Ok(DownsampleSource::new(
            db.clone(),
            Resolution::OneMinute,
            cfg.window_grace,
            vec![("datacenter".to_owned(), dc.clone())],
            children.clone(),
        ))
    })?;
    alerting.reload_on_sighup();
    alerting.serve_on(&api, id.clone(), Some(receiver.clone()));
    let own = {
        let (p, r, a, d) = (
            pushing.clone(),
            receiver.clone(),
            alerting.clone(),
            db.clone(),
        );
        tier::MetricsFn::new(move || {
            let mut m = tier::storage_metrics(&d);
            m.extend(r.metrics());
            m.extend(p.metrics());
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
            tier: "primary".into(),
            datacenter: dc.clone(),
            instance: id.clone(),
            dashboards: cfg.dashboards.clone(),
        }));
    let addr = listener.local_addr()?;
    tracing::info!(tier = "primary", datacenter = %dc, listen = %addr, url = %format!("http://{addr}/"), "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")?;
    recorder.abort();
    alerting.stop();
    pushing.stop(Duration::from_secs(2)).await;
    background.abort();
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await?
        .context("writing the final checkpoint")?;
    Ok(())
}
