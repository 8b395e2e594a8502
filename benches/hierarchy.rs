//! The push path under a fleet: bytes on the wire per raw sample
//! (secondary → primary, primary → global) and the latency from scrape to
//! queryable at the primary and at the global tier.
//!
//! The fleet simulator serves `TIERMON_HIER_HOSTS` hosts of
//! `TIERMON_HIER_SERIES` series; one secondary scrapes them every
//! `TIERMON_HIER_INTERVAL` seconds and pushes to a primary, which pushes
//! 1-minute aggregates to a global tier. Both links go through a proxy
//! that counts the bytes that cross it (what gRPC sends, compressed). After
//! a warm-up, `TIERMON_HIER_MEASURE` seconds are measured. Latency: a few
//! probe hosts' `up` samples are polled at the primary (every 100 ms) and
//! at the global tier (every 500 ms); a new sample's latency is the time
//! from its timestamp (the scrape) to when it was first seen.
//!
//! `cargo bench --bench hierarchy` (release build; `TIERMON_BENCH_DIR`
//! chooses where the data goes). With `TIERMON_HIER_OUTAGE=SECONDS` the
//! primary is then SIGKILLed for that long under the fleet's load and
//! restarted, and must end with exactly the samples the secondary holds.

#[path = "fleetsim/mod.rs"]
mod fleetsim;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A TCP proxy that counts the bytes sent from its clients to `target`.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let up = Arc::new(AtomicU64::new(0));
    let counter = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut down, _)) = l.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = upstream.split();
                let to_target = async {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let n = match dr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let back = tokio::io::copy(&mut ur, &mut dw);
                tokio::select! {
                    _ = to_target => {}
                    _ = back => {}
                }
            });
        }
    });
    (addr, up)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tier(sub: &str, listen: SocketAddr, dir: &std::path::Path, config: &str) -> Killed {
    let cfg = dir.join(format!("{sub}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tiermon"))
        .arg(sub)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data")
        .arg(dir.join(sub))
        .arg("--config")
        .arg(&cfg)
        .env("TIERMON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting tiermon");
    Killed(child)
}

