//! Tests of the database through its public operations.

use std::time::Duration;

use tiermon_model::{Labels, MatchOp, Matcher, STALE_NAN};

use super::*;

fn opts() -> Options {
    Options {
        partition: Duration::from_secs(3600),
        ooo_window: Duration::from_secs(600),
        ..Options::default()
    }
}

fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut v: Vec<(&str, &str)> = vec![("__name__", name)];
    v.extend_from_slice(pairs);
    Labels::from_pairs(v)
}

fn eq(name: &str, value: &str) -> Matcher {
    Matcher::new(MatchOp::Equal, name, value).unwrap()
}

fn values(db: &Db, m: &[Matcher], mint: i64, maxt: i64) -> Vec<(String, Vec<(i64, u64)>)> {
    db.select(m, mint, maxt)
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.labels.to_string(),
                s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
            )
        })
        .collect()
}

#[test]
fn append_by_labels_and_ref_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let a = labels("up", &[("job", "node"), ("instance", "a")]);
    let b = labels("up", &[("job", "node"), ("instance", "b")]);
    let mut app = db.appender();
    let ra = app.append(&a, 1000, 1.0).unwrap();
    let rb = app.append(&b, 1000, 0.0).unwrap();
    for i in 1..300 {
        app.append_ref(ra, 1000 + i * 15_000, 1.0);
        app.append_ref(rb, 1000 + i * 15_000, i as f64);
    }
    app.append_ref(rb, 1000 + 300 * 15_000, STALE_NAN);
    let res = app.commit().unwrap();
    assert_eq!((res.accepted, res.rejected.len()), (601, 0));
    let got = db.select(&[eq("instance", "b")], 0, i64::MAX).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels, b);
    assert_eq!(got[0].samples.len(), 301);
    assert_eq!(got[0].samples[10].v, 10.0);
    assert!(
        got[0].samples[300].is_stale(),
        "staleness markers are stored"
    );
    // Range bounds are inclusive.
    let got = db
        .select(&[eq("__name__", "up")], 1000 + 15_000, 1000 + 30_000)
        .unwrap();
    assert_eq!(
        got.iter().map(|s| s.samples.len()).collect::<Vec<_>>(),
        [2, 2]
    );
    // Sealed chunks (120 samples each) and the head read as one run.
    assert_eq!(db.stats(10).top_metrics, vec![("up".to_owned(), 2)]);
}

#[test]
fn out_of_order_and_duplicates_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let s = labels("m", &[]);
    let mut app = db.appender();
    let r = app.append(&s, 1_000_000, 1.0).unwrap();
    app.append_ref(r, 1_010_000, 2.0);
    app.append_ref(r, 1_005_000, 1.5); // out of order, in the window
    app.append_ref(r, 1_010_000, 2.0); // the same sample again
    app.append_ref(r, 1_010_000 - 700_000, 0.0); // older than the 10m window
    app.append_ref(r, 1_000_000, 9.0); // a rewrite of a timestamp: newest wins
    let res = app.commit().unwrap();
    assert_eq!(res.accepted, 5);
    assert_eq!(res.rejected.len(), 1);
    let (i, err) = &res.rejected[0];
    assert_eq!(*i, 4);
    let msg = err.to_string();
    assert!(
        msg.contains("too old") && msg.contains("m") && msg.contains("600000"),
        "{msg}"
    );
    let want = vec![
        (1_000_000, 9f64.to_bits()),
        (1_005_000, 1.5f64.to_bits()),
        (1_010_000, 2f64.to_bits()),
    ];
    let v = values(&db, &[eq("__name__", "m")], 0, i64::MAX);
    assert_eq!(v[0].1, want);
    // The WAL holds the accepted samples, those after the rejected one
    // included (the rewrite last), and not the rejected one.
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    let v = values(&db, &[eq("__name__", "m")], 0, i64::MAX);
    assert_eq!(v[0].1, want);
}

#[test]
fn a_rewrite_wins_over_the_chunk_it_rewrote_after_both_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut app = db.appender();
    let r = app.append(&labels("m", &[]), 1000, 1.0).unwrap();
    app.append_ref(r, 2000, 2.0);
    app.append_ref(r, 1000, 9.0);
    app.commit().unwrap();
    let read = || {
        values(&db, &[eq("__name__", "m")], 0, i64::MAX)[0]
            .1
            .clone()
    };
    let want = vec![(1000, 9f64.to_bits()), (2000, 2f64.to_bits())];
    assert_eq!(read(), want, "in the head");
    db.flush_head().unwrap();
    assert_eq!(read(), want, "sealed");
    db.maintain(10 * 3_600_000).unwrap();
    assert_eq!(read(), want, "compacted");
}

#[test]
fn matchers_select_like_prometheus() {
    check_matchers(false);
}

#[test]
fn evicted_series_are_selected_through_the_index_on_disk() {
    check_matchers(true);
}

