//! `tiermon verify`: end-to-end evidence across the tiers. Writes known
//! series (`tiermon_verify_sample{run, k}`, value = the write's number)
//! into a secondary through remote_write, and reads them back at the
//! primaries (every sample, exactly once) and at the global tier (one
//! aggregate per closed minute: the window's last sample), reporting
//! missing and duplicated samples and the end-to-end delay as metrics and,
//! with `--once`, as the exit status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use prost::Message;
use tiermon_federation::Metric;
use tiermon_proto::prometheus as pb;

use crate::tier::{self, now_ms};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The secondary written to (its remote_write intake), e.g.
    /// `http://secondary:9191`.
    #[arg(long)]
    write: String,
    /// A primary to read the samples back from at full resolution
    /// (repeatable).
    #[arg(long)]
    primary: Vec<String>,
    /// The global tier, to read the one-minute aggregates back from.
    #[arg(long)]
    global: Option<String>,
    /// Write for `--duration`, wait for every sample, report and exit: 0
    /// when nothing was lost or doubled, 1 otherwise.
    #[arg(long)]
    once: bool,
    /// How long `--once` writes (long enough for a minute window to close
    /// at the global tier).
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Between writes (and checks).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// A sample not seen this long after it was acknowledged (a window
    /// after it closed) counts as lost.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Series written at each write.
    #[arg(long, default_value_t = 4)]
    series: usize,
    /// Serve the results at /metrics on this address (continuous mode).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

const WINDOW_MS: i64 = 60_000;

/// What one tier showed of the run.
#[derive(Debug, Default, Clone)]
struct TierResult {
    /// Samples expected so far.
    expected: usize,
    /// Expected samples seen.
    seen: usize,
    /// Expected samples not seen within the timeout.
    missing: usize,
    /// Expected samples not seen yet, still within the timeout.
    pending: usize,
    /// Samples seen that were not written (a duplicate at another
    /// timestamp, or a wrong value).
    unexpected: usize,
    /// End-to-end delays of the samples seen, seconds.
    delays: Vec<f64>,
    /// The last error reading from the tier.
    error: String,
}

#[derive(Debug, Default)]
struct State {
    /// Acknowledged writes: timestamp → value.
    written: BTreeMap<i64, f64>,
    /// Writes acknowledged, in all.
    acked: u64,
    refused: u64,
    /// When each expected sample was first seen (ms), by tier, series and
    /// timestamp.
    first_seen: BTreeMap<(String, String, i64), i64>,
    results: BTreeMap<String, TierResult>,
    /// Per tier, the counts of writes judged for good and forgotten (see
    /// [`settle`]), so a continuous run holds a bounded window.
    settled: BTreeMap<String, TierResult>,
}

/// Delays kept per tier for the quantiles.
const MAX_DELAYS: usize = 10_000;

/// Judges for good the writes of whole minute windows older than
/// `horizon_ms` (their samples are seen or lost by then), adds them to the
/// tier's settled counts and forgets them: a continuous run keeps memory
/// and read ranges bounded.
fn settle(st: &mut State, tiers: &[Tier], series: usize, horizon_ms: i64) {
    let cutoff = (now_ms() - horizon_ms).div_euclid(WINDOW_MS) * WINDOW_MS;
    let old: BTreeMap<i64, f64> = st.written.range(..cutoff).map(|(&t, &v)| (t, v)).collect();
    if old.is_empty() {
        return;
    }
    for tier in tiers {
        let base = st.settled.entry(tier.name.clone()).or_default();
        for (t, _, due_from) in expected(&old, tier.aggregated, false) {
            for k in 0..series {
                base.expected += 1;
                match st.first_seen.remove(&(tier.name.clone(), k.to_string(), t)) {
                    Some(first) => {
                        base.seen += 1;
                        base.delays.push((first - due_from).max(0) as f64 / 1000.0);
                    }
                    None => base.missing += 1,
                }
            }
        }
        let excess = base.delays.len().saturating_sub(MAX_DELAYS);
        base.delays.drain(..excess);
    }
    st.written.retain(|&t, _| t >= cutoff);
}

