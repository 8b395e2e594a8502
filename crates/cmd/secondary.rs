//! `tiermon secondary`: scrapes its share of the datacenter's targets (the
//! Prometheus `scrape_configs` file named by `secondary.scrape_config`),
//! takes remote_write pushes, stores both, and answers the Prometheus HTTP
//! API and the gRPC query service over what it holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tiermon_config::{SecondaryConfig, StorageConfig};
use tiermon_tsdb::{BlobOptions, Db, Options};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Configuration file (TOML or YAML); environment variables
    /// TIERMON_SECONDARY__<KEY> override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the HTTP API, remote_write intake and gRPC, overriding
    /// the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data folder, overriding the file.
    #[arg(long)]
    data: Option<PathBuf>,
}

/// The storage engine's options from the `storage` section.
pub(crate) fn storage_options(s: &StorageConfig, key: &str) -> anyhow::Result<Options> {
    let blob = if s.blob.location.is_empty() {
        None
    } else {
        let store = tiermon_tsdb::open_store(&s.blob.location, s.blob.options.clone())
            .with_context(|| format!("config key `{key}.blob.location`"))?;
        Some(BlobOptions {
            after: s.blob.after,
            cache_bytes: s.blob.cache_bytes,
            upload_attempts: s.blob.upload_attempts,
            ..BlobOptions::new(store)
        })
    };
    Ok(Options {
        partition: s.partition,
        ooo_window: s.out_of_order_window,
        retention_raw: s.retention_raw,
        retention_1m: s.retention_1m,
        retention_1h: s.retention_1h,
        max_bytes: (s.max_bytes > 0).then_some(s.max_bytes),
        wal_fsync: s.wal_fsync,
        max_series: s.max_series,
        blob,
        ..Options::default()
    })
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = tiermon_config::load(args.config.as_deref(), std::env::vars())?.secondary;
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

/// Runs a secondary on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    cfg: SecondaryConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let SecondaryConfig {
        listen: _,
        data,
        storage,
        query,
        scrape_config,
        shard,
    } = cfg;
    let member = if shard.member.is_empty() {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    } else {
        shard.member.clone()
    };
    let shard = tiermon_scrape::Shard::new(&shard.name, &shard.shards, &member)
        .map_err(|e| anyhow::anyhow!("config key `secondary.shard`: {e}"))?;
    let opts = storage_options(&storage, "secondary.storage")?;
    let dir = data.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&dir, opts))
        .await?
        .with_context(|| format!("opening storage in {}", data.display()))?;
    let engine = tiermon_promql::Engine::new(tiermon_promql::Options {
        max_samples: query.max_samples,
        max_series: query.max_series,
        ..tiermon_promql::Options::default()
    });
    let limits = tiermon_api::Limits {
        max_concurrent_queries: query.max_concurrent,
        query_timeout: query.timeout,
        ..tiermon_api::Limits::default()
    };
    let api = tiermon_api::Api::new(db.clone(), engine, limits, env!("CARGO_PKG_VERSION"));
    let scraping = crate::scraping::Scraping::start(
        tiermon_scrape::Manager::start(db.clone(), shard),
        scrape_config,
    )
    .context("config key `secondary.scrape_config`")?;
    scraping.reload_on_sighup();
    let addr = listener.local_addr()?;
    let background = tokio::spawn(housekeeping(
        db.clone(),
        storage.maintain_every,
        storage.checkpoint_every,
    ));
    tracing::info!(tier = "secondary", listen = %addr, url = %format!("http://{addr}/"), "listening");
    axum::serve(listener, api.router().merge(scraping.router()))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")?;
    // Scrapes in flight finish and are stored before the last checkpoint.
    scraping.manager().shutdown().await;
    background.abort();
    // A clean stop leaves a checkpoint, so the next start replays nothing.
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await?
        .context("writing the final checkpoint")?;
    Ok(())
}

async fn housekeeping(db: Db, maintain_every: Duration, checkpoint_every: Duration) {
    let start = tokio::time::Instant::now();
    let mut maintain = tokio::time::interval_at(start + maintain_every, maintain_every);
    let mut checkpoint = tokio::time::interval_at(start + checkpoint_every, checkpoint_every);
    loop {
        let db = db.clone();
        let job: Box<dyn FnOnce() -> Result<(), tiermon_tsdb::Error> + Send> = tokio::select! {
            _ = maintain.tick() => Box::new(move || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                db.maintain(now).map(|r| {
                    for (res, p, e) in &r.tier_failed {
                        tracing::warn!(resolution = ?res, partition = p, error = %e, "blob upload failed; retrying at the next run");
                    }
                    tracing::debug!(?r, "maintenance done");
                })
            }),
            _ = checkpoint.tick() => Box::new(move || db.checkpoint()),
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "storage housekeeping failed; retrying at the next tick")
            }
            Err(e) => tracing::error!(error = %e, "storage housekeeping panicked"),
        }
    }
}