/// The selections of `matchers_select_like_prometheus`, from the head, or
/// with every series evicted, from the index on disk.
fn check_matchers(evict: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut app = db.appender();
    for (job, inst) in [("node", "a"), ("node", "b"), ("api", "c"), ("db", "d")] {
        app.append(&labels("up", &[("job", job), ("instance", inst)]), 1, 1.0)
            .unwrap();
    }
    app.append(&labels("up", &[("instance", "e")]), 1, 1.0)
        .unwrap();
    app.commit().unwrap();
    if evict {
        // Not before their labels are in a checkpoint.
        assert_eq!(db.maintain(4 * 3_600_000).unwrap().evicted, 0);
        db.checkpoint().unwrap();
        assert_eq!(db.maintain(4 * 3_600_000).unwrap().evicted, 5);
        assert_eq!(db.stats(0).series, 0);
    }
    let sel = |m: Vec<Matcher>| -> Vec<String> {
        let mut v: Vec<String> = db
            .series(&m, 0, 10)
            .unwrap()
            .into_iter()
            .map(|l| l.get("instance").unwrap_or("").to_owned())
            .collect();
        v.sort();
        v
    };
    let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
    assert_eq!(sel(vec![m(MatchOp::Equal, "job", "node")]), ["a", "b"]);
    assert_eq!(
        sel(vec![m(MatchOp::NotEqual, "job", "node")]),
        ["c", "d", "e"]
    );
    assert_eq!(
        sel(vec![m(MatchOp::Regex, "job", "no.*|ap.")]),
        ["a", "b", "c"]
    );
    assert_eq!(sel(vec![m(MatchOp::Regex, "job", "no.*")]), ["a", "b"]);
    assert_eq!(
        sel(vec![m(MatchOp::NotRegex, "job", "node|api")]),
        ["d", "e"]
    );
    assert_eq!(sel(vec![m(MatchOp::Equal, "job", "")]), ["e"]);
    assert_eq!(
        sel(vec![m(MatchOp::Regex, "job", ".+")]),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        sel(vec![
            m(MatchOp::Equal, "__name__", "up"),
            m(MatchOp::Regex, "instance", "a|c|e"),
            m(MatchOp::NotEqual, "job", "api")
        ]),
        ["a", "e"]
    );
    assert_eq!(
        sel(vec![m(MatchOp::Equal, "nope", "x")]),
        Vec::<String>::new()
    );
    assert_eq!(
        db.label_values("job", &[], 0, 10).unwrap(),
        ["api", "db", "node"]
    );
    assert_eq!(
        db.label_names(&[m(MatchOp::Equal, "job", "db")], 0, 10)
            .unwrap(),
        ["__name__", "instance", "job"]
    );
    // Outside the time range nothing is listed (from disk: outside the
    // partitions the series have data in).
    let far = if evict { 7_200_000 } else { 100 };
    assert!(
        db.label_values("job", &[], far, far + 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        values(&db, &[eq("instance", "d")], 0, 10),
        [(
            r#"up{instance="d", job="db"}"#.to_string(),
            vec![(1, 1f64.to_bits())]
        )]
    );
}

#[test]
fn evicted_series_come_back_with_their_reference_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let h = 3_600_000;
    let a = labels("m", &[("i", "a")]);
    let b = labels("m", &[("i", "b")]);
    let (ra, rb) = {
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut app = db.appender();
        let ra = app.append(&a, 1000, 1.0).unwrap();
        let rb = app.append(&b, 1000, 2.0).unwrap();
        app.commit().unwrap();
        let mut app = db.appender();
        app.append_ref(ra, 2000, 1.5);
        app.append_ref(rb, 2000, 2.5);
        app.commit().unwrap();
        db.checkpoint().unwrap();
        let report = db.maintain(4 * h).unwrap();
        assert_eq!(report.evicted, 2);
        assert_eq!(db.stats(0).series, 0);
        // The WAL reader still names them.
        assert_eq!(db.labels_of(ra), Some(a.clone()));
        (ra, rb)
    };
    // After a restart they stay out of memory, and stay selectable.
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.stats(0).series, 0);
    assert_eq!(
        values(&db, &[eq("i", "a")], 0, 10 * h),
        [(
            a.to_string(),
            vec![(1000, 1f64.to_bits()), (2000, 1.5f64.to_bits())]
        )]
    );
    // A new series does not take an evicted one's reference.
    let mut app = db.appender();
    let rc = app.append(&labels("m", &[("i", "c")]), 5 * h, 3.0).unwrap();
    assert!(rc > ra && rc > rb);
    // By labels: the same reference, old and new data together.
    assert_eq!(app.append(&a, 5 * h, 1.75).unwrap(), ra);
    // By a reference kept from before, with a sample between its old
    // ones: it came back knowing its newest sample, so this one is out of
    // order, and a read after it still finds the newest in RocksDB.
    app.append_ref(rb, 1500, 2.25);
    app.commit().unwrap();
    let b_from = |db: &Db| values(db, &[eq("i", "b")], 1600, 10 * h)[0].1.clone();
    assert_eq!(b_from(&db), [(2000, 2.5f64.to_bits())]);
    assert_eq!(db.stats(0).series, 3);
    let want_a = vec![
        (1000, 1f64.to_bits()),
        (2000, 1.5f64.to_bits()),
        (5 * h, 1.75f64.to_bits()),
    ];
    assert_eq!(
        values(&db, &[eq("i", "a")], 0, 10 * h),
        [(a.to_string(), want_a.clone())]
    );
    assert_eq!(values(&db, &[eq("i", "b")], 0, 10 * h)[0].1.len(), 3);
    // One too old for the out-of-order window is refused.
    let mut app = db.appender();
    app.append_ref(ra, 5 * h - 1_200_000, 9.0);
    let res = app.commit().unwrap();
    assert_eq!((res.accepted, res.rejected.len()), (0, 1));
    // An unknown reference is refused whole.
    let mut app = db.appender();
    app.append_ref(rc + 100, 6 * h, 1.0);
    assert!(matches!(app.commit(), Err(Error::UnknownRef(_))));
    drop(db);
    // The revival was in the WAL only (no checkpoint since): replayed.
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.stats(0).series, 3);
    assert_eq!(
        values(&db, &[eq("i", "a")], 0, 10 * h),
        [(a.to_string(), want_a)]
    );
    assert_eq!(b_from(&db), [(2000, 2.5f64.to_bits())]);
    let mut app = db.appender();
    app.append_ref(ra, 5 * h - 1_200_000, 9.0);
    assert_eq!(app.commit().unwrap().rejected.len(), 1);
}

#[test]
fn evicting_the_last_user_of_a_label_value_frees_its_string() {
    // Pods come and go: each generation of series has values of its own.
    let dir = tempfile::tempdir().unwrap();
    let h = 3_600_000;
    let db = Db::open(dir.path(), opts()).unwrap();
    let symbols = |db: &Db| db.inner.head.read().symbols.len();
    let mut most = 0;
    for g in 0..4i64 {
        let t = g * 4 * h;
        let mut app = db.appender();
        for i in 0..50 {
            let pod = format!("pod-{g}-{i}");
            app.append(&labels("m", &[("pod", &pod), ("ns", "prod")]), t, 1.0)
                .unwrap();
        }
        app.commit().unwrap();
        db.checkpoint().unwrap();
        most = most.max(symbols(&db));
        // Four hours on, this generation is idle and leaves the head.
        db.maintain(t + 4 * h - 1).unwrap();
    }
    // The names, "m", "prod" and one generation's 50 pods at most: the
    // other 150 pod names were freed and their ids reused.
    assert!(most <= 5 + 50, "{most} strings held");
    assert_eq!(symbols(&db), 0, "every series left");
    // A series that comes back interns its strings again, whole.
    let mut app = db.appender();
    let a = labels("m", &[("pod", "pod-0-7"), ("ns", "prod")]);
    app.append(&a, 20 * h, 2.0).unwrap();
    app.append(&labels("m", &[("pod", "new"), ("ns", "dev")]), 20 * h, 3.0)
        .unwrap();
    app.commit().unwrap();
    // __name__, ns, pod; m, prod, pod-0-7, new, dev.
    assert_eq!(symbols(&db), 8);
    let got = values(&db, &[eq("pod", "pod-0-7")], 0, 30 * h);
    assert_eq!(got[0].0, a.to_string());
    assert_eq!(got[0].1.len(), 2, "old and new sample");
    assert_eq!(
        db.label_values("ns", &[], 19 * h, 30 * h).unwrap(),
        ["dev", "prod"]
    );
}

#[test]
fn retention_drops_the_index_of_expired_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let h = 3_600_000;
    let o = Options {
        retention_raw: Duration::from_secs(6 * 3600),
        retention_1m: Duration::from_secs(6 * 3600),
        retention_1h: Duration::from_secs(6 * 3600),
        ..opts()
    };
    let db = Db::open(dir.path(), o.clone()).unwrap();
    let mut app = db.appender();
    app.append(&labels("m", &[("i", "a")]), 1000, 1.0).unwrap();
    app.commit().unwrap();
    db.checkpoint().unwrap();
    assert_eq!(db.maintain(h + h / 2).unwrap().evicted, 0, "not idle yet");
    assert_eq!(db.maintain(4 * h - 1).unwrap().evicted, 1);
    assert_eq!(
        db.inner.cold.read().iter().copied().collect::<Vec<_>>(),
        [0]
    );
    assert_eq!(values(&db, &[eq("i", "a")], 0, h).len(), 1);
    let report = db.maintain(10 * h).unwrap();
    assert!(report.deleted.contains(&(Resolution::Raw, 0)));
    assert!(db.inner.cold.read().is_empty());
    let icf = cf(&db.inner.rocks, CF_INDEX).unwrap();
    assert!(index::all(&db.inner.rocks, icf, 0).unwrap().is_empty());
    assert!(values(&db, &[eq("i", "a")], 0, h).is_empty());
    drop(db);
    let db = Db::open(dir.path(), o).unwrap();
    assert!(db.inner.cold.read().is_empty());
}

#[test]
fn series_idle_shorter_than_the_out_of_order_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = Db::open(
        dir.path(),
        Options {
            series_idle: Duration::from_secs(60),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("series_idle"), "{e}");
}

#[test]
fn restart_replays_the_wal_and_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = labels("m", &[("i", "1")]);
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut app = db.appender();
        let r = app.append(&s, 0, 0.0).unwrap();
        for i in 1..500 {
            app.append_ref(r, i * 1000, i as f64);
        }
        app.commit().unwrap();
        db.checkpoint().unwrap();
        let mut app = db.appender();
        for i in 500..700 {
            app.append_ref(r, i * 1000, i as f64);
        }
        app.append(&labels("n", &[]), 5, 5.0).unwrap();
        app.commit().unwrap();
        // Dropped without a checkpoint: the tail lives only in the WAL.
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    let v = values(&db, &[eq("__name__", "m")], 0, i64::MAX);
    assert_eq!(v[0].1.len(), 700);
    assert!(
        v[0].1
            .iter()
            .enumerate()
            .all(|(i, &(t, bits))| t == i as i64 * 1000 && f64::from_bits(bits) == i as f64)
    );
    assert_eq!(values(&db, &[eq("__name__", "n")], 0, 10).len(), 1);
    // Appending continues where it stopped.
    let mut app = db.appender();
    app.append(&s, 700_000, 700.0).unwrap();
    assert_eq!(app.commit().unwrap().accepted, 1);
}

