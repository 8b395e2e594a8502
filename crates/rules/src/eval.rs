//! The rule evaluator: groups on their own schedule, recording rules
//! written back to storage, alerting rules with `for` and
//! `keep_firing_for`, the `ALERTS` and `ALERTS_FOR_STATE` series, alerts
//! sent to the notifiers, and alert state kept on disk so that pending and
//! firing alerts survive a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tiermon_model::{Labels, LabelsBuilder, METRIC_NAME, STALE_NAN};
use tiermon_promql::{Engine, Queryable, Value};

use crate::file::{GroupSpec, RuleFile, RuleSpec};
use crate::template::{Compiled, Data, QueryFn};

/// Where rule output goes: one commit per call.
pub trait Appendable: Send + Sync {
    /// Stores `(labels, t ms, value)` samples durably.
    fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<(), String>;
}

/// Where alerts go (the alert manager, an external Alertmanager).
pub trait Notifier: Send + Sync {
    /// Hands alerts over; must not block for long.
    fn send(&self, alerts: Vec<Alert>);
}

/// An alert as the Alertmanager v2 API receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Identity.
    pub labels: BTreeMap<String, String>,
    /// Descriptions.
    pub annotations: BTreeMap<String, String>,
    /// When the alert started firing (RFC 3339).
    pub starts_at: String,
    /// When it resolved, or until when it holds without news (RFC 3339).
    pub ends_at: String,
    /// Link to the expression.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// Alert states, as the Prometheus API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Not active (resolved, kept to tell the notifiers).
    Inactive,
    /// Condition holds, `for` not yet elapsed.
    Pending,
    /// Firing.
    Firing,
}

impl AlertState {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    /// Labels (with `alertname`).
    pub labels: BTreeMap<String, String>,
    /// Expanded annotations.
    pub annotations: BTreeMap<String, String>,
    /// State.
    pub state: AlertState,
    /// The expression's last value.
    pub value: f64,
    /// When the condition started to hold (ms).
    pub active_at: i64,
    /// When it started firing (ms, 0 if not).
    pub fired_at: i64,
    /// When it resolved (ms, 0 if not).
    pub resolved_at: i64,
    /// When it was last sent (ms, 0 if never).
    pub last_sent_at: i64,
    /// Since when `keep_firing_for` holds it (ms, 0 if not).
    pub keep_firing_since: i64,
}

/// Settings of the evaluator.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interval of groups without one.
    pub default_interval: Duration,
    /// Labels of this tier added to alerts (not to recorded series).
    pub external_labels: BTreeMap<String, String>,
    /// Base of generator URLs.
    pub external_url: String,
    /// Where alert state is kept (`None`: memory only).
    pub state_dir: Option<PathBuf>,
    /// Least time between two sends of an unchanged firing alert.
    pub resend_delay: Duration,
    /// How long a resolved alert is still sent.
    pub resolved_retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(60),
            external_labels: BTreeMap::new(),
            external_url: String::new(),
            state_dir: None,
            resend_delay: Duration::from_secs(60),
            resolved_retention: Duration::from_secs(15 * 60),
        }
    }
}

/// Health of a rule's last evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// The last error, empty when it succeeded.
    pub last_error: String,
    /// When it last ran (ms, 0: never).
    pub last_evaluation: i64,
    /// How long it took (s).
    pub evaluation_time: f64,
}

/// A rule with its state, as the rules API shows it.
#[derive(Debug, Clone)]
pub struct RuleStatus {
    /// The rule.
    pub spec: RuleSpec,
    /// Health.
    pub health: Health,
    /// Its alerts (alerting rules).
    pub alerts: Vec<ActiveAlert>,
}

/// A group with its rules, as the rules API shows it.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    /// Where the group comes from (file or rules-database namespace).
    pub source: String,
    /// Name.
    pub name: String,
    /// Interval.
    pub interval: Duration,
    /// Limit.
    pub limit: u64,
    /// Rules.
    pub rules: Vec<RuleStatus>,
    /// Last evaluation of the whole group.
    pub health: Health,
}

