//! Node-exporter-like series for the benchmarks that load stores with
//! generated data (`query.rs`, `intake.rs`): per host, 64 CPU-seconds
//! counters, 8 network byte counters, a 12-bucket request duration
//! histogram with its `_sum` and `_count`, 4 request counters and 10
//! gauges, every 15 s. Each value is a function of the series and the
//! step alone, so any store can be loaded in any order with the same data.

#![allow(dead_code, reason = "each benchmark uses a different part")]

use std::fmt::Write as _;

use prost::Message;
use tiermon_proto::prometheus as pb;

pub const STEP_MS: i64 = 15_000;
pub const PER_HOST: usize = 100;

/// A series: its labels, and how its value follows the step.
pub struct Spec {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    kind: Kind,
    seed: u64,
}

enum Kind {
    /// Grows by about `rate` per second.
    Counter {
        rate: f64,
        decimals: bool,
    },
    /// Wanders around `level`.
    Gauge {
        level: f64,
    },
    /// Cumulative bucket `b` (of 12) of a histogram seeded `host`, or its
    /// count (`b` = 11 too) or its sum.
    Bucket {
        b: usize,
    },
    Sum,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A number in [0, 1) fixed by `seed` and `i`.
fn unit(seed: u64, i: i64) -> f64 {
    (mix(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 11) as f64 / (1u64 << 53) as f64
}

const LE: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];
/// Requests per second falling in each bucket (not cumulative).
const BUCKET_RATE: [f64; 12] = [1.0, 2.0, 6.0, 9.0, 7.0, 4.0, 2.0, 1.0, 0.4, 0.1, 0.05, 0.01];
const BUCKET_MID: [f64; 12] = [
    0.003, 0.008, 0.018, 0.04, 0.075, 0.18, 0.38, 0.75, 1.8, 3.8, 7.5, 15.0,
];

/// A counter at `rate`/s that is monotonic: each step adds between 0.75
/// and 1.25 times the mean increment.
fn counter(seed: u64, rate: f64, i: i64) -> f64 {
    let inc = rate * (STEP_MS as f64 / 1000.0);
    inc * i as f64 + inc * 0.5 * unit(seed, i)
}

impl Spec {
    pub fn value(&self, i: i64) -> f64 {
        match self.kind {
            Kind::Counter { rate, decimals } => {
                let v = counter(self.seed, rate, i);
                if decimals {
                    (v * 100.0).round() / 100.0
                } else {
                    v.floor()
                }
            }
            Kind::Gauge { level } => {
                let wave = (i as f64 / 240.0 + (self.seed % 100) as f64).sin();
                (level * (1.0 + 0.2 * wave + 0.05 * unit(self.seed, i))).round()
            }
            Kind::Bucket { b } => (0..=b)
                .map(|k| counter(self.seed ^ k as u64, BUCKET_RATE[k], i).floor())
                .sum(),
            Kind::Sum => {
                let s: f64 = (0..12)
                    .map(|k| {
                        counter(self.seed ^ k as u64, BUCKET_RATE[k], i).floor() * BUCKET_MID[k]
                    })
                    .sum();
                (s * 1000.0).round() / 1000.0
            }
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::from(self.name);
        s.push('{');
        for (k, (n, v)) in self.labels.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            let _ = write!(s, "{n}=\"{v}\"");
        }
        s.push('}');
        s
    }
}

/// The fleet's series, grouped by metric name (OpenMetrics wants a
/// family's samples together).
pub fn fleet(series: usize) -> Vec<Spec> {
    let hosts = series.div_ceil(PER_HOST).max(1);
    let modes = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    let mode_rate = [0.85, 0.02, 0.001, 0.005, 0.01, 0.0, 0.05, 0.1];
    let gauges = [
        ("node_memory_MemAvailable_bytes", 8e9),
        ("node_memory_MemFree_bytes", 2e9),
        ("node_load1", 4.0),
        ("node_load5", 4.0),
        ("node_load15", 4.0),
        ("node_procs_running", 20.0),
        ("node_filesystem_avail_bytes_root", 5e10),
        ("node_filesystem_avail_bytes_var", 2e10),
        ("node_filesystem_avail_bytes_home", 1e11),
        ("node_entropy_available_bits", 3000.0),
    ];
    let inst = |h: usize| ("instance", format!("host-{h:05}:9100"));
    let job = || ("job", "node".to_owned());
    let mut out = Vec::with_capacity(hosts * PER_HOST);
    let mut seed = 1u64;
    let mut next = || {
        seed += 1;
        mix(seed)
    };
    for h in 0..hosts {
        for cpu in 0..8 {
            for (m, mode) in modes.iter().enumerate() {
                out.push(Spec {
                    name: "node_cpu_seconds_total",
                    labels: vec![
                        ("cpu", cpu.to_string()),
                        inst(h),
                        job(),
                        ("mode", mode.to_string()),
                    ],
                    kind: Kind::Counter {
                        rate: mode_rate[m],
                        decimals: true,
                    },
                    seed: next(),
                });
            }
        }
    }
    for name in [
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
    ] {
        for h in 0..hosts {
            for d in 0..4 {
                let s = next();
                out.push(Spec {
                    name,
                    labels: vec![("device", format!("eth{d}")), inst(h), job()],
                    kind: Kind::Counter {
                        rate: 1e5 + (s % 1_000_000) as f64,
                        decimals: false,
                    },
                    seed: s,
                });
            }
        }
    }
    let host_seed: Vec<u64> = (0..hosts).map(|_| next()).collect();
    for (h, &seed) in host_seed.iter().enumerate() {
        for (b, le) in LE.iter().enumerate() {
            out.push(Spec {
                name: "http_request_duration_seconds_bucket",
                labels: vec![inst(h), job(), ("le", le.to_string())],
                kind: Kind::Bucket { b },
                seed,
            });
        }
    }
    for (h, &seed) in host_seed.iter().enumerate() {
        out.push(Spec {
            name: "http_request_duration_seconds_sum",
            labels: vec![inst(h), job()],
            kind: Kind::Sum,
            seed,
        });
    }
    for (h, &seed) in host_seed.iter().enumerate() {
        out.push(Spec {
            name: "http_request_duration_seconds_count",
            labels: vec![inst(h), job()],
            kind: Kind::Bucket { b: 11 },
            seed,
        });
    }
    for h in 0..hosts {
        for (code, rate) in [("200", 30.0), ("404", 1.0), ("500", 0.2), ("503", 0.05)] {
            out.push(Spec {
                name: "http_requests_total",
                labels: vec![("code", code.to_owned()), inst(h), job()],
                kind: Kind::Counter {
                    rate,
                    decimals: false,
                },
                seed: next(),
            });
        }
    }
    for (name, level) in gauges {
        for h in 0..hosts {
            out.push(Spec {
                name,
                labels: vec![inst(h), job()],
                kind: Kind::Gauge { level },
                seed: next(),
            });
        }
    }
    out
}

/// The labels of each series, as remote_write sends them (sorted).
pub fn write_labels(specs: &[Spec]) -> Vec<Vec<pb::Label>> {
    specs
        .iter()
        .map(|s| {
            let mut l = vec![pb::Label {
                name: "__name__".into(),
                value: s.name.into(),
            }];
            l.extend(s.labels.iter().map(|(n, v)| pb::Label {
                name: (*n).into(),
                value: v.clone(),
            }));
            l.sort_by(|a, b| a.name.cmp(&b.name));
            l
        })
        .collect()
}

/// Snappy-compressed remote_write bodies for the steps `steps` (step `i`
/// at `first + i × 15 s`): per request `per_req` series with their samples
/// of the steps, series after series.
pub fn write_bodies(
    specs: &[Spec],
    labels: &[Vec<pb::Label>],
    steps: std::ops::Range<i64>,
    first: i64,
    per_req: usize,
) -> Vec<Vec<u8>> {
    (0..specs.len())
        .step_by(per_req.max(1))
        .map(|lo| {
            let req = pb::WriteRequest {
                timeseries: (lo..(lo + per_req.max(1)).min(specs.len()))
                    .map(|k| pb::TimeSeries {
                        labels: labels[k].clone(),
                        samples: steps
                            .clone()
                            .map(|i| pb::Sample {
                                value: specs[k].value(i),
                                timestamp: first + i * STEP_MS,
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            snap::raw::Encoder::new()
                .compress_vec(&req.encode_to_vec())
                .expect("snappy")
        })
        .collect()
}

/// Sends `bodies` to `url` as remote_write, `concurrency` at a time;
/// panics on a refusal.
pub async fn send_all(
    client: &reqwest::Client,
    url: &str,
    bodies: Vec<Vec<u8>>,
    concurrency: usize,
) {
    use futures_util::StreamExt as _;
    let mut s = futures_util::stream::iter(bodies.into_iter().map(|body| {
        let client = client.clone();
        async move {
            let r = client
                .post(url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body)
                .send()
                .await
                .expect("remote_write");
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            assert!(
                status.is_success(),
                "remote_write to {url}: {status} {text}"
            );
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while s.next().await.is_some() {}
}

/// `key` from the environment, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
