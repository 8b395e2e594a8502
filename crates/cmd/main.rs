//! `tiermon`: one binary, a subcommand per tier and tool. Each subcommand
//! is a thin file here; the logic lives in the crates.

mod agent;
mod alerting;
mod check;
mod debug;
mod global;
mod primary;
mod query;
mod scraping;
mod secondary;
mod tier;
mod up;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tiermon", version, about = "Hierarchical, federated monitoring", long_about = None)]
struct Cli {
    /// Log filter, e.g. `info` or `tiermon_agent=debug` (overrides RUST_LOG).
    #[arg(long, global = true, env = "TIERMON_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Flags every server subcommand takes.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Configuration file (TOML or YAML); environment variables
    /// TIERMON_<SECTION>__<KEY> override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (host:port), overriding the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host agent: serve this host's health at /metrics.
    Agent(ServerArgs),
    /// Run a secondary: scrape its share of the targets, take
    /// remote_write, answer the Prometheus HTTP API, push to the primaries.
    Secondary(tier::Args),
    /// Run a datacenter's primary: take the secondaries' pushes, answer
    /// the datacenter's queries, push aggregates to the global tier.
    Primary(tier::Args),
    /// Run the global tier: every datacenter's aggregates in one view, and
    /// which datacenters still report.
    Global(tier::Args),
    /// Query any tier over gRPC: instant and range queries, series, labels,
    /// alerts; as a table, JSON or a terminal chart.
    Query(query::Args),
    /// Write known series into a secondary and read them back at the
    /// primaries and the global tier: loss, duplication, delay.
    Verify(verify::Args),
    /// Start a whole hierarchy on this machine, monitoring it.
    Up(up::Args),
    /// Check exposition text, configuration files.
    #[command(subcommand)]
    Check(check::Check),
    /// Tools for testing tiermon itself.
    #[command(subcommand, hide = true)]
    Debug(debug::Debug),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let result = match cli.command {
        Command::Check(c) => return check::run(c),
        Command::Agent(a) => runtime().and_then(|rt| rt.block_on(agent::run(a))),
        Command::Query(a) => runtime().and_then(|rt| rt.block_on(query::run(a))),
        Command::Secondary(a) => runtime().and_then(|rt| rt.block_on(secondary::run(a))),
        Command::Primary(a) => runtime().and_then(|rt| rt.block_on(primary::run(a))),
        Command::Global(a) => runtime().and_then(|rt| rt.block_on(global::run(a))),
        Command::Verify(a) => runtime().and_then(|rt| rt.block_on(verify::run(a))),
        Command::Up(a) => runtime().and_then(|rt| rt.block_on(up::run(a))),
        Command::Debug(d) => debug::run(d),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
