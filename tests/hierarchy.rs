//! The hierarchy over the real protocols: secondaries push to a primary,
//! the primary pushes one-minute aggregates to the global tier. Every tier
//! is killed with SIGKILL under load and restarted on its address and data;
//! what was acknowledged must then be held exactly once at every tier.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::scrape::FakeTarget;
use crate::secondary::http;
use crate::util::{Tiermon, eventually, free_port};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const SERIES: usize = 4;

/// remote_write of one sample per series at `t`; whether it was
/// acknowledged (2xx).
fn write(base: &str, t: i64, v: f64) -> bool {
    let series: Vec<_> = (0..SERIES)
        .map(|k| {
            (
                vec![
                    ("__name__", "verify_value".to_owned()),
                    ("k", k.to_string()),
                ],
                t,
                v + k as f64,
            )
        })
        .collect();
    crate::util::remote_write(base, &series)
}

type Samples = BTreeMap<String, Vec<(i64, f64)>>;

/// Every sample of the series `selector` selects within the last `range`,
/// by their `key` label (or their whole label set).
fn raw(base: &str, selector: &str, range: &str, key: &str) -> Samples {
    raw_with(base, selector, range, key, &[]).0
}

/// As [`raw`] with more request parameters; also the response's warnings.
fn raw_with(
    base: &str,
    selector: &str,
    range: &str,
    key: &str,
    params: &[(&str, &str)],
) -> (Samples, Vec<String>) {
    let q = format!("{selector}[{range}]");
    let v = query_now(base, &q, 1.0, params);
    let warnings = v["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|x| x.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array().unwrap() {
        let name = r["metric"][key]
            .as_str()
            .map_or_else(|| r["metric"].to_string(), str::to_owned);
        let samples = r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                    p[1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect();
        out.insert(name, samples);
    }
    (out, warnings)
}

/// The answer of an instant query at now (plus `offset_s`), with more
/// request parameters.
fn query_now(base: &str, query: &str, offset_s: f64, params: &[(&str, &str)]) -> Value {
    let t = format!("{:.3}", now_ms() as f64 / 1000.0 + offset_s);
    let mut form = vec![("query", query), ("time", t.as_str())];
    form.extend_from_slice(params);
    let (status, body) = http("POST", &format!("{base}/api/v1/query"), &form, None);
    assert_eq!(status, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The newest value of `query`'s first series, if any.
fn latest(base: &str, query: &str) -> Option<f64> {
    query_now(base, query, 0.0, &[])["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

struct Tier {
    sub: &'static str,
    listen: String,
    config: String,
    data: std::path::PathBuf,
}

impl Tier {
    fn new(sub: &'static str, dir: &Path, config: String) -> Self {
        Self {
            sub,
            listen: format!("127.0.0.1:{}", free_port()),
            config,
            data: dir.join(sub),
        }
    }

    fn start(&self) -> Tiermon {
        Tiermon::start_at(
            self.sub,
            &self.listen,
            Some(&self.config),
            &["--data", self.data.to_str().unwrap()],
        )
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }
}

#[test]
fn acknowledged_samples_reach_the_primary_and_the_global_tier_exactly_once_through_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut global = Tier::new("global", dir.path(), String::new());
    let primary = Tier::new(
        "primary",
        dir.path(),
        format!(
            "[primary]\ndatacenter = \"dc1\"\nchild_timeout = \"4s\"\nwindow_grace = \"2s\"\n[primary.push]\ndestinations = [\"{}\"]\nmax_backoff = \"500ms\"\n",
            global.url()
        ),
    );
    let secondary = Tier::new(
        "secondary",
        dir.path(),
        format!(
            "[secondary]\ndatacenter = \"dc1\"\n[secondary.push]\ndestinations = [\"{}\"]\nmax_backoff = \"500ms\"\n",
            primary.url()
        ),
    );
    global.config = format!(
        "[global]\nchild_timeout = \"4s\"\nprimaries = {{ dc1 = \"{}\" }}\n",
        primary.url()
    );
    let mut g = Some(global.start());
    let mut p = Some(primary.start());
    let mut s = Some(secondary.start());

    // Write every 200 ms until a minute boundary has passed (so that at
    // least one whole window reaches the global tier) and every crash
    // below has happened; keep what was acknowledged.
    let start = now_ms();
    // The primary and the global tier are each down for `outage` ms: 7 s
    // by default, minutes with TIERMON_OUTAGE_SECS (the long form, outside
    // the default test command).
    let outage = std::env::var("TIERMON_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(7_000, |s| s * 1000);
    let mut events = vec![
        (4_000, "kill primary"),
        (4_000 + outage, "start primary"),
        (7_000 + outage, "kill secondary"),
        (8_000 + outage, "start secondary"),
        (12_000 + outage, "kill global"),
        (12_000 + 2 * outage, "start global"),
    ];
    let end = ((start / 60_000 + 1) * 60_000 + 6_000).max(start + 20_000 + 2 * outage);
    let mut acked: Vec<(i64, f64)> = Vec::new();
    let mut refused = 0;
    let mut i = 0.0;
    // The slowest write, to tell a stalled intake from a loaded machine.
    let mut slowest = (0, 0);
    events.reverse();
    // Every event happens, however slow the machine: the loop ends only
    // once the last one is past.
    while now_ms() < end || !events.is_empty() {
        if let Some(&(at, what)) = events.last()
            && now_ms() - start >= at
        {
            events.pop();
            eprintln!("== {what}");
            match what {
                "kill primary" => p.take().unwrap().kill(),
                "start primary" => p = Some(primary.start()),
                "kill secondary" => s.take().unwrap().kill(),
                "start secondary" => s = Some(secondary.start()),
                "kill global" => g.take().unwrap().kill(),
                "start global" => g = Some(global.start()),
                _ => unreachable!(),
            }
        }
        let t = now_ms();
        let ok = write(&secondary.url(), t, i);
        slowest = slowest.max((now_ms() - t, t - start));
        if ok {
            acked.push((t, i));
        } else {
            refused += 1;
        }
        i += 10.0;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        acked.len() > 100,
        "{} acknowledged, {refused} refused in {} ms; the slowest write took {} ms, {} ms in",
        acked.len(),
        now_ms() - start,
        slowest.0,
        slowest.1
    );
    assert!(refused > 0, "the secondary was down for a while");
    let expect =
        |k: usize| -> Vec<(i64, f64)> { acked.iter().map(|&(t, v)| (t, v + k as f64)).collect() };

    // The primary holds exactly what the secondary acknowledged: nothing
    // lost across its own crash or the secondary's, nothing doubled.
    let got = eventually(
        "the primary to hold every acknowledged sample",
        Duration::from_secs(30),
        || {
            let got = raw(&primary.url(), "verify_value", "10m", "k");
            (got.len() == SERIES && got.values().all(|s| s.len() >= acked.len())).then_some(got)
        },
    );
    for k in 0..SERIES {
        assert_eq!(
            got[&k.to_string()],
            expect(k),
            "series k={k} at the primary"
        );
    }

    // The global tier holds one aggregate per series and closed window —
    // the window's last sample — for every window since the primary
    // started, across the crashes of all three tiers.
    let last_window_end = (acked.last().unwrap().0 / 60_000) * 60_000;
    let first_window = acked[0].0 / 60_000;
    let want = |k: usize| -> Vec<(i64, f64)> {
        let mut w: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
        for &(t, v) in &expect(k) {
            if t < last_window_end {
                w.insert(t / 60_000, (t, v));
            }
        }
        w.into_values().collect()
    };
    assert!(!want(0).is_empty(), "a whole window was written");
    let got = eventually(
        "the global tier to hold every closed window",
        Duration::from_secs(40),
        || {
            let got = raw(
                &global.url(),
                "verify_value{datacenter=\"dc1\"}",
                "10m",
                "k",
            );
            (got.len() == SERIES
                && got.values().all(|s| {
                    s.iter().filter(|x| x.0 / 60_000 >= first_window).count() >= want(0).len()
                }))
            .then_some(got)
        },
    );
    for k in 0..SERIES {
        let g: Vec<(i64, f64)> = got[&k.to_string()]
            .iter()
            .copied()
            .filter(|x| x.0 / 60_000 >= first_window && x.0 < last_window_end)
            .collect();
        assert_eq!(g, want(k), "series k={k} at the global tier");
    }

    // The windows themselves reached the global tier: its over-time
    // functions see every sample the primary had in them, not only each
    // window's last.
    let at = format!("{:.3}", (last_window_end - 1) as f64 / 1000.0);
    let range = format!("{}ms", last_window_end - first_window * 60_000);
    for f in ["count", "sum", "min", "max", "avg"] {
        let q = format!("{f}_over_time(verify_value{{datacenter=\"dc1\"}}[{range}])");
        let (status, body) = http(
            "POST",
            &format!("{}/api/v1/query", global.url()),
            &[("query", &q), ("time", &at)],
            None,
        );
        assert_eq!(status, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let result = v["data"]["result"].as_array().unwrap();
        assert_eq!(result.len(), SERIES, "{q}: {body}");
        for r in result {
            let k: usize = r["metric"]["k"].as_str().unwrap().parse().unwrap();
            let got: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            let vals: Vec<f64> = expect(k)
                .into_iter()
                .filter(|&(t, _)| t < last_window_end)
                .map(|(_, v)| v)
                .collect();
            let sum: f64 = vals.iter().sum();
            let want = match f {
                "count" => vals.len() as f64,
                "sum" => sum,
                "min" => vals.iter().copied().fold(f64::INFINITY, f64::min),
                "max" => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                _ => sum / vals.len() as f64,
            };
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{q} for k={k}: {got}, want {want}"
            );
        }
    }

    // Liveness: the global tier sees the datacenter reporting, and the
    // secondary behind it; once the primary dies, the datacenter goes dark
    // while its last reports (up, …) are unchanged.
    let live = "tiermon_child_up{instance=\"global\",child=\"primary/dc1\"}";
    eventually("the datacenter reporting", Duration::from_secs(30), || {
        (latest(&global.url(), live) == Some(1.0)).then_some(())
    });
    eventually(
        "the secondary seen through the primary",
        Duration::from_secs(30),
        || {
            latest(
                &global.url(),
                "tiermon_child_last_report_timestamp_seconds{instance=\"global\",via=\"primary/dc1\",tier=\"secondary\"}",
            )
            .map(|_| ())
        },
    );
    // Drill-down: at full resolution the global tier answers from the
    // primary, with the datacenter label; without the primary it says so
    // and answers from its aggregates.
    let (drill, warnings) = raw_with(
        &global.url(),
        "verify_value{datacenter=\"dc1\"}",
        "10m",
        "k",
        &[("resolution", "raw")],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    for k in 0..SERIES {
        assert_eq!(
            drill[&k.to_string()],
            expect(k),
            "k={k} drilled down to the primary"
        );
    }
    p.take().unwrap().kill();
    let (fallback, warnings) = raw_with(
        &global.url(),
        "verify_value",
        "10m",
        "k",
        &[("resolution", "raw")],
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("dc1") && w.contains("partial")),
        "{warnings:?}"
    );
    assert_eq!(
        fallback.len(),
        SERIES,
        "the aggregates stand in: {fallback:?}"
    );
    eventually("the datacenter gone dark", Duration::from_secs(40), || {
        (latest(&global.url(), live) == Some(0.0)).then_some(())
    });
    drop((g, s));
}

#[test]
fn an_ha_pair_yields_one_copy_and_no_gap_when_a_replica_dies() {
    let dir = tempfile::tempdir().unwrap();
    let target = FakeTarget::start(
        "# TYPE ha_requests_total counter\nha_requests_total 5\n",
        "text/plain; version=0.0.4",
    );
    let scrape = dir.path().join("scrape.yml");
    std::fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: t\n    static_configs: [{{targets: ['{}']}}]\n",
            target.addr
        ),
    )
    .unwrap();
    let primary = Tier::new(
        "primary",
        dir.path(),
        "[primary]\ndatacenter = \"dc1\"\n".into(),
    );
    let p = primary.start();
    let member = |m: &str| {
        Tier::new(
            "secondary",
            &dir.path().join(m),
            format!(
                "[secondary]\ndatacenter = \"dc1\"\nscrape_config = \"{}\"\n[secondary.shard]\nname = \"pair-1\"\nshards = [\"pair-1\"]\nmember = \"{m}\"\n[secondary.push]\ndestinations = [\"{}\"]\nmax_backoff = \"500ms\"\n",
                scrape.display(),
                primary.url()
            ),
        )
    };
    let (ta, tb) = (member("a"), member("b"));
    let a = ta.start();
    let b = tb.start();
    std::thread::sleep(Duration::from_secs(8));
    a.kill();
    std::thread::sleep(Duration::from_secs(8));

    // Both replicas scraped every second; the primary kept one sample per
    // scrape interval, and none went missing when replica a died.
    let got = raw(&primary.url(), "up{job=\"t\"}", "30s", "job");
    let up = &got["t"];
    assert!(up.len() >= 12, "{up:?}");
    for w in up.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            (500..=1_600).contains(&gap),
            "samples {gap} ms apart at the primary: {up:?}"
        );
    }
    let at_b = raw(&tb.url(), "up{job=\"t\"}", "30s", "job");
    assert!(
        at_b["t"].len() >= up.len() - 1,
        "b scraped all along: {at_b:?}"
    );
    let dedup = latest(
        &primary.url(),
        "sum(tiermon_push_deduplicated_samples_total{instance=\"primary/dc1\"})",
    );
    assert!(dedup.unwrap_or(0.0) > 0.0, "{dedup:?}");
    drop((b, p));
}

#[test]
fn verify_passes_across_tiers_and_fails_when_samples_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let primary = Tier::new(
        "primary",
        dir.path(),
        "[primary]\ndatacenter = \"dc1\"\n".into(),
    );
    let secondary = Tier::new(
        "secondary",
        dir.path(),
        format!(
            "[secondary]\ndatacenter = \"dc1\"\n[secondary.push]\ndestinations = [\"{}\"]\n",
            primary.url()
        ),
    );
    let _p = primary.start();
    let _s = secondary.start();
    let verify = |read: &str| {
        std::process::Command::new(crate::util::bin())
            .args([
                "verify",
                "--once",
                "--duration",
                "3s",
                "--interval",
                "300ms",
            ])
            .args([
                "--timeout",
                "8s",
                "--write",
                &secondary.url(),
                "--primary",
                read,
            ])
            .output()
            .unwrap()
    };
    let ok = verify(&primary.url());
    let out = String::from_utf8_lossy(&ok.stdout);
    eprintln!("{out}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(ok.status.success(), "{out}");
    assert!(out.contains("primary"), "{out}");

    // A store that the written samples never reach: reported as lost.
    let lone = Tier::new("secondary", &dir.path().join("lone"), String::new());
    let _l = lone.start();
    let bad = verify(&lone.url());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("primary"))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // tier name (2 words), expected, seen, missing…
    assert_eq!(cols[3], "0", "nothing seen: {row}");
    assert_ne!(cols[4], "0", "everything missing: {row}");
}

