//! The pipeline end to end on loopback: a webhook receiver the test runs,
//! the alert manager's own HTTP API, restarts and an HA pair.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use serde_json::{Value as Json, json};

use super::*;
use crate::dispatch::rfc3339;

/// A webhook receiver that records every payload; answers `status`.
#[derive(Clone)]
struct Hook {
    got: Arc<Mutex<Vec<Json>>>,
    /// When each payload in `got` arrived.
    at: Arc<Mutex<Vec<Instant>>>,
    status: Arc<Mutex<u16>>,
    url: String,
}

async fn hook() -> Hook {
    let got = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(Mutex::new(200u16));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let at = Arc::new(Mutex::new(Vec::new()));
    let h = Hook {
        got,
        at,
        status,
        url,
    };
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(h): State<Hook>, body: axum::body::Bytes| async move {
                    let code = *h.status.lock();
                    if code == 200 {
                        // Before `got`, which waiters watch.
                        h.at.lock().push(Instant::now());
                        h.got.lock().push(serde_json::from_slice(&body).unwrap());
                    }
                    axum::http::StatusCode::from_u16(code).unwrap()
                },
            ),
        )
        .with_state(h.clone());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    h
}

/// Polls `done` until it holds; after `within`, fails with `account()`.
async fn until(within: Duration, mut done: impl FnMut() -> bool, account: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{}", account());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sent(am: &AlertManager) -> u64 {
    am.stats().sent.get("webhook").copied().unwrap_or(0)
}

impl Hook {
    async fn wait(&self, n: usize, within: Duration) -> Vec<Json> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.got.lock().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} notifications, wanted {n}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fn count(&self) -> usize {
        self.got.lock().len()
    }
}

fn config(url: &str, extra: &str) -> Config {
    config_repeat(url, "1s", extra)
}

fn config_repeat(url: &str, repeat: &str, extra: &str) -> Config {
    Config::parse(&format!(
        r#"
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 200ms
  group_interval: 500ms
  repeat_interval: {repeat}
receivers:
  - name: hook
    webhook_configs: [{{url: "{url}"}}]
{extra}
"#
    ))
    .unwrap()
}

