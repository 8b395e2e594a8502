//! The secondary's scrape engine over real HTTP: fake targets served by the
//! test (so it can change what they expose), file_sd, relabelling, limits,
//! staleness, the targets API and page, and reload; and Debian's
//! node_exporter scraped by tiermon and by Debian's Prometheus side by
//! side, which must store the same series.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::secondary::{http, instant};
use crate::util::{Guard, Tiermon, eventually, free_port, get, peer};

/// A target whose exposition the test sets; it records the request headers
/// it was sent and answers gzip when asked.
pub(crate) struct FakeTarget {
    pub(crate) addr: String,
    body: Arc<Mutex<(String, &'static str)>>,
    headers: Arc<Mutex<Vec<String>>>,
}

impl FakeTarget {
    pub(crate) fn start(body: &str, content_type: &'static str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new((body.to_owned(), content_type)));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (state.clone(), headers.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut req = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    req.push(line.trim_end().to_owned());
                }
                let gzip = req.iter().any(|l| {
                    l.to_ascii_lowercase().starts_with("accept-encoding:") && l.contains("gzip")
                });
                *h.lock().unwrap() = req;
                let (body, ct) = s.lock().unwrap().clone();
                let (bytes, enc) = if gzip {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(body.as_bytes()).unwrap();
                    (e.finish().unwrap(), "Content-Encoding: gzip\r\n")
                } else {
                    (body.into_bytes(), "")
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n{enc}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&bytes);
                let _ = conn.flush();
                let mut sink = [0u8; 1];
                let _ = conn.set_read_timeout(Some(Duration::from_millis(10)));
                let _ = conn.read(&mut sink);
            }
        });
        Self {
            addr,
            body: state,
            headers,
        }
    }

    pub(crate) fn set(&self, body: &str) {
        self.body.lock().unwrap().0 = body.to_owned();
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `query` at the current time as (labels JSON, value) pairs.
fn q(base: &str, query: &str) -> Vec<(String, f64)> {
    instant(base, query, now())
}

fn targets(base: &str) -> Value {
    let (status, body) = http("GET", &format!("{base}/api/v1/targets"), &[], None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn scrapes_relabels_goes_stale_and_reloads() {
    let a = FakeTarget::start(
        "# TYPE foo gauge\nfoo{job=\"theirs\",k=\"1\"} 1\nbar 2\ndrop_me 3\n",
        "text/plain; version=0.0.4",
    );
    let om = FakeTarget::start(
        "# TYPE reqs counter\nreqs_total{code=\"200\"} 17\n# EOF\n",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    );
    let dead = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("targets.json");
    let write_sd = |targets: &[&str]| {
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let tmp = dir.path().join("targets.json.tmp");
        std::fs::write(
            &tmp,
            format!(
                "[{{\"targets\": [{}], \"labels\": {{\"rack\": \"r1\"}}}}]",
                list.join(",")
            ),
        )
        .unwrap();
        std::fs::rename(&tmp, &sd).unwrap();
    };
    write_sd(&[&a.addr, &dead]);
    let scrape_file = dir.path().join("scrape.yml");
    let good = format!(
        r#"
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: app
    file_sd_configs:
      - files: ['{}']
    relabel_configs:
      - source_labels: [__meta_filepath]
        regex: '.*/(.*)\.json'
        target_label: source
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: drop_me
        action: drop
  - job_name: om
    static_configs:
      - targets: ['{}']
  - job_name: limited
    sample_limit: 1
    static_configs:
      - targets: ['{}']
"#,
        dir.path().join("*.json").display(),
        om.addr,
        a.addr
    );
    std::fs::write(&scrape_file, &good).unwrap();
    let config = format!(
        "[secondary]\nscrape_config = \"{}\"\n",
        scrape_file.display()
    );
    let ours = Tiermon::start(
        "secondary",
        Some(&config),
        &["--data", dir.path().join("db").to_str().unwrap()],
    );
    let base = format!("http://{}", ours.addr);

    // Up and down, with the target labels and the report series.
    let up = eventually("both app targets scraped", LONG, || {
        let r = q(&base, "up{job=\"app\"}");
        (r.len() == 2).then_some(r)
    });
    let live = up.iter().find(|(l, _)| l.contains(&a.addr)).unwrap();
    assert_eq!(live.1, 1.0, "{up:?}");
    assert!(
        live.0.contains("\"rack\":\"r1\"") && live.0.contains("\"source\":\"targets\""),
        "{live:?}"
    );
    let down = up.iter().find(|(l, _)| l.contains(&dead)).unwrap();
    assert_eq!(down.1, 0.0, "{up:?}");
    for name in [
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    ] {
        assert_eq!(
            q(&base, &format!("{name}{{job=\"app\"}}")).len(),
            2,
            "{name}"
        );
    }
    let scraped = q(
        &base,
        &format!(
            "scrape_samples_scraped{{instance=\"{}\",job=\"app\"}}",
            a.addr
        ),
    );
    assert_eq!(scraped[0].1, 3.0);
    let kept = q(
        &base,
        &format!(
            "scrape_samples_post_metric_relabeling{{instance=\"{}\",job=\"app\"}}",
            a.addr
        ),
    );
    assert_eq!(kept[0].1, 2.0);

    // Label clash: the exposed job becomes exported_job; drop_me is dropped.
    let foo = q(&base, "foo{job=\"app\"}");
    assert_eq!(foo.len(), 1, "{foo:?}");
    assert!(
        foo[0].0.contains("\"exported_job\":\"theirs\"") && foo[0].0.contains("\"job\":\"app\""),
        "{foo:?}"
    );
    assert!(q(&base, "drop_me").is_empty());

    // OpenMetrics was asked for and parsed, gzip used.
    let reqs = eventually("openmetrics target scraped", LONG, || {
        let r = q(&base, "reqs_total");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(reqs[0].1, 17.0);
    let h = om.headers.lock().unwrap().join("\n").to_ascii_lowercase();
    assert!(
        h.contains("accept: application/openmetrics-text;version=1.0.0"),
        "{h}"
    );
    assert!(h.contains("accept-encoding: gzip"), "{h}");
    assert!(h.contains("x-prometheus-scrape-timeout-seconds: 1"), "{h}");

    // The sample limit fails the whole scrape, with the reason.
    let t = targets(&base);
    let active = t["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 4, "{t}");
    let by_pool = |pool: &str, addr: &str| {
        active
            .iter()
            .find(|x| x["scrapePool"] == pool && x["labels"]["instance"] == addr)
            .unwrap_or_else(|| panic!("{pool} {addr} in {t}"))
            .clone()
    };
    let limited = eventually("limited target failed", LONG, || {
        let t = targets(&base);
        t["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["scrapePool"] == "limited" && x["health"] == "down")
            .cloned()
    });
    assert!(
        limited["lastError"]
            .as_str()
            .unwrap()
            .contains("sample_limit"),
        "{limited}"
    );
    let d = by_pool("app", &dead);
    assert_eq!(d["health"], "down");
    assert!(
        d["lastError"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("connect"),
        "{d}"
    );
    assert_eq!(d["discoveredLabels"]["__address__"], dead.as_str());
    assert_eq!(d["scrapeInterval"], "1s");
    let page = get(&format!("{base}/targets")).unwrap();
    assert!(page.contains(&dead) && page.contains("DOWN"), "{page}");

    // A series that disappears is marked stale at the next scrape.
    a.set("# TYPE foo gauge\nfoo{job=\"theirs\",k=\"1\"} 1\n");
    eventually("bar stale", LONG, || {
        q(&base, "bar{job=\"app\"}").is_empty().then_some(())
    });
    assert_eq!(q(&base, "foo{job=\"app\"}").len(), 1);

    // A target removed from the file goes stale (up included).
    write_sd(&[&dead]);
    eventually("removed target stale", LONG, || {
        q(&base, &format!("up{{instance=\"{}\",job=\"app\"}}", a.addr))
            .is_empty()
            .then_some(())
    });
    assert!(q(&base, "foo{job=\"app\"}").is_empty());

    // A broken reload is refused and the running configuration kept.
    std::fs::write(
        &scrape_file,
        "scrape_configs: [{job_name: x, scrape_interval: soon}]",
    )
    .unwrap();
    let (status, body) = http("POST", &format!("{base}/-/reload"), &[], None);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("scrape_configs[0].scrape_interval"), "{body}");
    let metrics = get(&format!("{base}/metrics")).unwrap();
    assert!(
        metrics.contains("tiermon_config_last_reload_successful 0"),
        "{metrics}"
    );
    // The storage's own gauges: series scraped so far are in the head, and
    // the memory outside it is named.
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    assert!(gauge("tiermon_storage_head_series") >= 5.0);
    assert!(gauge("tiermon_storage_samples_appended_total") >= 5.0);
    assert!(gauge("tiermon_storage_wal_bytes") > 0.0);
    assert!(gauge("tiermon_storage_memtable_bytes") > 0.0);
    for name in [
        "tiermon_storage_block_cache_bytes",
        "tiermon_storage_table_readers_bytes",
        "tiermon_storage_pending_chunks",
        "tiermon_storage_sst_bytes",
        "tiermon_storage_compactions_total",
        "tiermon_storage_maintenance_runs_total",
    ] {
        gauge(name);
    }
    let before = q(&base, "scrape_samples_scraped{job=\"om\"}")[0].0.clone();
    assert!(!before.is_empty());

    // A good one applies: job om gone (stale), a new job scraped.
    let b = FakeTarget::start("fresh 1\n", "text/plain");
    std::fs::write(
        &scrape_file,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: fresh\n    static_configs: [{{targets: ['{}']}}]\n",
            b.addr
        ),
    )
    .unwrap();
    let (status, body) = http("POST", &format!("{base}/-/reload"), &[], None);
    assert_eq!(status, 200, "{body}");
    eventually("new job scraped", LONG, || {
        (!q(&base, "fresh").is_empty()).then_some(())
    });
    eventually("old job stale", LONG, || {
        q(&base, "reqs_total").is_empty().then_some(())
    });
    let metrics = get(&format!("{base}/metrics")).unwrap();
    assert!(
        metrics.contains("tiermon_config_last_reload_successful 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tiermon_config_reload_failures_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_bad_scrape_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let scrape = dir.path().join("scrape.yml");
    std::fs::write(
        &scrape,
        "scrape_configs:\n  - job_name: k\n    azure_sd_configs: [{subscription_id: x}]\n",
    )
    .unwrap();
    let config = dir.path().join("tiermon.toml");
    std::fs::write(
        &config,
        format!("[secondary]\nscrape_config = \"{}\"\n", scrape.display()),
    )
    .unwrap();
    let out = Command::new(crate::util::bin())
        .args(["secondary", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scrape_configs[0].azure_sd_configs"), "{err}");
    assert!(err.contains("does not support"), "{err}");
}

/// Debian's node_exporter, scraped by tiermon and by Debian's Prometheus
/// with the same scrape configuration: both must hold the same series.
#[test]
fn stores_what_prometheus_stores_from_node_exporter() {
    let Some(ne) = peer("prometheus-node-exporter").or_else(|| peer("node_exporter")) else {
        return;
    };
    let Some(prom) = peer("prometheus") else {
        return;
    };
    let ne_port = free_port();
    let _ne = Guard(
        Command::new(ne)
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    // One file for both: tiermon reads Prometheus' own scrape_configs.
    let scrape = dir.path().join("prometheus.yml");
    std::fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 2s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\n        labels: {{role: test}}\n    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: 'go_.*'\n        action: drop\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("tiermon.toml");
    std::fs::write(
        &config,
        format!("[secondary]\nscrape_config = \"{}\"\n", scrape.display()),
    )
    .unwrap();
    let prom_port = free_port();
    let _prom = Guard(
        Command::new(prom)
            .arg(format!("--config.file={}", scrape.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ours = Tiermon::start(
        "secondary",
        None,
        &[
            "--config",
            config.to_str().unwrap(),
            "--data",
            dir.path().join("db").to_str().unwrap(),
        ],
    );
    let base = format!("http://{}", ours.addr);
    let theirs = format!("http://127.0.0.1:{prom_port}");
    // Three scrapes in both.
    for b in [&base, &theirs] {
        eventually("node scraped three times", Duration::from_secs(60), || {
            let r = instant(b, "count_over_time(up{job=\"node\"}[1m])", now());
            (r.first().is_some_and(|(_, v)| *v >= 3.0)).then_some(())
        });
    }
    let t = now();
    let names = |b: &str| -> Vec<String> {
        instant(b, "group by (__name__) ({job=\"node\"})", t)
            .into_iter()
            .map(|(l, _)| l)
            .collect()
    };
    let (o, p) = (names(&base), names(&theirs));
    assert!(o.len() > 100, "{o:?}");
    assert_eq!(o, p, "metric names differ");
    // Label sets of a multi-dimensional metric are identical too.
    let q = "node_cpu_seconds_total";
    let series =
        |b: &str| -> Vec<String> { instant(b, q, t).into_iter().map(|(l, _)| l).collect() };
    assert_eq!(series(&base), series(&theirs));
    // Same count of samples per scrape (node_exporter's own count is stable).
    let scraped =
        |b: &str| instant(b, "scrape_samples_post_metric_relabeling{job=\"node\"}", t)[0].1;
    let (so, sp) = (scraped(&base), scraped(&theirs));
    assert!(
        (so - sp).abs() <= so * 0.02,
        "tiermon {so}, Prometheus {sp}"
    );
    assert!(instant(&base, "go_goroutines", t).is_empty());
    // Metric metadata (HELP, TYPE) as Prometheus answers it.
    let meta = |b: &str| -> Value {
        let body = crate::util::get(&format!("{b}/api/v1/metadata")).unwrap();
        serde_json::from_str::<Value>(&body).unwrap()["data"].clone()
    };
    let (mo, mp) = (meta(&base), meta(&theirs));
    for name in [
        "node_cpu_seconds_total",
        "node_load1",
        "node_filesystem_avail_bytes",
    ] {
        assert_eq!(mo[name], mp[name], "{name}");
    }
    assert_eq!(mo["node_cpu_seconds_total"][0]["type"], "counter");
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&mo), keys(&mp), "families with metadata differ");
    let limited = crate::util::get(&format!("{base}/api/v1/metadata?limit=2")).unwrap();
    let limited: Value = serde_json::from_str(&limited).unwrap();
    assert_eq!(limited["data"].as_object().unwrap().len(), 2, "{limited}");
    let one = crate::util::get(&format!("{base}/api/v1/metadata?metric=node_load1")).unwrap();
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(keys(&one["data"]), ["node_load1"]);
    let bad = crate::util::get(&format!("{base}/api/v1/metadata?limit=x")).unwrap();
    assert!(bad.contains("bad_data"), "{bad}");
}
