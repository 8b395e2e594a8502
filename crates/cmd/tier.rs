//! What every storing tier (secondary, primary, global) shares at the
//! binary edge: opening storage, the query API, housekeeping, the push
//! path's forwarders, and the tier's own series.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use tiermon_config::{PushConfig, QueryConfig, StorageConfig};
use tiermon_federation::{Forwarder, ForwarderOptions, Identity, Metric, Source};
use tiermon_tsdb::{BlobOptions, Db, Options};

/// The flags of every storing tier.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Configuration file (TOML or YAML); environment variables
    /// TIERMON_<SECTION>__<KEY> override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the HTTP API and gRPC (queries and intake), overriding
    /// the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data folder, overriding the file.
    #[arg(long)]
    data: Option<PathBuf>,
}

impl Args {
    /// The tier's section of the configuration (`section`), with the flags
    /// applied to its listen address and data folder (`fields`), and a
    /// listener on that address.
    pub(crate) async fn load<C>(
        self,
        section: impl FnOnce(tiermon_config::Config) -> C,
        fields: impl FnOnce(&mut C) -> (&mut SocketAddr, &mut PathBuf),
    ) -> anyhow::Result<(C, tokio::net::TcpListener)> {
        let mut cfg = section(tiermon_config::load(
            self.config.as_deref(),
            std::env::vars(),
        )?);
        let (listen, data) = fields(&mut cfg);
        if let Some(l) = self.listen {
            *listen = l;
        }
        if let Some(d) = self.data {
            *data = d;
        }
        let listener = tokio::net::TcpListener::bind(*listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        Ok((cfg, listener))
    }
}

/// The storage engine's options from a `storage` section at `key`.
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
        block: s.block,
        ooo_window: s.out_of_order_window,
        series_idle: s.series_idle,
        retention_raw: s.retention_raw,
        retention_1m: s.retention_1m,
        retention_1h: s.retention_1h,
        max_bytes: (s.max_bytes > 0).then_some(s.max_bytes),
        wal_fsync: s.wal_fsync,
        max_series: s.max_series,
        blob,
        block_cache_bytes: s.block_cache_bytes,
        ..Options::default()
    })
}

/// Opens the tier's storage in `data`.
pub(crate) async fn open_db(data: &Path, storage: &StorageConfig, key: &str) -> anyhow::Result<Db> {
    let opts = storage_options(storage, key)?;
    let dir = data.to_owned();
    tokio::task::spawn_blocking(move || Db::open(&dir, opts))
        .await?
        .with_context(|| format!("opening storage in {}", data.display()))
}

/// The Prometheus HTTP API and gRPC query service over `db` (with
/// `primaries` for drill-down queries at the global tier).
pub(crate) fn api(
    db: &Db,
    query: &QueryConfig,
    primaries: tiermon_api::Primaries,
) -> tiermon_api::Api {
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
    tiermon_api::Api::new(
        db.clone(),
        engine,
        limits,
        env!("CARGO_PKG_VERSION"),
        primaries,
    )
}

/// Compaction, downsampling, tiering and retention, and checkpoints, at
/// the configured intervals, until aborted.
pub(crate) fn housekeeping(db: &Db, storage: &StorageConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(housekeep(
        db.clone(),
        storage.maintain_every,
        storage.checkpoint_every,
    ))
}

