//! `tiermon up`: everything on one machine, monitoring it.
//!
//! Today the hierarchy is the agent alone; the secondary, primary and
//! global tiers join here as they land (see ARCHITECTURE.md).

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
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = tiermon_config::load(args.config.as_deref(), std::env::vars())?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating data folder {}", args.data.display()))?;
    let mut agent_cfg = cfg.agent;
    agent_cfg.listen = args.agent_listen;
    let agent = tiermon_agent::Agent::new(agent_cfg).context("starting the agent")?;
    let listener = tokio::net::TcpListener::bind(args.agent_listen)
        .await
        .with_context(|| format!("listening on {}", args.agent_listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(tier = "agent", listen = %addr, "listening");
    println!("tiermon is up (Ctrl-C stops it)");
    println!("  agent   http://{addr}/metrics");
    tiermon_agent::serve(agent, listener, crate::shutdown_signal())
        .await
        .context("serving the agent")?;
    println!("tiermon stopped");
    Ok(())
}
