//! Tests of both layers through one helper per family of cases.

use proptest::prelude::*;

use super::*;

/// Parses `input` fully; `Ok` with the families or the error's text.
fn check(format: Format, input: &str) -> Result<Vec<MetricFamily>, String> {
    parse_families(input.as_bytes(), format).map_err(|e| e.to_string())
}

fn valid(format: Format, input: &str) {
    if let Err(e) = check(format, input) {
        panic!("expected valid, got {e}\n{input}");
    }
}

fn invalid(format: Format, input: &str, expect: &str) {
    match check(format, input) {
        Ok(_) => panic!("expected an error containing {expect:?}\n{input}"),
        Err(e) => assert!(
            e.contains(expect),
            "error {e:?} should contain {expect:?}\n{input}"
        ),
    }
}

const OM: Format = Format::OpenMetrics;
const PROM: Format = Format::Prometheus;

#[test]
fn prometheus_text_basics() {
    let fams = check(
        PROM,
        "# HELP http_requests_total The total number of HTTP requests.\n\
         # TYPE http_requests_total counter\n\
         http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
         http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n\
         \n\
         # Escaping in label values:\n\
         msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
         metric_without_timestamp_and_labels 12.47\n\
         something_weird{problem=\"division by zero\"} +Inf -3982045\n\
         # TYPE rpc_duration_seconds summary\n\
         rpc_duration_seconds{quantile=\"0.5\"} 4773\n\
         rpc_duration_seconds_sum 1.7560473e+07\n\
         rpc_duration_seconds_count 2693\n",
    )
    .unwrap();
    let names: Vec<_> = fams.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "http_requests_total",
            "msdos_file_access_time_seconds",
            "metric_without_timestamp_and_labels",
            "something_weird",
            "rpc_duration_seconds"
        ]
    );
    assert_eq!(fams[0].samples[1].value, 3.0);
    assert_eq!(fams[0].samples[1].timestamp, Some(1395066363000));
    assert_eq!(
        fams[1].samples[0].labels[1].1,
        "Cannot find file:\n\"FILE.TXT\""
    );
    assert_eq!(fams[3].samples[0].timestamp, Some(-3982045));
    assert_eq!(fams[4].kind, MetricType::Summary);
    assert_eq!(fams[4].samples.len(), 3);
}

#[test]
fn prometheus_text_is_lenient_where_prometheus_is() {
    valid(PROM, "a{b=\"c\",} 1\n");
    valid(PROM, "a { b = \"c\" } 1\t2\n");
    valid(PROM, "\n\n  a 1  \n");
    valid(PROM, "# just a comment\n# HELP\na NaN\n");
    valid(PROM, "a{b=\"\\x\"} 1\n");
}

#[test]
fn prometheus_text_errors_name_line_and_column() {
    invalid(
        PROM,
        "a 1\nb{c=\"d} 1\n",
        "line 2, column 5: expected '\"' to close",
    );
    invalid(
        PROM,
        "a 1\nb x\n",
        "line 2, column 3: expected a number as value, found \"x\"",
    );
    invalid(
        PROM,
        "a{1=\"x\"} 1\n",
        "line 1, column 3: expected a label name",
    );
    invalid(PROM, "a{b=\"1\",b=\"2\"} 1\n", "duplicate label name \"b\"");
    invalid(PROM, "a 1 1.5\n", "expected an integer timestamp");
    invalid(
        PROM,
        "a 1 2 3\n",
        "expected end of line after the timestamp",
    );
    invalid(PROM, "# TYPE a meh\n", "expected one of counter");
    invalid(
        PROM,
        "# TYPE a gauge\n# TYPE a gauge\n",
        "line 2, column 1: second TYPE line for a",
    );
    invalid(PROM, "# HELP a x\n# HELP a y\n", "second HELP line for a");
    invalid(
        PROM,
        "a 1\n# TYPE a gauge\n",
        "TYPE for a after its samples",
    );
    invalid(
        PROM,
        "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
        "invalid le label",
    );
    invalid(PROM, "a 0x1p-3\n", "expected a number as value");
    invalid(PROM, "a 1_000\n", "expected a number as value");
    invalid(PROM, "a\n", "expected a space and a value");
}

