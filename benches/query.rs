//! Dashboard queries over the same data in tiermon, Prometheus and
//! VictoriaMetrics (Debian's packages), in one run: the latency of each
//! query, instant and over ranges of 1 h, 6 h and 24 h, and tiermon's
//! ratio to the faster of the other two.
//!
//! ```text
//! benches/query.sh                        # installs the anchors, then:
//! TIERMON_QUERY_SERIES=100000 cargo bench --workspace --bench query
//! ```
//!
//! Settings (environment): `TIERMON_QUERY_SERIES` (10000; 100 per host),
//! `TIERMON_QUERY_HOURS` of data ending now (24), `TIERMON_QUERY_RUNS` per
//! query after one warm-up (5; the median is reported),
//! `TIERMON_QUERY_STORES` (tiermon,prometheus,victoria-metrics),
//! `TIERMON_BENCH_DIR` for the data (a temporary folder; about 1 GB per
//! 1,000 series of text files for the anchors' loaders).
//!
//! The data is node-exporter-like and the same everywhere: per host, 64
//! CPU-seconds counters, 8 network byte counters, a 12-bucket request
//! duration histogram with its `_sum` and `_count`, 4 request counters and
//! 10 gauges, every 15 s, each value a function of the series and the step.
//! tiermon is loaded through remote_write into `tiermon secondary`, then
//! restarted (killed) with a short maintenance interval and measured once
//! a run of its background compaction is done;
//! Prometheus from OpenMetrics through `promtool tsdb create-blocks-from
//! openmetrics` (then started on the blocks, and measured once its
//! start-up compactions are done); VictoriaMetrics through
//! `/api/v1/import/prometheus`, with its query cache off
//! (`-search.disableCache`) so that repeated runs measure the query, not
//! the cache. Every query goes over HTTP (`/api/v1/query`,
//! `/api/v1/query_range`) as Grafana sends it, with a step of range / 240
//! (at least 15 s); the answers' series counts are compared across stores.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "nodedata/mod.rs"]
mod nodedata;

use nodedata::{STEP_MS, Spec, env_or, fleet, free_port};

/// The dashboard queries.
const QUERIES: [&str; 5] = [
    r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#,
    r#"topk(10, rate(node_network_receive_bytes_total[5m]))"#,
    r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))"#,
    r#"sum by (code) (rate(http_requests_total[5m]))"#,
    r#"avg(node_load1)"#,
];

/// tiermon's settings for the benchmark (the storage section last, so
/// that a key can be added to it).
const TIERMON_CONFIG: &str = "[secondary.query]\nmax_samples = 2000000000\ntimeout = \"10m\"\n[secondary.storage]\nmax_series = 20000000\n";