/// What evaluating needs: store, engine, output, notifiers.
#[derive(Clone)]
pub struct Context {
    /// The engine.
    pub engine: Engine,
    /// What queries read.
    pub store: Arc<dyn Queryable>,
    /// Where recorded series and `ALERTS` go.
    pub out: Arc<dyn Appendable>,
    /// Where alerts go.
    pub notifiers: Vec<Arc<dyn Notifier>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("notifiers", &self.notifiers.len())
            .finish_non_exhaustive()
    }
}

/// Runs groups of rules.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Context,
    opts: Options,
    groups: Mutex<Vec<Running>>,
}

#[derive(Debug)]
struct Running {
    group: Arc<Mutex<Group>>,
    key: String,
    spec: GroupSpec,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A compiled rule and its state.
#[derive(Debug)]
struct Rule {
    spec: RuleSpec,
    labels: Vec<(String, Compiled)>,
    annotations: Vec<(String, Compiled)>,
    health: Health,
    /// Alerting: alerts by fingerprint of their labels.
    active: HashMap<u64, ActiveAlert>,
    /// Series written at the last evaluation (for staleness markers).
    written: HashSet<Labels>,
}

/// A group being evaluated.
#[derive(Debug)]
pub(crate) struct Group {
    source: String,
    spec: GroupSpec,
    interval: Duration,
    rules: Vec<Rule>,
    health: Health,
    state_file: Option<PathBuf>,
}

/// The key of a rule's state on disk: a rule edited into another
/// expression starts afresh.
fn rule_key(r: &RuleSpec) -> String {
    format!("{}\u{0}{}", r.name(), r.expr)
}

#[derive(Serialize, Deserialize, Default)]
struct SavedGroup {
    rules: BTreeMap<String, Vec<ActiveAlert>>,
}

impl Group {
    pub(crate) fn new(source: &str, spec: &GroupSpec, opts: &Options) -> Result<Group, String> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for r in spec.rules.iter().flat_map(RuleSpec::expand) {
            let r = &r;
            let mut labels = Vec::new();
            for (k, v) in spec.labels.iter().chain(&r.labels) {
                labels.push((k.clone(), Compiled::new(v)?));
            }
            let mut annotations = Vec::new();
            for (k, v) in &r.annotations {
                annotations.push((k.clone(), Compiled::new(v)?));
            }
            rules.push(Rule {
                spec: r.clone(),
                labels,
                annotations,
                health: Health::default(),
                active: HashMap::new(),
                written: HashSet::new(),
            });
        }
        let state_file = opts.state_dir.as_ref().map(|d| {
            let id =
                Labels::from_pairs([("source", source), ("group", spec.name.as_str())]).series_id();
            d.join(format!("group-{:016x}.json", id.0))
        });
        let mut g = Group {
            source: source.to_owned(),
            spec: spec.clone(),
            interval: spec.interval.map(|d| d.0).unwrap_or(opts.default_interval),
            rules,
            health: Health::default(),
            state_file,
        };
        g.restore();
        Ok(g)
    }