#[test]
fn invalid_utf8_is_an_error_with_position() {
    let e = parse_families(b"a 1\nb{c=\"\xff\"} 1\n", PROM).unwrap_err();
    assert_eq!((e.line, e.column), (2, 6));
    assert!(e.message.contains("UTF-8"));
}

#[test]
fn openmetrics_valid_documents() {
    valid(
        OM,
        "# TYPE a counter\n# HELP a help\na_total 0 123 # {a=\"b\"} 0.5\n# EOF\n",
    );
    valid(OM, "# TYPE a counter\na_total{} 1\n# EOF");
    valid(OM, "# HELP a \n# UNIT a \n# EOF\n");
    valid(
        OM,
        "# TYPE a_seconds gauge\n# UNIT a_seconds seconds\na_seconds 1\n# EOF\n",
    );
    valid(
        OM,
        "# TYPE a stateset\na{a=\"bar\"} 0\na{a=\"foo\"} 1.0\n# EOF\n",
    );
    valid(OM, "# TYPE a info\na_info{v=\"1\"} 1\n# EOF\n");
    valid(
        OM,
        "# TYPE a summary\na{quantile=\"0.5\"} 1\na_count 1\na_sum 2\n# EOF\n",
    );
    valid(
        OM,
        "# TYPE a histogram\na_bucket{le=\"1.0\"} 0\na_bucket{le=\"+Inf\"} 3\na_count 3\na_sum 2\na_created 1\n# EOF\n",
    );
    valid(
        OM,
        "# TYPE a gaugehistogram\na_bucket{le=\"-1.0\"} 1\na_bucket{le=\"+Inf\"} 3\na_gcount 3\na_gsum -5\n# EOF\n",
    );
    valid(
        OM,
        "# TYPE a counter\na_total{foo=\"1\"} 1 000\na_total{foo=\"2\"} 1 1.5e3\n# EOF\n",
    );
    valid(
        OM,
        "# TYPE a gauge\na{a=\"1\"} 1 0\na{a=\"1\"} 2 0\n# EOF\n",
    );
    valid(OM, "a NaN\n# EOF\n");
    // An exact repeat at the same timestamp is dropped, not a bucket out of order.
    let fams = check(OM, "# TYPE a histogram\na_bucket{le=\"1\"} 0 1\na_bucket{le=\"1\"} 0 1\na_bucket{le=\"+Inf\"} 0 1\n# EOF\n").unwrap();
    assert_eq!(fams[0].samples.len(), 2);
    valid(
        OM,
        "# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total 1\n# EOF\n",
    );
    valid(
        OM,
        "# TYPE a histogram\na_bucket{le=\"+Inf\",foo=\"bar # \"} 1 # {a=\"b\",foo=\"bar # bar\"} 4\n# EOF\n",
    );
    valid(
        OM,
        "# TYPE a histogram\na_bucket{le=\"0\"} 0\na_bucket{le=\"00.1\"} 0\na_bucket{le=\"1e+2\"} 0\na_bucket{le=\"+Inf\"} 0\n# EOF\n",
    );
    valid(OM, "a{foo=\"bar\"} +Inf\na{foo=\"baz\"} -Inf\n# EOF\n");
    valid(
        OM,
        "a 0000000000000000000000000000000000000000001.2e-1\n# EOF\n",
    );
}

