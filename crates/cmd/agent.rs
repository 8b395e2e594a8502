//! `tiermon agent`.

use anyhow::Context;

use crate::ServerArgs;

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut cfg = tiermon_config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(l) = args.listen {
        cfg.agent.listen = l;
    }
    let listen = cfg.agent.listen;
    let agent = tiermon_agent::Agent::new(cfg.agent).context("starting the agent")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(tier = "agent", listen = %addr, url = %format!("http://{addr}/metrics"), "listening");
    tiermon_agent::serve(agent, listener, crate::shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}
