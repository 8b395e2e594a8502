//! Exposition parsing throughput on a node_exporter payload
//! (benches/data/node_exporter.prom, scraped from Debian's
//! prometheus-node-exporter 1.5): tiermon's full validating parser,
//! tiermon's scrape path with a warm series cache, and the
//! `prometheus-parse` crate on the same bytes.
//!
//! Run: `cargo bench --bench exposition`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tiermon_exposition::{Entry, Format, Parser, SeriesCache, parse_families};

const PAYLOAD: &str = include_str!("data/node_exporter.prom");

/// The scrape hot path: every sample resolved to a series reference via the
/// cache; labels are decoded only for series not seen before.
fn scrape(text: &str, cache: &mut SeriesCache<u32>, out: &mut Vec<(u32, i64, f64)>) {
    out.clear();
    let mut p = Parser::new(text, Format::Prometheus);
    while let Ok(Some(e)) = p.next_entry() {
        if let Entry::Sample(s) = e {
            let r = match cache.get(s.series) {
                Some(r) => *r,
                None => {
                    let labels: Vec<_> = s.labels().collect();
                    black_box(&labels);
                    let id = cache.len() as u32;
                    *cache.insert(s.series, id)
                }
            };
            out.push((r, s.timestamp.unwrap_or(0), s.value));
        }
    }
    black_box(cache.end_scrape());
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("node_exporter_payload");
    g.throughput(Throughput::Bytes(PAYLOAD.len() as u64));

    g.bench_function("tiermon_scrape_cached", |b| {
        let mut cache = SeriesCache::new();
        let mut out = Vec::new();
        scrape(PAYLOAD, &mut cache, &mut out);
        b.iter(|| scrape(black_box(PAYLOAD), &mut cache, &mut out));
    });

    g.bench_function("tiermon_pull_parser", |b| {
        b.iter(|| {
            let mut p = Parser::new(black_box(PAYLOAD), Format::Prometheus);
            let mut n = 0usize;
            while let Ok(Some(e)) = p.next_entry() {
                if let Entry::Sample(s) = e {
                    n += s.labels().count();
                }
            }
            n
        });
    });

    g.bench_function("tiermon_parse_families_validating", |b| {
        b.iter(|| {
            parse_families(black_box(PAYLOAD.as_bytes()), Format::Prometheus)
                .unwrap()
                .len()
        });
    });

    g.bench_function("prometheus_parse_crate", |b| {
        b.iter(|| {
            let lines = black_box(PAYLOAD).lines().map(|l| Ok(l.to_owned()));
            prometheus_parse::Scrape::parse(lines)
                .unwrap()
                .samples
                .len()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