    /// Loads the alerts a previous run saved.
    fn restore(&mut self) {
        let Some(path) = &self.state_file else { return };
        let Ok(text) = std::fs::read(path) else {
            return;
        };
        let saved: SavedGroup = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "alert state unreadable; starting afresh");
                return;
            }
        };
        let mut restored = 0;
        for r in &mut self.rules {
            if let Some(alerts) = saved.rules.get(&rule_key(&r.spec)) {
                for a in alerts {
                    r.active.insert(fingerprint(&a.labels), a.clone());
                    restored += 1;
                }
            }
        }
        if restored > 0 {
            tracing::info!(group = %self.spec.name, alerts = restored, "alert state restored");
        }
    }

    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let mut saved = SavedGroup::default();
        for r in &self.rules {
            if r.spec.is_alert() && !r.active.is_empty() {
                let mut v: Vec<ActiveAlert> = r.active.values().cloned().collect();
                v.sort_by(|a, b| a.labels.cmp(&b.labels));
                saved.rules.insert(rule_key(&r.spec), v);
            }
        }
        let write = || -> std::io::Result<()> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = path.with_extension("json.tmp");
            let f = std::fs::File::create(&tmp)?;
            serde_json::to_writer(std::io::BufWriter::new(&f), &saved)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %path.display(), error = %e, "cannot save alert state");
        }
    }

    /// Evaluates every rule at `t` (ms); returns the alerts to send.
    pub(crate) fn eval(&mut self, ctx: &Context, opts: &Options, t: i64) -> Vec<Alert> {
        let started = Instant::now();
        let qt = t - self
            .spec
            .query_offset
            .map(|d| d.0.as_millis() as i64)
            .unwrap_or(0);
        let mut out: Vec<(Labels, i64, f64)> = Vec::new();
        let mut to_send = Vec::new();
        let mut changed = false;
        let mut store_error = None;
        let query_fn: QueryFn = {
            let (engine, store) = (ctx.engine.clone(), ctx.store.clone());
            Arc::new(move |q: &str| match engine.instant(store.as_ref(), q, qt) {
                Ok(v) => Ok(vector(v)
                    .into_iter()
                    .map(|(l, v)| (label_map(&l), v))
                    .collect()),
                Err(e) => Err(e.to_string()),
            })
        };
        let interval_ms = self.interval.as_millis() as i64;
        for rule in &mut self.rules {
            let rs = Instant::now();
            let result = ctx
                .engine
                .instant(ctx.store.as_ref(), &rule.spec.expr, qt)
                .map_err(|e| e.to_string())
                .map(vector)
                .and_then(|v| {
                    if self.spec.limit > 0 && v.len() as u64 > self.spec.limit {
                        Err(format!(
                            "exceeded limit of {} with {} series",
                            self.spec.limit,
                            v.len()
                        ))
                    } else {
                        Ok(v)
                    }
                });
            let r = match result {
                Err(e) => Err(e),
                Ok(v) if rule.spec.is_alert() => {
                    let r = rule.eval_alert(v, t, interval_ms, opts, &query_fn, &mut out);
                    if let Ok((sends, ch)) = r {
                        to_send.extend(sends);
                        changed |= ch;
                        Ok(())
                    } else {
                        r.map(drop)
                    }
                }
                Ok(v) => rule.eval_record(v, t, &mut out),
            };
            rule.health = Health {
                last_error: r.err().unwrap_or_default(),
                last_evaluation: t,
                evaluation_time: rs.elapsed().as_secs_f64(),
            };
            if !rule.health.last_error.is_empty() {
                tracing::warn!(group = %self.spec.name, rule = %rule.spec.name(), error = %rule.health.last_error, "rule evaluation failed");
            }
            // Each rule's output is stored before the next rule runs, so
            // later rules of the group see it (as in Prometheus).
            if !out.is_empty() {
                if let Err(e) = ctx.out.append(&out) {
                    tracing::warn!(group = %self.spec.name, error = %e, "cannot store rule output");
                    store_error = Some(e);
                }
                out.clear();
            }
        }
        self.health.last_error = store_error.unwrap_or_default();
        if changed {
            self.save();
        }
        self.health.last_evaluation = t;
        self.health.evaluation_time = started.elapsed().as_secs_f64();
        to_send
    }

    fn status(&self) -> GroupStatus {
        GroupStatus {
            source: self.source.clone(),
            name: self.spec.name.clone(),
            interval: self.interval,
            limit: self.spec.limit,
            rules: self
                .rules
                .iter()
                .map(|r| {
                    let mut alerts: Vec<ActiveAlert> = r
                        .active
                        .values()
                        .filter(|a| a.state != AlertState::Inactive)
                        .cloned()
                        .collect();
                    alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
                    RuleStatus {
                        spec: r.spec.clone(),
                        health: r.health.clone(),
                        alerts,
                    }
                })
                .collect(),
            health: self.health.clone(),
        }
    }
}

