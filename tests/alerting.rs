//! Rules and the alert manager, end to end: a secondary scrapes the fleet
//! simulator, evaluates Prometheus rules, and its alert manager delivers
//! to a webhook the test runs; a crash loses neither the alert state nor
//! the notification log; alerts forward to Debian's real Alertmanager and
//! email reaches a real SMTP server (aiosmtpd).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fleetsim::{Fleet, Mode};
use crate::util::{Guard, Hook, Tiermon, bin, eventually, free_port, get, peer};

const RULES: &str = r#"
groups:
  - name: hosts
    interval: 1s
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      - alert: HostDown
        expr: up{job="node"} == 0
        for: 2s
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.instance }} is down"
          value: "{{ $value | humanize }}"
      - alert: Http5xx
        expr: sum by (instance) (rate(http_requests_total{code="500"}[5s])) > 5
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.instance }} answers {{ printf \"%.0f\" $value }} 5xx/s"
"#;

fn alertmanager_yml(hook: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: [alertname, instance]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"{hook}\"}}]\n"
    )
}

fn json(url: &str) -> Value {
    serde_json::from_str(&get(url).unwrap_or_default()).unwrap_or(Value::Null)
}

fn query(base: &str, q: &str) -> Vec<Value> {
    let url = format!(
        "{base}/api/v1/query?query={}",
        form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
    );
    json(&url)["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn notified(n: &Value, alert: &str, instance: &str, status: &str) -> bool {
    n["alerts"].as_array().is_some_and(|a| {
        a.iter().any(|a| {
            a["labels"]["alertname"] == alert
                && a["labels"]["instance"] == instance
                && a["status"] == status
        })
    })
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn a_failing_host_reaches_the_webhook_and_a_crash_neither_loses_nor_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fleet = rt
        .block_on(Fleet::start(3, 30, free_port()))
        .expect("the fleet simulator binds 127.10.0.x");
    let scrape = fleet.write_scrape_config(dir.path(), 1);
    let hook = Hook::start();
    let rules = write(dir.path(), "rules.yml", RULES);
    let am = write(dir.path(), "alertmanager.yml", &alertmanager_yml(&hook.url));
    // The secondary pushes to a primary: alert states travel upward as
    // the ALERTS series.
    let primary = Tiermon::start(
        "primary",
        Some(&format!(
            "[primary]\ndatacenter = \"dc1\"\ndata = \"{}\"\n",
            dir.path().join("primary").display()
        )),
        &[],
    );
    let config = format!(
        "[secondary]\ndatacenter = \"dc1\"\nscrape_config = \"{}\"\ndata = \"{}\"\n[secondary.push]\ndestinations = [\"{}\"]\n[secondary.rules]\nfiles = [\"{rules}\"]\nevaluation_interval = \"1s\"\nresend_delay = \"2s\"\n[secondary.alertmanager]\nconfig_file = \"{am}\"\n",
        scrape.display(),
        dir.path().join("data").display(),
        primary.url("")
    );
    let s = Tiermon::start("secondary", Some(&config), &[]);
    let base = s.url("");
    // The recording rule writes back into storage.
    eventually("job:up:sum = 3", Duration::from_secs(30), || {
        let r = query(&base, "job:up:sum");
        (r.first()?["value"][1] == "3").then_some(())
    });
    let rules_api = json(&s.url("/api/v1/rules"));
    assert_eq!(rules_api["status"], "success");
    let g = &rules_api["data"]["groups"][0];
    assert_eq!(g["name"], "hosts");
    assert_eq!(g["rules"][0]["type"], "recording");
    assert_eq!(g["rules"][1]["type"], "alerting");
    assert_eq!(g["rules"][1]["duration"], 2.0);

    // Host 0 answers 500 to every scrape (up 0); host 1 serves a 5xx storm.
    let down = fleet.hosts[0].addr.to_string();
    let storm = fleet.hosts[1].addr.to_string();
    fleet.hosts[0].set_mode(Mode::Error5xx);
    fleet.hosts[1].set_mode(Mode::Failing);
    let n = hook.wait_for("HostDown firing", Duration::from_secs(30), |n| {
        notified(n, "HostDown", &down, "firing")
    });
    assert_eq!(n["version"], "4");
    assert_eq!(n["receiver"], "hook");
    assert_eq!(n["status"], "firing");
    let a = &n["alerts"][0];
    assert_eq!(a["annotations"]["summary"], format!("{down} is down"));
    assert_eq!(a["annotations"]["value"], "0");
    assert_eq!(
        a["labels"]["datacenter"], "dc1",
        "the tier's external label"
    );
    assert_eq!(a["labels"]["severity"], "critical");
    assert!(
        a["generatorURL"]
            .as_str()
            .unwrap()
            .contains("/graph?g0.expr=")
    );
    hook.wait_for("Http5xx firing", Duration::from_secs(30), |n| {
        notified(n, "Http5xx", &storm, "firing")
    });
    // ALERTS is a series like any other.
    let firing = query(
        &base,
        "ALERTS{alertname=\"HostDown\",alertstate=\"firing\"}",
    );
    assert_eq!(firing.len(), 1);
    eventually(
        "the alert state at the primary",
        Duration::from_secs(20),
        || {
            let r = query(
                &primary.url(""),
                "ALERTS{alertname=\"HostDown\",alertstate=\"firing\"}",
            );
            (r.first()?["metric"]["instance"] == down.as_str()).then_some(())
        },
    );
    let active_at = json(&s.url("/api/v1/alerts"))["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "HostDown")
        .unwrap()["activeAt"]
        .clone();
    // The same alerts and the targets over gRPC, through the CLI.
    let cli = |args: &[&str]| -> Value {
        let args: Vec<&str> = ["--output", "json"].iter().chain(args).copied().collect();
        serde_json::from_str(&crate::util::query_cli(&base, &args)).unwrap()
    };
    let grpc_alerts = cli(&["alerts", "--match", "{alertname=\"HostDown\"}"]);
    let grpc_alerts = grpc_alerts.as_array().unwrap();
    assert_eq!(grpc_alerts.len(), 1, "{grpc_alerts:?}");
    assert_eq!(grpc_alerts[0]["state"], "firing");
    assert_eq!(grpc_alerts[0]["labels"]["instance"], down.as_str());
    assert!(
        grpc_alerts[0]["source"]
            .as_str()
            .unwrap()
            .starts_with("secondary/dc1/"),
        "{grpc_alerts:?}"
    );
    let none = cli(&["alerts", "--match", "{alertname=\"NoSuchAlert\"}"]);
    assert_eq!(none, serde_json::json!([]));
    let targets = cli(&["targets"]);
    let active = targets["active"].as_array().unwrap();
    assert_eq!(active.len(), 3, "{targets}");
    let t = active
        .iter()
        .find(|t| t["url"].as_str().unwrap().contains(&down))
        .unwrap();
    assert_eq!(t["health"], "down", "{t}");
    assert!(t["lastError"].as_str().unwrap().contains("500"), "{t}");
    // The alert manager's view.
    let am_alerts = json(&s.url("/api/v2/alerts"));
    assert!(
        am_alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["instance"] == down.as_str())
    );

    // amtool, Alertmanager's own CLI, speaks to tiermon's alert manager.
    if let Some(amtool) = peer("amtool") {
        let am_url = format!("--alertmanager.url={base}");
        let out = Command::new(&amtool)
            .args([am_url.as_str(), "alert", "query", "alertname=HostDown"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("HostDown"),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&amtool)
            .args([
                am_url.as_str(),
                "silence",
                "add",
                "alertname=Nothing",
                "--comment=test",
                "--duration=1h",
                "--author=ci",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let out = Command::new(&amtool)
            .args([am_url.as_str(), "silence", "query", "-q"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&id),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&amtool)
            .args([am_url.as_str(), "silence", "expire", &id])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // SIGKILL while firing, and back on the same address and data.
    let before = hook.all().len();
    let addr = s.addr.to_string();
    s.kill();
    let s = Tiermon::start_at("secondary", &addr, Some(&config), &[]);
    let restored = eventually("the alert state restored", Duration::from_secs(20), || {
        json(&s.url("/api/v1/alerts"))["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "HostDown" && a["state"] == "firing")
            .cloned()
    });
    assert_eq!(restored["activeAt"], active_at, "the alert keeps its start");
    std::thread::sleep(Duration::from_secs(4));
    let repeats: Vec<Value> = hook.all()[before..]
        .iter()
        .filter(|n| notified(n, "HostDown", &down, "firing"))
        .cloned()
        .collect();
    assert!(
        repeats.is_empty(),
        "the notification log kept the restart from repeating: {repeats:?}"
    );

    // The host recovers: resolved.
    fleet.hosts[0].set_mode(Mode::Healthy);
    hook.wait_for("HostDown resolved", Duration::from_secs(30), |n| {
        notified(n, "HostDown", &down, "resolved") && n["status"] == "resolved"
    });
    drop(s);
    drop(rt);
}

#[test]
fn rules_managed_through_the_ruler_api_are_validated_versioned_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[primary]\ndatacenter = \"dc1\"\ndata = \"{}\"\n[primary.rules]\nevaluation_interval = \"1s\"\n",
        dir.path().join("data").display()
    );
    let p = Tiermon::start("primary", Some(&config), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str| {
        rt.block_on(async {
            let r = http
                .post(p.url(path))
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let group = "name: dc\ninterval: 1s\nrules:\n  - record: dc:one\n    expr: vector(1)\n";
    assert_eq!(post("/config/v1/rules/team-a", group).0, 202);
    eventually("the recorded series", Duration::from_secs(20), || {
        let r = query(&p.url(""), "dc:one");
        (!r.is_empty()).then_some(())
    });
    // A broken group is refused with the reason and changes nothing.
    let (code, text) = post(
        "/config/v1/rules/team-a",
        "name: dc\nrules:\n  - alert: X\n    expr: sum(\n",
    );
    assert_eq!(code, 400);
    assert!(text.contains("does not parse"), "{text}");
    let (code, text) = post("/config/v1/rules/team-a", "name: dc\nrulez: []\n");
    assert_eq!(code, 400);
    assert!(text.contains("rulez"), "{text}");
    // A second version; the first can be restored.
    let v2 = "name: dc\ninterval: 1s\nrules:\n  - record: dc:two\n    expr: vector(2)\n";
    assert_eq!(post("/config/v1/rules/team-a", v2).0, 202);
    let listed = get(&p.url("/config/v1/rules/team-a")).unwrap();
    assert!(listed.contains("dc:two"), "{listed}");
    let versions = json(&p.url("/api/tiermon/v1/rules/team-a/versions"));
    assert_eq!(versions["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        post("/api/tiermon/v1/rules/team-a/versions/1/restore", "").0,
        202
    );
    assert!(
        get(&p.url("/config/v1/rules/team-a"))
            .unwrap()
            .contains("dc:one")
    );
    // It survives a restart.
    let addr = p.addr.to_string();
    p.kill();
    let p = Tiermon::start_at("primary", &addr, Some(&config), &[]);
    let groups = json(&p.url("/api/v1/rules"));
    assert_eq!(groups["data"]["groups"][0]["file"], "team-a");
    assert_eq!(groups["data"]["groups"][0]["rules"][0]["name"], "dc:one");
}

#[test]
fn check_rules_accepts_published_rule_sets_and_names_problems() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yml", RULES);
    let out = Command::new(bin())
        .args(["check", "rules", &good])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 3 rules found"));
    let bad = write(
        dir.path(),
        "bad.yml",
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(x[5m]\n      - record: b\n        expr: up\n        annotations: {a: b}\n",
    );
    let out = Command::new(bin())
        .args(["check", "rules", &bad])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"groups[0] "g".rules[0] "A".expr: does not parse"#),
        "{err}"
    );
    assert!(
        err.contains(r#"groups[0] "g".rules[1] "b".annotations"#),
        "{err}"
    );
    // promtool agrees on both files.
    if let Some(promtool) = peer("promtool") {
        assert!(
            Command::new(&promtool)
                .args(["check", "rules", &good])
                .output()
                .unwrap()
                .status
                .success()
        );
        assert!(
            !Command::new(&promtool)
                .args(["check", "rules", &bad])
                .output()
                .unwrap()
                .status
                .success()
        );
    }
    // The rule files Debian ships with node_exporter load unmodified.
    if peer("prometheus-node-exporter").is_some() {
        let docs = Path::new("/usr/share/doc/prometheus-node-exporter");
        for f in [
            "examples/example-rules.yml",
            "example-17-compatibility-rules.yml",
            "example-17-compatibility-rules-new-to-old.yml",
        ] {
            let path = docs.join(f);
            if !path.exists() {
                continue;
            }
            let out = Command::new(bin())
                .arg("check")
                .arg("rules")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{f}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Alertmanager's own example configuration, and amtool's verdict on ours.
    if let Some(amtool) = peer("amtool") {
        let ha = "/usr/share/doc/prometheus-alertmanager/examples/ha/alertmanager.yml";
        if Path::new(ha).exists() {
            let out = Command::new(bin())
                .args(["check", "alertmanager", ha])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ours = write(
            dir.path(),
            "am.yml",
            &alertmanager_yml("http://127.0.0.1:9/hook"),
        );
        assert!(
            Command::new(&amtool)
                .args(["check-config", &ours])
                .output()
                .unwrap()
                .status
                .success()
        );
        let out = Command::new(bin())
            .args(["check", "alertmanager", &ours])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let simple = "/usr/share/doc/prometheus-alertmanager/examples/simple.yml";
        if Path::new(simple).exists() {
            let out = Command::new(bin())
                .args(["check", "alertmanager", simple])
                .output()
                .unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("does not support"), "{err}");
        }
    }
}

#[test]
fn alerts_forward_to_a_real_alertmanager() {
    let Some(alertmanager) = peer("prometheus-alertmanager") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start();
    let am_cfg = write(
        dir.path(),
        "am.yml",
        &format!(
            "route:\n  receiver: hook\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"{}\"}}]\n",
            hook.url
        ),
    );
    let port = free_port();
    let _am = Guard(
        Command::new(alertmanager)
            .arg(format!("--config.file={am_cfg}"))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("am").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rules = write(
        dir.path(),
        "rules.yml",
        "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - alert: Always\n        expr: vector(1)\n        labels: {severity: info}\n        annotations: {summary: forwarded}\n",
    );
    let config = format!(
        "[secondary]\ndata = \"{}\"\n[secondary.rules]\nfiles = [\"{rules}\"]\nalertmanagers = [\"http://127.0.0.1:{port}\"]\n",
        dir.path().join("data").display()
    );
    let _s = Tiermon::start("secondary", Some(&config), &[]);
    let n = hook.wait_for(
        "the real Alertmanager's webhook",
        Duration::from_secs(60),
        |n| notified_any(n, "Always"),
    );
    assert_eq!(n["version"], "4");
    assert_eq!(n["alerts"][0]["annotations"]["summary"], "forwarded");
    assert_eq!(n["alerts"][0]["labels"]["datacenter"], "default");
}

fn notified_any(n: &Value, alert: &str) -> bool {
    n["alerts"]
        .as_array()
        .is_some_and(|a| a.iter().any(|a| a["labels"]["alertname"] == alert))
}

#[test]
fn email_reaches_a_real_smtp_server() {
    let venv = std::env::var("HOME").unwrap_or_default() + "/.cache/tiermon/venv/bin/python";
    if !Path::new(&venv).exists() {
        assert!(
            std::env::var("TIERMON_REQUIRE_PEERS").as_deref() != Ok("1"),
            "aiosmtpd is required; scripts/test.sh installs it"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("smtp.log");
    let smtp = Guard(
        Command::new(&venv)
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Debugging",
            ])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("aiosmtpd listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let am = write(
        dir.path(),
        "am.yml",
        &format!(
            "global:\n  smtp_smarthost: '127.0.0.1:{port}'\n  smtp_from: 'tiermon@example.org'\n  smtp_require_tls: false\nroute:\n  receiver: mail\n  group_wait: 0s\n  group_interval: 1s\nreceivers:\n  - name: mail\n    email_configs: [{{to: 'oncall@example.org'}}]\n"
        ),
    );
    let rules = write(
        dir.path(),
        "rules.yml",
        "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - alert: DiskFailing\n        expr: vector(1)\n        annotations: {summary: 'sda reports SMART errors'}\n",
    );
    let config = format!(
        "[secondary]\ndata = \"{}\"\n[secondary.rules]\nfiles = [\"{rules}\"]\n[secondary.alertmanager]\nconfig_file = \"{am}\"\n",
        dir.path().join("data").display()
    );
    let _s = Tiermon::start("secondary", Some(&config), &[]);
    let text = eventually("the email", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("sda reports SMART errors").then_some(t)
    });
    assert!(
        text.contains("Subject: [FIRING:1]") && text.contains("DiskFailing"),
        "{text}"
    );
    assert!(text.contains("oncall@example.org"), "{text}");
    drop(smtp);
}

#[test]
fn a_real_prometheus_sends_its_alerts_to_tiermons_alert_manager() {
    let Some(prometheus) = peer("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start();
    let am = write(dir.path(), "am.yml", &alertmanager_yml(&hook.url));
    let config = format!(
        "[primary]\ndata = \"{}\"\n[primary.alertmanager]\nconfig_file = \"{am}\"\n",
        dir.path().join("data").display()
    );
    let p = Tiermon::start("primary", Some(&config), &[]);
    let rules = write(
        dir.path(),
        "rules.yml",
        "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - alert: FromPrometheus\n        expr: vector(1)\n        labels: {instance: prom-host}\n        annotations: {summary: sent by Prometheus}\n",
    );
    let prom_cfg = write(
        dir.path(),
        "prometheus.yml",
        &format!(
            "global:\n  evaluation_interval: 1s\nrule_files: ['{rules}']\nalerting:\n  alertmanagers:\n    - api_version: v2\n      static_configs: [{{targets: ['{}']}}]\n",
            p.addr
        ),
    );
    let _prom = Guard(
        Command::new(prometheus)
            .arg(format!("--config.file={prom_cfg}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
            // Its first batch can go before it has discovered the alert
            // manager (and is dropped); resend soon, not after a minute.
            .arg("--rules.alert.resend-delay=1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let n = hook.wait_for(
        "Prometheus' alert through tiermon",
        Duration::from_secs(60),
        |n| notified(n, "FromPrometheus", "prom-host", "firing"),
    );
    assert_eq!(
        n["alerts"][0]["annotations"]["summary"],
        "sent by Prometheus"
    );
    assert!(
        n["alerts"][0]["generatorURL"]
            .as_str()
            .is_some_and(|u| u.contains("/graph?g0.expr=")),
        "{n}"
    );
}