/// `query`'s result at now, as (labels, value) by the `by` label.
fn by_label(base: &str, query: &str, by: &str) -> BTreeMap<String, f64> {
    query_now(base, query, 0.0, &[])["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"][by].as_str().unwrap_or_default().to_owned(),
                r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn two_datacenters_a_partition_goes_dark_then_backfills_and_down_hosts_stay_apart() {
    use crate::fleetsim::{Fleet, Mode};
    const HOSTS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let port = free_port();
    let fleet = rt
        .block_on(Fleet::start(2 * HOSTS, 40, port))
        .expect("the fleet simulator binds 127.10.0.x");
    let mut global = Tier::new("global", dir.path(), String::new());
    let proxies: Vec<crate::util::Proxy> = (0..2)
        .map(|_| crate::util::Proxy::start(global.listen.parse().unwrap()))
        .collect();
    let mut tiers = Vec::new();
    let mut primaries = Vec::new();
    for (d, proxy) in proxies.iter().enumerate() {
        let dc = format!("dc{}", d + 1);
        let ddir = dir.path().join(&dc);
        std::fs::create_dir_all(&ddir).unwrap();
        let scrape = ddir.join("scrape.yml");
        std::fs::write(
            &scrape,
            fleet.static_scrape_config(d * HOSTS..(d + 1) * HOSTS, 1),
        )
        .unwrap();
        let primary = Tier::new(
            "primary",
            &ddir,
            format!(
                "[primary]\ndatacenter = \"{dc}\"\nchild_timeout = \"4s\"\nwindow_grace = \"2s\"\n[primary.push]\ndestinations = [\"http://{}\"]\nmax_backoff = \"500ms\"\n",
                proxy.addr
            ),
        );
        for m in ["a", "b"] {
            tiers.push(
                Tier::new(
                    "secondary",
                    &ddir.join(m),
                    format!(
                        "[secondary]\ndatacenter = \"{dc}\"\nscrape_config = \"{}\"\n[secondary.shard]\nname = \"pair-1\"\nshards = [\"pair-1\"]\nmember = \"{m}\"\n[secondary.push]\ndestinations = [\"{}\"]\nmax_backoff = \"500ms\"\n",
                        scrape.display(),
                        primary.url()
                    ),
                )
                .start(),
            );
        }
        primaries.push(primary);
    }
    global.config = "[global]\nchild_timeout = \"4s\"\n".into();
    let g = global.start();
    let _p: Vec<Tiermon> = primaries.iter().map(Tier::start).collect();
    let dark = "tiermon_child_up{instance=\"global\",tier=\"primary\"}";
    eventually(
        "both datacenters reporting",
        Duration::from_secs(30),
        || {
            let up = by_label(&global.url(), dark, "child");
            (up.len() == 2 && up.values().all(|v| *v == 1.0)).then_some(())
        },
    );
    let cut_at = now_ms();

    // dc1 is cut off from the global tier; a host of dc2 fails, and so
    // does one secondary of dc2's pair (SIGKILL).
    proxies[0].cut();
    tiers.remove(2).kill();
    fleet.hosts[HOSTS].set_mode(Mode::Error5xx);
    let failed = fleet.hosts[HOSTS].addr.to_string();
    eventually(
        "dc1 dark while dc2 reports",
        Duration::from_secs(40),
        || {
            let up = by_label(&global.url(), dark, "child");
            (up.get("primary/dc1") == Some(&0.0) && up.get("primary/dc2") == Some(&1.0))
                .then_some(())
        },
    );
    // The failed host is down at the global tier, and only it: a host
    // that is down is not a datacenter gone dark.
    eventually(
        "the failed host down at the global tier",
        Duration::from_secs(90),
        || {
            let up = by_label(
                &global.url(),
                "up{datacenter=\"dc2\",job=\"node\"}",
                "instance",
            );
            (up.len() == HOSTS
                && up[&failed] == 0.0
                && up.iter().filter(|(_, v)| **v == 1.0).count() == HOSTS - 1)
                .then_some(())
        },
    );

    // The partition heals: dc1 backfills every window it missed.
    proxies[0].restore();
    eventually("dc1 reporting again", Duration::from_secs(90), || {
        (by_label(&global.url(), dark, "child").get("primary/dc1") == Some(&1.0)).then_some(())
    });
    let healed = now_ms();
    let windows = |s: &[(i64, f64)]| -> Vec<i64> { s.iter().map(|x| x.0 / 60_000).collect() };
    let got = eventually(
        "dc1's missed windows at the global tier",
        Duration::from_secs(90),
        || {
            let got = raw(
                &global.url(),
                "up{datacenter=\"dc1\",job=\"node\"}",
                "10m",
                "instance",
            );
            let complete = got.len() == HOSTS
                && got.values().all(|s| {
                    let w = windows(s);
                    w.contains(&(cut_at / 60_000)) && w.contains(&(healed / 60_000 - 1))
                });
            complete.then_some(got)
        },
    );
    for (host, s) in &got {
        let w = windows(s);
        for pair in w.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{host}: a window missing or doubled: {w:?}"
            );
        }
        assert!(s.iter().all(|x| x.1 == 1.0), "{host}: {s:?}");
    }
    // dc2 lost a secondary: its partner kept every window coming.
    let dc2 = raw(
        &global.url(),
        "up{datacenter=\"dc2\",job=\"node\"}",
        "10m",
        "instance",
    );
    assert_eq!(dc2.len(), HOSTS);
    for (host, s) in &dc2 {
        let w = windows(s);
        assert!(w.contains(&(healed / 60_000 - 1)), "{host}: {w:?}");
        for pair in w.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{host}: a window missing or doubled: {w:?}"
            );
        }
    }
    drop((g, tiers));
}

