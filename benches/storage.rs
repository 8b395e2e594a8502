//! Storage engine figures, printed as a table (a harness, not criterion:
//! these are one-shot measurements of size and time at scale).
//!
//! - append throughput through series references and through label sets;
//! - bytes per sample on disk after compaction, on node-exporter-like data
//!   (counters with irregular increments, noisy and near-constant gauges,
//!   15 s scrapes) over 24 h;
//! - head memory per active series;
//! - reopen (checkpoint + WAL replay) time with many series;
//! - reading 1 h of many series.
//!
//! Run: `cargo bench --bench storage` (defaults: 50,000 series × 24 h,
//! 1,000,000 series for the reopen). Smaller:
//! `TIERMON_BENCH_SERIES=5000 TIERMON_BENCH_REOPEN_SERIES=100000 cargo bench --bench storage`.
//! `TIERMON_BENCH_REOPEN_SERIES=0` skips the reopen; `TIERMON_BENCH_EXPORT=FILE`
//! also writes the generated samples as Prometheus text with millisecond
//! timestamps, so that `benches/anchors.sh` can load the very same data into
//! Prometheus and VictoriaMetrics.

use std::io::Write;
use std::time::{Duration, Instant};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use rand::{Rng, SeedableRng};
use tiermon_model::{Labels, MatchOp, Matcher};
use tiermon_tsdb::{Db, Options};

const DAY_MS: i64 = 24 * 3600 * 1000;
const STEP_MS: i64 = 15_000;

/// Counts the bytes the program has allocated and not freed, so that the
/// head's memory is measured rather than estimated. RocksDB's own C++
/// allocations (memtables, block cache) do not pass through it.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// The counting wrapper must implement the allocator trait, which is unsafe.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwards the caller's contract to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Nanoseconds the calling thread has run on a CPU
/// (`/proc/thread-self/schedstat`), 0 where that is not available.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One node-exporter-like series: how its value moves each scrape.
#[derive(Clone, Copy)]
enum Kind {
    /// CPU seconds: grows by a rate with jitter, two decimals.
    CpuCounter { rate: f64 },
    /// Bytes or packets: integer increments, bursty.
    ByteCounter { mean: u64 },
    /// Memory-like gauge: random walk in pages.
    PageGauge,
    /// Temperature-like gauge: one decimal, noisy.
    Temperature,
    /// Load-like gauge: two decimals.
    Load,
    /// Filesystem sizes, info metrics, `up`: almost never changes.
    Constant,
}

fn kind(i: usize, rng: &mut impl Rng) -> Kind {
    match i % 10 {
        0 | 1 => Kind::CpuCounter {
            rate: rng.random_range(0.01..1.0),
        },
        2 | 3 => Kind::ByteCounter {
            mean: rng.random_range(10..100_000),
        },
        4 => Kind::PageGauge,
        5 => Kind::Temperature,
        6 => Kind::Load,
        _ => Kind::Constant,
    }
}

fn step(k: Kind, v: f64, rng: &mut impl Rng) -> f64 {
    match k {
        Kind::CpuCounter { rate } => {
            ((v + rate * 15.0 * rng.random_range(0.5..1.5)) * 100.0).round() / 100.0
        }
        Kind::ByteCounter { mean } => {
            let burst = if rng.random_bool(0.02) { 20 } else { 1 };
            v + (rng.random_range(0..=2 * mean) * burst) as f64
        }
        Kind::PageGauge => (v + (rng.random_range(-64i64..=64) * 4096) as f64).max(0.0),
        Kind::Temperature => ((v + rng.random_range(-0.5..0.5)) * 10.0).round() / 10.0,
        Kind::Load => (rng.random_range(0.0..4.0f64) * 100.0).round() / 100.0,
        Kind::Constant => {
            if rng.random_bool(0.0005) {
                v + 4096.0
            } else {
                v
            }
        }
    }
}

fn start_value(k: Kind) -> f64 {
    match k {
        Kind::PageGauge => 8_000_000_000.0,
        Kind::Temperature => 45.0,
        Kind::Constant => 250_000_000_000.0,
        _ => 0.0,
    }
}

fn series_labels(i: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", format!("node_metric_{}", i % 200)),
        (
            "instance",
            format!("host-{:05}.dc1.example.com:9100", i / 200),
        ),
        ("job", "node".to_owned()),
        ("cpu", (i % 8).to_string()),
    ])
}

fn exposition_series(l: &Labels) -> String {
    let name = l.metric_name().unwrap_or_default();
    let rest: Vec<String> = l
        .iter()
        .filter(|x| &*x.name != "__name__")
        .map(|x| format!("{}=\"{}\"", x.name, x.value))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful to a harness. Run only under cargo bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env("TIERMON_BENCH_SERIES", 50_000);
    let reopen_n = env("TIERMON_BENCH_REOPEN_SERIES", 1_000_000);
    println!(
        "storage figures ({} series x 24 h at 15 s; reopen with {} series)",
        n, reopen_n
    );
    footprint(n);
    if reopen_n > 0 {
        reopen(reopen_n);
    }
}