#[test]
fn openmetrics_invalid_documents() {
    invalid(OM, "a 1\n", "line 2, column 1: expected \"# EOF\"");
    invalid(
        OM,
        "a 1\n\n# EOF\n",
        "line 2, column 1: blank lines are not allowed",
    );
    invalid(
        OM,
        "a 1\n# EOF\nblah",
        "line 3, column 1: unexpected content after \"# EOF\"",
    );
    invalid(OM, "a  1\n# EOF\n", "expected a value");
    invalid(OM, "a 1 \n# EOF\n", "expected a timestamp");
    invalid(OM, "a 1 NaN\n# EOF\n", "expected a timestamp in seconds");
    invalid(
        OM,
        "a 1\t2\n# EOF\n",
        "line 1, column 4: expected a space, found a tab",
    );
    invalid(
        OM,
        "a 1 2\t# {} 1\n# EOF\n",
        "expected a space, found a tab",
    );
    invalid(
        OM,
        "# TYPE a counter\na_total 1 # {} 1\t2\n# EOF\n",
        "expected a space, found a tab",
    );
    invalid(OM, "# TYPE a gauge \n# EOF\n", "expected one of counter");
    invalid(
        OM,
        "# UNIT a seconds\n# EOF\n",
        "does not end with its unit",
    );
    invalid(OM, "0a 1\n# EOF\n", "expected a metric name");
    invalid(
        OM,
        "# TYPE a counter\na_total{a=\"1\"} 0\na_total{a=\"2\"} 0\na_total{a=\"1\"} 0\n# EOF\n",
        "not contiguous",
    );
    invalid(
        OM,
        "# TYPE a gauge\na 0\n# TYPE b gauge\nb 0\na 0\n# EOF\n",
        "clashes",
    );
    invalid(
        OM,
        "# TYPE a summary\na_sum -1\n# EOF\n",
        "cannot be negative",
    );
    invalid(
        OM,
        "# TYPE a histogram\na_bucket 0\n# EOF\n",
        "needs an \"le\" label",
    );
    invalid(
        OM,
        "# TYPE a counter\na_total 1 # {a=\"b\",} 1\n# EOF\n",
        "trailing commas",
    );
    invalid(
        OM,
        "# TYPE a counter\na_total 1 # {} 1 NaN\n# EOF\n",
        "exemplar's timestamp",
    );
    invalid(OM, "a{a=\"1\",} 1\n# EOF\n", "trailing commas");
    invalid(OM, "a{a=\"1\"b=\"2\"} 1\n# EOF\n", "expected ',' or '}'");
    invalid(OM, "#a 1\n# EOF\n", "expected a space after '#'");
    invalid(OM, "# FOO a x\n# EOF\n", "expected HELP, TYPE, UNIT or EOF");
    invalid(OM, "# HELP a\n# EOF\n", "expected a space and the help");
    invalid(OM, "# TYPE a untyped\n# EOF\n", "expected one of counter");
    invalid(
        OM,
        "# TYPE a counter\n# TYPE a counter\n# EOF\n",
        "second TYPE line for a",
    );
    invalid(
        OM,
        "# TYPE a_created gauge\n# TYPE a counter\n# EOF\n",
        "clashes",
    );
    invalid(
        OM,
        "# TYPE a gauge\na 1\n# HELP a x\n# EOF\n",
        "metadata for a after its samples",
    );
    invalid(
        OM,
        "# TYPE a counter\na_total -1\n# EOF\n",
        "cannot be negative",
    );
    invalid(
        OM,
        "# TYPE a histogram\na_count NaN\n# EOF\n",
        "must be an integer",
    );
    invalid(
        OM,
        "# TYPE a histogram\na_bucket{le=\"+Inf\"} 0\na_sum 0\n# EOF\n",
        "_sum without _count",
    );
    invalid(
        OM,
        "# TYPE a histogram\na_count 1\na_bucket{le=\"+Inf\"} 0\n# EOF\n",
        "differs from its +Inf bucket",
    );
    invalid(
        OM,
        "# TYPE a histogram\na_bucket{le=\"1\"} 0\n# EOF\n",
        "no +Inf bucket",
    );
    invalid(
        OM,
        "# TYPE a histogram\na_bucket{le=\"2\"} 0\na_bucket{le=\"1\"} 0\na_bucket{le=\"+Inf\"} 0\n# EOF\n",
        "out of order",
    );
    invalid(
        OM,
        "# TYPE a histogram\na_bucket{le=\"Inf\"} 0\n# EOF\n",
        "invalid le label",
    );
    invalid(
        OM,
        "# TYPE a gauge\na 1 # {a=\"b\"} 1\n# EOF\n",
        "cannot have an exemplar",
    );
    invalid(
        OM,
        "# TYPE a counter\na_total 1 # {a=\"b\"}\n# EOF\n",
        "expected a space and the exemplar's value",
    );
    invalid(
        OM,
        "# TYPE a counter\na_total 1 #{} 1\n# EOF\n",
        "expected a space after the exemplar's '#'",
    );
    invalid(
        OM,
        "# TYPE a stateset\na 0\n# EOF\n",
        "needs a label named a",
    );
    invalid(
        OM,
        "# TYPE a stateset\na{a=\"x\"} 2\n# EOF\n",
        "must be 0 or 1",
    );
    invalid(OM, "# TYPE a info\na_info 2\n# EOF\n", "must be 1");
    invalid(
        OM,
        "# TYPE a summary\na{quantile=\"NaN\"} 0\n# EOF\n",
        "invalid quantile",
    );
    invalid(
        OM,
        "# TYPE a gauge\na 0 1\na 0 -1\n# EOF\n",
        "goes backwards",
    );
    invalid(OM, "# TYPE a gauge\na 0\na 0 0\n# EOF\n", "mixes samples");
    invalid(
        OM,
        "# TYPE a gauge\na{x=\"1\"} 0\na{x=\"2\"} 0\na{x=\"1\"} 0\n# EOF\n",
        "not contiguous",
    );
    invalid(
        OM,
        "# TYPE x_u info\n# UNIT x_u u\n# EOF\n",
        "cannot have a unit",
    );
    invalid(
        OM,
        "# TYPE a gauge\n# UNIT a s\n# EOF\n",
        "does not end with its unit",
    );
    let long = "x".repeat(128);
    invalid(
        OM,
        &format!("# TYPE a counter\na_total 1 # {{a=\"{long}\"}} 1\n# EOF\n"),
        "more than the 128 allowed",
    );
}

