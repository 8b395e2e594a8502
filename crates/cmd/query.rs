//! `tiermon query`: the operators' CLI over the gRPC query service.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, bail};
use tiermon_proto::v1;
use tiermon_proto::v1::query_client::QueryClient;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// gRPC address of any tier (the HTTP API's address).
    #[arg(long, default_value = "http://127.0.0.1:9191", env = "TIERMON_SERVER")]
    server: String,
    /// Output: a table, JSON, or a terminal chart (range queries).
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Longest the server may work on the query.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// At the global tier: read raw data from the datacenters' primaries
    /// instead of the 1-minute aggregates.
    #[arg(long)]
    full_resolution: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
    Chart,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// A PromQL query at one instant.
    Instant {
        query: String,
        /// When: `now`, `-5m` (relative), Unix seconds or RFC 3339.
        #[arg(long, default_value = "now")]
        time: String,
    },
    /// A PromQL query over a time range.
    Range {
        query: String,
        #[arg(long, default_value = "-1h")]
        start: String,
        #[arg(long, default_value = "now")]
        end: String,
        /// Resolution; by default about 120 points.
        #[arg(long, value_parser = humantime::parse_duration)]
        step: Option<Duration>,
    },
    /// Series matching selectors.
    Series {
        #[arg(required = true)]
        selectors: Vec<String>,
    },
    /// Label names, or the values of one label.
    Labels {
        name: Option<String>,
        /// Only series matching this selector.
        #[arg(long = "match")]
        selector: Option<String>,
    },
    /// Pending and firing alerts the tier evaluates.
    Alerts {
        /// Only alerts matching this selector (`{severity="critical"}`).
        #[arg(long = "match")]
        selector: Option<String>,
    },
    /// The scrape targets of a secondary, with their state.
    Targets {
        /// `active`, `dropped`, or both.
        #[arg(long, default_value = "active")]
        state: String,
    },
}

use tiermon_model::now_ms;

