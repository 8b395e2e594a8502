//! `tiermon secondary`: stores what it receives (remote_write today; the
//! scrape engine comes with the secondary issue) and answers the Prometheus
//! HTTP API over it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tiermon_tsdb::{Db, Options};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address of the HTTP API and remote_write intake.
    #[arg(long, default_value = "127.0.0.1:9191")]
    listen: SocketAddr,
    /// Data folder (WAL and RocksDB).
    #[arg(long, default_value = "tiermon-data/secondary")]
    data: PathBuf,
    /// How often closed partitions are compacted, downsampled, tiered and
    /// expired.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    maintain_every: Duration,
    /// How often the head is checkpointed (bounds WAL replay at restart).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    checkpoint_every: Duration,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let data = args.data.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&data, Options::default()))
        .await?
        .with_context(|| format!("opening storage in {}", args.data.display()))?;
    let api = tiermon_api::Api::new(
        db.clone(),
        tiermon_promql::Engine::default(),
        tiermon_api::Limits::default(),
        env!("CARGO_PKG_VERSION"),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let background = tokio::spawn(housekeeping(
        db.clone(),
        args.maintain_every,
        args.checkpoint_every,
    ));
    tracing::info!(tier = "secondary", listen = %addr, url = %format!("http://{addr}/"), "listening");
    axum::serve(listener, api.router())
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .context("serving")?;
    background.abort();
    // A clean stop leaves a checkpoint, so the next start replays nothing.
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await?
        .context("writing the final checkpoint")?;
    Ok(())
}

async fn housekeeping(db: Db, maintain_every: Duration, checkpoint_every: Duration) {
    let mut maintain =
        tokio::time::interval_at(tokio::time::Instant::now() + maintain_every, maintain_every);
    let mut checkpoint = tokio::time::interval_at(
        tokio::time::Instant::now() + checkpoint_every,
        checkpoint_every,
    );
    loop {
        let db = db.clone();
        let job: Box<dyn FnOnce() -> Result<(), tiermon_tsdb::Error> + Send> = tokio::select! {
            _ = maintain.tick() => Box::new(move || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                db.maintain(now).map(|r| tracing::debug!(?r, "maintenance done"))
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