async fn housekeep(db: Db, maintain_every: Duration, checkpoint_every: Duration) {
    let start = tokio::time::Instant::now();
    let mut maintain = tokio::time::interval_at(start + maintain_every, maintain_every);
    let mut checkpoint = tokio::time::interval_at(start + checkpoint_every, checkpoint_every);
    loop {
        let db = db.clone();
        let job: Box<dyn FnOnce() -> Result<(), tiermon_tsdb::Error> + Send> = tokio::select! {
            _ = maintain.tick() => Box::new(move || {
                db.maintain(now_ms()).map(|r| {
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

pub(crate) use tiermon_model::now_ms;

/// The forwarders of one tier, one per destination.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pushing {
    forwarders: Arc<Mutex<Vec<Forwarder>>>,
}

impl Pushing {
    /// Starts a forwarder to each of `push.destinations`, each with the
    /// source `make(destination)` gives, sending the alert states of
    /// `alerts` along.
    pub(crate) fn start<S: Source + std::fmt::Debug>(
        push: &PushConfig,
        key: &str,
        identity: &Identity,
        alerts: tiermon_federation::AlertFeed,
        mut make: impl FnMut(&str) -> anyhow::Result<Arc<S>>,
    ) -> anyhow::Result<Self> {
        let mut forwarders = Vec::new();
        for (i, url) in push.destinations.iter().enumerate() {
            let source = make(url)?;
            let opts = ForwarderOptions {
                max_in_flight: push.max_in_flight,
                batch_samples: push.batch_samples,
                backoff: (Duration::from_millis(200), push.max_backoff),
                alerts: Some(alerts.clone()),
                ..ForwarderOptions::new(url.clone(), identity.clone())
            };
            let f = Forwarder::spawn(opts, source)
                .with_context(|| format!("config key `{key}.destinations[{i}]`"))?;
            tracing::info!(destination = %url, sender = %identity.display(), "pushing to the next tier");
            forwarders.push(f);
        }
        Ok(Self {
            forwarders: Arc::new(Mutex::new(forwarders)),
        })
    }

    /// The forwarders' metrics.
    pub(crate) fn metrics(&self) -> Vec<Metric> {
        let fs = self.forwarders.lock();
        if fs.is_empty() {
            return Vec::new();
        }
        Forwarder::metrics(&fs.iter().collect::<Vec<_>>())
    }

    /// Stops every forwarder, giving batches in flight `grace` for their
    /// acknowledgements.
    pub(crate) async fn stop(&self, grace: Duration) {
        let fs = std::mem::take(&mut *self.forwarders.lock());
        for f in fs {
            f.stop(grace).await;
        }
    }
}

/// The storage's gauges as metrics (`tiermon_storage_*`), as Prometheus
/// exposes `prometheus_tsdb_*`: series, samples, and where memory outside
/// the head goes.
pub(crate) fn storage_metrics(db: &Db) -> Vec<Metric> {
    let g = db.gauges();
    let m = |name, help, kind, v: f64| Metric {
        name,
        help,
        kind,
        series: vec![(Vec::new(), v)],
    };
    vec![
        m(
            "tiermon_storage_head_series",
            "Series in the head (in memory).",
            "gauge",
            g.head_series as f64,
        ),
        m(
            "tiermon_storage_samples_appended_total",
            "Samples appended since the start.",
            "counter",
            g.samples_appended as f64,
        ),
        m(
            "tiermon_storage_compactions_total",
            "Compaction runs since the start (blocks of open partitions, closed partitions).",
            "counter",
            g.compactions as f64,
        ),
        m(
            "tiermon_storage_maintenance_runs_total",
            "Storage maintenance runs completed since the start (storage.maintain_every).",
            "counter",
            g.maintenance_runs as f64,
        ),
        m(
            "tiermon_storage_pending_chunks",
            "Sealed chunks in the head waiting to be written to RocksDB.",
            "gauge",
            g.pending_chunks as f64,
        ),
        m(
            "tiermon_storage_pending_bytes",
            "Heap bytes of the sealed chunks waiting to be written to RocksDB.",
            "gauge",
            g.pending_bytes as f64,
        ),
        m(
            "tiermon_storage_memtable_bytes",
            "Bytes of RocksDB's memtables.",
            "gauge",
            g.memtable_bytes as f64,
        ),
        m(
            "tiermon_storage_block_cache_bytes",
            "Bytes in RocksDB's block cache (bounded by storage.block_cache_bytes).",
            "gauge",
            g.block_cache_bytes as f64,
        ),
        m(
            "tiermon_storage_table_readers_bytes",
            "Bytes of RocksDB's open table readers (indexes and filters).",
            "gauge",
            g.table_readers_bytes as f64,
        ),
        m(
            "tiermon_storage_sst_bytes",
            "Bytes of RocksDB's live table files.",
            "gauge",
            g.sst_bytes as f64,
        ),
        m(
            "tiermon_storage_wal_bytes",
            "Bytes of the write-ahead log.",
            "gauge",
            g.wal_bytes as f64,
        ),
    ]
}

/// Where a tier's own metrics come from.
#[derive(Clone)]
pub(crate) struct MetricsFn(Arc<dyn Fn() -> Vec<Metric> + Send + Sync>);

impl MetricsFn {
    pub(crate) fn new(f: impl Fn() -> Vec<Metric> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn get(&self) -> Vec<Metric> {
        (self.0)()
    }
}

impl std::fmt::Debug for MetricsFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsFn")
    }
}

/// Writes the tier's own metrics into its storage every `every`, labelled
/// `job="tiermon"` and `instance`, so that rules and the tiers above see
/// the hierarchy's health as ordinary series.
pub(crate) fn record_own(
    db: &Db,
    instance: String,
    every: Duration,
    metrics: MetricsFn,
) -> tokio::task::JoinHandle<()> {
    let db = db.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut ms = metrics.get();
            for m in &mut ms {
                for (labels, _) in &mut m.series {
                    labels.retain(|(n, _)| *n != "job" && *n != "instance");
                    labels.push(("job", "tiermon".into()));
                    labels.push(("instance", instance.clone()));
                }
            }
            let db = db.clone();
            let r =
                tokio::task::spawn_blocking(move || tiermon_federation::record(&db, &ms, now_ms()))
                    .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "cannot record the tier's own metrics");
            }
        }
    })
}

/// `/metrics` with `metrics()` in Prometheus text.
pub(crate) fn metrics_route(metrics: MetricsFn) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                let mut out = String::new();
                tiermon_federation::render(&metrics.get(), &mut out);
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    out,
                )
                    .into_response()
            }
        }),
    )
}
