//! Time to detect: from the moment a host fails to the moment the webhook
//! has the alert, at fleet scale.
//!
//! The fleet simulator serves `TIERMON_DETECT_HOSTS` hosts (1,000) of
//! `TIERMON_DETECT_SERIES` series (100); a secondary scrapes them every
//! `TIERMON_DETECT_INTERVAL` seconds (5), evaluates the rules at the same
//! interval, and its alert manager posts to a webhook this bench runs.
//! Every trial fails `TIERMON_DETECT_BATCH` random hosts (10) — half
//! start answering 5xx to the scrape (`up == 0`), half serve a 5xx storm
//! in their request counters (`rate(http_requests_total{code="500"})`) —
//! and measures, per host, from the switch to the webhook's arrival; then
//! the hosts recover and their resolution is awaited.
//! `TIERMON_DETECT_TRIALS` trials (10). Beside the fleet, a real
//! `tiermon agent` watches a process (`[[agent.processes]]`); every trial
//! SIGKILLs it too and measures until `ProcessDown` arrives.
//!
//! Goal: p99 ≤ scrape interval + rule interval + 1 s.
//!
//! `cargo bench --bench alerting`.

#[path = "fleetsim/mod.rs"]
mod fleetsim;
#[path = "webhook/mod.rs"]
mod webhook;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (alertname, instance, status) → first arrival.
type Seen = Arc<Mutex<HashMap<(String, String, String), Instant>>>;