fn vector(v: Value) -> Vec<(Labels, f64)> {
    match v {
        Value::Vector(v) => v.into_iter().map(|s| (s.labels, s.v)).collect(),
        Value::Scalar(_, v) => vec![(Labels::empty(), v)],
        Value::Matrix(m) => m
            .into_iter()
            .filter_map(|s| s.samples.last().map(|x| (s.labels, x.1)))
            .collect(),
        Value::String(..) => Vec::new(),
    }
}

fn label_map(l: &Labels) -> BTreeMap<String, String> {
    l.iter()
        .map(|l| (l.name.to_string(), l.value.to_string()))
        .collect()
}

pub(crate) use tiermon_model::{fingerprint, now_ms, rfc3339};

impl Rule {
    fn eval_record(
        &mut self,
        v: Vec<(Labels, f64)>,
        t: i64,
        out: &mut Vec<(Labels, i64, f64)>,
    ) -> Result<(), String> {
        let name = self.spec.record.clone().unwrap_or_default();
        let mut now = HashSet::with_capacity(v.len());
        let mut rows = Vec::with_capacity(v.len());
        for (l, val) in v {
            let mut b = l.to_builder();
            b.set(METRIC_NAME, name.as_str());
            for (k, c) in &self.labels {
                b.set(k.as_str(), c.text());
            }
            let l = b.build();
            if !now.insert(l.clone()) {
                return Err(format!(
                    "vector contains metrics with the same labelset after applying rule labels: {l}"
                ));
            }
            rows.push((l, t, val));
        }
        out.extend(rows);
        for gone in self.written.difference(&now) {
            out.push((gone.clone(), t, STALE_NAN));
        }
        self.written = now;
        Ok(())
    }