/// `now`, `-5m`, Unix seconds or RFC 3339, to milliseconds.
fn parse_time(s: &str) -> anyhow::Result<i64> {
    if s == "now" {
        return Ok(now_ms());
    }
    if let Some(rel) = s.strip_prefix('-')
        && let Ok(d) = humantime::parse_duration(rel)
    {
        return Ok(now_ms() - d.as_millis() as i64);
    }
    if let Ok(f) = s.parse::<f64>() {
        return Ok((f * 1000.0).round() as i64);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("time {s:?}: use now, -5m, Unix seconds or RFC 3339"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

fn selector_set(s: &str) -> anyhow::Result<v1::SelectorSet> {
    let ms = tiermon_api::parse_selector(s).map_err(|e| anyhow::anyhow!(e))?;
    Ok(v1::SelectorSet {
        matchers: ms
            .into_iter()
            .map(|m| v1::LabelMatcher {
                r#type: match m.op() {
                    tiermon_model::MatchOp::Equal => v1::label_matcher::Type::Eq,
                    tiermon_model::MatchOp::NotEqual => v1::label_matcher::Type::Neq,
                    tiermon_model::MatchOp::Regex => v1::label_matcher::Type::Re,
                    tiermon_model::MatchOp::NotRegex => v1::label_matcher::Type::Nre,
                } as i32,
                name: m.name().to_owned(),
                value: m.value().to_owned(),
            })
            .collect(),
    })
}

/// Shows elapsed time on a terminal while a query runs.
struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    fn start() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let started = Instant::now();
        Self(Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            for i in 0.. {
                eprint!(
                    "\r{} querying… {:.1}s",
                    frames[i % frames.len()],
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
            eprint!("\r\x1b[K");
        }
    }
}

fn labels_text(l: &[v1::Label]) -> String {
    let name = l
        .iter()
        .find(|x| x.name == "__name__")
        .map(|x| x.value.as_str())
        .unwrap_or("");
    let rest: Vec<String> = l
        .iter()
        .filter(|x| x.name != "__name__")
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

fn labels_json(l: &[v1::Label]) -> serde_json::Value {
    serde_json::Value::Object(
        l.iter()
            .map(|x| (x.name.clone(), serde_json::Value::String(x.value.clone())))
            .collect(),
    )
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One line per series: a sparkline scaled to all series' min and max.
fn chart(series: &[v1::Series], width: usize) -> String {
    let vals = series
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| x.value))
        .filter(|v| v.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let mut out = String::new();
    for s in series {
        let n = s.samples.len();
        let cols = n.min(width).max(1);
        let mut line = String::new();
        for c in 0..cols {
            let from = c * n / cols;
            let to = ((c + 1) * n / cols).max(from + 1).min(n);
            let bucket: Vec<f64> = s.samples[from..to]
                .iter()
                .map(|x| x.value)
                .filter(|v| v.is_finite())
                .collect();
            if bucket.is_empty() {
                line.push(' ');
                continue;
            }
            let avg = bucket.iter().sum::<f64>() / bucket.len() as f64;
            let k = if hi > lo {
                ((avg - lo) / (hi - lo) * 7.0).round() as usize
            } else {
                3
            };
            line.push(BARS[k.min(7)]);
        }
        out.push_str(&format!("{line}  {}\n", labels_text(&s.labels)));
    }
    out.push_str(&format!("scale: {lo} … {hi}\n"));
    out
}

fn print_result(output: Output, resp: &[v1::QueryResponse]) -> anyhow::Result<()> {
    use v1::query_response::ResultType;
    let kind = resp
        .first()
        .and_then(|r| ResultType::try_from(r.result_type).ok())
        .unwrap_or(ResultType::Vector);
    let series: Vec<v1::Series> = resp.iter().flat_map(|r| r.series.clone()).collect();
    let mut stdout = std::io::stdout().lock();
    for r in resp {
        for p in &r.partial {
            eprintln!(
                "warning: partial result: {} did not answer: {}",
                p.source, p.error
            );
        }
    }
    match (kind, output) {
        (ResultType::Scalar | ResultType::String, Output::Json) => {
            let r = &resp[0];
            let v = r.scalar.as_ref().map_or(0.0, |s| s.value);
            writeln!(
                stdout,
                "{}",
                serde_json::json!({"scalar": v, "string": r.string_value})
            )?;
        }
        (ResultType::Scalar, _) => writeln!(
            stdout,
            "{}",
            resp[0].scalar.as_ref().map_or(f64::NAN, |s| s.value)
        )?,
        (ResultType::String, _) => writeln!(stdout, "{}", resp[0].string_value)?,
        (_, Output::Json) => {
            let v: Vec<serde_json::Value> = series
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "metric": labels_json(&s.labels),
                        "values": s.samples.iter().map(|x| serde_json::json!([x.timestamp_ms as f64 / 1000.0, x.value.to_string()])).collect::<Vec<_>>(),
                    })
                })
                .collect();
            writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        (ResultType::Matrix, Output::Chart) => write!(stdout, "{}", chart(&series, 80))?,
        (ResultType::Matrix, Output::Table) => {
            writeln!(
                stdout,
                "{:<8} {:>14} {:>14} {:>14}  SERIES",
                "POINTS", "MIN", "MAX", "LAST"
            )?;
            for s in &series {
                let vals: Vec<f64> = s.samples.iter().map(|x| x.value).collect();
                let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
                let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let last = vals.last().copied().unwrap_or(f64::NAN);
                writeln!(
                    stdout,
                    "{:<8} {min:>14.6} {max:>14.6} {last:>14.6}  {}",
                    vals.len(),
                    labels_text(&s.labels)
                )?;
            }
        }
        _ => {
            writeln!(stdout, "{:>16}  SERIES", "VALUE")?;
            for s in &series {
                let v = s.samples.first().map_or(f64::NAN, |x| x.value);
                writeln!(stdout, "{v:>16}  {}", labels_text(&s.labels))?;
            }
        }
    }
    Ok(())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = QueryClient::connect(args.server.clone())
        .await
        .with_context(|| format!("connecting to {}", args.server))?
        .max_decoding_message_size(256 << 20);
    let timeout_ms = args.timeout.as_millis() as i64;
    let status = |e: tonic::Status| anyhow::anyhow!("{}: {}", args.server, e.message());
    match args.what {
        What::Instant { query, time } => {
            let req = v1::InstantQueryRequest {
                query,
                time_ms: parse_time(&time)?,
                timeout_ms,
                full_resolution: args.full_resolution,
            };
            let _p = Progress::start();
            let resp = client.instant(req).await.map_err(status)?.into_inner();
            drop(_p);
            print_result(args.output, &[resp])?;
        }
        What::Range {
            query,
            start,
            end,
            step,
        } => {
            let (start, end) = (parse_time(&start)?, parse_time(&end)?);
            if end < start {
                bail!("--end is before --start");
            }
            let step_ms = step.map_or(((end - start) / 120).max(1000), |s| s.as_millis() as i64);
            let req = v1::RangeQueryRequest {
                query,
                start_ms: start,
                end_ms: end,
                step_ms,
                timeout_ms,
                full_resolution: args.full_resolution,
            };
            let _p = Progress::start();
            let mut stream = client.range(req).await.map_err(status)?.into_inner();
            let mut all = Vec::new();
            while let Some(m) = stream.message().await.map_err(status)? {
                all.push(m);
            }
            drop(_p);
            print_result(args.output, &all)?;
        }
        What::Series { selectors } => {
            let sets = selectors
                .iter()
                .map(|s| selector_set(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut stream = client
                .series(v1::SeriesRequest {
                    selectors: sets,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(m) = stream.message().await.map_err(status)? {
                for s in m.series {
                    match args.output {
                        Output::Json => writeln!(out, "{}", labels_json(&s.labels))?,
                        _ => writeln!(out, "{}", labels_text(&s.labels))?,
                    }
                }
            }
        }
        What::Labels { name, selector } => {
            let selectors = selector
                .iter()
                .map(|s| selector_set(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let list = match name {
                None => {
                    client
                        .label_names(v1::LabelNamesRequest {
                            selectors,
                            ..Default::default()
                        })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .names
                }
                Some(name) => {
                    client
                        .label_values(v1::LabelValuesRequest {
                            name,
                            selectors,
                            ..Default::default()
                        })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .values
                }
            };
            match args.output {
                Output::Json => println!("{}", serde_json::to_string(&list)?),
                _ => list.iter().for_each(|l| println!("{l}")),
            }
        }
        What::Alerts { selector } => {
            let matchers = match selector {
                Some(s) => selector_set(&s)?.matchers,
                None => Vec::new(),
            };
            let alerts = client
                .alerts(v1::AlertsRequest { matchers })
                .await
                .map_err(status)?
                .into_inner()
                .alerts;
            let state =
                |a: &v1::Alert| match v1::alert::State::try_from(a.state).unwrap_or_default() {
                    v1::alert::State::Pending => "pending",
                    v1::alert::State::Firing => "firing",
                    v1::alert::State::Inactive => "inactive",
                };
            match args.output {
                Output::Json => {
                    let list: Vec<serde_json::Value> = alerts
                        .iter()
                        .map(|a| {
                            let map =
                                |l: &[v1::Label]| -> serde_json::Map<String, serde_json::Value> {
                                    l.iter()
                                        .map(|l| (l.name.clone(), l.value.clone().into()))
                                        .collect()
                                };
                            serde_json::json!({
                                "labels": map(&a.labels),
                                "annotations": map(&a.annotations),
                                "state": state(a),
                                "activeAt": tiermon_model::rfc3339(a.active_at_ms),
                                "value": a.value,
                                "source": a.source,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string(&list)?);
                }
                _ => {
                    for a in &alerts {
                        println!(
                            "{:<8} {}  since {}  value {}  ({})",
                            state(a),
                            labels_text(&a.labels),
                            tiermon_model::rfc3339(a.active_at_ms),
                            a.value,
                            a.source
                        );
                    }
                }
            }
        }
        What::Targets { state } => {
            let r = client
                .targets(v1::TargetsRequest { state })
                .await
                .map_err(status)?
                .into_inner();
            match args.output {
                Output::Json => {
                    let list = |ts: &[v1::Target]| -> Vec<serde_json::Value> {
                        ts.iter()
                            .map(|t| {
                                serde_json::json!({
                                    "pool": t.scrape_pool,
                                    "url": t.scrape_url,
                                    "labels": labels_text(&t.labels),
                                    "discoveredLabels": labels_text(&t.discovered_labels),
                                    "health": t.health,
                                    "lastError": t.last_error,
                                    "lastScrape": tiermon_model::rfc3339(t.last_scrape_ms),
                                    "lastScrapeDuration": t.last_scrape_duration_seconds,
                                })
                            })
                            .collect()
                    };
                    let out =
                        serde_json::json!({"active": list(&r.active), "dropped": list(&r.dropped)});
                    println!("{out}");
                }
                _ => {
                    for t in &r.active {
                        println!(
                            "{:<8} {:<12} {}  {:.3}s  {}",
                            t.health,
                            t.scrape_pool,
                            t.scrape_url,
                            t.last_scrape_duration_seconds,
                            t.last_error
                        );
                    }
                    for t in &r.dropped {
                        println!(
                            "dropped  {:<12} {}  {}",
                            t.scrape_pool,
                            labels_text(&t.discovered_labels),
                            t.last_error
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        let rel = parse_time("-1h").unwrap();
        assert!((now_ms() - rel - 3_600_000).abs() < 5_000);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn chart_scales_every_series_to_one_range() {
        let s = |vals: &[f64]| v1::Series {
            labels: vec![v1::Label {
                name: "__name__".into(),
                value: "x".into(),
            }],
            samples: vals
                .iter()
                .enumerate()
                .map(|(i, &v)| v1::Sample {
                    timestamp_ms: i as i64,
                    value: v,
                })
                .collect(),
            ..Default::default()
        };
        let c = chart(&[s(&[0.0, 7.0]), s(&[7.0, 7.0])], 80);
        let lines: Vec<&str> = c.lines().collect();
        assert!(lines[0].starts_with("▁█"), "{c}");
        assert!(lines[1].starts_with("██"), "{c}");
    }
}