#[test]
fn limits_name_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            max_series: 2,
            max_label_value_len: 8,
            max_samples_per_commit: 3,
            ..opts()
        },
    )
    .unwrap();
    let mut app = db.appender();
    app.append(&labels("a", &[]), 1, 1.0).unwrap();
    app.append(&labels("b", &[]), 1, 1.0).unwrap();
    let e = app
        .append(&labels("c", &[]), 1, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_series"), "{e}");
    let e = app
        .append(&labels("a", &[("x", "123456789")]), 1, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_label_value_len"), "{e}");
    app.append_ref(0, 2, 1.0);
    app.append_ref(0, 3, 1.0);
    let e = app.commit().unwrap_err().to_string();
    assert!(e.contains("max_samples_per_commit"), "{e}");
    let mut app = db.appender();
    app.append_ref(99, 1, 1.0);
    assert!(matches!(app.commit(), Err(Error::UnknownRef(99))));
}

#[test]
fn invalid_label_sets_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let e = db
        .series_ref(&Labels::from_pairs([("__name__", "m"), ("bad-label", "x")]))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidSeries { .. }), "{e}");
    assert!(
        e.to_string().contains("invalid label name \"bad-label\""),
        "{e}"
    );
    let e = db.series_ref(&Labels::empty()).unwrap_err().to_string();
    assert!(e.contains("no labels"), "{e}");
    // A metric name is a label value: any string is stored as given.
    assert!(db.series_ref(&labels("name with spaces", &[])).is_ok());
}

#[test]
fn maintain_compacts_downsamples_and_deletes_old_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let hour = 3_600_000i64;
    let db = Db::open(
        dir.path(),
        Options {
            retention_raw: Duration::from_secs(3 * 3600),
            ..opts()
        },
    )
    .unwrap();
    let c = labels("requests_total", &[]);
    let mut app = db.appender();
    let r = app.append(&c, 0, 0.0).unwrap();
    let mut v = 0.0;
    for i in 1..(5 * 240) {
        // A counter that goes up by 2 every 15 s and resets at 2h30m.
        v = if i == 600 { 0.0 } else { v + 2.0 };
        app.append_ref(r, i * 15_000, v);
    }
    app.commit().unwrap();
    db.flush_head().unwrap();
    let before = values(&db, &[eq("__name__", "requests_total")], 0, 2 * hour - 1);
    let report = db.maintain(5 * hour).unwrap();
    // Partitions 0..3h are closed (the 10m window ends inside 4h..5h).
    assert_eq!(report.compacted, vec![0, hour, 2 * hour, 3 * hour]);
    assert!(report.downsampled.contains(&(Resolution::OneMinute, 0)));
    assert_eq!(
        report.deleted,
        vec![(Resolution::Raw, 0), (Resolution::Raw, hour)]
    );
    // Compaction changed the encoding, not the data.
    let after = values(
        &db,
        &[eq("__name__", "requests_total")],
        2 * hour,
        3 * hour - 1,
    );
    assert_eq!(after[0].1.len(), 240);
    assert_eq!(before[0].1.len(), 480);
    assert!(
        values(&db, &[eq("__name__", "requests_total")], 0, 2 * hour - 1).is_empty(),
        "deleted by retention"
    );
    // Aggregates survive raw retention and keep the increase across the reset.
    let aggs = db
        .select_aggregates(
            &[eq("__name__", "requests_total")],
            Resolution::OneMinute,
            0,
            4 * hour,
        )
        .unwrap();
    let a = &aggs[0].1;
    assert_eq!(a.len(), 240);
    assert_eq!(a.iter().map(|x| x.count).sum::<u64>(), 960);
    // From 6 (end of the first minute) to 1198 before the reset, then 0 to
    // 718: an increase of 1192 + 718.
    let inc = a.last().unwrap().counter - a.first().unwrap().counter;
    assert_eq!(inc, 1910.0);
    let hours = db
        .select_aggregates(
            &[eq("__name__", "requests_total")],
            Resolution::OneHour,
            0,
            4 * hour,
        )
        .unwrap();
    assert_eq!(hours[0].1.len(), 4);
}

#[test]
fn received_windows_are_kept_whole_and_rolled_up_to_hours() {
    let dir = tempfile::tempdir().unwrap();
    let hour = 3_600_000i64;
    let db = Db::open(dir.path(), opts()).unwrap();
    // As at the global tier: each window's last sample as a raw sample,
    // the window itself through put_aggregates; and a series of the
    // tier's own, raw only.
    let (got, own) = (labels("got", &[]), labels("own", &[]));
    let mut app = db.appender();
    let r = app.append(&got, 45_000, 3.0).unwrap();
    let o = app.append(&own, 0, 1.0).unwrap();
    let mut windows = Vec::new();
    for w in 0..120i64 {
        let last_t = w * 60_000 + 45_000;
        if w > 0 {
            app.append_ref(r, last_t, 3.0 + w as f64);
        }
        windows.push((
            r,
            Aggregate {
                start: w * 60_000,
                min: -(w as f64),
                max: 100.0 + w as f64,
                sum: 10.0,
                count: 4,
                last: 3.0 + w as f64,
                last_t,
                counter: 3.0 + w as f64,
            },
        ));
    }
    for i in 1..480 {
        app.append_ref(o, i * 15_000, (i % 5) as f64);
    }
    app.commit().unwrap();
    db.put_aggregates(Resolution::OneMinute, &windows[..60])
        .unwrap();
    db.put_aggregates(Resolution::OneMinute, &windows[60..])
        .unwrap();
    // Stored again (a retried batch): replaced, not doubled.
    db.put_aggregates(Resolution::OneMinute, &windows[10..20])
        .unwrap();
    assert!(db.put_aggregates(Resolution::Raw, &windows[..1]).is_err());
    let m = aggregates(&db, Resolution::OneMinute, &[eq("__name__", "got")]);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].1, windows.iter().map(|w| w.1).collect::<Vec<_>>());
    // Survives a restart.
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(
        aggregates(&db, Resolution::OneMinute, &[eq("__name__", "got")])[0]
            .1
            .len(),
        120
    );
    db.flush_head().unwrap();
    let report = db.maintain(3 * hour).unwrap();
    assert!(
        report.downsampled.contains(&(Resolution::OneHour, 0)),
        "{report:?}"
    );
    // The received minutes stay as they were; the hours roll them up.
    let m = aggregates(&db, Resolution::OneMinute, &[eq("__name__", "got")]);
    assert_eq!(m[0].1, windows.iter().map(|w| w.1).collect::<Vec<_>>());
    let h = aggregates(&db, Resolution::OneHour, &[eq("__name__", "got")]);
    assert_eq!(h[0].1.len(), 2);
    assert_eq!(
        (h[0].1[0].min, h[0].1[0].max, h[0].1[0].count),
        (-59.0, 159.0, 240)
    );
    assert_eq!(h[0].1[1].sum, 600.0);
    // The tier's own series is downsampled from its raw samples.
    let own_m = aggregates(&db, Resolution::OneMinute, &[eq("__name__", "own")]);
    assert_eq!(own_m[0].1.len(), 120);
    assert_eq!(own_m[0].1[0].count, 4);
    assert_eq!(
        aggregates(&db, Resolution::OneHour, &[eq("__name__", "own")])[0]
            .1
            .len(),
        2
    );
}

#[test]
fn max_bytes_deletes_the_oldest_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            max_bytes: Some(1),
            ..opts()
        },
    )
    .unwrap();
    let mut app = db.appender();
    let r = app.append(&labels("g", &[]), 0, 0.0).unwrap();
    for i in 1..2000 {
        app.append_ref(r, i * 15_000, (i % 7) as f64);
    }
    app.commit().unwrap();
    db.flush_head().unwrap();
    let report = db.maintain(100 * 3_600_000).unwrap();
    assert!(!report.deleted.is_empty());
    assert!(
        db.select(&[eq("__name__", "g")], 0, i64::MAX)
            .unwrap()
            .is_empty()
    );
}

