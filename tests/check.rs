//! `tiermon check`: promtool's contract.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::{bin, run_with_stdin};

fn check_metrics(format: &str, input: &str) -> (i32, String) {
    let out = run_with_stdin(
        Command::new(bin()).args(["check", "metrics", "--format", format]),
        input,
    );
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_metrics_exit_codes_and_errors() {
    assert_eq!(check_metrics("prometheus", "# TYPE a gauge\na 1\n").0, 0);
    assert_eq!(
        check_metrics("openmetrics", "# TYPE a gauge\na 1\n# EOF\n").0,
        0
    );
    let (code, err) = check_metrics("openmetrics", "# TYPE a gauge\na 1\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("line 3, column 1") && err.contains("# EOF"),
        "{err}"
    );
    let (code, err) = check_metrics("prometheus", "a{b=\"c\" 1\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("line 1, column 9: expected ',' or '}'"),
        "{err}"
    );
}

#[test]
fn check_metrics_defaults_to_prometheus_format() {
    let mut child = Command::new(bin())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // Valid Prometheus text, invalid OpenMetrics (no # EOF).
    child.stdin.take().unwrap().write_all(b"a 1\n").unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn check_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "agent:\n  listen: 127.0.0.1:9190\n").unwrap();
    let out = Command::new(bin())
        .args(["check", "config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "agent:\n  processes:\n    - name: x\n").unwrap();
    let out = Command::new(bin())
        .args(["check", "config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.processes[0]") && err.contains("exactly one of comm, cmdline, pidfile"),
        "{err}"
    );
}