#[test]
fn pull_parser_borrows_and_decodes_lazily() {
    let doc = "# HELP a x\\ny\n# TYPE a counter\na_total{b=\"c\",d=\"e\\\"f\"} 1.5 2 # {t=\"1\"} 3 4.5\n# EOF\n";
    let mut p = Parser::new(doc, OM);
    assert_eq!(
        p.next_entry().unwrap(),
        Some(Entry::Help {
            name: "a",
            help: "x\ny".into()
        })
    );
    assert_eq!(
        p.next_entry().unwrap(),
        Some(Entry::Type {
            name: "a",
            kind: MetricType::Counter
        })
    );
    let Some(Entry::Sample(s)) = p.next_entry().unwrap() else {
        panic!("expected a sample")
    };
    assert_eq!(s.series, "a_total{b=\"c\",d=\"e\\\"f\"}");
    assert_eq!(s.name, "a_total");
    assert_eq!((s.value, s.timestamp), (1.5, Some(2000)));
    let labels: Vec<_> = s
        .labels()
        .map(|(n, v)| (n.to_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        labels,
        [
            ("b".to_owned(), "c".to_owned()),
            ("d".to_owned(), "e\"f".to_owned())
        ]
    );
    let ex = s.exemplar.unwrap();
    assert_eq!((ex.value, ex.timestamp), (3.0, Some(4500)));
    assert_eq!(p.next_entry().unwrap(), None);
}

#[test]
fn series_cache_tracks_disappeared_series() {
    let mut c = SeriesCache::new();
    c.insert("a{x=\"1\"}", 1);
    c.insert("a{x=\"2\"}", 2);
    assert!(c.end_scrape().is_empty());
    assert_eq!(c.get("a{x=\"1\"}"), Some(&1));
    assert_eq!(c.end_scrape(), vec![2]);
    assert_eq!(c.len(), 1);
}

#[test]
fn content_negotiation() {
    assert_eq!(
        Format::negotiate(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ),
        OM
    );
    assert_eq!(Format::negotiate("text/plain;version=0.0.4"), PROM);
    assert_eq!(Format::negotiate(""), PROM);
    assert_eq!(
        Format::negotiate("application/openmetrics-text;q=0.2,text/plain"),
        PROM
    );
    assert_eq!(
        Format::from_content_type("application/openmetrics-text; version=1.0.0"),
        OM
    );
    assert_eq!(Format::from_content_type("text/plain"), PROM);
}

#[test]
fn value_formatting() {
    assert_eq!(format_value(1.0), "1");
    assert_eq!(format_value(f64::INFINITY), "+Inf");
    assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    assert_eq!(format_value(f64::NAN), "NaN");
    assert_eq!(format_value(1e-9), "1e-9");
    assert_eq!(format_value(0.25), "0.25");
}

// ---- property tests ----

fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,8}".prop_filter("reserved", |n| n != "le" && n != "quantile")
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9 ]{0,10}", "[\\\\\"\n{}#, =a-zé€😀]{0,10}",]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        (-1000i64..1000).prop_map(|v| v as f64),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::NAN),
    ]
}

fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map(label_name(), label_value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

prop_compose! {
    fn gauge_family()(
        name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}",
        // Prometheus text drops blanks before the help text, like Prometheus does.
        help in proptest::option::of("([!-~\n\\\\é][ -~\n\\\\é]{0,20})?"),
        series in proptest::collection::btree_map(labels(), (value(), proptest::option::of(-1_000_000_000_000i64..4_000_000_000_000)), 1..5),
    ) -> MetricFamily {
        MetricFamily {
            samples: series
                .into_iter()
                .map(|(labels, (value, timestamp))| FamilySample { name: name.clone(), labels, value, timestamp, exemplar: None })
                .collect(),
            name,
            help,
            unit: None,
            kind: MetricType::Gauge,
        }
    }
}

fn distinct_names(fams: Vec<MetricFamily>) -> Vec<MetricFamily> {
    let mut seen = std::collections::HashSet::new();
    fams.into_iter()
        .filter(|f| seen.insert(f.name.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_parse_gives_the_same_families_prometheus(fams in proptest::collection::vec(gauge_family(), 1..4)) {
        let fams = distinct_names(fams);
        let text = encode(&fams, PROM);
        let back = parse_families(text.as_bytes(), PROM).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, fams, "{}", text);
    }

    #[test]
    fn encode_then_parse_gives_the_same_families_openmetrics(fams in proptest::collection::vec(gauge_family(), 1..4)) {
        let fams = distinct_names(fams);
        let text = encode(&fams, OM);
        let back = parse_families(text.as_bytes(), OM).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, fams, "{}", text);
    }

    #[test]
    fn counters_and_histograms_round_trip(
        name in "[a-z][a-z0-9_]{0,8}[a-z]",
        total in 0u32..1_000_000,
        buckets in proptest::collection::vec(0u32..100, 1..6),
        ex_value in value(),
    ) {
        let mut cum = 0u64;
        let mut hs = Vec::new();
        for (i, b) in buckets.iter().enumerate() {
            cum += u64::from(*b);
            hs.push(FamilySample { name: format!("{name}_bucket"), labels: vec![("le".into(), format!("{}", i as f64 * 0.5))], value: cum as f64, timestamp: None, exemplar: None });
        }
        hs.push(FamilySample { name: format!("{name}_bucket"), labels: vec![("le".into(), "+Inf".into())], value: cum as f64, timestamp: None,
            exemplar: Some(Exemplar { labels: vec![("trace_id".into(), "abc".into())], value: ex_value, timestamp: Some(1500) }) });
        hs.push(FamilySample { name: format!("{name}_count"), labels: vec![], value: cum as f64, timestamp: None, exemplar: None });
        hs.push(FamilySample { name: format!("{name}_sum"), labels: vec![], value: 12.5, timestamp: None, exemplar: None });
        let fams = vec![
            MetricFamily { name: format!("{name}_c"), help: Some("a counter".into()), unit: None, kind: MetricType::Counter,
                samples: vec![FamilySample { name: format!("{name}_c_total"), labels: vec![], value: f64::from(total), timestamp: None, exemplar: None }] },
            MetricFamily { name: name.clone(), help: None, unit: None, kind: MetricType::Histogram, samples: hs },
        ];
        let text = encode(&fams, OM);
        let back = parse_families(text.as_bytes(), OM).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, fams, "{}", text);
    }

    #[test]
    fn parsing_never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_families(&input, PROM);
        let _ = parse_families(&input, OM);
    }

    #[test]
    fn parsing_text_like_input_never_panics(input in "[a-z_{}=\",# \n\\\\0-9.+\\-]{0,200}") {
        let _ = parse_families(input.as_bytes(), PROM);
        let _ = parse_families(input.as_bytes(), OM);
        let mut p = Parser::new(&input, PROM);
        while let Ok(Some(Entry::Sample(s))) = p.next_entry() {
            let _ = s.labels().count();
        }
    }
}