fn aggregates(db: &Db, res: Resolution, m: &[Matcher]) -> Vec<(String, Vec<Aggregate>)> {
    db.select_aggregates(m, res, 0, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|(l, a)| (l.to_string(), a))
        .collect()
}

fn blob_opts(location: &std::path::Path) -> Options {
    let store = crate::open_store(
        location.to_str().unwrap(),
        std::iter::empty::<(&str, &str)>(),
    )
    .unwrap();
    Options {
        blob: Some(crate::BlobOptions {
            after: Duration::from_secs(2 * 3600),
            cache_bytes: 1 << 20,
            upload_attempts: 2,
            ..crate::BlobOptions::new(store)
        }),
        ..opts()
    }
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn blob_tier_moves_old_partitions_and_reads_them_back() {
    let hour = 3_600_000;
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let all = [eq("job", "node")];
    let load = |db: &Db| {
        let mut app = db.appender();
        for i in 0..20 {
            let l = labels(
                "cpu_seconds_total",
                &[("job", "node"), ("cpu", &i.to_string())],
            );
            for k in 0..(6 * 240) {
                app.append(&l, k * 15_000, (k * (i + 1)) as f64 * 0.25)
                    .unwrap();
            }
        }
        app.commit().unwrap();
        db.flush_head().unwrap();
    };
    // The same data and maintenance without a blob store is the reference.
    let (before, before_1m) = {
        let reference = Db::open(&dir.path().join("ref"), opts()).unwrap();
        load(&reference);
        let report = reference.maintain(7 * hour).unwrap();
        assert!(report.tiered.is_empty());
        let before = values(&reference, &all, 0, i64::MAX);
        assert_eq!(before.len(), 20);
        (before, aggregates(&reference, Resolution::OneMinute, &all))
    };
    assert_eq!(before_1m.len(), 20);
    {
        let db = Db::open(&dir.path().join("db"), blob_opts(&blobs)).unwrap();
        load(&db);
        let report = db.maintain(2 * hour).unwrap();
        assert!(report.tiered.is_empty(), "nothing is old enough yet");
        // At 7h, partitions ending by 5h (0h..4h) are old enough.
        let raw_bytes = db.resolution_bytes(Resolution::Raw).unwrap();
        let report = db.maintain(7 * hour).unwrap();
        assert!(report.tier_failed.is_empty(), "{:?}", report.tier_failed);
        for p in 0..5 {
            for res in [Resolution::Raw, Resolution::OneMinute, Resolution::OneHour] {
                assert!(report.tiered.contains(&(res, p * hour)), "{res:?} {p}");
            }
        }
        assert!(!report.tiered.contains(&(Resolution::Raw, 5 * hour)));
        assert!(db.resolution_bytes(Resolution::Raw).unwrap() < raw_bytes / 3);
        let stats = db.stats(1);
        assert_eq!(stats.blob_blocks, 15);
        assert_eq!(
            files_under(&blobs).len(),
            15,
            "one object per partition and resolution"
        );
        assert!(files_under(&blobs).contains(&"tiermon/raw/0/000000.tmb".to_owned()));
        // Reads see the same data, across blob, RocksDB and head.
        assert!(values(&db, &all, 0, i64::MAX) == before, "data differs");
        assert!(
            aggregates(&db, Resolution::OneMinute, &all) == before_1m,
            "aggregates differ"
        );
        // A sub-range inside one tiered partition.
        let part = values(&db, &[eq("cpu", "3")], hour + 1, hour + 60_000);
        assert_eq!(part[0].1.len(), 4);
    }
    // The manifest survives a restart.
    let db = Db::open(&dir.path().join("db"), blob_opts(&blobs)).unwrap();
    assert!(values(&db, &all, 0, i64::MAX) == before, "data differs");
    assert!(
        aggregates(&db, Resolution::OneMinute, &all) == before_1m,
        "aggregates differ"
    );

    // A late sample in a tiered partition (a new series: the window is per
    // series) goes up as a second generation.
    let mut app = db.appender();
    app.append(&labels("late", &[("job", "node")]), hour + 5, 42.0)
        .unwrap();
    app.commit().unwrap();
    db.flush_head().unwrap();
    let report = db.maintain(7 * hour).unwrap();
    assert!(report.tiered.contains(&(Resolution::Raw, hour)));
    assert!(files_under(&blobs).contains(&"tiermon/raw/3600000/000001.tmb".to_owned()));
    let late = values(&db, &[eq("__name__", "late")], 0, i64::MAX);
    assert_eq!(
        late,
        vec![(
            r#"late{job="node"}"#.to_owned(),
            vec![(hour + 5, 42f64.to_bits())]
        )]
    );

    // A corrupted object is reported, not read as data.
    drop(db);
    let obj = blobs.join("tiermon/raw/0/000000.tmb");
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&obj, &bytes).unwrap();
    let db = Db::open(&dir.path().join("db"), blob_opts(&blobs)).unwrap();
    let err = db.select(&all, 0, hour - 1).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");

    // Retention deletes blocks from the store.
    drop(db);
    let db = Db::open(
        &dir.path().join("db"),
        Options {
            retention_raw: Duration::from_secs(4 * 3600),
            ..blob_opts(&blobs)
        },
    )
    .unwrap();
    let report = db.maintain(7 * hour).unwrap();
    assert!(report.deleted.contains(&(Resolution::Raw, 0)));
    assert!(report.deleted.contains(&(Resolution::Raw, 2 * hour)));
    let left = files_under(&blobs);
    assert!(
        !left.iter().any(|f| f.starts_with("tiermon/raw/0/")),
        "{left:?}"
    );
    assert!(!left.contains(&"tiermon/raw/3600000/000000.tmb".to_owned()));
    assert!(!left.contains(&"tiermon/raw/3600000/000001.tmb".to_owned()));
    assert!(left.contains(&"tiermon/1m/0/000000.tmb".to_owned()));
    let left_data = values(&db, &all, 0, 3 * hour - 1);
    assert!(
        left_data.is_empty(),
        "{:?}",
        left_data
            .iter()
            .map(|(l, v)| (l, v.len(), v.first()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn failed_uploads_keep_the_data_local_and_are_retried() {
    let hour = 3_600_000;
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let db = Db::open(&dir.path().join("db"), blob_opts(&blobs)).unwrap();
    let mut app = db.appender();
    let r = app
        .append(&labels("g", &[("job", "node")]), 0, 0.0)
        .unwrap();
    for k in 1..(4 * 240) {
        app.append_ref(r, k * 15_000, (k % 13) as f64);
    }
    app.commit().unwrap();
    db.flush_head().unwrap();
    let before = values(&db, &[eq("job", "node")], 0, i64::MAX);
    // The store's folder becomes a file: every write fails.
    std::fs::remove_dir_all(&blobs).unwrap();
    std::fs::write(&blobs, b"not a folder").unwrap();
    let report = db.maintain(6 * hour).unwrap();
    assert!(report.tiered.is_empty());
    assert!(!report.tier_failed.is_empty());
    assert!(
        report.tier_failed[0].2.contains("uploading a block"),
        "{:?}",
        report.tier_failed
    );
    assert_eq!(values(&db, &[eq("job", "node")], 0, i64::MAX), before);
    assert_eq!(db.stats(1).blob_blocks, 0);
    // The store comes back: the next run moves the partitions.
    std::fs::remove_file(&blobs).unwrap();
    std::fs::create_dir_all(&blobs).unwrap();
    let report = db.maintain(6 * hour).unwrap();
    assert!(report.tier_failed.is_empty(), "{:?}", report.tier_failed);
    assert!(report.tiered.contains(&(Resolution::Raw, 0)));
    assert_eq!(values(&db, &[eq("job", "node")], 0, i64::MAX), before);
    assert!(
        !dir.path()
            .join("db/blob-spool")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "spool emptied"
    );
}

#[test]
fn blob_age_shorter_than_a_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = blob_opts(&dir.path().join("blobs"));
    if let Some(b) = o.blob.as_mut() {
        b.after = Duration::from_secs(60);
    }
    let err = Db::open(&dir.path().join("db"), o).unwrap_err();
    assert!(err.to_string().contains("blob.after"), "{err}");
}

#[test]
fn a_series_that_went_quiet_is_compacted_and_downsampled() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut app = db.appender();
    let r = app.append(&labels("gone", &[]), 0, 1.0).unwrap();
    for k in 1..10 {
        app.append_ref(r, k * 15_000, k as f64);
    }
    // Another series, whose last sample came out of order: it waits in
    // the out-of-order buffer, not in the open chunk.
    let late = app.append(&labels("late", &[]), 30_000, 1.0).unwrap();
    app.append_ref(late, 15_000, 2.0);
    app.commit().unwrap();
    // No flush: the samples sit in the series' open chunk.
    assert_eq!(db.resolution_bytes(Resolution::Raw).unwrap(), 0);
    assert_eq!(db.inner.head.read().ooo(late).len(), 1);
    let report = db.maintain(2 * 3_600_000).unwrap();
    // The closed partition's out-of-order samples were sealed too.
    assert!(db.inner.head.read().ooo(late).is_empty());
    let late_aggs = db
        .select_aggregates(
            &[eq("__name__", "late")],
            Resolution::OneMinute,
            0,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(late_aggs[0].1.iter().map(|a| a.count).sum::<u64>(), 2);
    assert!(report.downsampled.contains(&(Resolution::OneMinute, 0)));
    assert!(db.resolution_bytes(Resolution::Raw).unwrap() > 0);
    let aggs = db
        .select_aggregates(
            &[eq("__name__", "gone")],
            Resolution::OneMinute,
            0,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(aggs[0].1.len(), 3);
    assert_eq!(aggs[0].1.iter().map(|a| a.count).sum::<u64>(), 10);
    assert_eq!(
        values(&db, &[eq("__name__", "gone")], 0, i64::MAX)[0]
            .1
            .len(),
        10
    );
}

#[test]
fn wal_read_returns_each_commit_once_in_order_and_holds_keep_segments() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        wal_segment_bytes: 4096,
        ..opts()
    };
    let db = Db::open(dir.path(), small.clone()).unwrap();
    let a = labels("m", &[("i", "a")]);
    let b = labels("m", &[("i", "b")]);
    let mut sent: Vec<(String, i64)> = Vec::new();
    let mut pos = 0u64;
    let mut got: Vec<(String, i64)> = Vec::new();
    db.wal_hold("reader", Some(pos));
    for round in 0..40i64 {
        let mut app = db.appender();
        for k in 0..20i64 {
            let t = round * 1000 + k;
            app.append(&a, t, t as f64).unwrap();
            app.append(&b, t, -(t as f64)).unwrap();
            sent.push((a.to_string(), t));
            sent.push((b.to_string(), t));
        }
        app.commit().unwrap();
        if round % 3 == 0 {
            db.checkpoint().unwrap();
        }
        // Read in small steps: a batch never splits a commit's record.
        loop {
            let batch = db.wal_read(pos, 7).unwrap();
            assert!(!batch.truncated);
            assert!(batch.end >= pos);
            if batch.end == pos {
                break;
            }
            for (r, s) in &batch.series {
                let l = db.labels_of(*r).unwrap();
                got.extend(s.iter().map(|&(t, v)| {
                    assert_eq!(v.abs(), t as f64);
                    (l.to_string(), t)
                }));
            }
            pos = batch.end;
            db.wal_hold("reader", Some(pos));
        }
    }
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "every committed sample read exactly once");
    assert!(db.wal_segments().len() > 1, "segments were cut");

    // Without a hold, a checkpoint deletes what the reader has not read:
    // the next read says so instead of pretending nothing was lost.
    let old = db.wal_segments()[0].0;
    db.wal_hold("reader", None);
    let mut app = db.appender();
    app.append(&a, 1_000_000, 1.0).unwrap();
    app.commit().unwrap();
    db.checkpoint().unwrap();
    let batch = db.wal_read(old + 1, 1000).unwrap();
    assert!(batch.truncated);

    // The epoch survives a restart.
    let epoch = db.wal_epoch();
    drop(db);
    let db = Db::open(dir.path(), small).unwrap();
    assert_eq!(db.wal_epoch(), epoch);
}

#[test]
fn narrow_reads_find_chunks_that_started_long_before() {
    // In partition [0, 1 h): a sparse series whose first chunk spans 50
    // minutes and a dense one whose chunks span seconds. A read seeks to
    // `mint` minus the partition's longest chunk, so it must still find
    // the sparse chunk from a range near that chunk's end.
    let dir = tempfile::tempdir().unwrap();
    let sparse = labels("sparse", &[]);
    let dense = labels("dense", &[]);
    let mut want: Vec<(i64, f64, bool)> = Vec::new();
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut app = db.appender();
        for i in 0..144i64 {
            // Few changes, so that 120 samples fit a chunk's bytes.
            let v = (i / 50) as f64;
            app.append(&sparse, i * 25_000, v).unwrap();
            want.push((i * 25_000, v, true));
        }
        for i in 0..3600i64 {
            // Values with noise, so that a chunk fills its bytes quickly.
            let v = ((i * 7919) % 1013) as f64 / 7.0;
            app.append(&dense, i * 1000, v).unwrap();
            want.push((i * 1000, v, false));
        }
        app.commit().unwrap();
        db.flush_head().unwrap();
        assert_eq!(
            db.inner.spans.get(0),
            119 * 25_000,
            "the sparse chunk is the longest"
        );
    }
    let check = |db: &Db| {
        for (mint, maxt) in [
            (2_900_000, 2_910_000),
            (2_975_000, 2_975_000),
            (1_000, 1_000),
            (3_000_000, 3_599_000),
            (0, 3_600_000),
        ] {
            for (l, is_sparse) in [(&sparse, true), (&dense, false)] {
                let m = [eq("__name__", l.get("__name__").unwrap())];
                let got: Vec<(i64, u64)> = values(db, &m, mint, maxt)
                    .into_iter()
                    .flat_map(|(_, v)| v)
                    .collect();
                let expect: Vec<(i64, u64)> = want
                    .iter()
                    .filter(|&&(t, _, s)| s == is_sparse && t >= mint && t <= maxt)
                    .map(|&(t, v, _)| (t, v.to_bits()))
                    .collect();
                assert_eq!(got, expect, "{l} in [{mint}, {maxt}]");
            }
        }
    };
    let db = Db::open(dir.path(), opts()).unwrap();
    check(&db);
    // A database written before spans were recorded: reads start at the
    // partition's start.
    let rocks = &db.inner.rocks;
    rocks
        .delete_cf(cf(rocks, CF_META).unwrap(), keys::span(0))
        .unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.inner.spans.get(0), 3_600_000);
    check(&db);
    // A short chunk written now must not narrow what the old ones need.
    let mut app = db.appender();
    for i in 0..10 {
        app.append(&labels("late", &[]), 3_590_000 + i * 1000, 1.0)
            .unwrap();
    }
    app.commit().unwrap();
    db.flush_head().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.inner.spans.get(0), 3_600_000);
    check(&db);
}

