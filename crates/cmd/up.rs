//! `tiermon up`: a whole hierarchy on one machine, monitoring it.
//!
//! An agent; a pair of secondaries (one shard, replicas `a` and `b`) that
//! both scrape the agent and every tier; a primary for the datacenter
//! `local` that both push to (and that de-duplicates them); and the global
//! tier the primary pushes its one-minute aggregates to — all wired over
//! the real protocols. Data and blob storage (a folder) live under
//! `--data`; Ctrl-C stops everything cleanly. The primary evaluates a
//! default set of host rules (written to `<data>/rules/host.yml` on the
//! first start, then the user's to edit) and runs an alert manager
//! (`<data>/alertmanager.yml`, with no receiver that delivers: alerts show
//! in its API until a webhook, Slack or email receiver is added).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Configuration file; defaults are embedded.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder for data and blob storage.
    #[arg(long, default_value = "tiermon-data")]
    data: PathBuf,
    /// Address of the agent.
    #[arg(long, default_value = "127.0.0.1:9190")]
    agent_listen: SocketAddr,
    /// Address of the first secondary (Prometheus API, gRPC, targets).
    #[arg(long, default_value = "127.0.0.1:9191")]
    secondary_listen: SocketAddr,
    /// Address of its HA partner.
    #[arg(long, default_value = "127.0.0.1:9194")]
    secondary_b_listen: SocketAddr,
    /// Address of the primary.
    #[arg(long, default_value = "127.0.0.1:9192")]
    primary_listen: SocketAddr,
    /// Address of the global tier.
    #[arg(long, default_value = "127.0.0.1:9193")]
    global_listen: SocketAddr,
    /// Scrape interval of this machine.
    #[arg(long, default_value = "10s")]
    scrape_interval: humantime::Duration,
}

async fn bind(
    addr: SocketAddr,
    what: &str,
) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} ({what})"))?;
    let a = l.local_addr()?;
    Ok((l, a))
}

fn blob_folder(storage: &mut tiermon_config::StorageConfig, dir: PathBuf) -> anyhow::Result<()> {
    if storage.blob.location.is_empty() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        storage.blob.location = dir.display().to_string();
    }
    Ok(())
}

const DEFAULT_ALERTMANAGER: &str = "# Written by `tiermon up` on its first start (Alertmanager's format).\n# Add a webhook, Slack or email receiver, then POST /-/reload.\nroute:\n  receiver: none\n  group_by: [alertname, instance]\n  group_wait: 10s\n  group_interval: 1m\n  repeat_interval: 4h\nreceivers:\n  - name: none\n";

