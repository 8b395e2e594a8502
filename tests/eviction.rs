//! Idle series leave the head of a running secondary and stay queryable:
//! remote_write creates series, they go idle and are evicted (the status
//! page stops counting them), and every HTTP API still finds them — from
//! the index on disk, across a SIGKILL — until new samples bring them back
//! under the same identity, neither lost nor doubled.

use std::time::Duration;

use serde_json::Value;

use crate::secondary::http;
use crate::util::{Tiermon, eventually, remote_write};

const SERIES: usize = 40;

fn json(url: &str) -> Value {
    let (status, body) = http("GET", url, &[], None);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Series of `evict_test` the head holds, per the status page.
fn in_head(base: &str) -> u64 {
    let v = json(&format!("{base}/api/v1/status/tsdb"));
    v["data"]["seriesCountByMetricName"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "evict_test")
        .map_or(0, |e| e["value"].as_u64().unwrap())
}

fn write(base: &str, t: i64, v: f64) {
    let points: Vec<_> = (0..SERIES)
        .map(|i| {
            (
                vec![
                    ("__name__", "evict_test".to_string()),
                    ("i", format!("{i:02}")),
                ],
                t,
                v,
            )
        })
        .collect();
    assert!(remote_write(base, &points), "remote_write refused");
}

/// Every API's view of `evict_test` over `[from, to]` seconds: series
/// listed, values of `i`, and samples per series from a range query.
fn seen(base: &str, from: i64, to: i64) -> (usize, usize, Vec<usize>) {
    let series = json(&format!(
        "{base}/api/v1/series?match[]=evict_test&start={from}&end={to}"
    ));
    let values = json(&format!(
        "{base}/api/v1/label/i/values?match[]=evict_test&start={from}&end={to}"
    ));
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/query_range"),
        &[
            ("query", "evict_test"),
            ("start", &from.to_string()),
            ("end", &to.to_string()),
            ("step", "1"),
        ],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let range: Value = serde_json::from_str(&body).unwrap();
    let mut points: Vec<usize> = range["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["values"].as_array().unwrap().len())
        .collect();
    points.sort();
    (
        series["data"].as_array().unwrap().len(),
        values["data"].as_array().unwrap().len(),
        points,
    )
}

#[test]
fn idle_series_leave_memory_and_stay_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[secondary]\ndata = \"{}\"\n[secondary.storage]\nout_of_order_window = \"1s\"\nseries_idle = \"2s\"\nmaintain_every = \"1s\"\ncheckpoint_every = \"1s\"\n",
        dir.path().join("data").display()
    );
    let s = Tiermon::start("secondary", Some(&config), &[]);
    let base = s.url("");
    let t0 = tiermon_model::now_ms() / 1000;
    write(&base, t0 * 1000, 1.0);
    assert_eq!(in_head(&base), SERIES as u64);
    eventually("the idle series evicted", Duration::from_secs(30), || {
        (in_head(&base) == 0).then_some(())
    });
    // Instant queries look back 5 minutes: one point each at t0..t0+2.
    let want = (SERIES, SERIES, vec![1; SERIES]);
    assert_eq!(seen(&base, t0, t0), want, "evicted, from disk");

    // After SIGKILL they stay out of memory and in the answers.
    let addr = s.addr.to_string();
    s.kill();
    let s = Tiermon::start_at("secondary", &addr, Some(&config), &[]);
    assert_eq!(in_head(&base), 0);
    assert_eq!(seen(&base, t0, t0), want, "after a restart");

    // New samples bring them back: one series each, two samples.
    let t1 = t0 + 10;
    write(&base, t1 * 1000, 2.0);
    assert_eq!(in_head(&base), SERIES as u64);
    let (series, values, points) = seen(&base, t0, t1);
    assert_eq!((series, values), (SERIES, SERIES));
    // The range query steps every second: t0's sample is seen for 10 s
    // (until t1), t1's at t1.
    assert_eq!(points, vec![11; SERIES], "no series doubled or lost");
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/query"),
        &[("query", "sum(evict_test)"), ("time", &t1.to_string())],
        None,
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], (2 * SERIES).to_string());
    drop(s);
}
