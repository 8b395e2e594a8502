//! The fleet simulator: thousands of simulated hosts, each on its own
//! loopback address (127.x.y.z:9100), each serving a node-exporter-like
//! exposition whose values change at every scrape — counters grow at a
//! per-series rate, gauges wander — cheaply enough to share the machine
//! with the scrapers being measured.
//!
//! A host can be switched to answer 5xx or to refuse connections, to test
//! detection. Used by `benches/fleet.rs` and by tests.

#![allow(
    dead_code,
    reason = "each user of the simulator needs a different part"
)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// How a simulated host behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Serves its metrics.
    Healthy = 0,
    /// Answers 500 to every request.
    Error5xx = 1,
    /// Answers metrics whose `http_requests_total{code="500"}` grows fast.
    Failing = 2,
}

/// One simulated host.
#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    mode: AtomicU8,
    scrapes: AtomicU64,
    /// When it was last scraped, ms since the epoch.
    last_ms: AtomicU64,
    /// Longest gap between two scrapes since the last reset, ms.
    max_gap_ms: AtomicU64,
    /// When that longest gap ended, ms since the epoch.
    max_gap_at_ms: AtomicU64,
    /// (series text, kind, rate): kind 0 counter, 1 gauge.
    series: Vec<(String, u8, f64)>,
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    pub hosts: Vec<Arc<Host>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The loopback address of host `i` (skipping .0 and .255).
pub fn host_addr(i: usize, port: u16) -> SocketAddr {
    let a = 10 + (i / (254 * 250)) as u8;
    let b = ((i / 254) % 250) as u8;
    let c = (i % 254 + 1) as u8;
    SocketAddr::from((Ipv4Addr::new(127, a, b, c), port))
}

/// node-exporter-like series for one host, about `n` of them.
fn make_series(host: usize, n: usize) -> Vec<(String, u8, f64)> {
    let mut out = Vec::with_capacity(n);
    let mut rng = (host as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(1);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 10_000) as f64 / 10_000.0
    };
    let modes = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    'outer: for cpu in 0.. {
        for m in modes {
            if out.len() >= n / 3 {
                break 'outer;
            }
            out.push((
                format!("node_cpu_seconds_total{{cpu=\"{cpu}\",mode=\"{m}\"}}"),
                0,
                next() * 2.0,
            ));
        }
    }
    let fs = [
        "/", "/boot", "/var", "/home", "/srv", "/var/log", "/tmp", "/data",
    ];
    let disk_metrics = [
        ("node_disk_read_bytes_total", 0u8),
        ("node_disk_written_bytes_total", 0),
        ("node_disk_reads_completed_total", 0),
        ("node_disk_writes_completed_total", 0),
        ("node_disk_io_time_seconds_total", 0),
        ("node_disk_io_now", 1),
    ];
    let net_metrics = [
        ("node_network_receive_bytes_total", 0u8),
        ("node_network_transmit_bytes_total", 0),
        ("node_network_receive_packets_total", 0),
        ("node_network_transmit_packets_total", 0),
        ("node_network_receive_errs_total", 0),
        ("node_network_up", 1),
    ];
    let mut i = 0usize;
    while out.len() < n {
        let k = i % 4;
        match k {
            0 => {
                let mp = fs[(i / 4) % fs.len()];
                let dev = format!(
                    "sd{}{}",
                    (b'a' + ((i / 32) % 26) as u8) as char,
                    (i / 4) % 8
                );
                for (name, kind) in [
                    ("node_filesystem_avail_bytes", 1u8),
                    ("node_filesystem_size_bytes", 1),
                    ("node_filesystem_files_free", 1),
                ] {
                    out.push((
                        format!(
                            "{name}{{device=\"/dev/{dev}\",fstype=\"ext4\",mountpoint=\"{mp}{}\"}}",
                            i / 32
                        ),
                        kind,
                        next() * 1e9,
                    ));
                }
            }
            1 => {
                let dev = format!("nvme{}n{}", (i / 4) % 16, i / 64);
                for (name, kind) in disk_metrics {
                    out.push((format!("{name}{{device=\"{dev}\"}}"), kind, next() * 1e6));
                }
            }
            2 => {
                let dev = format!("eth{}", i / 4);
                for (name, kind) in net_metrics {
                    out.push((format!("{name}{{device=\"{dev}\"}}"), kind, next() * 1e6));
                }
            }
            _ => {
                for code in ["200", "404", "500"] {
                    out.push((
                        format!(
                            "http_requests_total{{code=\"{code}\",handler=\"/api/v{}\"}}",
                            i / 4
                        ),
                        0,
                        if code == "200" { 50.0 } else { 0.1 } * next(),
                    ));
                }
                out.push((format!("node_load1{{slot=\"{}\"}}", i / 4), 1, next()));
            }
        }
        i += 1;
    }
    out.truncate(n);
    out
}