/// Writes `text` to `file` unless the file exists (the user's edits win).
fn write_once(file: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if file.exists() {
        return Ok(());
    }
    if let Some(d) = file.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = tiermon_config::load(args.config.as_deref(), std::env::vars())?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating data folder {}", args.data.display()))?;
    let data = std::fs::canonicalize(&args.data)?;

    let mut agent_cfg = cfg.agent;
    agent_cfg.listen = args.agent_listen;
    let agent = tiermon_agent::Agent::new(agent_cfg).context("starting the agent")?;
    let (agent_l, agent_addr) = bind(args.agent_listen, "agent").await?;
    let (sec_a_l, sec_a) = bind(args.secondary_listen, "secondary a").await?;
    let (sec_b_l, sec_b) = bind(args.secondary_b_listen, "secondary b").await?;
    let (pri_l, pri) = bind(args.primary_listen, "primary").await?;
    let (glo_l, glo) = bind(args.global_listen, "global").await?;

    let mut global = cfg.global;
    global.data = data.join("global");
    blob_folder(&mut global.storage, data.join("blob/global"))?;
    let mut primary = cfg.primary;
    primary.data = data.join("primary");
    if primary.datacenter == tiermon_config::PrimaryConfig::default().datacenter {
        primary.datacenter = "local".into();
    }
    blob_folder(&mut primary.storage, data.join("blob/primary"))?;
    if primary.push.destinations.is_empty() {
        primary.push.destinations = vec![format!("http://{glo}")];
    }
    if primary.rules.files.is_empty() {
        let file = data.join("rules").join("host.yml");
        write_once(&file, include_str!("up-rules.yml"))?;
        primary.rules.files = vec![file.display().to_string()];
    }
    if primary.alertmanager.config_file.is_none() {
        let file = data.join("alertmanager.yml");
        write_once(&file, DEFAULT_ALERTMANAGER)?;
        primary.alertmanager.config_file = Some(file);
    }
    global
        .primaries
        .entry(primary.datacenter.clone())
        .or_insert_with(|| format!("http://{pri}"));

    // The scrape configuration is generated at each start from the
    // addresses in use; point `secondary.scrape_config` at your own file to
    // scrape more.
    let mut secondary = cfg.secondary;
    if secondary.scrape_config.is_none() {
        let interval = args.scrape_interval.as_secs().max(1);
        let file = data.join("scrape.yml");
        std::fs::write(
            &file,
            format!(
                "# Generated by `tiermon up` at each start.\nglobal:\n  scrape_interval: {interval}s\nscrape_configs:\n  - job_name: node\n    static_configs: [{{targets: ['{agent_addr}'], labels: {{role: agent}}}}]\n  - job_name: tiermon\n    static_configs:\n      - {{targets: ['{sec_a}', '{sec_b}'], labels: {{role: secondary}}}}\n      - {{targets: ['{pri}'], labels: {{role: primary}}}}\n      - {{targets: ['{glo}'], labels: {{role: global}}}}\n"
            ),
        )
        .with_context(|| format!("writing {}", file.display()))?;
        secondary.scrape_config = Some(file);
    }
    secondary.datacenter = primary.datacenter.clone();
    if secondary.push.destinations.is_empty() {
        secondary.push.destinations = vec![format!("http://{pri}")];
    }
    if secondary.shard.name.is_empty() {
        secondary.shard.name = "pair-1".into();
        secondary.shard.shards = vec!["pair-1".into()];
    }
    // The primary's series name the pair that scrapes them (the dashboard
    // groups hosts by it).
    let pair_name = secondary.shard.name.clone();
    secondary
        .push
        .external_labels
        .entry("secondary".into())
        .or_insert(pair_name);
    let mut pair = Vec::new();
    for member in ["a", "b"] {
        let mut s = secondary.clone();
        s.data = data.join(format!("secondary-{member}"));
        s.shard.member = member.into();
        s.push.replica = member.into();
        blob_folder(
            &mut s.storage,
            data.join(format!("blob/secondary-{member}")),
        )?;
        pair.push(s);
    }
    let sec_b_cfg = pair.pop().expect("two members");
    let sec_a_cfg = pair.pop().expect("two members");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let dc = primary.datacenter.clone();
    let glo_task = tokio::spawn(crate::global::serve(
        global,
        glo_l,
        stopped(stop_rx.clone()),
    ));
    let pri_task = tokio::spawn(crate::primary::serve(
        primary,
        pri_l,
        stopped(stop_rx.clone()),
    ));
    let a_task = tokio::spawn(crate::secondary::serve(
        sec_a_cfg,
        sec_a_l,
        stopped(stop_rx.clone()),
    ));
    let b_task = tokio::spawn(crate::secondary::serve(
        sec_b_cfg,
        sec_b_l,
        stopped(stop_rx.clone()),
    ));
    let agent_task = tokio::spawn(tiermon_agent::serve(agent, agent_l, stopped(stop_rx)));

    println!(
        "tiermon is up (Ctrl-C stops it); data in {}",
        data.display()
    );
    println!("  agent        http://{agent_addr}/metrics");
    println!(
        "  secondary    http://{sec_a}/targets   (replica a; Prometheus API and gRPC on the same port)"
    );
    println!("  secondary-b  http://{sec_b}/targets   (replica b, the HA partner)");
    println!(
        "  primary      http://{pri}/   (the dashboard of datacenter {dc}: full resolution, both replicas de-duplicated)"
    );
    println!(
        "  global       http://{glo}/   (the dashboard of every datacenter, 1-minute aggregates)"
    );
    println!(
        "  alerts       http://{pri}/api/v1/alerts   (rules in {}; alert manager API at http://{pri}/api/v2/alerts)",
        data.join("rules").display()
    );
    println!("  try          tiermon query --server http://{pri} instant 'up'");
    let (ag, a, b, p, g) = tokio::join!(agent_task, a_task, b_task, pri_task, glo_task);
    ag?.context("serving the agent")?;
    a?.context("running secondary a")?;
    b?.context("running secondary b")?;
    p?.context("running the primary")?;
    g?.context("running the global tier")?;
    println!("tiermon stopped");
    Ok(())
}