proptest::proptest! {
    /// Runs each in order that overlap (copies of chunks rewritten after a
    /// restart, rewrites) merge as a sort of every sample would.
    #[test]
    fn merging_ordered_runs_that_overlap_keeps_the_latest_write(
        runs in proptest::collection::vec(
            (0u64..1000, 0i64..40, proptest::collection::vec((1i64..4, proptest::num::f64::ANY), 1..40)),
            2..8,
        ),
    ) {
        merge_ordered_matches_the_model(runs)?;
    }

    /// Runs spread out, so that some overlap only at their edges and
    /// others not at all (the stretches copied in one go).
    #[test]
    fn merging_runs_that_overlap_at_their_edges_keeps_the_latest_write(
        runs in proptest::collection::vec(
            (0u64..1000, 0i64..400, proptest::collection::vec((1i64..4, proptest::num::f64::ANY), 1..60)),
            2..8,
        ),
    ) {
        merge_ordered_matches_the_model(runs)?;
    }
}

/// A run for [`merge_ordered_matches_the_model`]: its write order, its
/// start, and (step, value) pairs.
type OrderedRun = (u64, i64, Vec<(i64, f64)>);

/// Runs merged by `merge` against a model that applies them in write
/// order.
fn merge_ordered_matches_the_model(
    runs: Vec<OrderedRun>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    {
        let mut parts = Runs::default();
        let mut model = std::collections::BTreeMap::new();
        let mut order: Vec<usize> = (0..runs.len()).collect();
        // Sequences distinct, written in any order.
        order.sort_by_key(|&i| runs[i].0);
        let seqs: Vec<u64> = (0..runs.len())
            .map(|i| order.iter().position(|&j| j == i).unwrap() as u64)
            .collect();
        let mut by_seq: Vec<(u64, Vec<(i64, f64)>)> = Vec::new();
        for (i, (_, start, steps)) in runs.into_iter().enumerate() {
            let mut t = start;
            let run: Vec<(i64, f64)> = steps
                .into_iter()
                .map(|(d, v)| {
                    t += d;
                    (t, v)
                })
                .collect();
            parts.push_samples(seqs[i], &run);
            by_seq.push((seqs[i], run));
        }
        by_seq.sort_by_key(|(seq, _)| *seq);
        for (_, run) in &by_seq {
            for &(t, v) in run {
                model.insert(t, v.to_bits());
            }
        }
        let got: Vec<(i64, u64)> = merge(parts)
            .into_iter()
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        let want: Vec<(i64, u64)> = model.into_iter().collect();
        proptest::prop_assert_eq!(got, want);
    }
    Ok(())
}