    /// Updates the alerts; returns the alerts to send and whether any state
    /// changed.
    fn eval_alert(
        &mut self,
        v: Vec<(Labels, f64)>,
        t: i64,
        interval_ms: i64,
        opts: &Options,
        query: &QueryFn,
        out: &mut Vec<(Labels, i64, f64)>,
    ) -> Result<(Vec<Alert>, bool), String> {
        let name = self.spec.alert.clone().unwrap_or_default();
        let for_ms = self.spec.for_.map(|d| d.0.as_millis() as i64).unwrap_or(0);
        let keep_ms = self
            .spec
            .keep_firing_for
            .map(|d| d.0.as_millis() as i64)
            .unwrap_or(0);
        let mut changed = false;
        let mut seen = HashSet::with_capacity(v.len());
        for (l, val) in v {
            let mut data = Data {
                labels: label_map(&l),
                external_labels: opts.external_labels.clone(),
                external_url: opts.external_url.clone(),
                value: val,
            };
            data.labels.remove(METRIC_NAME);
            let mut labels = data.labels.clone();
            for (k, c) in &self.labels {
                let x = c
                    .expand(&data, Some(query))
                    .map_err(|e| format!("label {k}: {e}"))?;
                if x.is_empty() {
                    labels.remove(k);
                } else {
                    labels.insert(k.clone(), x);
                }
            }
            labels.insert("alertname".into(), name.clone());
            // Annotations see the final labels, as in Prometheus.
            let mut annotations = BTreeMap::new();
            for (k, c) in &self.annotations {
                let x = c
                    .expand(&data, Some(query))
                    .unwrap_or_else(|e| format!("<error expanding template: {e}>"));
                annotations.insert(k.clone(), x);
            }
            let fp = fingerprint(&labels);
            if !seen.insert(fp) {
                return Err(format!(
                    "vector contains metrics with the same labelset after applying alert labels: {labels:?}"
                ));
            }
            match self.active.get_mut(&fp) {
                Some(a) if a.state != AlertState::Inactive => {
                    a.value = val;
                    a.annotations = annotations;
                    if a.keep_firing_since != 0 {
                        a.keep_firing_since = 0;
                        changed = true;
                    }
                }
                _ => {
                    self.active.insert(
                        fp,
                        ActiveAlert {
                            labels,
                            annotations,
                            state: AlertState::Pending,
                            value: val,
                            active_at: t,
                            fired_at: 0,
                            resolved_at: 0,
                            last_sent_at: 0,
                            keep_firing_since: 0,
                        },
                    );
                    changed = true;
                }
            }
        }
        // Alerts whose condition no longer holds.
        let retention = opts.resolved_retention.as_millis() as i64;
        self.active.retain(|fp, a| {
            if seen.contains(fp) {
                return true;
            }
            match a.state {
                AlertState::Pending => {
                    changed = true;
                    false
                }
                AlertState::Firing => {
                    if keep_ms > 0 {
                        if a.keep_firing_since == 0 {
                            a.keep_firing_since = t;
                            changed = true;
                        }
                        if t - a.keep_firing_since < keep_ms {
                            return true;
                        }
                    }
                    a.state = AlertState::Inactive;
                    a.resolved_at = t;
                    changed = true;
                    true
                }
                AlertState::Inactive => {
                    let keep = t - a.resolved_at < retention;
                    changed |= !keep;
                    keep
                }
            }
        });
        for a in self.active.values_mut() {
            if a.state == AlertState::Pending && t - a.active_at >= for_ms {
                a.state = AlertState::Firing;
                a.fired_at = t;
                changed = true;
            }
        }
        // ALERTS and ALERTS_FOR_STATE, with staleness for alerts gone.
        let mut now = HashSet::new();
        for a in self.active.values() {
            if a.state == AlertState::Inactive {
                continue;
            }
            let mut b = LabelsBuilder::with_capacity(a.labels.len() + 2);
            for (k, v) in &a.labels {
                b.set(k.as_str(), v.as_str());
            }
            b.set("__name__", "ALERTS_FOR_STATE");
            let fs = b.build();
            b.set("__name__", "ALERTS");
            b.set("alertstate", a.state.as_str());
            let al = b.build();
            out.push((al.clone(), t, 1.0));
            out.push((fs.clone(), t, (a.active_at / 1000) as f64));
            now.insert(al);
            now.insert(fs);
        }
        for gone in self.written.difference(&now) {
            out.push((gone.clone(), t, STALE_NAN));
        }
        self.written = now;
        // What to tell the notifiers.
        let resend = opts.resend_delay.as_millis() as i64;
        let mut send = Vec::new();
        for a in self.active.values_mut() {
            let due = match a.state {
                AlertState::Pending => false,
                AlertState::Firing => a.last_sent_at == 0 || t - a.last_sent_at >= resend,
                AlertState::Inactive => {
                    a.last_sent_at < a.resolved_at || t - a.last_sent_at >= resend
                }
            };
            if !due {
                continue;
            }
            let ends = if a.state == AlertState::Inactive {
                a.resolved_at
            } else {
                t + 4 * resend.max(interval_ms)
            };
            let mut labels = opts.external_labels.clone();
            labels.extend(a.labels.clone());
            send.push(Alert {
                labels,
                annotations: a.annotations.clone(),
                starts_at: rfc3339(if a.fired_at != 0 {
                    a.fired_at
                } else {
                    a.active_at
                }),
                ends_at: rfc3339(ends),
                generator_url: format!(
                    "{}/graph?g0.expr={}&g0.tab=1",
                    opts.external_url.trim_end_matches('/'),
                    form_escape(&self.spec.expr)
                ),
            });
            a.last_sent_at = t;
        }
        Ok((send, changed))
    }
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Manager {
    /// A manager with no groups yet.
    pub fn new(ctx: Context, opts: Options) -> Self {
        Self {
            inner: Arc::new(Inner {
                ctx,
                opts,
                groups: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Checks `sets` (source, file) and, if every group compiles, makes
    /// them the running groups: unchanged groups go on undisturbed,
    /// changed ones start over with their alerts' saved state, removed
    /// ones stop. Must be called within a Tokio runtime.
    pub fn update(&self, sets: &[(String, RuleFile)]) -> Result<(), String> {
        // Compile everything before touching what runs.
        let dry = Options {
            state_dir: None,
            ..self.inner.opts.clone()
        };
        for (source, file) in sets {
            for g in &file.groups {
                Group::new(source, g, &dry)
                    .map_err(|e| format!("{source}: group {:?}: {e}", g.name))?;
            }
        }
        let mut next = Vec::new();
        let mut prev: HashMap<String, Running> = self
            .inner
            .groups
            .lock()
            .drain(..)
            .map(|r| (r.key.clone(), r))
            .collect();
        let mut fresh = Vec::new();
        for (source, file) in sets {
            for g in &file.groups {
                let key = format!("{source}\u{0}{}", g.name);
                if let Some(r) = prev.remove(&key) {
                    if &r.spec == g {
                        next.push(r);
                        continue;
                    }
                    // Save before the new group restores.
                    r.group.lock().save();
                    r.task.abort();
                }
                fresh.push((key, source.clone(), g.clone()));
            }
        }
        for (key, source, spec) in fresh {
            let group = Group::new(&source, &spec, &self.inner.opts)
                .map_err(|e| format!("{source}: group {:?}: {e}", spec.name))?;
            let group = Arc::new(Mutex::new(group));
            let task = tokio::spawn(run_group(self.inner.clone(), group.clone(), key.clone()));
            next.push(Running {
                group,
                key,
                spec,
                task,
            });
        }
        for (_, r) in prev {
            r.group.lock().save();
        }
        *self.inner.groups.lock() = next;
        Ok(())
    }

    /// Every group with its rules and alerts.
    pub fn groups(&self) -> Vec<GroupStatus> {
        self.inner
            .groups
            .lock()
            .iter()
            .map(|r| r.group.lock().status())
            .collect()
    }

    /// Every pending and firing alert.
    pub fn alerts(&self) -> Vec<ActiveAlert> {
        self.groups()
            .into_iter()
            .flat_map(|g| g.rules.into_iter().flat_map(|r| r.alerts))
            .collect()
    }

    /// Stops every group, saving its state.
    pub fn stop(&self) {
        for r in self.inner.groups.lock().drain(..) {
            r.task.abort();
            r.group.lock().save();
        }
    }
}

/// The offset of a group within its interval, from a hash of its key, so
/// that groups spread over the interval and keep their slot across
/// restarts (as Prometheus does).
fn slot(key: &str, interval_ms: i64) -> i64 {
    let h = Labels::from_pairs([("k", key)]).series_id().0;
    (h % interval_ms.max(1) as u64) as i64
}

async fn run_group(inner: Arc<Inner>, group: Arc<Mutex<Group>>, key: String) {
    let interval_ms = (group.lock().interval.as_millis() as i64).max(1);
    let offset = slot(&key, interval_ms);
    loop {
        let now = now_ms();
        // The next evaluation time: offset + k·interval.
        let next = ((now - offset) / interval_ms + 1) * interval_ms + offset;
        tokio::time::sleep(Duration::from_millis((next - now).max(0) as u64)).await;
        let (inner2, group2) = (inner.clone(), group.clone());
        let sends = tokio::task::spawn_blocking(move || {
            group2.lock().eval(&inner2.ctx, &inner2.opts, next)
        })
        .await
        .unwrap_or_default();
        if !sends.is_empty() {
            for n in &inner.ctx.notifiers {
                n.send(sends.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