fn footprint(n: usize) {
    let dir = tempfile::tempdir_in(
        std::env::var("TIERMON_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            ooo_window: Duration::from_secs(600),
            ..Options::default()
        },
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let kinds: Vec<Kind> = (0..n).map(|i| kind(i, &mut rng)).collect();
    let mut values: Vec<f64> = kinds.iter().map(|&k| start_value(k)).collect();

    // Everything the bench itself keeps is allocated before the baseline
    // of the head's measured memory.
    let all_labels: Vec<Labels> = (0..n).map(series_labels).collect();
    let mut refs = Vec::with_capacity(n);
    let mut batch: Vec<(u32, f64)> = Vec::with_capacity(n);
    let mut export = std::env::var_os("TIERMON_BENCH_EXPORT").map(|path| {
        let f = std::fs::File::create(&path).expect("creating the export file");
        let w = std::io::BufWriter::with_capacity(1 << 20, f);
        // `name{a="b",c="d"}`, without spaces: one field for awk.
        let names: Vec<String> = all_labels.iter().map(exposition_series).collect();
        (w, names)
    });
    let baseline = live_bytes();

    // First scrape by label set, timed separately: new series are created
    // a page at a time (500, a node exporter's), as a scrape does.
    let t0 = Instant::now();
    let mut app = db.appender();
    for page in all_labels.chunks(500) {
        for r in db.series_refs(page).unwrap() {
            refs.push(r.unwrap());
        }
    }
    for (i, &r) in refs.iter().enumerate() {
        app.append_ref(r, 0, values[i]);
    }
    app.commit().unwrap();
    let by_labels = n as f64 / t0.elapsed().as_secs_f64();
    eprintln!("created {n} series at {:.0} k/s", by_labels / 1e3);
    // A second scrape by label set: existing series, found by hashing.
    let t0 = Instant::now();
    let mut app = db.appender();
    for (i, l) in all_labels.iter().enumerate() {
        app.append(l, 1, values[i]).unwrap();
    }
    app.commit().unwrap();
    let by_labels_existing = n as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "appended to existing series by label set at {:.2} M/s",
        by_labels_existing / 1e6
    );

    if let Some((w, names)) = export.as_mut() {
        for (i, name) in names.iter().enumerate() {
            let v0 = start_value(kinds[i]);
            writeln!(w, "{name} {v0} 0").expect("writing the export file");
        }
    }
    let steps = DAY_MS / STEP_MS;
    let mut append_time = Duration::ZERO;
    let mut append_cpu_ns = 0u64;
    let mut head_per_series = 0.0;
    let mut head_measured = 0.0;
    let mut write_buffers = (0, 0);
    for s in 1..steps {
        let t = s * STEP_MS;
        batch.clear();
        for i in 0..n {
            values[i] = step(kinds[i], values[i], &mut rng);
            batch.push((refs[i], values[i]));
        }
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        let mut app = db.appender();
        for &(r, v) in &batch {
            app.append_ref(r, t, v);
        }
        app.commit().unwrap();
        append_time += start.elapsed();
        append_cpu_ns += thread_cpu_ns().saturating_sub(cpu0);
        if let Some((w, names)) = export.as_mut() {
            for (name, &(_, v)) in names.iter().zip(&batch) {
                writeln!(w, "{name} {v} {t}").expect("writing the export file");
            }
        }
        if s == 60 {
            // 15 minutes in: head chunks half full, a typical moment.
            // Sealed chunks waiting for their table file are a buffer of a
            // few MB whatever the number of series, as RocksDB's memtables
            // (not counted: C++) are; shown apart, not per series.
            let g = db.gauges();
            let pending = g.pending_bytes as isize;
            head_per_series =
                db.stats(0).head_bytes.saturating_sub(g.pending_bytes) as f64 / n as f64;
            head_measured = (live_bytes() - baseline - pending) as f64 / n as f64;
            write_buffers = (g.pending_bytes, g.memtable_bytes);
            eprintln!(
                "head memory 15 min in: {head_measured:.0} B per series counted, {head_per_series:.0} B estimated"
            );
        }
    }
    if let Some((mut w, _)) = export {
        w.flush().expect("writing the export file");
    }
    // The value at t=1 (the second scrape by label set) is not exported: the
    // anchors get `steps` samples per series, tiermon one more.
    let samples = n as f64 * steps as f64;
    let by_ref = (samples - n as f64) / append_time.as_secs_f64();
    // Per second of the appending thread on a core: what the wall clock
    // says less the time it waited for one (a shared machine, RocksDB's
    // compactions on 2 cores).
    let by_ref_cpu = (samples - n as f64) / (append_cpu_ns.max(1) as f64 / 1e9);
    eprintln!(
        "appended by reference at {:.2} M samples/s, {:.2} M per CPU-second of the appending thread",
        by_ref / 1e6,
        by_ref_cpu / 1e6
    );

    // Read 1 h of every series (from the head and sealed chunks).
    eprintln!("reading 1 h of {n} series");
    let m = [Matcher::new(MatchOp::Regex, "__name__", "node_metric_.*").unwrap()];
    let start = Instant::now();
    let got = db.select(&m, DAY_MS - 3_600_000, DAY_MS).unwrap();
    let read_1h = start.elapsed();
    let read_samples: usize = got.iter().map(|s| s.samples.len()).sum();

    eprintln!("compacting");
    db.flush_head().unwrap();
    let report = db.maintain(DAY_MS + DAY_MS / 2).unwrap();
    assert_eq!(report.compacted, vec![0]);
    let raw = db.resolution_bytes(tiermon_tsdb::Resolution::Raw).unwrap();
    let aggs = db
        .resolution_bytes(tiermon_tsdb::Resolution::OneMinute)
        .unwrap()
        + db.resolution_bytes(tiermon_tsdb::Resolution::OneHour)
            .unwrap();
    let bytes = db.compact_disk().unwrap();
    // The same read once compaction has settled the partition, as it is
    // on a server whose maintenance keeps up with its intake.
    let start = Instant::now();
    let again = db.select(&m, DAY_MS - 3_600_000, DAY_MS).unwrap();
    let read_compacted = start.elapsed();
    assert_eq!(
        again.iter().map(|s| s.samples.len()).sum::<usize>(),
        read_samples
    );
    drop(again);
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| append by series reference | {:.2} M samples/s of wall time, {:.2} M per CPU-second of the appending thread (one thread, commits of {} samples) |",
        by_ref / 1e6,
        by_ref_cpu / 1e6,
        n
    );
    println!(
        "| append by label set (existing series) | {:.2} M samples/s |",
        by_labels_existing / 1e6
    );
    println!(
        "| append by label set (new series, created 500 at a time) | {:.2} M series/s |",
        by_labels / 1e6
    );
    println!(
        "| bytes per sample after compaction (raw chunks, 1 m and 1 h aggregates included) | {:.3} B |",
        bytes as f64 / samples
    );
    println!(
        "| raw chunks alone (keys + values, compacted pcodec) | {:.3} B/sample |",
        raw as f64 / samples
    );
    println!(
        "| 1 m + 1 h aggregates (keys + values) | {:.3} B per raw sample |",
        aggs as f64 / samples
    );
    println!(
        "| memory per active series, 15 min in: allocated by the storage (counted, write buffers apart) | {:.0} B |",
        head_measured
    );
    println!(
        "| memory per active series, 15 min in: the head's own estimate | {:.0} B |",
        head_per_series
    );
    println!(
        "| write buffers, 15 min in, in all: sealed chunks waiting for their table file / RocksDB memtables | {:.1} / {:.1} MB |",
        write_buffers.0 as f64 / 1e6,
        write_buffers.1 as f64 / 1e6
    );
    println!(
        "| read 1 h of {} series ({} samples) | {:.0} ms |",
        got.len(),
        read_samples,
        read_1h.as_secs_f64() * 1e3
    );
    println!(
        "| read 1 h of {} series once compacted | {:.0} ms |",
        got.len(),
        read_compacted.as_secs_f64() * 1e3
    );
}