/// A webhook receiver recording when each alert's status first arrived.
fn webhook() -> (String, Seen) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let s = seen.clone();
    webhook::serve(l, move |body| {
        let now = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let mut s = s.lock().unwrap();
        for a in v["alerts"].as_array().into_iter().flatten() {
            let k = (
                a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                a["labels"]["instance"].as_str().unwrap_or("").to_owned(),
                a["status"].as_str().unwrap_or("").to_owned(),
            );
            s.entry(k).or_insert(now);
        }
    });
    (url, seen)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let hosts = fleetsim::env("TIERMON_DETECT_HOSTS", 1000) as usize;
    let series = fleetsim::env("TIERMON_DETECT_SERIES", 100) as usize;
    let interval = fleetsim::env("TIERMON_DETECT_INTERVAL", 5);
    let batch = fleetsim::env("TIERMON_DETECT_BATCH", 10) as usize;
    let trials = fleetsim::env("TIERMON_DETECT_TRIALS", 10);
    let dir = fleetsim::bench_dir("tiermon-detect.");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fleet = rt
        .block_on(fleetsim::Fleet::start(hosts, series, port))
        .expect("fleet");
    let scrape = fleet.write_scrape_config(dir.path(), interval);
    let (hook, seen) = webhook();
    // A real agent watching a real process.
    let victim_arg = format!("{}", 900_000 + std::process::id());
    let spawn_victim = || {
        Killed(
            Command::new("sleep")
                .arg(&victim_arg)
                .spawn()
                .expect("sleep"),
        )
    };
    let mut victim = spawn_victim();
    let agent_listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!("[agent]\n[agent.smart]\nenabled = false\n[[agent.processes]]\nname = \"victim\"\ncmdline = \"^sleep {victim_arg}$\"\n"),
    )
    .unwrap();
    let _agent = Killed(
        Command::new(env!("CARGO_BIN_EXE_tiermon"))
            .args(["agent", "--listen", &agent_listen.to_string(), "--config"])
            .arg(&agent_cfg)
            .env("TIERMON_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the agent"),
    );
    let sd = dir.path().join("fleet.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sd).unwrap()).unwrap();
    doc.as_array_mut()
        .unwrap()
        .push(serde_json::json!({"targets": [agent_listen.to_string()], "labels": {"dc": "sim"}}));
    std::fs::write(&sd, doc.to_string()).unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        format!(
            "groups:\n  - name: detect\n    interval: {interval}s\n    rules:\n      - alert: HostDown\n        expr: up{{job=\"node\"}} == 0\n      - alert: ProcessDown\n        expr: tiermon_process_up == 0\n      - alert: Http5xx\n        expr: sum by (instance) (irate(http_requests_total{{code=\"500\"}}[{}s])) > 50\n",
            interval * 3
        ),
    )
    .unwrap();
    let am = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am,
        format!("route:\n  receiver: hook\n  group_by: [alertname, instance]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"{hook}\"}}]\n"),
    )
    .unwrap();
    let cfg = dir.path().join("secondary.toml");
    std::fs::write(
        &cfg,
        format!(
            "[secondary]\nscrape_config = \"{}\"\n[secondary.rules]\nfiles = [\"{}\"]\n[secondary.alertmanager]\nconfig_file = \"{}\"\n",
            scrape.display(),
            rules.display(),
            am.display()
        ),
    )
    .unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _s = Killed(
        Command::new(env!("CARGO_BIN_EXE_tiermon"))
            .args(["secondary", "--listen", &listen.to_string(), "--config"])
            .arg(&cfg)
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("TIERMON_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tiermon"),
    );
    // Warm-up: every host scraped twice.
    std::thread::sleep(Duration::from_secs(3 * interval));
    let mut rng = rand::rng();
    let mut latencies: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut missed = 0;
    for trial in 0..trials {
        let picked = rand::seq::index::sample(&mut rng, hosts, batch).into_vec();
        let mut started = Vec::new();
        for (k, &i) in picked.iter().enumerate() {
            let (mode, alert) = if k % 2 == 0 {
                (fleetsim::Mode::Error5xx, "HostDown")
            } else {
                (fleetsim::Mode::Failing, "Http5xx")
            };
            // Spread the failures over an interval, as real ones are.
            std::thread::sleep(Duration::from_millis(interval * 1000 / batch as u64));
            fleet.hosts[i].set_mode(mode);
            started.push((i, alert, Instant::now()));
        }
        // And the real agent's watched process dies.
        drop(victim);
        let killed_at = Instant::now();
        let agent_key = |status: &str| {
            (
                "ProcessDown".to_owned(),
                agent_listen.to_string(),
                status.to_owned(),
            )
        };
        let deadline = Instant::now() + Duration::from_secs(interval * 6);
        let key = |i: usize, alert: &str, status: &str| {
            (
                alert.to_owned(),
                fleet.hosts[i].addr.to_string(),
                status.to_owned(),
            )
        };
        loop {
            let s = seen.lock().unwrap();
            let done = started
                .iter()
                .all(|(i, a, _)| s.contains_key(&key(*i, a, "firing")))
                && s.contains_key(&agent_key("firing"));
            drop(s);
            if done || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let s = seen.lock().unwrap();
        for (i, alert, t0) in &started {
            match s.get(&key(*i, alert, "firing")) {
                Some(t1) => latencies
                    .entry(alert)
                    .or_default()
                    .push(t1.duration_since(*t0).as_secs_f64()),
                None => missed += 1,
            }
        }
        match s.get(&agent_key("firing")) {
            Some(t1) => latencies
                .entry("ProcessDown")
                .or_default()
                .push(t1.duration_since(killed_at).as_secs_f64()),
            None => missed += 1,
        }
        drop(s);
        victim = spawn_victim();
        for (i, _, _) in &started {
            fleet.hosts[*i].set_mode(fleetsim::Mode::Healthy);
        }
        // Recovered and resolved before the next trial.
        let deadline = Instant::now() + Duration::from_secs(interval * 8);
        loop {
            let mut s = seen.lock().unwrap();
            let done = started
                .iter()
                .all(|(i, a, _)| s.contains_key(&key(*i, a, "resolved")))
                && s.contains_key(&agent_key("resolved"));
            if done || Instant::now() > deadline {
                s.retain(|(a, _, _), _| a != "ProcessDown");
                // Forget them, so the next trial sees fresh arrivals.
                s.retain(|(a, inst, _), _| {
                    !started
                        .iter()
                        .any(|(i, al, _)| al == a && fleet.hosts[*i].addr.to_string() == *inst)
                });
                break;
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("trial {}/{trials} done", trial + 1);
    }
    let goal = (2 * interval + 1) as f64;
    println!(
        "time to detect ({hosts} hosts × {series} series, scrape and rule interval {interval} s; goal p99 ≤ {goal} s):"
    );
    let mut all = Vec::new();
    for (alert, v) in &mut latencies {
        all.extend_from_slice(v);
        let n = v.len();
        println!(
            "  {alert:9} n={n:4}  p50 {:.2} s  p99 {:.2} s  max {:.2} s",
            quantile(v, 0.5),
            quantile(v, 0.99),
            quantile(v, 1.0)
        );
    }
    println!(
        "  all       n={:4}  p50 {:.2} s  p99 {:.2} s  missed {missed}",
        all.len(),
        quantile(&mut all, 0.5),
        quantile(&mut all, 0.99)
    );
}
