//! Scraping a simulated fleet: CPU seconds per million samples, memory per
//! active series, and whether every scrape was on time — tiermon,
//! Prometheus and VictoriaMetrics (Debian's packages, when installed) in the
//! same run, one after the other, against the same fleet.
//!
//! ```text
//! TIERMON_FLEET_HOSTS=5000 TIERMON_FLEET_SERIES=200 \
//!   TIERMON_FLEET_SCRAPERS=tiermon,prometheus,victoria-metrics \
//!   cargo bench --bench fleet
//! ```
//!
//! Settings (environment): `TIERMON_FLEET_HOSTS` (1000),
//! `TIERMON_FLEET_SERIES` per host (500), `TIERMON_FLEET_INTERVAL` seconds
//! (15), `TIERMON_FLEET_MEASURE` seconds measured after two intervals of
//! warm-up (60), `TIERMON_FLEET_SCRAPERS` (tiermon), `TIERMON_BENCH_DIR`
//! for the scrapers' data (a temporary folder).
//!
//! CPU is user + system time of the scraper process (storage included)
//! over the measured window, divided by the samples it ingested (the
//! fleet's scrape count × (series + 5 report series)). Memory is the
//! resident set at the end divided by the active series. A scrape is on
//! time when no host waited more than 10 % over the interval between two
//! scrapes during the window.

#[path = "fleetsim/mod.rs"]
mod fleetsim;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Measured {
    cpu_s: f64,
    samples: u64,
    rss: u64,
    late_hosts: usize,
    max_gap_s: f64,
    scrapes: u64,
}

fn proc_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn spawn(scraper: &str, dir: &Path, scrape_file: &Path, port: u16) -> Option<Child> {
    let data = dir.join(format!("{scraper}-data"));
    let mut cmd = match scraper {
        "tiermon" => {
            let cfg = dir.join("tiermon.toml");
            std::fs::write(
                &cfg,
                format!(
                    "[secondary]\nscrape_config = \"{}\"\n[secondary.storage]\nmax_series = 20000000\n",
                    scrape_file.display()
                ),
            )
            .ok()?;
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
            let mut c = Command::new("prometheus");
            c.arg(format!("--config.file={}", scrape_file.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"));
            c
        }
        "victoria-metrics" => {
            let mut c = Command::new("victoria-metrics");
            c.arg(format!("-promscrape.config={}", scrape_file.display()))
                .arg(format!("-storageDataPath={}", data.display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{port}"));
            c
        }
        other => {
            eprintln!("unknown scraper {other}");
            return None;
        }
    };
    match cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("cannot start {scraper}: {e} (install it to compare)");
            None
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let hosts = fleetsim::env("TIERMON_FLEET_HOSTS", 1000) as usize;
    let series = fleetsim::env("TIERMON_FLEET_SERIES", 500) as usize;
    let interval = fleetsim::env("TIERMON_FLEET_INTERVAL", 15);
    let measure = fleetsim::env("TIERMON_FLEET_MEASURE", 60);
    let scrapers = std::env::var("TIERMON_FLEET_SCRAPERS").unwrap_or_else(|_| "tiermon".into());
    let dir = fleetsim::bench_dir("tiermon-fleet.");

    // One worker for the fleet: it must stay light next to the scrapers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let port = 9100;
    let fleet = rt
        .block_on(fleetsim::Fleet::start(hosts, series, port))
        .expect("starting the fleet (raise ulimit -n?)");
    let scrape_file = fleet.write_scrape_config(dir.path(), interval);
    println!(
        "fleet: {hosts} hosts x {series} series every {interval}s ({} active series, {:.0} samples/s)",
        hosts * (series + 5),
        (hosts * (series + 5)) as f64 / interval as f64
    );
    println!(
        "{:<18} {:>14} {:>14} {:>10} {:>12} {:>10}",
        "scraper", "CPU s/M samp", "B/series RSS", "RSS MiB", "late hosts", "max gap s"
    );
    for scraper in scrapers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = listen.local_addr().unwrap().port();
        drop(listen);
        let Some(mut child) = spawn(scraper, dir.path(), &scrape_file, p) else {
            continue;
        };
        let pid = child.id();
        // Warm-up: every series created, caches filled.
        std::thread::sleep(Duration::from_secs(2 * interval + 5));
        for h in &fleet.hosts {
            h.reset_gap();
        }
        let scrapes0: u64 = fleet.hosts.iter().map(|h| h.scrapes()).sum();
        let cpu0 = fleetsim::proc_cpu_s(pid);
        let own0 = fleetsim::proc_cpu_s(std::process::id());
        let t0 = Instant::now();
        let t0_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        std::thread::sleep(Duration::from_secs(measure));
        let cpu1 = fleetsim::proc_cpu_s(pid);
        let own1 = fleetsim::proc_cpu_s(std::process::id());
        let scrapes1: u64 = fleet.hosts.iter().map(|h| h.scrapes()).sum();
        let elapsed = t0.elapsed().as_secs_f64();
        let rss = proc_rss(pid);
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("{scraper} exited early ({status}); run it by hand to see why");
            continue;
        }
        let limit = interval * 1100;
        let late = fleet
            .hosts
            .iter()
            .filter(|h| h.max_gap_ms() > limit)
            .count();
        let max_gap = fleet
            .hosts
            .iter()
            .map(|h| h.max_gap_ms())
            .max()
            .unwrap_or(0);
        // When the late gaps ended, in 5-second slots of the window: a
        // backlog left from start-up crowds the first slots, a stall
        // recurs.
        let mut slots = vec![0usize; (measure as usize).div_ceil(5) + 1];
        for h in fleet.hosts.iter().filter(|h| h.max_gap_ms() > limit) {
            let at = h.max_gap_at_ms().saturating_sub(t0_ms) / 5000;
            let i = (at as usize).min(slots.len() - 1);
            slots[i] += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let m = Measured {
            cpu_s: cpu1 - cpu0,
            samples: (scrapes1 - scrapes0) * (series as u64 + 5),
            rss,
            late_hosts: late,
            max_gap_s: max_gap as f64 / 1000.0,
            scrapes: scrapes1 - scrapes0,
        };
        let expected = hosts as f64 * elapsed / interval as f64;
        println!(
            "{:<18} {:>14.3} {:>14.0} {:>10.0} {:>12} {:>10.1}   ({} scrapes, {:.0} expected, {:.1} CPU s)",
            scraper,
            m.cpu_s / (m.samples.max(1) as f64 / 1e6),
            m.rss as f64 / (hosts * (series + 5)) as f64,
            m.rss as f64 / (1 << 20) as f64,
            m.late_hosts,
            m.max_gap_s,
            m.scrapes,
            expected,
            m.cpu_s,
        );
        if late > 0 {
            let slots: Vec<String> = slots.iter().map(usize::to_string).collect();
            println!(
                "{:<18} late gaps ended per 5 s of the window: {}",
                "",
                slots.join(" ")
            );
        }
        println!(
            "{:<18} the fleet itself used {:.1} CPU s ({:.0} % of its one worker)",
            "",
            own1 - own0,
            100.0 * (own1 - own0) / elapsed
        );
    }
    drop(fleet);
}
