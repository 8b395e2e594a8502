//! The agent and Debian's prometheus-node-exporter, side by side on this
//! machine, agree on the facts both report.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{Guard, Tiermon, eventually, free_port, get, peer, sample, samples};

fn close(what: &str, ours: f64, theirs: f64, abs: f64, rel: f64) {
    let diff = (ours - theirs).abs();
    assert!(
        diff <= abs || diff <= rel * theirs.abs(),
        "{what}: tiermon {ours} vs node_exporter {theirs}"
    );
}

#[test]
fn agrees_with_node_exporter() {
    let Some(ne) = peer("prometheus-node-exporter").or_else(|| peer("node_exporter")) else {
        return;
    };
    let port = free_port();
    let _ne = Guard(
        Command::new(ne)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let agent = Tiermon::start("agent", Some("[agent.smart]\nenabled = false\n"), &[]);
    let theirs = eventually("node_exporter up", Duration::from_secs(20), || {
        get(&format!("http://127.0.0.1:{port}/metrics"))
    });
    let ours = get(&agent.url("/metrics")).unwrap();

    // Same fact, names differ: tiermon's pass promtool's snake_case lint.
    assert_eq!(
        sample(&ours, "node_memory_mem_total_bytes", &[]).unwrap(),
        sample(&theirs, "node_memory_MemTotal_bytes", &[]).unwrap(),
        "MemTotal"
    );

    let cpus = |t: &str| {
        let mut c: Vec<String> = samples(t, "node_cpu_seconds_total")
            .into_iter()
            .filter_map(|(l, _)| l.into_iter().find(|(n, _)| n == "cpu").map(|(_, v)| v))
            .collect();
        c.sort();
        c.dedup();
        c.len()
    };
    assert_eq!(cpus(&ours), cpus(&theirs), "CPU count");
    assert!(cpus(&ours) >= 1);

    let root = |t: &str| sample(t, "node_filesystem_size_bytes", &[("mountpoint", "/")]);
    if let (Some(o), Some(t)) = (root(&ours), root(&theirs)) {
        assert_eq!(o, t, "size of /");
    }
    // Every filesystem both report has the same size.
    let mut compared = 0;
    for (labels, size) in samples(&theirs, "node_filesystem_size_bytes") {
        let mp = labels
            .iter()
            .find(|(n, _)| n == "mountpoint")
            .map(|(_, v)| v.clone())
            .unwrap();
        if let Some(o) = sample(&ours, "node_filesystem_size_bytes", &[("mountpoint", &mp)]) {
            assert_eq!(o, size, "size of {mp}");
            compared += 1;
        }
    }
    assert!(compared >= 1, "no filesystem in common");

    let load = |t: &str| sample(t, "node_load1", &[]).unwrap();
    close("load1", load(&ours), load(&theirs), 0.5, 0.25);
    let boot = |t: &str| sample(t, "node_boot_time_seconds", &[]).unwrap();
    close("boot time", boot(&ours), boot(&theirs), 1.0, 0.0);

    // Interface counters only grow between the two scrapes (node_exporter
    // was scraped first), by little.
    let mut compared = 0;
    for (labels, t) in samples(&theirs, "node_network_receive_bytes_total") {
        let dev = labels
            .iter()
            .find(|(n, _)| n == "device")
            .map(|(_, v)| v.clone())
            .unwrap();
        if let Some(o) = sample(
            &ours,
            "node_network_receive_bytes_total",
            &[("device", &dev)],
        ) {
            assert!(
                o >= t && o - t < 64e6,
                "{dev} receive bytes: tiermon {o} vs node_exporter {t}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 1, "no network device in common");
}
