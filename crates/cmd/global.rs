//! `tiermon global`: one view of every datacenter. Takes the primaries'
//! one-minute aggregates, records when each datacenter (and, through it,
//! each secondary) last reported, and answers the Prometheus HTTP API and
//! gRPC queries over all of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tiermon_config::GlobalConfig;
use tiermon_federation::{Receiver, ReceiverOptions};

use crate::tier;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Configuration file (TOML or YAML); environment variables
    /// TIERMON_GLOBAL__<KEY> override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the HTTP API and gRPC (queries, push intake), overriding
    /// the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data folder, overriding the file.
    #[arg(long)]
    data: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = tiermon_config::load(args.config.as_deref(), std::env::vars())?.global;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.data {
        cfg.data = d;
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
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
    let receiver = Receiver::new(
        db.clone(),
        ReceiverOptions {
            child_timeout: cfg.child_timeout,
            ..ReceiverOptions::new(id.clone(), cfg.data.join("receiver"))
        },
    )
    .context("starting the push intake")?;
    let own = {
        let r = receiver.clone();
        tier::MetricsFn::new(move || r.metrics())
    };
    let recorder = tier::record_own(&db, id, Duration::from_secs(10), own.clone());
    let background = tier::housekeeping(&db, &cfg.storage);
    let push = receiver.service();
    let router = api
        .router_with(|r| r.add_service(push))
        .merge(tier::metrics_route(own));
    let addr = listener.local_addr()?;
    tracing::info!(tier = "global", listen = %addr, url = %format!("http://{addr}/"), "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")?;
    recorder.abort();
    background.abort();
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await?
        .context("writing the final checkpoint")?;
    Ok(())
}