#[test]
fn with_two_primaries_losing_one_loses_nothing_and_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let pa = Tier::new(
        "primary",
        &dir.path().join("a"),
        "[primary]\ndatacenter = \"dc1\"\n".into(),
    );
    let pb = Tier::new(
        "primary",
        &dir.path().join("b"),
        "[primary]\ndatacenter = \"dc1\"\n".into(),
    );
    let secondary = Tier::new(
        "secondary",
        dir.path(),
        format!(
            "[secondary]\ndatacenter = \"dc1\"\n[secondary.push]\ndestinations = [\"{}\", \"{}\"]\nmax_backoff = \"500ms\"\n",
            pa.url(),
            pb.url()
        ),
    );
    let a = pa.start();
    let _b = pb.start();
    let _s = secondary.start();
    let mut a = Some(a);
    let mut acked = Vec::new();
    for i in 0..40 {
        if i == 10 {
            a.take().unwrap().kill();
        }
        let t = now_ms();
        if write(&secondary.url(), t, f64::from(i)) {
            acked.push((t, f64::from(i)));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(acked.len(), 40, "the secondary acknowledged every write");
    let complete = |base: &str| {
        let got = raw(base, "verify_value{k=\"0\"}", "10m", "k");
        (got.get("0") == Some(&acked)).then_some(())
    };
    eventually(
        "primary b to hold everything",
        Duration::from_secs(20),
        || complete(&pb.url()),
    );
    // Primary a returns and gets what it missed from the secondary's WAL.
    let _a = pa.start();
    eventually("primary a to catch up", Duration::from_secs(30), || {
        complete(&pa.url())
    });
}

/// The alerts `base` lists at `/api/v1/alerts`, as
/// `alertname state datacenter` lines, sorted.
fn alerts_at(base: &str) -> Vec<String> {
    let (status, body) = http("GET", &format!("{base}/api/v1/alerts"), &[], None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<String> = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["labels"]["alertname"].as_str().unwrap_or(""),
                a["state"].as_str().unwrap_or(""),
                a["labels"]["datacenter"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn alert_states_reach_the_global_tier_and_leave_with_a_dark_datacenter() {
    let dir = tempfile::tempdir().unwrap();
    let rules = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let secondary_rules = rules(
        "secondary-rules.yml",
        "groups:\n  - name: probe\n    interval: 1s\n    rules:\n      - alert: ProbeHigh\n        expr: verify_value{k=\"0\"} > 5\n      - alert: ProbeHighForAnHour\n        expr: verify_value{k=\"0\"} > 5\n        for: 1h\n",
    );
    let primary_rules = rules(
        "primary-rules.yml",
        "groups:\n  - name: dc\n    interval: 1s\n    rules:\n      - alert: PrimaryWatch\n        expr: vector(1)\n",
    );
    let mut global = Tier::new("global", dir.path(), String::new());
    let primary = Tier::new(
        "primary",
        dir.path(),
        format!(
            "[primary]\ndatacenter = \"dc1\"\n[primary.push]\ndestinations = [\"{}\"]\nmax_backoff = \"500ms\"\n[primary.rules]\nfiles = [\"{primary_rules}\"]\n",
            global.url()
        ),
    );
    let secondary = Tier::new(
        "secondary",
        dir.path(),
        format!(
            "[secondary]\ndatacenter = \"dc1\"\n[secondary.push]\ndestinations = [\"{}\"]\n[secondary.rules]\nfiles = [\"{secondary_rules}\"]\n",
            primary.url()
        ),
    );
    global.config = "[global]\nchild_timeout = \"3s\"\n".into();
    let _g = global.start();
    let mut p = Some(primary.start());
    let _s = secondary.start();

    // The probe rises above the threshold: the secondary's alerts (one
    // firing, one pending for an hour) and the primary's own reach the
    // global tier, named by datacenter.
    assert!(write(&secondary.url(), now_ms(), 10.0));
    let want = [
        "PrimaryWatch firing dc1",
        "ProbeHigh firing dc1",
        "ProbeHighForAnHour pending dc1",
    ];
    let limit = Duration::from_secs(20);
    eventually("the alerts at the global tier", limit, || {
        (alerts_at(&global.url()) == want).then_some(())
    });
    // The primary lists its own (without external labels, as Prometheus
    // does) and its secondary's.
    assert_eq!(
        alerts_at(&primary.url()),
        [
            "PrimaryWatch firing ",
            "ProbeHigh firing dc1",
            "ProbeHighForAnHour pending dc1"
        ]
    );
    // Over gRPC, each names where it was evaluated.
    let cli = crate::util::query_cli(&global.url(), &["--output", "json", "alerts"]);
    let listed: Value = serde_json::from_str(&cli).unwrap();
    let sources: BTreeMap<String, String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap().to_owned(),
                a["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(sources["PrimaryWatch"], "primary/dc1", "{cli}");
    assert!(sources["ProbeHigh"].starts_with("secondary/dc1"), "{cli}");

    // The probe falls back: the secondary's alerts resolve everywhere.
    assert!(write(&secondary.url(), now_ms(), 0.0));
    eventually(
        "the resolved alerts to leave the global tier",
        limit,
        || (alerts_at(&global.url()) == ["PrimaryWatch firing dc1"]).then_some(()),
    );

    // The datacenter goes dark: its alerts are no longer shown as if
    // current, and the datacenter is reported dark instead.
    assert!(write(&secondary.url(), now_ms(), 10.0));
    eventually("the probe alert again", limit, || {
        alerts_at(&global.url())
            .contains(&"ProbeHigh firing dc1".to_owned())
            .then_some(())
    });
    p.take().unwrap().kill();
    eventually("the dark datacenter's alerts to leave", limit, || {
        alerts_at(&global.url()).is_empty().then_some(())
    });
    eventually("the datacenter to be reported dark", limit, || {
        (latest(
            &global.url(),
            "tiermon_child_up{child=\"primary/dc1\",via=\"\"}",
        ) == Some(0.0))
        .then_some(())
    });
    // Back: the first batch of the new stream carries the whole set.
    let _p = primary.start();
    eventually("the alerts after the primary's restart", limit, || {
        (alerts_at(&global.url()) == want).then_some(())
    });
}
