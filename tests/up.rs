//! `tiermon up`: the README's first command starts the tiers wired
//! together, monitoring this machine, and stops cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::secondary::instant;
use crate::util::{Guard, eventually};

#[test]
fn up_scrapes_this_machine_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(crate::util::bin())
        .args([
            "up",
            "--agent-listen",
            "127.0.0.1:0",
            "--secondary-listen",
            "127.0.0.1:0",
            "--secondary-b-listen",
            "127.0.0.1:0",
            "--primary-listen",
            "127.0.0.1:0",
            "--global-listen",
            "127.0.0.1:0",
            "--scrape-interval",
            "1s",
            "--data",
        ])
        .arg(dir.path())
        .env("TIERMON_AGENT__SMART__ENABLED", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[up] {line}");
            let _ = tx.send(line);
        }
    });
    let guard = Guard(child);
    let mut urls = std::collections::HashMap::new();
    while urls.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("tiermon up printed its URLs");
        let mut words = line.split_whitespace();
        if let (Some(tier @ ("secondary" | "primary" | "global")), Some(url)) =
            (words.next(), words.next())
        {
            let url = url.trim_end_matches("/targets").trim_end_matches('/');
            urls.insert(tier.to_owned(), url.to_owned());
        }
    }
    let base = urls["secondary"].clone();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // The agent's host metrics arrive through the secondary's scrapes.
    eventually("the agent scraped", Duration::from_secs(30), || {
        let up = instant(&base, "up{job=\"node\"}", now());
        (up.first().is_some_and(|(_, v)| *v == 1.0)).then_some(())
    });
    let cpus = instant(&base, "count(node_cpu_seconds_total{mode=\"idle\"})", now());
    assert!(cpus[0].1 >= 1.0, "{cpus:?}");
    eventually(
        "the secondary scraped itself",
        Duration::from_secs(30),
        || (!instant(&base, "up{job=\"tiermon\"}", now()).is_empty()).then_some(()),
    );
    assert!(dir.path().join("scrape.yml").is_file());

    // The pair pushes to the primary, which keeps one copy of each series
    // (named by the pair's external label), and the primary reports to the
    // global tier.
    let primary = &urls["primary"];
    eventually(
        "the primary to hold the agent's series",
        Duration::from_secs(30),
        || {
            let up = instant(primary, "up{job=\"node\",secondary=\"pair-1\"}", now());
            (up.len() == 1 && up[0].1 == 1.0).then_some(())
        },
    );
    eventually(
        "both replicas reporting to the primary",
        Duration::from_secs(30),
        || {
            let r = instant(
                primary,
                "tiermon_child_up{instance=\"primary/local\",tier=\"secondary\"}",
                now(),
            );
            (r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0)).then_some(())
        },
    );
    eventually(
        "the primary reporting to the global tier",
        Duration::from_secs(30),
        || {
            let r = instant(
                &urls["global"],
                "tiermon_child_up{instance=\"global\",child=\"primary/local\"}",
                now(),
            );
            (r.first().is_some_and(|(_, v)| *v == 1.0)).then_some(())
        },
    );
    // The primary evaluates the embedded host rules, with an alert manager.
    let rules: serde_json::Value = serde_json::from_str(
        &crate::util::get(&format!("{primary}/api/v1/rules")).unwrap_or_default(),
    )
    .unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["name"] == "host"), "{rules}");
    assert!(
        crate::util::get(&format!("{primary}/api/v2/status"))
            .is_some_and(|s| s.contains("cluster"))
    );
    if let Some(promtool) = crate::util::peer("promtool") {
        let file = dir.path().join("rules/host.yml");
        let out = std::process::Command::new(promtool)
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // SIGTERM (as Ctrl-C): a clean stop.
    let mut child = guard;
    let pid = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = eventually("tiermon up stopped", Duration::from_secs(30), || {
        child.0.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        rest.push(l);
    }
    assert!(
        rest.iter().any(|l| l.contains("tiermon stopped")),
        "{rest:?}"
    );
}
