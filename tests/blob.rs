//! Blob tiering against a real S3-compatible server: moto's server mode,
//! started by the test on a loopback port chosen at run time. Covers an
//! upload that fails while the server is down (data stays local and
//! readable), the upload once it is up, reads through S3 after a restart,
//! and retention deleting the objects.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use tiermon_model::{Labels, MatchOp, Matcher};
use tiermon_tsdb::{BlobOptions, Db, Options, Resolution, open_store};

use crate::util::{Guard, eventually, free_port, peer};

const HOUR: i64 = 3_600_000;

/// One plain HTTP request to moto (it does not check signatures).
fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out))
}

fn start_moto(moto: &std::path::Path, port: u16) -> Guard {
    let child = Guard(
        Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("moto to listen", Duration::from_secs(60), || {
        http(port, "GET", "/").map(|_| ())
    });
    child
}

fn options(port: u16, retention_raw: Duration) -> Options {
    let store = open_store(
        "s3://tiermon-test/cluster-a",
        [
            ("endpoint", format!("http://127.0.0.1:{port}")),
            ("allow_http", "true".into()),
            ("region", "us-east-1".into()),
            ("access_key_id", "test".into()),
            ("secret_access_key", "test".into()),
        ],
    )
    .unwrap();
    Options {
        partition: Duration::from_secs(3600),
        ooo_window: Duration::from_secs(600),
        retention_raw,
        blob: Some(BlobOptions {
            after: Duration::from_secs(2 * 3600),
            upload_attempts: 2,
            ..BlobOptions::new(store)
        }),
        ..Options::default()
    }
}

type Dump = Vec<(String, Vec<(i64, u64)>)>;

fn dump(db: &Db) -> Dump {
    let m = [Matcher::new(MatchOp::Equal, "job", "node").unwrap()];
    db.select(&m, 0, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| {
            let v = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
            (s.labels.to_string(), v)
        })
        .collect()
}

fn objects(port: u16) -> String {
    http(port, "GET", "/tiermon-test?list-type=2").unwrap().1
}

#[test]
fn blob_tier_round_trips_through_s3() {
    let Some(moto) = peer("moto_server") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let keep = Duration::from_secs(30 * 24 * 3600);

    let db = Db::open(&data, options(port, keep)).unwrap();
    let mut app = db.appender();
    for i in 0..50 {
        let l = Labels::from_pairs([
            ("__name__", "node_network_receive_bytes_total"),
            ("job", "node"),
            ("device", &format!("eth{i}")),
        ]);
        let mut v = 0.0;
        for k in 0..(6 * 240) {
            v += ((k * 7919 + i * 31) % 1500) as f64;
            app.append(&l, k * 15_000, v).unwrap();
        }
    }
    app.commit().unwrap();
    db.flush_head().unwrap();
    let before = dump(&db);

    // The server is not up: the uploads fail, nothing is lost.
    let report = db.maintain(7 * HOUR).unwrap();
    assert!(report.tiered.is_empty());
    assert_eq!(report.tier_failed.len(), 1, "one failure stops the run");
    assert!(dump(&db) == before, "data differs");
    // (Downsampled by that run.)
    let job = [Matcher::new(MatchOp::Equal, "job", "node").unwrap()];
    let aggs_before = db
        .select_aggregates(&job, Resolution::OneMinute, 0, i64::MAX)
        .unwrap();
    assert_eq!(aggs_before.len(), 50);

    // Up, with a bucket: the next run moves partitions 0h..4h.
    let moto_proc = start_moto(&moto, port);
    assert_eq!(http(port, "PUT", "/tiermon-test").unwrap().0, 200);
    let report = db.maintain(7 * HOUR).unwrap();
    assert!(report.tier_failed.is_empty(), "{:?}", report.tier_failed);
    assert_eq!(report.tiered.len(), 15, "{:?}", report.tiered);
    let listing = objects(port);
    assert!(
        listing.contains("cluster-a/tiermon/raw/0/000000.tmb"),
        "{listing}"
    );
    assert!(listing.contains("cluster-a/tiermon/1h/14400000/000000.tmb"));
    assert!(dump(&db) == before, "data differs");

    // After a restart every read of the old range goes through S3.
    drop(db);
    let db = Db::open(&data, options(port, keep)).unwrap();
    assert_eq!(db.stats(1).blob_blocks, 15);
    assert!(dump(&db) == before, "data differs");
    let aggs_after = db
        .select_aggregates(&job, Resolution::OneMinute, 0, i64::MAX)
        .unwrap();
    // (Not assert_eq: a difference would print megabytes.)
    assert!(aggs_after == aggs_before, "aggregates differ after tiering");

    // The server goes away: a read of tiered data fails with the reason
    // rather than returning a silently shorter answer.
    drop(moto_proc);
    drop(db);
    let db = Db::open(&data, options(port, keep)).unwrap();
    let err = db
        .select(
            &[Matcher::new(MatchOp::Equal, "device", "eth1").unwrap()],
            0,
            HOUR,
        )
        .unwrap_err();
    assert!(err.to_string().contains("reading a block"), "{err}");
    drop(db);

    // Retention removes expired blocks from the bucket.
    let _moto_proc = start_moto(&moto, port);
    assert_eq!(http(port, "PUT", "/tiermon-test").unwrap().0, 200);
    // moto keeps its state in memory: load the objects again through a
    // fresh database, then expire them.
    let data2 = dir.path().join("data2");
    let db = Db::open(&data2, options(port, Duration::from_secs(3 * 3600))).unwrap();
    let mut app = db.appender();
    let l = Labels::from_pairs([("__name__", "g"), ("job", "node")]);
    for k in 0..(6 * 240) {
        app.append(&l, k * 15_000, (k % 17) as f64).unwrap();
    }
    app.commit().unwrap();
    db.flush_head().unwrap();
    let report = db.maintain(7 * HOUR).unwrap();
    assert!(report.tiered.contains(&(Resolution::Raw, 0)), "{report:?}");
    assert!(report.deleted.contains(&(Resolution::Raw, 0)), "{report:?}");
    let listing = objects(port);
    assert!(!listing.contains("tiermon/raw/0/"), "{listing}");
    assert!(listing.contains("tiermon/1m/0/000000.tmb"), "{listing}");
}
