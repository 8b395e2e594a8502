//! Crash safety of the storage engine: a loader process is killed with
//! SIGKILL at random moments under load; after each kill, everything it
//! acknowledged must be stored, with the right values.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand::Rng;
use tiermon_model::{MatchOp, Matcher};

use crate::util::{Guard, bin};

const SERIES: u32 = 300;

/// Runs the loader from `from`, kills it after `after`, and returns the last
/// batch it acknowledged.
fn load_then_kill(data: &std::path::Path, from: u64, after: Duration) -> Option<u64> {
    let mut child = Guard(
        Command::new(bin())
            .args([
                "debug",
                "tsdb-load",
                "--series",
                &SERIES.to_string(),
                "--from-batch",
                &from.to_string(),
                "--checkpoint-every",
                "7",
                "--data",
            ])
            .arg(data)
            .env("TIERMON_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line
                .strip_prefix("acked ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                let _ = tx.send(n);
            }
        }
    });
    // Wait for the first acknowledgement so that every round writes.
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("loader acknowledged nothing");
    std::thread::sleep(after);
    // SIGKILL, mid-write as likely as not.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mut last = Some(first);
    while let Ok(n) = rx.recv_timeout(Duration::from_millis(200)) {
        last = Some(n);
    }
    last
}

#[test]
fn acknowledged_samples_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = rand::rng();
    let mut next = 0;
    let mut acked = None;
    for _round in 0..5 {
        let after = Duration::from_millis(rng.random_range(50..600));
        if let Some(last) = load_then_kill(&data, next, after) {
            acked = Some(last);
            next = last + 1;
        }
    }
    let acked = acked.expect("nothing acknowledged");
    let db = tiermon_tsdb::Db::open(&data, tiermon_tsdb::Options::default()).unwrap();
    let all = db
        .select(
            &[Matcher::new(MatchOp::Equal, "__name__", "load").unwrap()],
            0,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(all.len(), SERIES as usize);
    for s in all {
        let i: u32 = s.labels.get("i").unwrap().parse().unwrap();
        let mut by_t = std::collections::HashMap::new();
        for x in &s.samples {
            by_t.insert(x.t, x.v);
        }
        for b in 0..=acked {
            let want = (u64::from(i) * 1_000_003 + b) as f64;
            assert_eq!(
                by_t.get(&(b as i64 * 1000)),
                Some(&want),
                "series {i}: acknowledged batch {b} of {acked} is missing or wrong"
            );
        }
        // Nothing that was never written.
        for x in &s.samples {
            let b = x.t / 1000;
            assert_eq!(
                x.v,
                (u64::from(i) * 1_000_003 + b as u64) as f64,
                "series {i} has a sample never written at {}",
                x.t
            );
        }
    }
}
