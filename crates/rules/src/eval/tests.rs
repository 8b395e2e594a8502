use super::*;
use tiermon_promql::Series;

/// A store whose series the test sets; appends land in it too, so
/// recorded series and `ALERTS` can be queried back.
#[derive(Default)]
struct Mem {
    series: Mutex<BTreeMap<Labels, Vec<(i64, f64)>>>,
}

impl Mem {
    fn put(&self, labels: &[(&str, &str)], t: i64, v: f64) {
        self.series
            .lock()
            .entry(Labels::from_pairs(labels.iter().copied()))
            .or_default()
            .push((t, v));
    }
    fn get(&self, labels: &[(&str, &str)]) -> Vec<(i64, f64)> {
        self.series
            .lock()
            .get(&Labels::from_pairs(labels.iter().copied()))
            .cloned()
            .unwrap_or_default()
    }
}

impl Queryable for Mem {
    fn select(
        &self,
        matchers: &[tiermon_model::Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, String> {
        Ok(self
            .series
            .lock()
            .iter()
            .filter(|(l, _)| {
                matchers
                    .iter()
                    .all(|m| m.matches(l.get(m.name()).unwrap_or("")))
            })
            .map(|(l, s)| Series {
                labels: l.clone(),
                samples: s
                    .iter()
                    .copied()
                    .filter(|x| x.0 >= mint && x.0 <= maxt)
                    .collect(),
            })
            .collect())
    }
}

impl Appendable for Mem {
    fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<(), String> {
        let mut s = self.series.lock();
        for (l, t, v) in samples {
            s.entry(l.clone()).or_default().push((*t, *v));
        }
        Ok(())
    }
}

fn setup(rules: &str, state_dir: Option<PathBuf>) -> (Arc<Mem>, Group, Context, Options) {
    let mem = Arc::new(Mem::default());
    let ctx = Context {
        engine: Engine::new(Default::default()),
        store: mem.clone(),
        out: mem.clone(),
        notifiers: Vec::new(),
    };
    let opts = Options {
        state_dir,
        external_labels: [("dc".to_string(), "dc1".to_string())].into(),
        external_url: "http://tiermon:9090".into(),
        resend_delay: Duration::from_secs(60),
        ..Options::default()
    };
    let f = RuleFile::parse(rules).unwrap();
    let g = Group::new("test.yml", &f.groups[0], &opts).unwrap();
    (mem, g, ctx, opts)
}

const ALERT: &str = r#"
groups:
- name: g
  interval: 10s
  rules:
  - alert: HostDown
    expr: up == 0
    for: 30s
    labels:
      severity: critical
      host: "{{ $labels.instance }}"
    annotations:
      summary: "{{ $labels.instance }} down (value {{ $value }})"
"#;

fn up(mem: &Mem, inst: &str, t: i64, v: f64) {
    mem.put(
        &[("__name__", "up"), ("instance", inst), ("job", "node")],
        t,
        v,
    );
}

#[test]
fn an_alert_goes_pending_fires_after_for_and_resolves() {
    let (mem, mut g, ctx, opts) = setup(ALERT, None);
    let t0 = 1_700_000_000_000;
    up(&mem, "a", t0, 1.0);
    assert!(g.eval(&ctx, &opts, t0).is_empty());
    assert!(g.rules[0].active.is_empty());
    // Down: pending, nothing sent yet.
    up(&mem, "a", t0 + 10_000, 0.0);
    assert!(g.eval(&ctx, &opts, t0 + 10_000).is_empty());
    let a = g.rules[0].active.values().next().unwrap().clone();
    assert_eq!(a.state, AlertState::Pending);
    assert_eq!(a.labels["host"], "a");
    assert_eq!(a.labels["alertname"], "HostDown");
    assert_eq!(a.annotations["summary"], "a down (value 0)");
    let pending = [
        ("__name__", "ALERTS"),
        ("alertname", "HostDown"),
        ("alertstate", "pending"),
        ("host", "a"),
        ("instance", "a"),
        ("job", "node"),
        ("severity", "critical"),
    ];
    assert_eq!(mem.get(&pending), [(t0 + 10_000, 1.0)]);
    // 20 s later still pending; 30 s after it went down, firing and sent.
    up(&mem, "a", t0 + 30_000, 0.0);
    assert!(g.eval(&ctx, &opts, t0 + 30_000).is_empty());
    up(&mem, "a", t0 + 40_000, 0.0);
    let sent = g.eval(&ctx, &opts, t0 + 40_000);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].labels["dc"], "dc1", "external labels are added");
    assert_eq!(sent[0].starts_at, rfc3339(t0 + 40_000));
    assert_eq!(sent[0].ends_at, rfc3339(t0 + 40_000 + 4 * 60_000));
    assert!(
        sent[0]
            .generator_url
            .starts_with("http://tiermon:9090/graph?g0.expr=up+%3D%3D+0")
    );
    // The pending series went stale, the firing one started.
    assert!(mem.get(&pending).last().unwrap().1.is_nan());
    let mut firing = pending;
    firing[2].1 = "firing";
    assert_eq!(mem.get(&firing), [(t0 + 40_000, 1.0)]);
    // Unchanged and firing: resent only after the resend delay.
    up(&mem, "a", t0 + 50_000, 0.0);
    assert!(g.eval(&ctx, &opts, t0 + 50_000).is_empty());
    up(&mem, "a", t0 + 100_000, 0.0);
    assert_eq!(g.eval(&ctx, &opts, t0 + 100_000).len(), 1);
    // Back up: resolved and sent at once, with endsAt = resolution time.
    up(&mem, "a", t0 + 110_000, 1.0);
    let sent = g.eval(&ctx, &opts, t0 + 110_000);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].ends_at, rfc3339(t0 + 110_000));
    assert!(
        g.status().rules[0].alerts.is_empty(),
        "inactive alerts are not listed"
    );
    // After the resolved retention the alert is forgotten.
    let late = t0 + 110_000 + opts.resolved_retention.as_millis() as i64;
    up(&mem, "a", late, 1.0);
    g.eval(&ctx, &opts, late);
    assert!(g.rules[0].active.is_empty());
}

