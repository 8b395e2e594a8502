//! Cost of one agent scrape on this machine: every collector, then encoding
//! (what `/metrics` does apart from HTTP and gzip). At a 15 s scrape
//! interval, CPU share = time per scrape / 15 s.
//!
//! Run: `cargo bench --bench agent`

use criterion::{Criterion, criterion_group, criterion_main};
use tiermon_agent::Agent;
use tiermon_exposition::{Format, encode};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = tiermon_config::AgentConfig {
        processes: vec![tiermon_config::ProcessWatch {
            name: "init".into(),
            comm: None,
            cmdline: Some("^/sbin/init|^/lib/systemd/systemd|^sh".into()),
            pidfile: None,
        }],
        ..Default::default()
    };
    let agent = Agent::new(cfg).unwrap();
    let mut g = c.benchmark_group("agent");
    g.bench_function("gather_and_encode", |b| {
        b.iter(|| {
            let fams = rt.block_on(agent.gather());
            encode(&fams, Format::Prometheus).len()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
