//! remote_write intake at full speed: samples per second and CPU-seconds
//! per million samples, for `tiermon secondary`, Prometheus
//! (`--web.enable-remote-write-receiver`) and VictoriaMetrics (Debian's
//! packages), one after the other, with the same load generator and data.
//!
//! ```text
//! benches/query.sh installs the anchors; then
//! TIERMON_INTAKE_SERIES=500000 cargo bench --workspace --bench intake
//! ```
//!
//! Settings (environment): `TIERMON_INTAKE_SERIES` (500000),
//! `TIERMON_INTAKE_STEPS` measured (10; one scrape's worth of every series
//! each), `TIERMON_INTAKE_PER_REQUEST` series per request (2000, one sample
//! each — what Prometheus' and vmagent's senders batch),
//! `TIERMON_INTAKE_CONCURRENCY` requests in flight (8),
//! `TIERMON_INTAKE_STORES` (tiermon,prometheus,victoria-metrics),
//! `TIERMON_BENCH_DIR` for the stores' data.
//!
//! Every request body is encoded before the clock starts, so the load
//! generator only sends. A first step creates the series and is not
//! measured. A store's rate is the measured samples over the wall time
//! from the first request to the last acknowledgement; its CPU is the
//! user + system time of its process over the same time. Node-exporter-
//! like data from `nodedata/`.

#[path = "nodedata/mod.rs"]
mod nodedata;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodedata::{STEP_MS, env_or, free_port};

/// User + system CPU seconds of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ')'.
    let hz = rustix::param::clock_ticks_per_second() as f64;
    (ticks(11) + ticks(12)) / hz
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A store's process, killed when dropped (also when a measurement
/// panics).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(store: &str, dir: &Path, port: u16) -> Running {
    let data = dir.join(format!("{store}-data"));
    let mut cmd = match store {
        "tiermon" => {
            let cfg = dir.join("tiermon.toml");
            std::fs::write(&cfg, "[secondary.storage]\nmax_series = 20000000\n").expect("config");
            let mut c = Command::new(env!("CARGO_BIN_EXE_tiermon"));
            c.arg("secondary")
                .arg("--config")
                .arg(&cfg)
                .arg("--data")
                .arg(&data)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env("TIERMON_LOG", "warn");
            c
        }
        "prometheus" => {
            let cfg = dir.join("prometheus.yml");
            std::fs::write(&cfg, "scrape_configs: []\n").expect("config");
            let mut c = Command::new("prometheus");
            c.arg(format!("--config.file={}", cfg.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg("--web.enable-remote-write-receiver")
                .arg(format!("--web.listen-address=127.0.0.1:{port}"));
            c
        }
        "victoria-metrics" => {
            let mut c = Command::new("victoria-metrics");
            c.arg(format!("-storageDataPath={}", data.display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                .arg("-retentionPeriod=100y")
                .arg("-loggerLevel=ERROR");
            c
        }
        other => panic!("unknown store {other}"),
    };
    let log = std::fs::File::create(dir.join(format!("{store}.log"))).expect("log");
    Running(
        cmd.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {store}: {e} (benches/query.sh installs it)")),
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let series: usize = env_or("TIERMON_INTAKE_SERIES", 500_000);
    let steps: i64 = env_or("TIERMON_INTAKE_STEPS", 10);
    let per_req: usize = env_or("TIERMON_INTAKE_PER_REQUEST", 2000);
    let concurrency: usize = env_or("TIERMON_INTAKE_CONCURRENCY", 8);
    let stores: String = env_or(
        "TIERMON_INTAKE_STORES",
        "tiermon,prometheus,victoria-metrics".to_owned(),
    );
    let base_dir: std::path::PathBuf = env_or("TIERMON_BENCH_DIR", std::env::temp_dir());
    let work = tempfile::Builder::new()
        .prefix("tiermon-intake.")
        .tempdir_in(&base_dir)
        .expect("work folder");
    let specs = nodedata::fleet(series);
    let labels = nodedata::write_labels(&specs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    println!(
        "\n{} series, {steps} measured steps, {per_req} samples a request, {concurrency} in flight\n",
        specs.len()
    );
    println!("| store | samples/s | CPU-s per million samples | RSS at the end |");
    println!("|---|---|---|---|");
    for store in stores.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let child = start(store, work.path(), port);
        let ready = if store == "prometheus" {
            "/-/ready"
        } else {
            "/api/v1/status/buildinfo"
        };
        let ready = if store == "victoria-metrics" {
            "/health"
        } else {
            ready
        };
        let until = Instant::now() + Duration::from_secs(120);
        while !rt.block_on(async {
            client
                .get(format!("{base}{ready}"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }) {
            assert!(Instant::now() < until, "{store} did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Recent timestamps, ending now: every store takes them as live.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let first = now / STEP_MS * STEP_MS - steps * STEP_MS;
        let url = format!("{base}/api/v1/write");
        // The first step creates the series.
        let create = nodedata::write_bodies(&specs, &labels, 0..1, first, per_req);
        rt.block_on(nodedata::send_all(&client, &url, create, concurrency));
        let steps_bodies: Vec<Vec<Vec<u8>>> = (1..=steps)
            .map(|i| nodedata::write_bodies(&specs, &labels, i..i + 1, first, per_req))
            .collect();
        let samples = specs.len() as f64 * steps as f64;
        let cpu0 = cpu_seconds(child.0.id());
        let t0 = Instant::now();
        // Step after step: a series' samples arrive in order (as a
        // sender's shards keep them), whatever the concurrency.
        for bodies in steps_bodies {
            rt.block_on(nodedata::send_all(&client, &url, bodies, concurrency));
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(child.0.id()) - cpu0;
        println!(
            "| {store} | {:.0} | {:.2} | {:.0} MiB |",
            samples / wall,
            cpu / (samples / 1e6),
            rss(child.0.id()) as f64 / (1 << 20) as f64
        );
        drop(child);
    }
}
