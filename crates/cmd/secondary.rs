//! `tiermon secondary`: scrapes its share of the datacenter's targets (the
//! Prometheus `scrape_configs` file named by `secondary.scrape_config`),
//! takes remote_write pushes, stores both, and answers the Prometheus HTTP
//! API and the gRPC query service over what it holds; pushes everything it
//! stores to the datacenter's primaries (`secondary.push`).

use std::time::Duration;

use anyhow::Context;
use tiermon_config::SecondaryConfig;
use tiermon_federation::{Identity, WalSource, WalSourceOptions};

use crate::tier;

pub(crate) async fn run(args: tier::Args) -> anyhow::Result<()> {
    let (cfg, listener) = args
        .load(|c| c.secondary, |c| (&mut c.listen, &mut c.data))
        .await?;
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
        datacenter,
        push,
        rules,
        alertmanager,
        dashboards,
    } = cfg;
    let member = if shard.member.is_empty() {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    } else {
        shard.member.clone()
    };
    // Both members of an HA pair send as one child (the shard) and tell
    // themselves apart by replica; without a shard, each is its own child.
    let identity = Identity {
        id: format!(
            "secondary/{datacenter}/{}",
            if shard.name.is_empty() {
                &member
            } else {
                &shard.name
            }
        ),
        tier: "secondary".into(),
        datacenter: datacenter.clone(),
        replica: if !push.replica.is_empty() {
            push.replica.clone()
        } else if shard.name.is_empty() {
            String::new()
        } else {
            member.clone()
        },
    };
    let instance = format!("secondary/{datacenter}/{member}");
    let shard = tiermon_scrape::Shard::new(&shard.name, &shard.shards, &member)
        .map_err(|e| anyhow::anyhow!("config key `secondary.shard`: {e}"))?;
    let db = tier::open_db(&data, &storage, "secondary.storage").await?;
    let api = tier::api(&db, &query, tiermon_api::Primaries::default());
    let scraping = crate::scraping::Scraping::start(
        tiermon_scrape::Manager::start(db.clone(), shard),
        scrape_config,
    )
    .context("config key `secondary.scrape_config`")?;
    scraping.reload_on_sighup();
    let alerting = crate::alerting::Alerting::start(crate::alerting::Setup {
        db: &db,
        query: &query,
        rules: &rules,
        alertmanager: &alertmanager,
        data: &data,
        key: "secondary",
        listen: listener.local_addr()?,
        external_labels: vec![("datacenter".into(), datacenter.clone())],
        windows: false,
    })?;
    // Everything committed (scrapes, remote_write, the tier's own series)
    // goes to every primary, read back from the WAL.
    let state_dir = data.join("push");
    let feed = alerting.feed(instance.clone(), None);
    let pushing = tier::Pushing::start(&push, "secondary.push", &identity, feed, |url| {
        WalSource::new(
            db.clone(),
            WalSourceOptions {
                name: url.to_owned(),
                state_dir: state_dir.clone(),
                max_age: push.max_age,
                max_bytes: if push.max_bytes == 0 {
                    u64::MAX
                } else {
                    push.max_bytes
                },
                external_labels: push
                    .external_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
        )
        .context("starting the push buffer")
    })?;
    {
        let a = alerting.clone();
        scraping.also_reload(move || a.reload());
    }
    alerting.serve_on(&api, instance.clone(), None);
    scraping.serve_on(&api);
    let own = {
        let (p, a, d) = (pushing.clone(), alerting.clone(), db.clone());
        tier::MetricsFn::new(move || {
            let mut m = tier::storage_metrics(&d);
            m.extend(p.metrics());
            m.extend(a.metrics());
            m
        })
    };
    scraping.add_metrics(own.clone());
    let recorder = tier::record_own(&db, instance.clone(), Duration::from_secs(10), own);
    let addr = listener.local_addr()?;
    let background = tier::housekeeping(&db, &storage);
    tracing::info!(tier = "secondary", listen = %addr, url = %format!("http://{addr}/"), "listening");
    axum::serve(
        listener,
        api.router()
            .merge(scraping.router())
            .merge(alerting.router())
            .merge(tiermon_dashboard::router(tiermon_dashboard::Options {
                tier: "secondary".into(),
                datacenter: datacenter.clone(),
                instance,
                dashboards,
            })),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving")?;
    // Scrapes in flight finish and are stored before the last checkpoint.
    scraping.manager().shutdown().await;
    recorder.abort();
    alerting.stop();
    pushing.stop(Duration::from_secs(2)).await;
    background.abort();
    // A clean stop leaves a checkpoint, so the next start replays nothing.
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await?
        .context("writing the final checkpoint")?;
    Ok(())
}