/// `timestamp(query)` by instance, in ms.
async fn timestamps(c: &reqwest::Client, base: SocketAddr, query: &str) -> HashMap<String, i64> {
    let body = format!(
        "query={}",
        form_urlencoded::byte_serialize(format!("timestamp({query})").as_bytes())
            .collect::<String>()
    );
    let Ok(resp) = c
        .post(format!("http://{base}/api/v1/query"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
    else {
        return HashMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let inst = r["metric"]["instance"].as_str()?.to_owned();
            let t = r["value"][1].as_str()?.parse::<f64>().ok()?;
            Some((inst, (t * 1000.0).round() as i64))
        })
        .collect()
}

async fn counter(c: &reqwest::Client, base: SocketAddr, name: &str) -> f64 {
    let text = match c.get(format!("http://{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Polls the probes' `up` timestamps at `base` every `every`; returns the
/// latencies (s) of new samples from the sample to first seen, and from
/// the end of the sample's minute to first seen.
async fn probe(
    base: SocketAddr,
    selector: String,
    every: Duration,
    until: Instant,
) -> (Vec<f64>, Vec<f64>) {
    let c = reqwest::Client::new();
    let mut last: HashMap<String, i64> = timestamps(&c, base, &selector).await;
    let (mut out, mut windows) = (Vec::new(), Vec::new());
    while Instant::now() < until {
        tokio::time::sleep(every).await;
        let now = now_ms();
        for (inst, t) in timestamps(&c, base, &selector).await {
            let prev = last.insert(inst, t);
            if prev.is_some_and(|p| t > p) {
                out.push((now - t) as f64 / 1000.0);
                windows.push((now - (t / 60_000 + 1) * 60_000) as f64 / 1000.0);
            }
        }
    }
    (out, windows)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let hosts = fleetsim::env("TIERMON_HIER_HOSTS", 200) as usize;
    let series = fleetsim::env("TIERMON_HIER_SERIES", 200) as usize;
    let interval = fleetsim::env("TIERMON_HIER_INTERVAL", 15);
    let measure = fleetsim::env("TIERMON_HIER_MEASURE", 180);
    let dir = fleetsim::bench_dir("tiermon-hier.");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fleet = rt
        .block_on(fleetsim::Fleet::start(hosts, series, 9100))
        .expect("starting the fleet (raise ulimit -n?)");
    let scrape = fleet.write_scrape_config(dir.path(), interval);
    let (g, p, s) = (free_addr(), free_addr(), free_addr());
    let (pg, pg_bytes) = rt.block_on(counting_proxy(g));
    let (sp, sp_bytes) = rt.block_on(counting_proxy(p));
    let g_proc = tier("global", g, dir.path(), "[global]\n");
    let p_cfg = format!(
        "[primary]\ndatacenter = \"sim\"\n[primary.push]\ndestinations = [\"http://{pg}\"]\n"
    );
    let mut p_proc = tier("primary", p, dir.path(), &p_cfg);
    let s_proc = tier(
        "secondary",
        s,
        dir.path(),
        &format!(
            "[secondary]\ndatacenter = \"sim\"\nscrape_config = \"{}\"\n[secondary.push]\ndestinations = [\"http://{sp}\"]\n",
            scrape.display()
        ),
    );
    println!(
        "hierarchy: {hosts} hosts x {series} series every {interval}s, one secondary -> primary -> global; warming up"
    );
    std::thread::sleep(Duration::from_secs(2 * interval + 10));

    let probes: Vec<String> = fleet
        .hosts
        .iter()
        .take(5)
        .map(|h| h.addr.to_string())
        .collect();
    let selector = format!(
        "up{{job=\"node\",instance=~\"{}\"}}",
        probes.join("|").replace('.', "\\\\.")
    );
    let c = reqwest::Client::new();
    let scrapes0: u64 = fleet.hosts.iter().map(|h| h.scrapes()).sum();
    let (sp0, pg0) = (
        sp_bytes.load(Ordering::Relaxed),
        pg_bytes.load(Ordering::Relaxed),
    );
    let rep0 = rt.block_on(counter(&c, p, "tiermon_forward_samples_total"));
    let pids = [
        ("secondary", s_proc.0.id()),
        ("primary", p_proc.0.id()),
        ("global", g_proc.0.id()),
    ];
    let cpu0: Vec<f64> = pids.iter().map(|(_, p)| fleetsim::proc_cpu_s(*p)).collect();
    let until = Instant::now() + Duration::from_secs(measure);
    let ((mut at_primary, _), (mut at_global, mut after_window)) = rt.block_on(async {
        tokio::join!(
            probe(p, selector.clone(), Duration::from_millis(100), until),
            probe(g, selector.clone(), Duration::from_millis(500), until),
        )
    });
    let scrapes1: u64 = fleet.hosts.iter().map(|h| h.scrapes()).sum();
    let (sp1, pg1) = (
        sp_bytes.load(Ordering::Relaxed),
        pg_bytes.load(Ordering::Relaxed),
    );
    let rep1 = rt.block_on(counter(&c, p, "tiermon_forward_samples_total"));
    let cpu1: Vec<f64> = pids.iter().map(|(_, p)| fleetsim::proc_cpu_s(*p)).collect();
    let raw = (scrapes1 - scrapes0) * (series as u64 + 5);
    let represented = rep1 - rep0;
    println!(
        "{:<34} {:>12} {:>14} {:>12}",
        "link", "bytes", "raw samples", "B/sample"
    );
    println!(
        "{:<34} {:>12} {:>14} {:>12.4}",
        "secondary -> primary (raw)",
        sp1 - sp0,
        raw,
        (sp1 - sp0) as f64 / raw.max(1) as f64
    );
    println!(
        "{:<34} {:>12} {:>14.0} {:>12.4}",
        "primary -> global (1m aggregates)",
        pg1 - pg0,
        represented,
        (pg1 - pg0) as f64 / represented.max(1.0)
    );
    for (i, (name, _)) in pids.iter().enumerate() {
        println!(
            "CPU of the {name}: {:.2} s per million raw samples",
            (cpu1[i] - cpu0[i]) / (raw.max(1) as f64 / 1e6)
        );
    }
    println!(
        "scrape -> queryable at the primary: p50 {:.2} s, p99 {:.2} s ({} samples)",
        quantile(&mut at_primary, 0.5),
        quantile(&mut at_primary, 0.99),
        at_primary.len()
    );
    println!(
        "scrape -> queryable at the global tier: p50 {:.1} s, p99 {:.1} s; window end -> queryable: p50 {:.1} s, p99 {:.1} s ({} windows)",
        quantile(&mut at_global, 0.5),
        quantile(&mut at_global, 0.99),
        quantile(&mut after_window, 0.5),
        quantile(&mut after_window, 0.99),
        at_global.len()
    );
    let outage = fleetsim::env("TIERMON_HIER_OUTAGE", 0);
    if outage > 0 {
        // The primary is SIGKILLed for `outage` seconds under the fleet's
        // load and restarted on its data; then it must hold exactly what
        // the secondary holds.
        println!("outage: the primary is down for {outage} s");
        drop(p_proc);
        std::thread::sleep(Duration::from_secs(outage));
        let back = Instant::now();
        p_proc = tier("primary", p, dir.path(), &p_cfg);
        // Compare a window that ended before the restart, once backfilled.
        let at = now_ms() - 20_000;
        let window = outage + 120;
        // (One family and `up`: count_over_time drops the name, so a
        // selector over all families would collide.)
        let q = format!(
            "sum(count_over_time(node_cpu_seconds_total{{job=\"node\"}}[{window}s])) + sum(count_over_time(up{{job=\"node\"}}[{window}s]))"
        );
        let at_secondary = rt.block_on(value_at(&c, s, &q, at));
        let mut caught_up = None;
        while back.elapsed() < Duration::from_secs(600) {
            let got = rt.block_on(value_at(&c, p, &q, at));
            if got == at_secondary && got.is_some() {
                caught_up = Some(back.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        match caught_up {
            Some(d) => println!(
                "after the outage the primary holds exactly the secondary's {:.0} samples (node_cpu_seconds_total and up) of the last {window} s; caught up {:.1} s after its restart",
                at_secondary.unwrap_or(0.0),
                d.as_secs_f64()
            ),
            None => println!(
                "after the outage the primary holds {:?} samples of the last {window} s, the secondary {at_secondary:?}: NOT equal",
                rt.block_on(value_at(&c, p, &q, at))
            ),
        }
    }
    drop(p_proc);
    drop(fleet);
}

/// The value of `query` (one series) at `t_ms`.
async fn value_at(c: &reqwest::Client, base: SocketAddr, query: &str, t_ms: i64) -> Option<f64> {
    let body = format!(
        "query={}&time={:.3}",
        form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>(),
        t_ms as f64 / 1000.0
    );
    let resp = c
        .post(format!("http://{base}/api/v1/query"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}