proptest::proptest! {
    /// Merging runs keeps, per timestamp, the sample of the latest run
    /// (and within a run the last one), whether the runs lie apart in
    /// time (the concatenating fast path) or overlap.
    #[test]
    fn merge_keeps_the_latest_write_of_each_timestamp(
        runs in proptest::collection::vec(
            (proptest::bool::ANY, 0i64..400, proptest::collection::vec((1i64..20, proptest::num::f64::ANY), 0..30)),
            0..5,
        ),
    ) {
        let mut parts = Runs::default();
        let mut model = std::collections::BTreeMap::new();
        for (seq, (sorted, start, steps)) in runs.into_iter().enumerate() {
            let mut t = start * 10;
            let run: Vec<(i64, f64)> = steps
                .into_iter()
                .map(|(d, v)| {
                    t = if sorted { t + d } else { start * 10 + d * 7 % 23 };
                    (t, v)
                })
                .collect();
            for &(t, v) in &run {
                model.insert(t, v.to_bits());
            }
            parts.push_samples(seq as u64, &run);
        }
        let got: Vec<(i64, u64)> = merge(parts).into_iter().map(|(t, v)| (t, v.to_bits())).collect();
        let want: Vec<(i64, u64)> = model.into_iter().collect();
        proptest::prop_assert_eq!(got, want);
    }
}

#[test]
fn batched_reads_give_what_one_read_gives() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut app = db.appender();
    for i in 0..10 {
        let l = labels("m", &[("i", &i.to_string())]);
        for k in 0..300 {
            app.append(&l, k * 10_000, (k * i) as f64).unwrap();
        }
    }
    app.commit().unwrap();
    // Part on disk, part in the head.
    db.write_pending().unwrap();
    let m = [eq("__name__", "m")];
    let whole = db.select_pairs(&m, 500_000, 2_500_000).unwrap();
    assert_eq!(whole.len(), 10);
    let mut batches = Vec::new();
    db.select_batches(&m, 500_000, 2_500_000, 3, |b| {
        batches.push(b);
        true
    })
    .unwrap();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 3, 1]
    );
    let joined: Vec<_> = batches.into_iter().flatten().collect();
    assert_eq!(format!("{joined:?}"), format!("{whole:?}"));
    // Stopping after the first batch reads no more.
    let mut calls = 0;
    db.select_batches(&m, 0, i64::MAX, 4, |_| {
        calls += 1;
        false
    })
    .unwrap();
    assert_eq!(calls, 1);
}

#[test]
fn rewrites_sealed_while_a_chunk_is_open_are_read_over_it() {
    // A read from the open chunk's start on skips RocksDB, unless
    // out-of-order samples were sealed there since the chunk started.
    let dir = tempfile::tempdir().unwrap();
    let l = labels("m", &[]);
    let want: Vec<(i64, u64)> = (10..=20i64)
        .map(|t| {
            let k = (0..1024).rev().find(|k| k % 60 == t).unwrap();
            (t * 1000, (2.0 + k as f64).to_bits())
        })
        .collect();
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut app = db.appender();
        for t in 0..60 {
            app.append(&l, t * 1000, 1.0).unwrap();
        }
        app.commit().unwrap();
        let mut app = db.appender();
        for k in 0..1024i64 {
            app.append(&l, (k % 60) * 1000, 2.0 + k as f64).unwrap();
        }
        app.commit().unwrap();
        db.write_pending().unwrap();
        {
            let head = db.inner.head.read();
            assert!(head.pending.len() == 0 && head.get(0).unwrap().chunk.len() == 60);
            assert!(head.get(0).unwrap().ooo_sealed);
        }
        let got = values(&db, &[eq("__name__", "m")], 10_000, 20_000);
        assert_eq!(got[0].1, want);
        db.checkpoint().unwrap();
    }
    // After a restart nothing is known of what was sealed: assumed.
    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(db.inner.head.read().get(0).unwrap().ooo_sealed);
    let got = values(&db, &[eq("__name__", "m")], 10_000, 20_000);
    assert_eq!(got[0].1, want);
    // A new chunk starts clean, and its reads need nothing stored.
    let mut app = db.appender();
    app.append(&l, 70_000, 5.0).unwrap();
    app.commit().unwrap();
    db.inner.head.write().seal_all();
    db.write_pending().unwrap();
    let mut app = db.appender();
    for t in 80..90 {
        app.append(&l, t * 1000, 6.0).unwrap();
    }
    app.commit().unwrap();
    assert!(!db.inner.head.read().get(0).unwrap().ooo_sealed);
    let got = values(&db, &[eq("__name__", "m")], 80_000, 85_000);
    assert_eq!(got[0].1.len(), 6);
}

#[test]
fn a_series_in_memory_stays_96_bytes() {
    // The open chunk's first timestamp is read from its stream, not kept,
    // and its last is an offset from the first.
    assert!(std::mem::size_of::<crate::head::MemSeries>() <= 96);
}

#[test]
fn a_chunk_never_spans_more_than_the_codec_holds() {
    // A partition wider than an open chunk can span (about 49 days): the
    // head starts a new chunk rather than losing samples, in order and out
    // of order alike.
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            partition: Duration::from_secs(200 * 24 * 3600),
            ooo_window: Duration::from_secs(100 * 24 * 3600),
            series_idle: Duration::from_secs(400 * 24 * 3600),
            ..Options::default()
        },
    )
    .unwrap();
    let span = tiermon_chunkenc::MAX_SPAN;
    let l = labels("m", &[]);
    let mut app = db.appender();
    let r = app.append(&l, 0, 1.0).unwrap();
    app.append_ref(r, span, 2.0);
    app.append_ref(r, span + 1, 3.0);
    app.append_ref(r, 2 * span + 5, 4.0);
    app.commit().unwrap();
    // Out of order, across more than a span.
    let mut app = db.appender();
    app.append_ref(r, 2 * span, 5.0);
    app.append_ref(r, span / 2, 6.0);
    app.commit().unwrap();
    db.flush_head().unwrap();
    let want: Vec<(i64, u64)> = [
        (0, 1.0f64),
        (span / 2, 6.0),
        (span, 2.0),
        (span + 1, 3.0),
        (2 * span, 5.0),
        (2 * span + 5, 4.0),
    ]
    .iter()
    .map(|&(t, v)| (t, v.to_bits()))
    .collect();
    let got = values(&db, &[eq("__name__", "m")], 0, 3 * span);
    assert_eq!(got[0].1, want);
    drop(db);
    let db = Db::open(
        dir.path(),
        Options {
            partition: Duration::from_secs(200 * 24 * 3600),
            series_idle: Duration::from_secs(400 * 24 * 3600),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(values(&db, &[eq("__name__", "m")], 0, 3 * span)[0].1, want);
}

/// Every raw chunk stored in partition `p`: (series, first sample, last
/// sample, encoding), in key order.
fn stored_chunks(db: &Db, p: i64) -> Vec<(SeriesRef, i64, i64, u8)> {
    let rocks = &db.inner.rocks;
    let prefix = keys::partition_prefix(0, p);
    rocks
        .prefix_iterator_cf(cf(rocks, CF_CHUNKS).unwrap(), prefix)
        .map(|item| item.unwrap())
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| {
            let key = keys::parse_chunk(&k).unwrap();
            let (enc, max_t, _) = split_value(&v).unwrap();
            (key.r, key.min_t, max_t, enc)
        })
        .collect()
}