struct Tier {
    name: String,
    base: String,
    aggregated: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let run_id = format!("{:016x}", rand::random::<u64>());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .context("making the HTTP client")?;
    let state = Arc::new(Mutex::new(State::default()));
    let mut tiers: Vec<Tier> = args
        .primary
        .iter()
        .map(|u| Tier {
            name: format!("primary {u}"),
            base: u.trim_end_matches('/').to_owned(),
            aggregated: false,
        })
        .collect();
    if let Some(g) = &args.global {
        tiers.push(Tier {
            name: format!("global {g}"),
            base: g.trim_end_matches('/').to_owned(),
            aggregated: true,
        });
    }
    if tiers.is_empty() {
        anyhow::bail!("nothing to read back: give --primary and/or --global");
    }
    if args.series == 0 {
        anyhow::bail!("--series must be at least 1");
    }
    if let Some(addr) = args.listen {
        let st = state.clone();
        let metrics = tier::MetricsFn::new(move || metrics(&st.lock()));
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(listen = %addr, "serving the results at /metrics");
        tokio::spawn(async move { axum::serve(l, tier::metrics_route(metrics)).await });
    }
    println!(
        "run {run_id}: writing {} series to {} every {:?}",
        args.series, args.write, args.interval
    );
    let start = Instant::now();
    let first_t = now_ms();
    let mut i = 0u64;
    let mut next_write = Instant::now();
    let mut stop = std::pin::pin!(crate::shutdown_signal());
    loop {
        let writing = !args.once || start.elapsed() < args.duration;
        if writing && Instant::now() >= next_write {
            next_write += args.interval;
            let t = now_ms();
            match write(&http, &args.write, &run_id, args.series, t, i as f64).await {
                Ok(()) => {
                    let mut st = state.lock();
                    st.written.insert(t, i as f64);
                    st.acked += 1;
                }
                Err(e) => {
                    state.lock().refused += 1;
                    tracing::warn!(error = %e, "write refused; not counted as written");
                }
            }
            i += 1;
        }
        // Samples are judged within the timeout; older windows are settled.
        let horizon_ms = args.timeout.as_millis() as i64 + 2 * WINDOW_MS;
        settle(&mut state.lock(), &tiers, args.series, horizon_ms);
        let range_ms = (now_ms() - first_t).min(horizon_ms) + 2 * WINDOW_MS;
        for t in &tiers {
            let got = read(&http, &t.base, &run_id, range_ms).await;
            let mut st = state.lock();
            let r = check(&mut st, t, got, args.series, args.timeout, writing);
            st.results.insert(t.name.clone(), r);
        }
        if args.once && !writing && state.lock().results.values().all(|r| r.pending == 0) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = &mut stop => break,
        }
    }
    let st = state.lock();
    report(&st);
    let bad = st.acked == 0
        || st
            .results
            .values()
            .any(|r| r.missing > 0 || r.unexpected > 0 || r.pending > 0);
    if args.once && bad {
        anyhow::bail!("verification failed: samples lost, doubled or never written");
    }
    Ok(())
}