impl Host {
    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::Relaxed);
    }

    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }

    /// Longest gap between scrapes since [`Self::reset_gap`].
    pub fn max_gap_ms(&self) -> u64 {
        self.max_gap_ms.load(Ordering::Relaxed)
    }

    /// When the longest gap since [`Self::reset_gap`] ended, ms since the
    /// epoch (0 if none yet).
    pub fn max_gap_at_ms(&self) -> u64 {
        self.max_gap_at_ms.load(Ordering::Relaxed)
    }

    pub fn reset_gap(&self) {
        self.max_gap_ms.store(0, Ordering::Relaxed);
        self.max_gap_at_ms.store(0, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let failing = self.mode.load(Ordering::Relaxed) == Mode::Failing as u8;
        let mut out = String::with_capacity(self.series.len() * 72);
        for (i, (s, kind, rate)) in self.series.iter().enumerate() {
            let v = if *kind == 0 {
                let r = if failing && s.contains("code=\"500\"") {
                    rate * 1000.0 + 100.0
                } else {
                    *rate
                };
                // Counters: integral values growing at `rate` per second.
                (r * (now - 1.6e9)).floor()
            } else {
                // Gauges: a slow wave per series.
                (rate * (1.0 + 0.1 * ((now / 60.0) + i as f64).sin())).round()
            };
            let _ = writeln!(out, "{s} {v}");
        }
        out
    }
}

async fn metrics(State(h): State<Arc<Host>>) -> Response {
    h.scrapes.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = h.last_ms.swap(now, Ordering::Relaxed);
    if last > 0 {
        let gap = now.saturating_sub(last);
        if h.max_gap_ms.fetch_max(gap, Ordering::Relaxed) < gap {
            h.max_gap_at_ms.store(now, Ordering::Relaxed);
        }
    }
    if h.mode.load(Ordering::Relaxed) == Mode::Error5xx as u8 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "simulated failure\n").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.render(),
    )
        .into_response()
}

impl Fleet {
    /// Starts `hosts` hosts of about `series` series each on `port`.
    pub async fn start(hosts: usize, series: usize, port: u16) -> std::io::Result<Fleet> {
        let mut out = Vec::with_capacity(hosts);
        let mut tasks = Vec::with_capacity(hosts);
        for i in 0..hosts {
            let addr = host_addr(i, port);
            let l = tokio::net::TcpListener::bind(addr).await?;
            let host = Arc::new(Host {
                addr,
                mode: AtomicU8::new(Mode::Healthy as u8),
                scrapes: AtomicU64::new(0),
                last_ms: AtomicU64::new(0),
                max_gap_ms: AtomicU64::new(0),
                max_gap_at_ms: AtomicU64::new(0),
                series: make_series(i, series),
            });
            let app = Router::new()
                .route("/metrics", get(metrics))
                .with_state(host.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            }));
            out.push(host);
        }
        Ok(Fleet { hosts: out, tasks })
    }

    /// The fleet as a Prometheus file_sd JSON document.
    pub fn file_sd(&self) -> String {
        let targets: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.addr))
            .collect();
        format!(
            "[{{\"targets\": [{}], \"labels\": {{\"dc\": \"sim\"}}}}]",
            targets.join(",")
        )
    }

    /// A Prometheus scrape configuration (job `node`, every
    /// `interval_s` seconds) listing hosts `range` as static targets.
    pub fn static_scrape_config(&self, range: std::ops::Range<usize>, interval_s: u64) -> String {
        let hosts: Vec<String> = self.hosts[range]
            .iter()
            .map(|h| format!("'{}'", h.addr))
            .collect();
        format!(
            "global:\n  scrape_interval: {interval_s}s\nscrape_configs:\n  - job_name: node\n    static_configs: [{{targets: [{}]}}]\n",
            hosts.join(",")
        )
    }

    /// Writes the fleet as a file_sd file and a Prometheus scrape
    /// configuration (job `node`, every `interval_s` seconds) into `dir`;
    /// returns the scrape configuration's path.
    pub fn write_scrape_config(
        &self,
        dir: &std::path::Path,
        interval_s: u64,
    ) -> std::path::PathBuf {
        let sd = dir.join("fleet.json");
        std::fs::write(&sd, self.file_sd()).expect("writing the file_sd file");
        let scrape = dir.join("scrape.yml");
        std::fs::write(
            &scrape,
            format!(
                "global:\n  scrape_interval: {interval_s}s\n  scrape_timeout: {}s\nscrape_configs:\n  - job_name: node\n    file_sd_configs:\n      - files: ['{}']\n",
                interval_s.min(10),
                sd.display()
            ),
        )
        .expect("writing the scrape configuration");
        scrape
    }

    /// Stops one host listening (its connections are refused).
    pub fn kill(&mut self, i: usize) {
        self.tasks[i].abort();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// User + system CPU seconds of process `pid` so far.
pub fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The number in environment variable `name`, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh folder for a benchmark's data, under `TIERMON_BENCH_DIR` (or
/// the temporary folder).
pub fn bench_dir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var("TIERMON_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .expect("bench folder")
}