#[test]
fn open_partitions_compact_into_blocks_that_read_as_written() {
    // Partition [0, 1 h) in blocks of 10 min, out-of-order window 10 min.
    // A dense series with rewrites, a sparse one whose one chunk spans
    // every block, a series with staleness markers, and a series that
    // arrives late into blocks already compacted.
    let o = Options {
        block: Duration::from_secs(600),
        ..opts()
    };
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), o.clone()).unwrap();
    type Model = std::collections::BTreeMap<(&'static str, i64), u64>;
    let want = std::cell::RefCell::new(Model::new());
    let put = |db: &Db, name: &'static str, samples: &mut dyn Iterator<Item = (i64, f64)>| {
        let l = labels(name, &[]);
        let mut app = db.appender();
        for (t, v) in samples {
            app.append(&l, t, v).unwrap();
            want.borrow_mut().insert((name, t), v.to_bits());
        }
        app.commit().unwrap();
    };
    let noisy = |i: i64| ((i * 7919) % 1013) as f64 / 7.0;
    put(&db, "dense", &mut (0..2100).map(|i| (i * 1000, noisy(i))));
    // One chunk of 120 slow-changing samples from 23 min 20 s to 31 min
    // 16 s: across the end of what the first round compacts. Every chunk
    // spans less than a block, so a read's seek by the longest chunk alone
    // would miss the start of a block chunk.
    put(
        &db,
        "sparse",
        &mut (0..120).map(|i| (1_400_000 + i * 4000, (i / 40) as f64)),
    );
    put(
        &db,
        "stale",
        &mut (0..2100).map(|i| {
            let v = if i % 97 == 5 {
                STALE_NAN
            } else {
                (i % 3) as f64
            };
            (i * 1000, v)
        }),
    );
    // Rewrites inside what the first round compacts, sealed apart.
    put(
        &db,
        "dense",
        &mut (1560..1740).map(|i| (i * 1000, -noisy(i))),
    );
    put(
        &db,
        "dense",
        &mut (2100..3000).map(|i| (i * 1000, noisy(i))),
    );
    db.flush_head().unwrap();

    let check = |db: &Db, when: &str| {
        for name in ["dense", "sparse", "stale", "late"] {
            let mut windows: Vec<(i64, i64)> = vec![(0, 3_600_000)];
            for mint in (0..3_600_000).step_by(97_000) {
                for len in [0, 5_000, 300_000, 1_000_000] {
                    windows.push((mint, mint + len));
                }
            }
            for b in (0..=3_600_000).step_by(600_000) {
                windows.extend([(b - 1, b - 1), (b, b), (b - 30_000, b + 30_000)]);
            }
            for (mint, maxt) in windows {
                let got: Vec<(i64, u64)> = values(db, &[eq("__name__", name)], mint, maxt)
                    .into_iter()
                    .flat_map(|(_, v)| v)
                    .collect();
                let expect: Vec<(i64, u64)> = want
                    .borrow()
                    .range((name, mint)..=(name, maxt))
                    .map(|(&(_, t), &v)| (t, v))
                    .collect();
                assert_eq!(got, expect, "{name} in [{mint}, {maxt}] {when}");
            }
        }
    };
    check(&db, "before compaction");

    // At 45 min the blocks before 30 min are closed.
    let report = db.maintain(2_700_000).unwrap();
    assert_eq!(report.blocks, vec![(0, 1_800_000, 3)]);
    assert!(report.compacted.is_empty(), "the partition is open");
    assert_eq!(db.gauges().compactions, 1);
    assert_eq!(db.gauges().maintenance_runs, 1);
    let chunks = stored_chunks(&db, 0);
    assert!(
        db.inner.spans.get(0) < 600_000,
        "every chunk is shorter than a block"
    );
    for (r, first_block) in [(0, 0), (1, 2), (2, 0)] {
        let mine: Vec<_> = chunks.iter().filter(|c| c.0 == r).collect();
        // One pcodec chunk per block, holding only the block's samples.
        let blocks: Vec<_> = mine.iter().filter(|c| c.1 < 1_800_000).collect();
        assert_eq!(blocks.len(), 3 - first_block, "series {r}: {mine:?}");
        for (i, c) in blocks.iter().enumerate() {
            let b = (first_block + i) as i64 * 600_000;
            assert!(c.3 == ENC_SEALED && c.1 >= b && c.2 < b + 600_000, "{c:?}");
        }
    }
    // The sparse chunk's samples after 30 min stay a chunk of their own.
    assert!(
        chunks.contains(&(1, 1_800_000, 1_876_000, ENC_XOR)),
        "{chunks:?}"
    );
    check(&db, "after the first blocks");
    // Nothing new to do until another block closes.
    assert!(db.maintain(2_900_000).unwrap().blocks.is_empty());

    // Late data in compacted blocks: a new series, and rewrites of the
    // dense series within its window.
    put(&db, "late", &mut (300..480).map(|i| (i * 1000, i as f64)));
    put(
        &db,
        "dense",
        &mut (2400..2700).map(|i| (i * 1000, 1e6 + i as f64)),
    );
    db.flush_head().unwrap();
    check(&db, "with late chunks");
    drop(db);
    let db = Db::open(dir.path(), o.clone()).unwrap();
    assert_eq!(db.inner.spans.compacted(0), Some((1_800_000, 600_000)));
    check(&db, "after a restart");
    // A record from before the width was kept (one i64) still opens and
    // reads: seeks start at the partition's start, and maintenance does
    // not compact that partition in blocks again.
    let meta = cf(&db.inner.rocks, CF_META).unwrap();
    db.inner
        .rocks
        .put_cf(meta, keys::blocks(0), 1_800_000i64.to_be_bytes())
        .unwrap();
    drop(db);
    let old = Db::open(dir.path(), o.clone()).unwrap();
    let partition = o.partition_ms();
    assert_eq!(old.inner.spans.compacted(0), Some((1_800_000, partition)));
    check(&old, "with a record without the width");
    assert!(old.maintain(3_900_000).unwrap().blocks.is_empty());
    let meta = cf(&old.inner.rocks, CF_META).unwrap();
    old.inner
        .spans
        .claim_blocks(&old.inner.rocks, meta, 0, 1_800_000, 600_000)
        .unwrap();
    let db = old;
    // Blocks turned off, or another width: what was compacted still reads
    // (the recorded width, not the setting), and nothing is compacted in
    // this partition with another width.
    drop(db);
    for block in [Duration::ZERO, Duration::from_secs(1200)] {
        let other = Db::open(dir.path(), Options { block, ..o.clone() }).unwrap();
        check(&other, &format!("with block = {block:?}"));
        assert!(other.maintain(3_900_000).unwrap().blocks.is_empty());
        check(&other, &format!("with block = {block:?}, maintained"));
    }
    let db = Db::open(dir.path(), o.clone()).unwrap();

    // At 65 min the blocks up to 50 min: the second round takes the
    // remainders and the rewrites, and leaves the late series' chunk in
    // the compacted range as it is.
    let report = db.maintain(3_900_000).unwrap();
    assert_eq!(report.blocks, vec![(0, 3_000_000, 3)]);
    check(&db, "after the second blocks");
    // The partition closes: one pcodec chunk per series (the most
    // compact form on disk, paged by block so that a short read decodes
    // only its pages), and nothing is rewritten again at the next run.
    let report = db.maintain(7_300_000).unwrap();
    assert_eq!(report.compacted, vec![0]);
    let chunks = stored_chunks(&db, 0);
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    assert!(chunks.iter().all(|c| c.3 == ENC_SEALED), "{chunks:?}");
    assert!(db.maintain(7_400_000).unwrap().compacted.is_empty());
    check(&db, "after the partition closed");
    // A late chunk in the closed partition marks it: the next run
    // compacts it again, and the run after that has nothing to do.
    put(
        &db,
        "late",
        &mut (900..960).map(|i| (i * 1000, -(i as f64))),
    );
    db.flush_head().unwrap();
    check(&db, "with a late chunk after the close");
    assert_eq!(db.maintain(7_500_000).unwrap().compacted, vec![0]);
    assert_eq!(stored_chunks(&db, 0).len(), 4);
    assert!(db.maintain(7_600_000).unwrap().compacted.is_empty());
    check(&db, "after the late chunk was compacted");
    drop(db);
    let db = Db::open(dir.path(), o).unwrap();
    check(&db, "after another restart");
}

