//! `tiermon agent` end to end: formats, compression, watched processes,
//! access logs, promtool.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use tiermon_exposition::{Format, parse_families};

use crate::util::{Guard, Tiermon, eventually, get, peer, run_with_stdin, sample, samples};

fn fetch(url: &str, accept: Option<&str>, gzip: bool) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // No automatic decompression: the test checks the encoding itself.
        let client = reqwest::Client::builder().no_gzip().build().unwrap();
        let mut req = client.get(url);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if gzip {
            req = req.header("accept-encoding", "gzip");
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        (resp.headers().clone(), resp.bytes().await.unwrap().to_vec())
    })
}

#[test]
fn serves_host_health_in_both_formats_and_gzip() {
    let agent = Tiermon::start("agent", None, &[]);
    let (h, body) = fetch(&agent.url("/metrics"), None, false);
    assert_eq!(
        h["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body).unwrap();
    let fams = parse_families(text.as_bytes(), Format::Prometheus).unwrap();
    for name in [
        "node_cpu_seconds_total",
        "node_memory_mem_total_bytes",
        "node_load1",
        "node_filesystem_size_bytes",
        "node_network_receive_bytes_total",
        "node_boot_time_seconds",
        "node_filefd_allocated",
        "node_context_switches_total",
    ] {
        assert!(fams.iter().any(|f| f.name == name), "{name} missing");
    }
    // Every collector that reads this host's /proc and /sys succeeded.
    for (labels, v) in samples(&text, "tiermon_agent_collector_success") {
        assert_eq!(v, 1.0, "collector failed: {labels:?}");
    }
    assert!(sample(&text, "node_memory_mem_total_bytes", &[]).unwrap() > 0.0);

    let (h, body) = fetch(
        &agent.url("/metrics"),
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        false,
    );
    assert_eq!(
        h["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = String::from_utf8(body).unwrap();
    assert!(om.ends_with("# EOF\n"));
    let om_fams = parse_families(om.as_bytes(), Format::OpenMetrics).unwrap();
    let cpu = om_fams
        .iter()
        .find(|f| f.name == "node_cpu_seconds")
        .unwrap();
    assert_eq!(cpu.kind, tiermon_exposition::MetricType::Counter);

    let (h, body) = fetch(&agent.url("/metrics"), None, true);
    assert_eq!(h["content-encoding"], "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(parse_families(text.as_bytes(), Format::Prometheus).is_ok());
}

#[test]
fn watched_process_crash_and_restart_are_visible() {
    let marker = format!("tiermon-it-{}", std::process::id());
    let spawn = || {
        Guard(
            Command::new("bash")
                .args(["-c", &format!("exec -a {marker} sleep 1000")])
                .spawn()
                .unwrap(),
        )
    };
    let mut proc1 = spawn();
    let config = format!(
        "[[agent.processes]]\nname = \"victim\"\ncmdline = \"^{marker}\"\n\n[agent.smart]\nenabled = false\n"
    );
    let agent = Tiermon::start("agent", Some(&config), &[]);
    let metrics = || get(&agent.url("/metrics")).unwrap();
    let up = |t: &str| sample(t, "tiermon_process_up", &[("name", "victim")]);
    eventually("victim up", Duration::from_secs(10), || {
        (up(&metrics()) == Some(1.0)).then_some(())
    });
    let t = metrics();
    assert_eq!(
        sample(&t, "tiermon_process_instances", &[("name", "victim")]),
        Some(1.0)
    );
    assert!(
        sample(
            &t,
            "tiermon_process_resident_memory_bytes",
            &[("name", "victim")]
        )
        .unwrap()
            > 0.0
    );
    assert!(sample(&t, "tiermon_process_open_fds", &[("name", "victim")]).unwrap() >= 3.0);

    // kill -9: the next scrape says it is down.
    let _ = proc1.0.kill();
    let _ = proc1.0.wait();
    assert_eq!(up(&metrics()), Some(0.0));
    let _proc2 = spawn();
    let t = eventually("victim back", Duration::from_secs(10), || {
        Some(metrics()).filter(|t| up(t) == Some(1.0))
    });
    assert_eq!(
        sample(&t, "tiermon_process_restarts_total", &[("name", "victim")]),
        Some(1.0)
    );
}

#[test]
fn access_log_statuses_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let config = format!(
        "[[agent.logs]]\nname = \"web\"\npath = \"{}\"\nformat = \"combined\"\n\n[agent.smart]\nenabled = false\n",
        log.display()
    );
    let agent = Tiermon::start("agent", Some(&config), &[]);
    // Wait until the follower has opened the file, then write.
    eventually("log opened", Duration::from_secs(10), || {
        (sample(
            &get(&agent.url("/metrics")).unwrap(),
            "tiermon_log_readable",
            &[("log", "web")],
        ) == Some(1.0))
        .then_some(())
    });
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for code in [200, 200, 503, 404] {
        writeln!(f, "10.0.0.1 - - [23/Nov/2026:03:00:00 +0000] \"GET /api HTTP/1.1\" {code} 12 \"-\" \"curl/8\"").unwrap();
    }
    f.flush().unwrap();
    let t = eventually("requests counted", Duration::from_secs(10), || {
        let t = get(&agent.url("/metrics")).unwrap();
        (sample(&t, "tiermon_log_lines_total", &[("log", "web")]) == Some(4.0)).then_some(t)
    });
    assert_eq!(
        sample(
            &t,
            "tiermon_log_requests_total",
            &[("log", "web"), ("code", "200"), ("class", "2xx")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &t,
            "tiermon_log_requests_total",
            &[("log", "web"), ("code", "503"), ("class", "5xx")]
        ),
        Some(1.0)
    );
}

#[test]
fn output_passes_promtool_check_metrics() {
    let Some(promtool) = peer("promtool") else {
        return;
    };
    let agent = Tiermon::start(
        "agent",
        Some("[[agent.processes]]\nname = \"init\"\npidfile = \"/nonexistent\"\n"),
        &[],
    );
    let text = get(&agent.url("/metrics")).unwrap();
    let out = run_with_stdin(Command::new(promtool).args(["check", "metrics"]), &text);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_is_rejected_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[agent]\nlisten = \"127.0.0.1:0\"\ncolector_timeout = \"1s\"\n",
    )
    .unwrap();
    let out = Command::new(crate::util::bin())
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.colector_timeout"), "{err}");
}
