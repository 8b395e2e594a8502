//! Once a target's series are in the cache, a scrape allocates nothing per
//! sample (counted with a global allocator that tallies allocations).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tiermon_exposition::{Entry, Format, Parser, SeriesCache};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwards the caller's contract to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn payload(format: Format) -> String {
    let mut s = String::new();
    for m in 0..50 {
        s.push_str(&format!(
            "# HELP node_metric_{m} Help text of metric {m}.\n# TYPE node_metric_{m} gauge\n"
        ));
        for cpu in 0..20 {
            s.push_str(&format!("node_metric_{m}{{cpu=\"{cpu}\",mode=\"idle\",path=\"a \\\"quoted\\\" value\"}} {}.25\n", m * cpu));
        }
    }
    if format == Format::OpenMetrics {
        s.push_str("# EOF\n");
    }
    s
}

fn scrape(
    text: &str,
    format: Format,
    cache: &mut SeriesCache<u32>,
    out: &mut Vec<(u32, f64)>,
) -> usize {
    out.clear();
    let mut p = Parser::new(text, format);
    let mut new = 0;
    while let Some(e) = p.next_entry().unwrap() {
        if let Entry::Sample(s) = e {
            let r = match cache.get(s.series) {
                Some(r) => *r,
                None => {
                    new += 1;
                    let _labels: Vec<_> = s.labels().collect();
                    let id = cache.len() as u32;
                    *cache.insert(s.series, id)
                }
            };
            out.push((r, s.value));
        }
    }
    assert!(cache.end_scrape().is_empty());
    new
}

#[test]
fn warm_scrape_allocates_nothing() {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let text = payload(format);
        let mut cache = SeriesCache::new();
        let mut out = Vec::new();
        assert_eq!(scrape(&text, format, &mut cache, &mut out), 1000);
        let before = ALLOCS.load(Ordering::Relaxed);
        assert_eq!(scrape(&text, format, &mut cache, &mut out), 0);
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(
            allocs, 0,
            "{format:?}: {allocs} allocations for 1000 cached samples"
        );
        assert_eq!(out.len(), 1000);
    }
}
