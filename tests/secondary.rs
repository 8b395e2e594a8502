//! The secondary's remote_write intake and Prometheus HTTP API, against a
//! real Prometheus (Debian's 2.42): Prometheus scrapes itself and
//! remote-writes to tiermon; then both answer the same PromQL queries at
//! the same times, and must agree.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{Guard, Tiermon, eventually, free_port, peer};

pub(crate) fn http(
    method: &str,
    url: &str,
    form: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let req = match method {
            "POST" if body.is_some() => c
                .post(url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .body(body.unwrap_or_default()),
            "POST" => c
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(
                    form.iter()
                        .map(|(k, v)| format!("{k}={}", urlencode(v)))
                        .collect::<Vec<_>>()
                        .join("&"),
                ),
            _ => c.get(url),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result as sorted (labels, value) pairs.
pub(crate) fn instant(base: &str, query: &str, t: f64) -> Vec<(String, f64)> {
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/query"),
        &[("query", query), ("time", &t.to_string())],
        None,
    );
    assert_eq!(status, 200, "{query}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, f64)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"].to_string(),
                r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn prometheus_remote_writes_and_both_answer_alike() {
    let Some(prom) = peer("prometheus") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let ours = Tiermon::start(
        "secondary",
        None,
        &["--data", data.path().join("db").to_str().unwrap()],
    );
    let base = format!("http://{}", ours.addr);

    // Bad input first: nothing stored, the reason named.
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/write"),
        &[],
        Some(b"garbage".to_vec()),
    );
    assert_eq!(status, 400);
    assert!(body.contains("snappy"), "{body}");
    let (status, body) = http(
        "GET",
        &format!("{base}/api/v1/query?query=sum(",),
        &[],
        None,
    );
    assert_eq!(status, 400);
    assert!(body.contains("bad_data"), "{body}");

    let port = free_port();
    let cfg = data.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\nremote_write:\n  - url: {base}/api/v1/write\n    queue_config:\n      batch_send_deadline: 500ms\n"
        ),
    )
    .unwrap();
    let _prom = Guard(
        Command::new(prom)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("prom").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let theirs = format!("http://127.0.0.1:{port}");
    // Wait for 20 s of data in both.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let first = eventually(
        "samples to arrive through remote_write",
        Duration::from_secs(60),
        || {
            let r = instant(&base, "up", now());
            (!r.is_empty()).then(now)
        },
    );
    std::thread::sleep(Duration::from_secs(20));
    // A moment both have complete data for (remote_write lags by up to the
    // batch deadline).
    let t = ((now() - 5.0) * 1000.0).round() / 1000.0;
    assert!(t > first + 10.0);
    for q in [
        "up",
        "count(up)",
        "prometheus_build_info",
        "sum by (job) (up)",
        "rate(prometheus_http_requests_total[10s])",
        "sum without (handler) (increase(prometheus_http_requests_total[10s]))",
        "max_over_time(scrape_samples_scraped[15s])",
        "prometheus_tsdb_head_series > 0",
        "up == bool 1",
        "topk(3, scrape_duration_seconds)",
        "count_over_time(up[10s])",
        "label_replace(up, \"host\", \"$1\", \"instance\", \"(.*):.*\")",
        "histogram_quantile(0.9, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[10s])))",
    ] {
        let a = instant(&base, q, t);
        let b = instant(&theirs, q, t);
        assert_eq!(a.len(), b.len(), "{q}: tiermon {a:?}\nprometheus {b:?}");
        for ((la, va), (lb, vb)) in a.iter().zip(&b) {
            assert_eq!(la, lb, "{q}");
            let same = (va.is_nan() && vb.is_nan()) || (va - vb).abs() <= 1e-9 * vb.abs().max(1.0);
            assert!(same, "{q} {la}: tiermon {va}, prometheus {vb}");
        }
    }
    // A range query, as Grafana sends it.
    let (status, body) = http(
        "GET",
        &format!(
            "{base}/api/v1/query_range?query=up&start={}&end={t}&step=1",
            t - 10.0
        ),
        &[],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["resultType"], "matrix");
    assert_eq!(
        v["data"]["result"][0]["values"].as_array().unwrap().len(),
        11
    );
    // Series and labels.
    let (status, body) = http(
        "GET",
        &format!("{base}/api/v1/series?match[]=up"),
        &[],
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"job\":\"prometheus\""), "{body}");
    let (_, body) = http("GET", &format!("{base}/api/v1/labels"), &[], None);
    assert!(body.contains("\"instance\""), "{body}");
    let (_, body) = http("GET", &format!("{base}/api/v1/label/job/values"), &[], None);
    assert!(body.contains("\"prometheus\""), "{body}");
    let (_, body) = http("GET", &format!("{base}/api/v1/status/buildinfo"), &[], None);
    assert!(body.contains("\"version\""), "{body}");

    // Cardinality, for finding an explosion.
    let (status, body) = http("GET", &format!("{base}/api/v1/status/tsdb"), &[], None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["data"]["headStats"]["numSeries"].as_u64().unwrap() > 10,
        "{body}"
    );
    let by_metric = v["data"]["seriesCountByMetricName"].as_array().unwrap();
    assert!(
        !by_metric.is_empty() && by_metric[0]["value"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert!(body.contains("labelValueCountByLabelName"), "{body}");

    // The operators' CLI, over gRPC on the same port.
    let cli = |args: &[&str]| crate::util::query_cli(&base, args);
    let json: Value = serde_json::from_str(&cli(&[
        "-o",
        "json",
        "instant",
        "count(up)",
        "--time",
        &t.to_string(),
    ]))
    .unwrap();
    assert_eq!(json[0]["values"][0][1], "1", "{json}");
    let table = cli(&["instant", "up", "--time", &t.to_string()]);
    assert!(
        table.contains("up{instance=") && table.contains("job=\"prometheus\""),
        "{table}"
    );
    let chart = cli(&[
        "-o",
        "chart",
        "range",
        "rate(prometheus_http_requests_total[5s])",
        "--start",
        &(t - 10.0).to_string(),
        "--end",
        &t.to_string(),
        "--step",
        "1s",
    ]);
    assert!(
        chart.contains("scale:") && !chart.contains("prometheus_http_requests_total"),
        "{chart}"
    );
    assert!(cli(&["labels"]).lines().any(|l| l == "job"));
    assert!(cli(&["labels", "job"]).lines().any(|l| l == "prometheus"));
    assert!(cli(&["series", "up"]).contains("job=\"prometheus\""));
    // A bad query fails with the reason, on stderr, with a non-zero exit.
    let out = Command::new(crate::util::bin())
        .args(["query", "--server", &base, "instant", "sum("])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad_data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_secondary_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[secondary.storage.blob]\nlocation = \"/tmp/x\"\nafter = \"1h\"\n",
    )
    .unwrap();
    let out = Command::new(crate::util::bin())
        .args(["secondary", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secondary.storage.blob.after"), "{err}");
    // An S3 option the store does not know is named too.
    std::fs::write(
        &cfg,
        "[secondary.storage.blob]\nlocation = \"s3://b\"\noptions = { colour = \"blue\" }\n",
    )
    .unwrap();
    let out = Command::new(crate::util::bin())
        .args(["secondary", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secondary.storage.blob") && err.contains("colour"),
        "{err}"
    );
}