#[test]
fn a_condition_that_clears_before_for_never_fires() {
    let (mem, mut g, ctx, opts) = setup(ALERT, None);
    let t0 = 1_700_000_000_000;
    up(&mem, "a", t0, 0.0);
    g.eval(&ctx, &opts, t0);
    up(&mem, "a", t0 + 10_000, 1.0);
    assert!(g.eval(&ctx, &opts, t0 + 10_000).is_empty());
    assert!(g.rules[0].active.is_empty());
}

#[test]
fn keep_firing_for_holds_an_alert_after_its_condition_clears() {
    let rules = "groups:\n- name: g\n  rules:\n  - alert: Flappy\n    expr: up == 0\n    keep_firing_for: 30s\n";
    let (mem, mut g, ctx, opts) = setup(rules, None);
    let t0 = 1_700_000_000_000;
    up(&mem, "a", t0, 0.0);
    assert_eq!(g.eval(&ctx, &opts, t0).len(), 1, "no `for`: fires at once");
    up(&mem, "a", t0 + 10_000, 1.0);
    g.eval(&ctx, &opts, t0 + 10_000);
    let a = g.rules[0].active.values().next().unwrap();
    assert_eq!(a.state, AlertState::Firing);
    assert_eq!(a.keep_firing_since, t0 + 10_000);
    up(&mem, "a", t0 + 30_000, 1.0);
    g.eval(&ctx, &opts, t0 + 30_000);
    assert_eq!(
        g.rules[0].active.values().next().unwrap().state,
        AlertState::Firing
    );
    up(&mem, "a", t0 + 40_000, 1.0);
    let sent = g.eval(&ctx, &opts, t0 + 40_000);
    assert_eq!(
        g.rules[0].active.values().next().unwrap().state,
        AlertState::Inactive
    );
    assert_eq!(sent.len(), 1, "the resolution is sent");
}

#[test]
fn recording_rules_write_series_and_mark_vanished_ones_stale() {
    let rules = r#"
groups:
- name: rec
  rules:
  - record: job:up:sum
    expr: sum by (job) (up)
    labels:
      tier: secondary
"#;
    let (mem, mut g, ctx, opts) = setup(rules, None);
    let t0 = 1_700_000_000_000;
    up(&mem, "a", t0, 1.0);
    up(&mem, "b", t0, 1.0);
    g.eval(&ctx, &opts, t0);
    let out = [
        ("__name__", "job:up:sum"),
        ("job", "node"),
        ("tier", "secondary"),
    ];
    assert_eq!(mem.get(&out), [(t0, 2.0)]);
    // The input goes stale: the next evaluation marks the output stale.
    up(&mem, "a", t0 + 1000, STALE_NAN);
    up(&mem, "b", t0 + 1000, STALE_NAN);
    g.eval(&ctx, &opts, t0 + 60_000);
    let got = mem.get(&out);
    assert_eq!(got.len(), 2);
    assert!(tiermon_model::is_stale_nan(got[1].1));
    assert!(g.rules[0].health.last_error.is_empty());
}