#[test]
fn blocks_that_do_not_divide_the_partition_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        block: Duration::from_secs(7 * 60),
        ..opts()
    };
    let err = Db::open(dir.path(), o).err().unwrap().to_string();
    assert!(err.contains("block") && err.contains("divide"), "{err}");
}

fn sealed(r: SeriesRef, partition: i64, min_t: i64, seq: u64) -> SealedChunk {
    SealedChunk::new(r, partition, min_t, min_t, seq)
}

proptest::proptest! {
    /// A table file gets every key once, ascending, holding the chunk a
    /// write batch would have kept: the last sealed under it.
    #[test]
    fn a_table_file_takes_each_key_once_ascending_and_the_last_sealed_wins(
        chunks in proptest::collection::vec((0u32..4, -1i64..2, 0i64..3, 0u64..3), 0..40),
    ) {
        let chunks: Vec<SealedChunk> = chunks
            .iter()
            .map(|&(r, p, t, seq)| sealed(r, p, t, seq))
            .collect();
        let order = table_order(&chunks);
        proptest::prop_assert!(order.windows(2).all(|w| w[0].0 < w[1].0));
        let mut model = std::collections::BTreeMap::new();
        for (i, c) in chunks.iter().enumerate() {
            model.insert(keys::chunk(0, c.partition, c.r, c.min_t, c.seq), i);
        }
        let want: Vec<([u8; 29], usize)> = model.into_iter().collect();
        proptest::prop_assert_eq!(order, want);
    }
}

/// How many samples each series named `m` has between `mint` and `maxt`.
fn sample_counts(db: &Db, mint: i64, maxt: i64) -> Vec<(String, usize)> {
    db.select(&[eq("__name__", "m")], mint, maxt)
        .unwrap()
        .into_iter()
        .map(|s| (s.labels.to_string(), s.samples.len()))
        .collect()
}

#[test]
fn sealed_chunks_stay_readable_when_their_table_file_fails_and_are_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut app = db.appender();
    let refs: Vec<SeriesRef> = (0..50)
        .map(|i| {
            app.append(&labels("m", &[("i", &i.to_string())]), 0, 0.0)
                .unwrap()
        })
        .collect();
    app.commit().unwrap();
    // Series sealed out of reference order, so the table file is sorted.
    for step in 1..300i64 {
        let mut app = db.appender();
        for &r in refs.iter().rev() {
            app.append_ref(r, step * 1000, (step * i64::from(r)) as f64);
        }
        app.commit().unwrap();
    }
    let want: Vec<(String, usize)> = (0..50)
        .map(|i| (labels("m", &[("i", &i.to_string())]).to_string(), 300))
        .collect();
    let mut want = want;
    want.sort();
    let read = |db: &Db| {
        let mut got = sample_counts(db, 0, i64::MAX);
        got.sort();
        got
    };
    assert_eq!(read(&db), want);
    // The folder table files are written in is a file now: the write
    // fails, naming what it did, and the chunks wait in the head.
    let ingest = dir.path().join(INGEST_DIR);
    std::fs::remove_dir_all(&ingest).unwrap();
    std::fs::write(&ingest, b"not a folder").unwrap();
    let waiting = db.inner.head.read().pending.len();
    assert!(waiting >= 100, "{waiting} sealed chunks, in memory");
    let err = db.flush_head().unwrap_err().to_string();
    assert!(err.contains("table file of sealed chunks"), "{err}");
    let sealed = db.inner.head.read().pending.len();
    assert!(sealed > waiting, "the open chunks were sealed too");
    assert_eq!(read(&db), want, "sealed chunks are read from the head");
    assert!(stored_chunks(&db, 0).is_empty());
    std::fs::remove_file(&ingest).unwrap();
    std::fs::create_dir(&ingest).unwrap();
    db.flush_head().unwrap();
    assert_eq!(db.inner.head.read().pending.len(), 0);
    assert_eq!(stored_chunks(&db, 0).len(), sealed);
    assert!(std::fs::read_dir(&ingest).unwrap().next().is_none());
    assert_eq!(read(&db), want, "and then from RocksDB");
    db.checkpoint().unwrap();
    drop(db);
    // A table file left by a crash is removed at the next start (replay
    // writes its chunks again).
    std::fs::write(ingest.join("00000009.sst"), b"torn").unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(std::fs::read_dir(&ingest).unwrap().next().is_none());
    assert_eq!(read(&db), want, "after a restart");
}

#[test]
fn series_are_created_together_each_with_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        max_series: 2100,
        max_label_value_len: 8,
        ..opts()
    };
    let db = Db::open(dir.path(), o.clone()).unwrap();
    let a = labels("a", &[]);
    let ra = db.series_ref(&a).unwrap();
    // More than one batch of new series, past max_series, with an
    // existing series, a series twice and an invalid one among them.
    let mut sets = vec![a.clone()];
    sets.extend((0..2500).map(|i| labels("n", &[("i", &i.to_string())])));
    sets.push(labels("n", &[("i", "0")]));
    sets.push(labels("n", &[("i", "123456789")]));
    let got = db.series_refs(&sets).unwrap();
    assert_eq!(got.len(), sets.len());
    assert_eq!(*got[0].as_ref().unwrap(), ra);
    let created: Vec<SeriesRef> = got[1..2100].iter().map(|r| *r.as_ref().unwrap()).collect();
    let distinct: std::collections::HashSet<_> = created.iter().chain([&ra]).collect();
    assert_eq!(
        distinct.len(),
        2100,
        "every new series has its own reference"
    );
    for r in &got[2100..2501] {
        let e = r.as_ref().unwrap_err().to_string();
        assert!(e.contains("max_series"), "{e}");
    }
    assert_eq!(
        *got[2501].as_ref().unwrap(),
        created[0],
        "the same series twice"
    );
    let e = got[2502].as_ref().unwrap_err().to_string();
    assert!(e.contains("max_label_value_len"), "{e}");
    assert_eq!(db.stats(0).series, 2100);
    // Each is there under its labels, and durable: the WAL replays them.
    let mut app = db.appender();
    for (i, &r) in created.iter().enumerate() {
        app.append_ref(r, 1000, i as f64);
    }
    app.commit().unwrap();
    drop(db);
    let db = Db::open(dir.path(), o).unwrap();
    assert_eq!(db.stats(0).series, 2100);
    for (i, &r) in created.iter().enumerate().step_by(97) {
        assert_eq!(db.series_ref(&sets[i + 1]).unwrap(), r);
        let v = values(&db, &[eq("i", &i.to_string())], 0, 2000);
        assert_eq!(
            v,
            [(sets[i + 1].to_string(), vec![(1000, (i as f64).to_bits())])]
        );
    }
}