async fn write(
    http: &reqwest::Client,
    base: &str,
    run: &str,
    series: usize,
    t: i64,
    v: f64,
) -> anyhow::Result<()> {
    let label = |n: &str, v: &str| pb::Label {
        name: n.into(),
        value: v.into(),
    };
    let req = pb::WriteRequest {
        timeseries: (0..series)
            .map(|k| pb::TimeSeries {
                labels: vec![
                    label("__name__", "tiermon_verify_sample"),
                    label("k", &k.to_string()),
                    label("run", run),
                ],
                samples: vec![pb::Sample {
                    value: v,
                    timestamp: t,
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .context("compressing")?;
    let resp = http
        .post(format!("{}/api/v1/write", base.trim_end_matches('/')))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await
        .with_context(|| format!("writing to {base}"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        anyhow::bail!("{base}: {status}: {}", text.trim());
    }
    Ok(())
}

/// The run's samples at a tier, by `k`.
async fn read(
    http: &reqwest::Client,
    base: &str,
    run: &str,
    range_ms: i64,
) -> Result<BTreeMap<String, Vec<(i64, f64)>>, String> {
    let q = format!("tiermon_verify_sample{{run=\"{run}\"}}[{range_ms}ms]");
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", &q)
        .finish();
    let resp = http
        .post(format!("{base}/api/v1/query"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(|e| format!("querying {base}: {e}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the answer of {base}: {e}"))?;
    let body: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{base}: not a Prometheus API answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("{base}: {status}: {}", body["error"]));
    }
    let mut out = BTreeMap::new();
    for r in body["data"]["result"].as_array().into_iter().flatten() {
        let k = r["metric"]["k"].as_str().unwrap_or_default().to_owned();
        let samples: Vec<(i64, f64)> = r["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let t = (p[0].as_f64()? * 1000.0).round() as i64;
                let v = p[1].as_str()?.parse::<f64>().ok()?;
                Some((t, v))
            })
            .collect();
        out.entry(k).or_insert_with(Vec::new).extend(samples);
    }
    Ok(out)
}

/// The samples a tier should hold, with the time from which each is due:
/// every write at full resolution; at the global tier, the last write of
/// each minute window that writing has finished with.
fn expected(written: &BTreeMap<i64, f64>, aggregated: bool, writing: bool) -> Vec<(i64, f64, i64)> {
    if !aggregated {
        return written.iter().map(|(&t, &v)| (t, v, t)).collect();
    }
    let mut by_window: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
    for (&t, &v) in written {
        by_window.insert(t.div_euclid(WINDOW_MS), (t, v));
    }
    let last_window = written.keys().next_back().map(|t| t.div_euclid(WINDOW_MS));
    by_window
        .into_iter()
        .filter(|(w, _)| !writing || Some(*w) != last_window)
        .map(|(w, (t, v))| (t, v, (w + 1) * WINDOW_MS))
        .collect()
}

fn check(
    st: &mut State,
    tier: &Tier,
    got: Result<BTreeMap<String, Vec<(i64, f64)>>, String>,
    series: usize,
    timeout: Duration,
    writing: bool,
) -> TierResult {
    // Counts start from what was settled before the current window.
    let mut r = st.settled.get(&tier.name).cloned().unwrap_or_default();
    let got = match got {
        Ok(g) => g,
        Err(e) => {
            r = st.results.get(&tier.name).cloned().unwrap_or_default();
            r.error = e;
            return r;
        }
    };
    let now = now_ms();
    let want = expected(&st.written, tier.aggregated, writing);
    let timeout_ms = timeout.as_millis() as i64;
    for k in 0..series {
        let key = k.to_string();
        let have: BTreeMap<i64, f64> = got
            .get(&key)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        for &(t, v, due_from) in &want {
            r.expected += 1;
            if have.get(&t).is_some_and(|&x| x == v) {
                r.seen += 1;
                let first = *st
                    .first_seen
                    .entry((tier.name.clone(), key.clone(), t))
                    .or_insert(now);
                r.delays.push((first - due_from).max(0) as f64 / 1000.0);
            } else if now - due_from > timeout_ms {
                r.missing += 1;
            } else {
                r.pending += 1;
            }
        }
        // At full resolution every sample held must be one written; at the
        // global tier, one per window, the window's last.
        r.unexpected += have
            .iter()
            .filter(|&(t, v)| match want.iter().find(|w| w.0 == *t) {
                Some(w) => w.1 != *v,
                None => {
                    !tier.aggregated
                        || want
                            .iter()
                            .any(|w| w.0.div_euclid(WINDOW_MS) == t.div_euclid(WINDOW_MS))
                }
            })
            .count();
    }
    r
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn report(st: &State) {
    println!(
        "written: {} writes acknowledged, {} refused",
        st.acked, st.refused
    );
    println!(
        "{:<40} {:>9} {:>7} {:>8} {:>8} {:>11} {:>9} {:>9}",
        "tier", "expected", "seen", "missing", "pending", "unexpected", "p50 s", "p99 s"
    );
    for (name, r) in &st.results {
        println!(
            "{:<40} {:>9} {:>7} {:>8} {:>8} {:>11} {:>9.2} {:>9.2}{}",
            name,
            r.expected,
            r.seen,
            r.missing,
            r.pending,
            r.unexpected,
            quantile(&r.delays, 0.5),
            quantile(&r.delays, 0.99),
            if r.error.is_empty() {
                String::new()
            } else {
                format!("  error: {}", r.error)
            }
        );
    }
}

fn metrics(st: &State) -> Vec<Metric> {
    let per = |f: fn(&TierResult) -> f64| -> Vec<(Vec<(&'static str, String)>, f64)> {
        st.results
            .iter()
            .map(|(n, r)| (vec![("tier", n.clone())], f(r)))
            .collect()
    };
    vec![
        Metric {
            name: "tiermon_verify_written_total",
            help: "Writes of the known series that the secondary acknowledged.",
            kind: "counter",
            series: vec![(Vec::new(), st.acked as f64)],
        },
        Metric {
            name: "tiermon_verify_refused_total",
            help: "Writes of the known series that the secondary refused.",
            kind: "counter",
            series: vec![(Vec::new(), st.refused as f64)],
        },
        Metric {
            name: "tiermon_verify_missing_samples",
            help: "Acknowledged samples not seen at the tier within the timeout.",
            kind: "gauge",
            series: per(|r| r.missing as f64),
        },
        Metric {
            name: "tiermon_verify_unexpected_samples",
            help: "Samples seen at the tier that were not written (duplicates, wrong values).",
            kind: "gauge",
            series: per(|r| r.unexpected as f64),
        },
        Metric {
            name: "tiermon_verify_delay_p99_seconds",
            help: "99th percentile of the delay from write (or window end) to visible at the tier.",
            kind: "gauge",
            series: per(|r| quantile(&r.delays, 0.99)),
        },
        Metric {
            name: "tiermon_verify_up",
            help: "1 when the tier answered the last read.",
            kind: "gauge",
            series: per(|r| f64::from(u8::from(r.error.is_empty()))),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_tier_expects_the_last_write_of_each_finished_window() {
        let w: BTreeMap<i64, f64> = [(59_000, 1.0), (61_000, 2.0), (119_000, 3.0), (125_000, 4.0)]
            .into_iter()
            .collect();
        let e = expected(&w, true, true);
        assert_eq!(e, vec![(59_000, 1.0, 60_000), (119_000, 3.0, 120_000)]);
        let e = expected(&w, true, false);
        assert_eq!(e.len(), 3);
        assert_eq!(expected(&w, false, true).len(), 4);
    }

    #[test]
    fn settled_windows_are_counted_once_and_forgotten() {
        let mut st = State::default();
        let now = now_ms();
        let tier = Tier {
            name: "p".into(),
            base: String::new(),
            aggregated: false,
        };
        let old = (now - 600_000).div_euclid(WINDOW_MS) * WINDOW_MS;
        for (t, v) in [(old, 0.0), (old + 1_000, 1.0), (now - 1_000, 2.0)] {
            st.written.insert(t, v);
        }
        st.first_seen
            .insert(("p".into(), "0".into(), old), old + 500);
        settle(&mut st, std::slice::from_ref(&tier), 1, 300_000);
        assert_eq!(st.written.len(), 1, "the recent write stays");
        let base = &st.settled["p"];
        assert_eq!((base.expected, base.seen, base.missing), (2, 1, 1));
        assert_eq!(base.delays, vec![0.5]);
        assert!(st.first_seen.is_empty());
        // A check then counts the settled writes with the open ones.
        let got: BTreeMap<String, Vec<(i64, f64)>> = [("0".to_owned(), vec![(now - 1_000, 2.0)])]
            .into_iter()
            .collect();
        let r = check(&mut st, &tier, Ok(got), 1, Duration::from_secs(60), true);
        assert_eq!((r.expected, r.seen, r.missing), (3, 2, 1));
    }

    #[test]
    fn check_counts_missing_pending_and_unexpected() {
        let mut st = State::default();
        let now = now_ms();
        st.written.insert(now - 600_000, 0.0);
        st.written.insert(now - 1_000, 1.0);
        let tier = Tier {
            name: "p".into(),
            base: String::new(),
            aggregated: false,
        };
        let got: BTreeMap<String, Vec<(i64, f64)>> =
            [("0".to_owned(), vec![(now - 1_000, 1.0), (now - 500, 9.0)])]
                .into_iter()
                .collect();
        let r = check(&mut st, &tier, Ok(got), 1, Duration::from_secs(60), true);
        assert_eq!(
            (r.expected, r.seen, r.missing, r.pending, r.unexpected),
            (2, 1, 1, 0, 1)
        );
    }
}