#[test]
fn errors_are_kept_as_rule_health_and_do_not_stop_the_group() {
    let rules = r#"
groups:
- name: g
  limit: 1
  rules:
  - record: clash
    expr: up
    labels:
      instance: same
  - alert: TooMany
    expr: up
  - record: fine
    expr: vector(1)
"#;
    let (mem, mut g, ctx, opts) = setup(rules, None);
    let t0 = 1_700_000_000_000;
    up(&mem, "a", t0, 1.0);
    up(&mem, "b", t0, 1.0);
    g.eval(&ctx, &opts, t0);
    assert!(
        g.rules[0].health.last_error.contains("exceeded limit"),
        "{:?}",
        g.rules[0].health
    );
    assert!(g.rules[1].health.last_error.contains("exceeded limit"));
    assert!(g.rules[2].health.last_error.is_empty());
    assert_eq!(mem.get(&[("__name__", "fine")]), [(t0, 1.0)]);
}

#[test]
fn pending_and_firing_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000;
    {
        let (mem, mut g, ctx, opts) = setup(ALERT, Some(dir.path().to_owned()));
        up(&mem, "a", t0, 0.0);
        g.eval(&ctx, &opts, t0);
        assert_eq!(g.rules[0].active.len(), 1);
    }
    // A new process: the alert is still pending since t0 and fires 30 s
    // after t0, not 30 s after the restart.
    let (mem, mut g, ctx, opts) = setup(ALERT, Some(dir.path().to_owned()));
    let a = g.rules[0].active.values().next().unwrap().clone();
    assert_eq!((a.state, a.active_at), (AlertState::Pending, t0));
    up(&mem, "a", t0 + 30_000, 0.0);
    let sent = g.eval(&ctx, &opts, t0 + 30_000);
    assert_eq!(sent.len(), 1);
    // A rule whose expression changed does not inherit the state.
    let changed = ALERT.replace("up == 0", "up < 1");
    let (_, g2, _, _) = setup(&changed, Some(dir.path().to_owned()));
    assert!(g2.rules[0].active.is_empty());
}

#[tokio::test]
async fn the_manager_runs_groups_and_replaces_changed_ones() {
    #[derive(Default)]
    struct Collect(Mutex<Vec<Alert>>);
    impl Notifier for Collect {
        fn send(&self, a: Vec<Alert>) {
            self.0.lock().extend(a);
        }
    }
    let mem = Arc::new(Mem::default());
    let got = Arc::new(Collect::default());
    let m = Manager::new(
        Context {
            engine: Engine::new(Default::default()),
            store: mem.clone(),
            out: mem.clone(),
            notifiers: vec![got.clone()],
        },
        Options::default(),
    );
    let f = RuleFile::parse(
        "groups:\n- name: g\n  interval: 100ms\n  rules:\n  - alert: Always\n    expr: vector(1)\n",
    )
    .unwrap();
    m.update(&[("f".into(), f)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.0.lock().is_empty() {
        assert!(Instant::now() < deadline, "no alert sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got.0.lock()[0].labels["alertname"], "Always");
    assert_eq!(m.alerts().len(), 1);
    // A broken set is refused and the running groups stay.
    let bad = RuleFile {
        groups: vec![GroupSpec {
            name: "b".into(),
            rules: vec![RuleSpec {
                alert: Some("X".into()),
                expr: "up".into(),
                annotations: [("a".to_string(), "{{ broken".to_string())].into(),
                ..RuleSpec::default()
            }],
            ..GroupSpec::default()
        }],
    };
    assert!(m.update(&[("f".into(), bad)]).is_err());
    assert_eq!(m.groups().len(), 1);
    m.update(&[]).unwrap();
    assert!(m.groups().is_empty());
    m.stop();
}

#[test]
fn a_baseline_alert_fires_on_a_departure_from_the_series_own_behaviour() {
    let rules = r#"
groups:
- name: b
  interval: 1m
  rules:
  - alert: LatencyAnomalous
    expr: latency_seconds
    baseline:
      record: job:latency:current
      window: 30m
      sigmas: 3
"#;
    let (mem, mut g, ctx, opts) = setup(rules, None);
    let t0 = 1_700_000_000_000;
    // An hour of normal behaviour: 1.0 ± 0.1, evaluated every minute.
    for i in 0..60 {
        let t = t0 + i * 60_000;
        let v = 1.0 + if i % 2 == 0 { 0.1 } else { -0.1 };
        mem.put(&[("__name__", "latency_seconds"), ("job", "api")], t, v);
        assert!(g.eval(&ctx, &opts, t).is_empty(), "no alert at minute {i}");
    }
    let upper = mem.get(&[
        ("__name__", "job:latency:current:baseline_upper"),
        ("job", "api"),
    ]);
    let (_, u) = *upper.last().unwrap();
    assert!((1.25..1.45).contains(&u), "upper band {u}");
    // Three times the normal value: far outside the bands.
    let t = t0 + 60 * 60_000;
    mem.put(&[("__name__", "latency_seconds"), ("job", "api")], t, 3.0);
    let sent = g.eval(&ctx, &opts, t);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].labels["alertname"], "LatencyAnomalous");
    let a = g.rules[5].active.values().next().unwrap();
    assert!(a.value > 3.0, "the value is the z-score: {}", a.value);
}