fn alert(name: &str, inst: &str, severity: &str) -> PostableAlert {
    PostableAlert {
        labels: [
            ("alertname", name),
            ("instance", inst),
            ("severity", severity),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect(),
        annotations: [("summary".to_string(), format!("{inst} down"))].into(),
        ..PostableAlert::default()
    }
}

fn resolved(mut a: PostableAlert) -> PostableAlert {
    a.starts_at = Some(rfc3339(now_ms() - 60_000));
    a.ends_at = Some(rfc3339(now_ms() - 1));
    a
}

async fn serve(am: &AlertManager) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let app = am.router();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

#[tokio::test]
async fn groups_notify_once_repeat_and_resolve() {
    let h = hook().await;
    let dir = tempfile::tempdir().unwrap();
    let am =
        AlertManager::start(config(&h.url, ""), dir.path(), Options::default(), vec![]).unwrap();
    am.receive(vec![
        alert("HostDown", "a", "critical"),
        alert("HostDown", "b", "critical"),
    ])
    .unwrap();
    let got = h.wait(1, Duration::from_secs(5)).await;
    let n = &got[0];
    assert_eq!(n["version"], "4");
    assert_eq!(n["status"], "firing");
    assert_eq!(n["receiver"], "hook");
    assert_eq!(n["groupKey"], r#"{}:{alertname="HostDown"}"#);
    assert_eq!(n["groupLabels"], json!({"alertname": "HostDown"}));
    assert_eq!(
        n["alerts"].as_array().unwrap().len(),
        2,
        "grouped into one notification"
    );
    assert_eq!(n["commonLabels"]["severity"], "critical");
    // Nothing new: no notification until the repeat interval (1 s) has
    // passed. Judged by arrival times, so a slow machine cannot fail it.
    h.wait(2, Duration::from_secs(4)).await;
    let at = h.at.lock().clone();
    assert!(
        at[1] - at[0] >= Duration::from_millis(800),
        "repeated after {:?}, before the 1 s repeat interval",
        at[1] - at[0]
    );
    // One resolves: a notification with it resolved.
    am.receive(vec![resolved(alert("HostDown", "b", "critical"))])
        .unwrap();
    let got = h.wait(3, Duration::from_secs(3)).await;
    let statuses: Vec<&str> = got[2]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"]);
    // The receiver has the third; the sender counts it once it has the
    // answer and has logged it.
    until(
        Duration::from_secs(5),
        || sent(&am) >= 3,
        || format!("not counted: {:?}", am.stats()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(am.stats().sent["webhook"], 3);
    am.stop();
}

#[tokio::test]
async fn silences_inhibition_and_acknowledgements_mute() {
    let h = hook().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &h.url,
        "inhibit_rules:\n  - source_matchers: [severity=\"critical\"]\n    target_matchers: [severity=\"warning\"]\n    equal: [instance]\n",
    );
    let am = AlertManager::start(cfg, dir.path(), Options::default(), vec![]).unwrap();
    let api = serve(&am).await;
    let http = reqwest::Client::new();
    // A silence for instance c.
    let r = http
        .post(format!("{api}/api/v2/silences"))
        .body(json!({"matchers": [{"name": "instance", "value": "c", "isRegex": false}], "startsAt": rfc3339(now_ms() - 1000), "endsAt": rfc3339(now_ms() + 3_600_000), "createdBy": "test", "comment": "maintenance"}).to_string())
        .send().await.unwrap();
    assert_eq!(r.status(), 200);
    let sid = serde_json::from_slice::<Json>(&r.bytes().await.unwrap()).unwrap()["silenceID"]
        .as_str()
        .unwrap()
        .to_owned();
    am.receive(vec![
        alert("Disk", "a", "critical"),
        alert("Slow", "a", "warning"),  // inhibited by Disk on a
        alert("Slow", "b", "warning"),  // not inhibited: other instance
        alert("Disk", "c", "critical"), // silenced
    ])
    .unwrap();
    let got = h.wait(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: Vec<String> = got
        .iter()
        .flat_map(|n| {
            n["alerts"].as_array().unwrap().iter().map(|a| {
                format!(
                    "{}/{}",
                    a["labels"]["alertname"].as_str().unwrap(),
                    a["labels"]["instance"].as_str().unwrap()
                )
            })
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["Disk/a", "Slow/b"]);
    // The API shows why.
    let alerts = http
        .get(format!("{api}/api/v2/alerts"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let alerts: Json = serde_json::from_slice(&alerts).unwrap();
    let by = |inst: &str, name: &str| {
        alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["instance"] == inst && a["labels"]["alertname"] == name)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(by("c", "Disk")["silencedBy"], json!([sid]));
    assert_eq!(by("a", "Slow")["state"], "suppressed");
    assert_eq!(by("a", "Slow")["inhibitedBy"].as_array().unwrap().len(), 1);
    let filtered = http
        .get(format!(
            "{api}/api/v2/alerts?silenced=false&inhibited=false&filter=alertname%3D%22Disk%22"
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let filtered: Json = serde_json::from_slice(&filtered).unwrap();
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    // Acknowledge everything firing: the repeats stop.
    let r = http.post(format!("{api}/api/tiermon/v1/acks")).body(json!({"matchers": [{"name": "alertname", "value": ".+", "isRegex": true}], "by": "oncall", "comment": "on it"}).to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let before = h.count();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.count(), before, "acknowledged alerts do not repeat");
    // A new alert in an acknowledged group is news.
    am.receive(vec![alert("Slow", "d", "warning")]).unwrap();
    let got = h.wait(before + 1, Duration::from_secs(3)).await;
    assert_eq!(got.last().unwrap()["alerts"].as_array().unwrap().len(), 2);
    // Expiring the silence brings Disk/c back.
    let r = http
        .delete(format!("{api}/api/v2/silence/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another group's repeat may come first: look at all that follow.
    let n = h.count();
    until(
        Duration::from_secs(5),
        || {
            h.got.lock()[n..].iter().any(|m| {
                m["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["labels"]["instance"] == "c")
            })
        },
        || format!("Disk/c never came back: {:?}", h.got.lock()),
    )
    .await;
    // Bad input is refused with a reason.
    let r = http
        .post(format!("{api}/api/v2/alerts"))
        .body(r#"[{"labels": {}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("at least one label"));
    let r = http
        .post(format!("{api}/api/v2/silences"))
        .body(r#"{"matchers": [], "startsAt": "x", "endsAt": "y"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    am.stop();
}

#[tokio::test]
async fn failed_deliveries_are_retried_and_a_restart_does_not_repeat() {
    let h = hook().await;
    let dir = tempfile::tempdir().unwrap();
    *h.status.lock() = 503;
    let cfg = || {
        Config::parse(&format!(
            "route:\n  receiver: hook\n  group_wait: 100ms\n  group_interval: 3s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"{}\"}}]\n",
            h.url
        ))
        .unwrap()
    };
    let am = AlertManager::start(cfg(), dir.path(), Options::default(), vec![]).unwrap();
    am.receive(vec![alert("A", "a", "critical")]).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        am.stats().failed["webhook"] >= 2,
        "retried: {:?}",
        am.stats()
    );
    *h.status.lock() = 200;
    h.wait(1, Duration::from_secs(5)).await;
    // The receiver has it; wait until the sender has its answer and has
    // logged it (a crash in between may repeat it, as in Alertmanager).
    until(
        Duration::from_secs(5),
        || sent(&am) >= 1,
        || format!("never logged: {:?}", am.stats()),
    )
    .await;
    am.stop();
    drop(am);
    // A new process, the same alert sent again by the rules: the log says
    // it was delivered, so nothing is repeated before repeat_interval.
    let am = AlertManager::start(cfg(), dir.path(), Options::default(), vec![]).unwrap();
    am.receive(vec![alert("A", "a", "critical")]).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(h.count(), 1);
    am.stop();
}

#[tokio::test]
async fn an_ha_pair_sends_each_notification_once() {
    let h = hook().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Two listeners first, so each knows the other's URL.
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let u1 = format!("http://{}", l1.local_addr().unwrap());
    let u2 = format!("http://{}", l2.local_addr().unwrap());
    // The second waits 1.5 s for the first's log entry: long enough for
    // replication on a loaded machine; repeats come every 5 s.
    let opts = |position| Options {
        position,
        peer_timeout: Duration::from_millis(1500),
        ..Options::default()
    };
    let cfg = || config_repeat(&h.url, "5s", "");
    let a = AlertManager::start(cfg(), d1.path(), opts(0), vec![u2.clone()]).unwrap();
    let b = AlertManager::start(cfg(), d2.path(), opts(1), vec![u1.clone()]).unwrap();
    let (ra, rb) = (a.router(), b.router());
    tokio::spawn(async move { axum::serve(l1, ra).await.unwrap() });
    tokio::spawn(async move { axum::serve(l2, rb).await.unwrap() });
    // Both get the same alerts, as from a pair of rule evaluators.
    for am in [&a, &b] {
        am.receive(vec![alert("X", "a", "critical")]).unwrap();
    }
    h.wait(1, Duration::from_secs(5)).await;
    // The second one saw the first one's log entry and stood down.
    until(
        Duration::from_secs(10),
        || b.stats().peer_sent >= 1,
        || {
            format!(
                "the second instance never stood down: {:?}, {} notifications",
                b.stats(),
                h.count()
            )
        },
    )
    .await;
    // Counted by arrival time: a repeat after the 5 s interval is not a
    // duplicate, however late this test wakes.
    let at = h.at.lock().clone();
    assert_eq!(
        at.iter()
            .filter(|&&t| t - at[0] < Duration::from_millis(4500))
            .count(),
        1,
        "one notification per interval"
    );
    assert_eq!(b.stats().sent.get("webhook"), None);
    // The first one dies: the second one takes over the repeats.
    a.stop();
    drop(a);
    until(
        Duration::from_secs(15),
        || sent(&b) >= 1,
        || format!("the survivor never took over: {:?}", b.stats()),
    )
    .await;
    b.stop();
}

#[tokio::test]
async fn a_stopped_instance_abandons_deliveries_under_way() {
    let h = hook().await;
    *h.status.lock() = 503;
    let dir = tempfile::tempdir().unwrap();
    // A long group interval: a failing delivery keeps retrying.
    let cfg = Config::parse(&format!(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 30s\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"{}\"}}]\n",
        h.url
    ))
    .unwrap();
    let am = AlertManager::start(cfg, dir.path(), Options::default(), vec![]).unwrap();
    am.receive(vec![alert("A", "a", "critical")]).unwrap();
    until(
        Duration::from_secs(5),
        || am.stats().failed.get("webhook").copied().unwrap_or(0) >= 1,
        || format!("never tried: {:?}", am.stats()),
    )
    .await;
    // Stopped between two attempts, with the receiver back: the retry
    // (due within a second) must not go out.
    am.stop();
    *h.status.lock() = 200;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(h.count(), 0, "a stopped instance still delivered");
}

#[tokio::test]
async fn slack_gets_an_incoming_webhook_message() {
    let h = hook().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&format!(
        "route:\n  receiver: chat\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 500ms\nreceivers:\n  - name: chat\n    slack_configs:\n      - api_url: \"{}\"\n        channel: \"#ops\"\n        send_resolved: true\n        text: '{{{{ range .Alerts }}}}{{{{ .Annotations.summary }}}} {{{{ end }}}}'\n",
        h.url
    ))
    .unwrap();
    let am = AlertManager::start(cfg, dir.path(), Options::default(), vec![]).unwrap();
    am.receive(vec![alert("HostDown", "a", "critical")])
        .unwrap();
    let got = h.wait(1, Duration::from_secs(5)).await;
    let m = &got[0];
    assert_eq!(m["channel"], "#ops");
    let a = &m["attachments"][0];
    assert_eq!(a["title"], "[FIRING:1] HostDown (a critical)");
    assert_eq!(a["text"], "a down ");
    assert_eq!(a["color"], "danger");
    am.receive(vec![resolved(alert("HostDown", "a", "critical"))])
        .unwrap();
    let got = h.wait(2, Duration::from_secs(5)).await;
    assert_eq!(got[1]["attachments"][0]["color"], "good");
    assert!(
        got[1]["attachments"][0]["title"]
            .as_str()
            .unwrap()
            .starts_with("[RESOLVED]")
    );
    am.stop();
}