fn reopen(n: usize) {
    let dir = tempfile::tempdir_in(
        std::env::var("TIERMON_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let mut app = db.appender();
        let refs: Vec<_> = (0..n)
            .map(|i| app.append(&series_labels(i), 0, 1.0).unwrap())
            .collect();
        app.commit().unwrap();
        for s in 1..40 {
            let mut app = db.appender();
            for &r in &refs {
                app.append_ref(r, s * STEP_MS, s as f64);
            }
            app.commit().unwrap();
        }
        // The first checkpoint writes every series' labels as well as the
        // head; a later one writes only the head.
        let t0 = Instant::now();
        db.checkpoint().unwrap();
        let first = t0.elapsed();
        let t0 = Instant::now();
        db.checkpoint().unwrap();
        let again = t0.elapsed();
        println!(
            "| checkpoint of {} series (first: with every label set) | first {:.2} s, next {:.2} s |",
            n,
            first.as_secs_f64(),
            again.as_secs_f64()
        );
        // Ten more scrapes that only the WAL holds.
        for s in 40..50 {
            let mut app = db.appender();
            for &r in &refs {
                app.append_ref(r, s * STEP_MS, s as f64);
            }
            app.commit().unwrap();
        }
    }
    let start = Instant::now();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let took = start.elapsed();
    assert_eq!(db.stats(0).series, n);
    println!(
        "| reopen with {} active series (checkpoint + 10 scrapes of WAL) | {:.2} s |",
        n,
        took.as_secs_f64()
    );
}