struct Store {
    name: &'static str,
    base: String,
    child: Child,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(client: &reqwest::Client, rt: &tokio::runtime::Runtime, url: &str, what: &str) {
    let until = Instant::now() + Duration::from_secs(300);
    while Instant::now() < until {
        let ok = rt.block_on(async {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} did not become ready at {url}");
}

fn spawn(cmd: &mut Command, what: &str, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e} (benches/query.sh installs it)"))
}

/// The data in Prometheus text with millisecond timestamps, or in
/// OpenMetrics with seconds (closed by `# EOF`), handed to `out` in
/// pieces of about 64 MiB.
fn text_chunks(
    specs: &[Spec],
    steps: i64,
    first: i64,
    openmetrics: bool,
    mut out: impl FnMut(&[u8]),
) {
    let mut buf = String::with_capacity(72 << 20);
    for s in specs {
        let text = s.text();
        for i in 0..steps {
            let t = first + i * STEP_MS;
            if openmetrics {
                let _ = writeln!(buf, "{text} {} {}.{:03}", s.value(i), t / 1000, t % 1000);
            } else {
                let _ = writeln!(buf, "{text} {} {t}", s.value(i));
            }
        }
        if buf.len() >= 64 << 20 {
            out(buf.as_bytes());
            buf.clear();
        }
    }
    if openmetrics {
        buf.push_str("# EOF\n");
    }
    if !buf.is_empty() {
        out(buf.as_bytes());
    }
}

fn remote_write_all(
    client: &reqwest::Client,
    rt: &tokio::runtime::Runtime,
    base: &str,
    specs: &[Spec],
    steps: i64,
    first: i64,
) {
    // Time-major blocks of 30 minutes, about 50k samples a request, two
    // requests at a time.
    let url = format!("{base}/api/v1/write");
    let labels = nodedata::write_labels(specs);
    let block = 120i64;
    let mut b0 = 0;
    while b0 < steps {
        let b1 = (b0 + block).min(steps);
        let bodies = nodedata::write_bodies(specs, &labels, b0..b1, first, 50_000 / block as usize);
        rt.block_on(nodedata::send_all(client, &url, bodies, 2));
        b0 = b1;
    }
}

/// The answer's points by series: (labels, [(time, value)]).
type Points = Vec<(String, Vec<(f64, f64)>)>;

fn points(body: &serde_json::Value) -> Points {
    let mut out: Points = body["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| {
                    let vals: Vec<&serde_json::Value> = match s["values"].as_array() {
                        Some(v) => v.iter().collect(),
                        None => vec![&s["value"]],
                    };
                    let pts = vals
                        .iter()
                        .map(|p| {
                            (
                                p[0].as_f64().unwrap_or(f64::NAN),
                                p[1].as_str()
                                    .and_then(|x| x.parse().ok())
                                    .unwrap_or(f64::NAN),
                            )
                        })
                        .collect();
                    (s["metric"].to_string(), pts)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Whether two answers agree: the same series and times, values within
/// a relative 1e-6.
fn agree(a: &Points, b: &Points) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.0 == y.0
                && x.1.len() == y.1.len()
                && x.1.iter().zip(&y.1).all(|(p, q)| {
                    p.0 == q.0
                        && ((p.1 - q.1).abs() <= 1e-6 * p.1.abs().max(q.1.abs())
                            || (p.1.is_nan() && q.1.is_nan()))
                })
        })
}

/// (median ms, the answer's points).
fn measure(
    client: &reqwest::Client,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    query: &str,
    range_h: i64,
    end_ms: i64,
    runs: usize,
) -> Result<(f64, Points), String> {
    let end = format!("{:.3}", end_ms as f64 / 1000.0);
    let (path, form): (&str, Vec<(&str, String)>) = if range_h == 0 {
        (
            "/api/v1/query",
            vec![("query", query.into()), ("time", end)],
        )
    } else {
        let range_ms = range_h * 3_600_000;
        let step = (range_ms / 240).max(STEP_MS);
        (
            "/api/v1/query_range",
            vec![
                ("query", query.into()),
                (
                    "start",
                    format!("{:.3}", (end_ms - range_ms) as f64 / 1000.0),
                ),
                ("end", end),
                ("step", format!("{}", step / 1000)),
            ],
        )
    };
    let url = format!("{}{path}", store.base);
    let mut times = Vec::with_capacity(runs);
    let mut series = Points::new();
    for run in 0..=runs {
        let t0 = Instant::now();
        let body: serde_json::Value = rt.block_on(async {
            let r = client
                .post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(&form)
                        .finish(),
                )
                .send()
                .await
                .map_err(|e| format!("{}: {e}", store.name))?;
            let status = r.status();
            let text = r.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{}: {status}: {text}", store.name));
            }
            serde_json::from_str(&text).map_err(|e| e.to_string())
        })?;
        let took = t0.elapsed().as_secs_f64() * 1000.0;
        if run > 0 {
            times.push(took);
        }
        series = points(&body);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], series))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test` builds benches too; run only under `cargo bench`.
        return;
    }
    let series: usize = env_or("TIERMON_QUERY_SERIES", 10_000);
    let hours: i64 = env_or("TIERMON_QUERY_HOURS", 24);
    let runs: usize = env_or("TIERMON_QUERY_RUNS", 5);
    let stores: String = env_or(
        "TIERMON_QUERY_STORES",
        "tiermon,prometheus,victoria-metrics".to_owned(),
    );
    let base_dir: PathBuf = env_or("TIERMON_BENCH_DIR", std::env::temp_dir());
    let work = tempfile::Builder::new()
        .prefix("tiermon-query.")
        .tempdir_in(&base_dir)
        .expect("work folder");
    let dir = work.path();
    let specs = fleet(series);
    let steps = hours * 3_600_000 / STEP_MS;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let last = now / STEP_MS * STEP_MS - STEP_MS;
    let first = last - (steps - 1) * STEP_MS;
    eprintln!(
        "{} series x {hours} h at 15 s: {} samples",
        specs.len(),
        specs.len() as i64 * steps
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");

    let mut running: Vec<Store> = Vec::new();
    for name in stores.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        match name {
            "tiermon" => {
                let cfg = dir.join("tiermon.toml");
                std::fs::write(&cfg, TIERMON_CONFIG).expect("config");
                let start = || {
                    spawn(
                        Command::new(env!("CARGO_BIN_EXE_tiermon"))
                            .arg("secondary")
                            .arg("--config")
                            .arg(&cfg)
                            .arg("--data")
                            .arg(dir.join("tiermon-data"))
                            .arg("--listen")
                            .arg(format!("127.0.0.1:{port}"))
                            .env("TIERMON_LOG", "warn"),
                        name,
                        &dir.join("tiermon.log"),
                    )
                };
                let child = start();
                let store = Store {
                    name: "tiermon",
                    base,
                    child,
                };
                wait_ready(
                    &client,
                    &rt,
                    &format!("{}/api/v1/status/buildinfo", store.base),
                    name,
                );
                remote_write_all(&client, &rt, &store.base, &specs, steps, first);
                // Measured as it runs once its background compaction has
                // caught up with the data (as Prometheus is, below): a
                // restart with a short maintenance interval, then one run
                // of maintenance done.
                drop(store);
                std::fs::write(&cfg, format!("{TIERMON_CONFIG}maintain_every = \"2s\"\n"))
                    .expect("config");
                let child = start();
                let store = Store {
                    name: "tiermon",
                    base: format!("http://127.0.0.1:{port}"),
                    child,
                };
                let metrics = format!("{}/metrics", store.base);
                let until = Instant::now() + Duration::from_secs(900);
                loop {
                    let runs = rt.block_on(async {
                        let body = client.get(&metrics).send().await.ok()?.text().await.ok()?;
                        body.lines().find_map(|l| {
                            l.strip_prefix("tiermon_storage_maintenance_runs_total ")?
                                .parse::<f64>()
                                .ok()
                        })
                    });
                    if runs.is_some_and(|n| n >= 1.0) {
                        break;
                    }
                    assert!(
                        Instant::now() < until,
                        "tiermon's maintenance did not finish"
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                running.push(store);
            }
            "prometheus" => {
                let om = dir.join("data.om");
                let mut f = std::io::BufWriter::new(std::fs::File::create(&om).expect("data file"));
                text_chunks(&specs, steps, first, true, |b| {
                    f.write_all(b).expect("writing data")
                });
                f.flush().expect("writing data");
                drop(f);
                let blocks = dir.join("prometheus-data");
                let out = Command::new("promtool")
                    .args(["tsdb", "create-blocks-from", "openmetrics"])
                    .arg(&om)
                    .arg(&blocks)
                    .stdout(Stdio::null())
                    .output()
                    .expect("promtool (benches/query.sh installs it)");
                assert!(
                    out.status.success(),
                    "promtool: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = std::fs::remove_file(&om);
                let cfg = dir.join("prometheus.yml");
                std::fs::write(
                    &cfg,
                    "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
                )
                .expect("config");
                let child = spawn(
                    Command::new("prometheus")
                        .arg(format!("--config.file={}", cfg.display()))
                        .arg(format!("--storage.tsdb.path={}", blocks.display()))
                        .arg("--storage.tsdb.retention.time=100y")
                        .arg("--query.max-samples=2000000000")
                        .arg("--query.timeout=10m")
                        .arg(format!("--web.listen-address=127.0.0.1:{port}")),
                    name,
                    &dir.join("prometheus.log"),
                );
                let store = Store {
                    name: "prometheus",
                    base,
                    child,
                };
                wait_ready(&client, &rt, &format!("{}/-/ready", store.base), name);
                // Its start-up compactions of the 2 h blocks: wait until
                // the block count holds still for 20 s.
                let mut last = (String::new(), Instant::now());
                while last.1.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_secs(2));
                    let blocks = std::fs::read_dir(&blocks)
                        .map_or(0, |d| d.count())
                        .to_string();
                    if blocks != last.0 {
                        last = (blocks, Instant::now());
                    }
                }
                running.push(store);
            }
            "victoria-metrics" => {
                let child = spawn(
                    Command::new("victoria-metrics")
                        .arg(format!(
                            "-storageDataPath={}",
                            dir.join("vm-data").display()
                        ))
                        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                        .arg("-retentionPeriod=100y")
                        .arg("-search.disableCache")
                        .arg("-search.maxSamplesPerQuery=2000000000")
                        .arg("-search.maxQueryDuration=10m")
                        .arg("-loggerLevel=ERROR"),
                    name,
                    &dir.join("vm.log"),
                );
                let store = Store {
                    name: "victoria-metrics",
                    base,
                    child,
                };
                wait_ready(&client, &rt, &format!("{}/health", store.base), name);
                let import = format!("{}/api/v1/import/prometheus", store.base);
                text_chunks(&specs, steps, first, false, |b| {
                    rt.block_on(async {
                        let r = client
                            .post(&import)
                            .body(b.to_vec())
                            .send()
                            .await
                            .expect("import");
                        assert!(r.status().is_success(), "import: {}", r.status());
                    });
                });
                rt.block_on(async {
                    let _ = client
                        .get(format!("{}/internal/force_flush", store.base))
                        .send()
                        .await;
                });
                // The import is applied asynchronously: wait until the
                // data's last sample is queryable.
                let until = Instant::now() + Duration::from_secs(600);
                loop {
                    let n = measure(&client, &rt, &store, "count(node_load1)", 0, last, 1)
                        .map_or(0, |(_, n)| n.len());
                    if n > 0 || Instant::now() > until {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                running.push(store);
            }
            other => panic!("unknown store {other}"),
        }
        eprintln!("{name}: loaded in {:.0} s", t0.elapsed().as_secs_f64());
    }

    let mut table = String::new();
    let _ = write!(table, "\n| query | range |");
    for s in &running {
        let _ = write!(table, " {} ms |", s.name);
    }
    let _ = writeln!(table, " tiermon ÷ fastest other |");
    let _ = writeln!(table, "|---|---|{}---|", "---|".repeat(running.len()));
    for q in QUERIES {
        for range_h in [0, 1, 6, 24].into_iter().filter(|&h| h <= hours) {
            let mut row: Vec<(f64, Points)> = Vec::new();
            for s in &running {
                match measure(&client, &rt, s, q, range_h, last, runs) {
                    Ok(m) => row.push(m),
                    Err(e) => {
                        eprintln!("{e}");
                        row.push((f64::NAN, Points::new()));
                    }
                }
            }
            let label = if range_h == 0 {
                "instant".to_owned()
            } else {
                format!("{range_h} h")
            };
            let _ = write!(table, "| `{q}` | {label} |");
            for (ms, n) in &row {
                let _ = write!(table, " {ms:.1} ({}) |", n.len());
            }
            let ours = running.iter().position(|s| s.name == "tiermon");
            let others = running
                .iter()
                .zip(&row)
                .filter(|(s, _)| s.name != "tiermon")
                .map(|(_, r)| r.0)
                .fold(f64::NAN, f64::min);
            match ours {
                Some(o) if others.is_finite() => {
                    let _ = writeln!(table, " {:.2} |", row[o].0 / others);
                }
                _ => {
                    let _ = writeln!(table, " — |");
                }
            }
            // tiermon answers as Prometheus does (VictoriaMetrics' rate
            // differs from Prometheus' by design, so only its series count
            // is compared).
            let prom = running.iter().position(|s| s.name == "prometheus");
            if let (Some(o), Some(p)) = (ours, prom)
                && !agree(&row[o].1, &row[p].1)
            {
                eprintln!("tiermon and Prometheus disagree on {q} over {label}");
            }
            let counts: Vec<usize> = row.iter().map(|r| r.1.len()).collect();
            if counts.windows(2).any(|w| w[0] != w[1]) {
                eprintln!("series counts differ for {q} over {label}: {counts:?}");
            }
        }
    }
    println!("{table}(median of {runs} runs after a warm-up; in brackets: series in the answer)");
}
