//! Alerts, groups and the notification pipeline: an alert is routed
//! through the tree into aggregation groups (one per route and values of
//! its `group_by` labels); a group is flushed `group_wait` after it
//! formed and every `group_interval` after; a flush leaves out silenced,
//! inhibited alerts, asks the notification log whether the receiver's
//! integration needs to hear (new firing alerts, alerts resolved,
//! `repeat_interval` passed for alerts nobody acknowledged), and delivers
//! with retries until the next flush. With HA peers, the peer at
//! position p waits p × `peer_timeout` first and sends only what no peer
//! has logged meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::{Config, GroupBy, Inhibit, Route};
use crate::matchers::Matchers;
use crate::notify::{Integration, Notification, NotifiedAlert};
use crate::state::{Entry, Shared, Store};

/// An alert as the alert manager holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Identity.
    pub labels: BTreeMap<String, String>,
    /// Descriptions.
    pub annotations: BTreeMap<String, String>,
    /// Start (ms).
    pub starts_ms: i64,
    /// End (ms): when it resolved, or until when it holds without news.
    pub ends_ms: i64,
    /// Whether `ends_ms` was set by `resolve_timeout` (not by the sender).
    pub timeout: bool,
    /// Link to the source.
    pub generator_url: String,
    /// Last update (ms).
    pub updated_ms: i64,
}

impl Alert {
    /// Whether it is resolved at `now`.
    pub fn resolved(&self, now: i64) -> bool {
        self.ends_ms <= now
    }
}

pub(crate) use tiermon_model::{fingerprint, now_ms, rfc3339};

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) route: Arc<Route>,
    pub(crate) key: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) alerts: BTreeSet<u64>,
    next_flush_ms: i64,
    busy: bool,
}

/// The compiled configuration.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) config: Config,
    pub(crate) root: Arc<Route>,
    pub(crate) inhibits: Vec<Inhibit>,
    pub(crate) receivers: HashMap<String, Vec<Integration>>,
}

impl Tree {
    pub(crate) fn new(config: Config) -> Result<Tree, crate::config::ConfigError> {
        let (root, inhibits) = config.build()?;
        let mut receivers = HashMap::new();
        for r in &config.receivers {
            let mut v = Vec::new();
            for w in &r.webhook_configs {
                v.push(Integration::Webhook(w.clone()));
            }
            for s in &r.slack_configs {
                let url = if s.api_url.is_empty() {
                    config.global.slack_api_url.clone()
                } else {
                    s.api_url.clone()
                };
                v.push(Integration::Slack(s.clone(), url));
            }
            for e in &r.email_configs {
                v.push(Integration::Email(Box::new((
                    e.clone(),
                    config.global.clone(),
                ))));
            }
            receivers.insert(r.name.clone(), v);
        }
        Ok(Tree {
            root: Arc::new(root),
            inhibits,
            receivers,
            config,
        })
    }
}

/// Counters of the pipeline.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Notifications delivered, by integration kind.
    pub sent: BTreeMap<String, u64>,
    /// Delivery attempts that failed, by integration kind.
    pub failed: BTreeMap<String, u64>,
    /// Notifications left to a peer that had sent them.
    pub peer_sent: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) tree: Tree,
    pub(crate) alerts: HashMap<u64, Alert>,
    pub(crate) groups: BTreeMap<String, Group>,
    pub(crate) shared: Shared,
    pub(crate) stats: Stats,
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct Options {
    /// The URL notifications link back to.
    pub external_url: String,
    /// This instance's position among its HA peers (0: sends first).
    pub position: usize,
    /// How long each position waits for the ones before it.
    pub peer_timeout: Duration,
    /// How long silences, acknowledgements and log entries are kept.
    pub retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            external_url: String::new(),
            position: 0,
            peer_timeout: Duration::from_secs(15),
            retention: Duration::from_secs(120 * 3600),
        }
    }
}

/// Hands the shared state to the peers.
#[derive(Clone)]
pub(crate) struct Replicate(pub(crate) Arc<dyn Fn(Shared) + Send + Sync>);

impl std::fmt::Debug for Replicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replicate")
    }
}

/// The shared core behind [`crate::AlertManager`].
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) state: Mutex<State>,
    pub(crate) store: Store,
    pub(crate) opts: Options,
    pub(crate) http: reqwest::Client,
    pub(crate) wake: tokio::sync::Notify,
    /// Called with the state to replicate after every change.
    pub(crate) replicate: Mutex<Option<Replicate>>,
    /// The deliveries under way, one task per group; stopping the alert
    /// manager aborts them, so a stopped instance sends nothing more.
    pub(crate) deliveries: Mutex<tokio::task::JoinSet<()>>,
}

impl State {
    /// Whether a silence mutes `labels` at `now`; the ids of those that do.
    pub(crate) fn silenced_by(&self, labels: &BTreeMap<String, String>, now: i64) -> Vec<String> {
        self.shared
            .silences
            .values()
            .filter(|s| s.state(now) == "active")
            .filter(|s| s.compiled().map(|m| m.matches(labels)).unwrap_or(false))
            .map(|s| s.id.clone())
            .collect()
    }

    /// The fingerprints of the firing alerts that inhibit `labels`.
    pub(crate) fn inhibited_by(
        &self,
        fp: u64,
        labels: &BTreeMap<String, String>,
        now: i64,
    ) -> Vec<u64> {
        let mut out = Vec::new();
        for r in &self.tree.inhibits {
            if !r.target.matches(labels) {
                continue;
            }
            let target_is_source = r.source.matches(labels);
            for (sfp, s) in &self.alerts {
                if *sfp == fp || s.resolved(now) || !r.source.matches(&s.labels) {
                    continue;
                }
                // An alert matching both sides cannot be muted by another
                // that matches both (they would mute each other).
                if target_is_source && r.target.matches(&s.labels) {
                    continue;
                }
                if r.equal.iter().all(|l| s.labels.get(l) == labels.get(l)) {
                    out.push(*sfp);
                }
            }
        }
        out
    }

    pub(crate) fn acked(&self, fp: u64, a: &Alert) -> Option<&crate::state::Ack> {
        self.shared
            .acks
            .get(&format!("{fp:016x}"))
            .filter(|k| k.starts_ms == a.starts_ms)
    }

    /// Adds or updates alerts.
    pub(crate) fn insert(&mut self, alerts: Vec<Alert>, now: i64) {
        for mut a in alerts {
            let fp = fingerprint(&a.labels);
            if let Some(old) = self.alerts.get(&fp) {
                // The same alert again: it keeps its start while it has
                // not resolved; after that it is a new occurrence.
                if !old.resolved(now) && old.starts_ms < a.starts_ms {
                    a.starts_ms = old.starts_ms;
                }
                if old.ends_ms > a.ends_ms && a.timeout && !old.timeout {
                    a.ends_ms = old.ends_ms;
                }
            }
            self.route(fp, &a.labels, now);
            self.alerts.insert(fp, a);
        }
    }

    fn route(&mut self, fp: u64, labels: &BTreeMap<String, String>, now: i64) {
        let root = self.tree.root.clone();
        let mut routes = Vec::new();
        root.matching(labels, &mut routes);
        for r in routes {
            let glabels: BTreeMap<String, String> = match &r.group_by {
                GroupBy::All => labels.clone(),
                GroupBy::Labels(ls) => ls
                    .iter()
                    .filter_map(|l| labels.get(l).map(|v| (l.clone(), v.clone())))
                    .collect(),
            };
            let gm = Matchers(
                glabels
                    .iter()
                    .filter_map(|(k, v)| {
                        tiermon_model::Matcher::new(
                            tiermon_model::MatchOp::Equal,
                            k.clone(),
                            v.clone(),
                        )
                        .ok()
                    })
                    .collect(),
            );
            let key = format!("{}:{}", r.key, gm.to_text());
            let id = format!("{}\u{0}{key}", r.id);
            let g = self.groups.entry(id).or_insert_with(|| Group {
                route: Arc::new(r.clone()),
                key,
                labels: glabels,
                alerts: BTreeSet::new(),
                next_flush_ms: now + r.group_wait.as_millis() as i64,
                busy: false,
            });
            g.alerts.insert(fp);
        }
    }

    /// Rebuilds every group under a new tree.
    pub(crate) fn retree(&mut self, tree: Tree, now: i64) {
        self.tree = tree;
        let old = std::mem::take(&mut self.groups);
        let alerts: Vec<(u64, BTreeMap<String, String>)> = self
            .alerts
            .iter()
            .map(|(fp, a)| (*fp, a.labels.clone()))
            .collect();
        for (fp, labels) in alerts {
            self.route(fp, &labels, now);
        }
        // Groups that existed keep their schedule.
        for (id, g) in &mut self.groups {
            if let Some(o) = old.get(id) {
                g.next_flush_ms = o.next_flush_ms;
            }
        }
    }
}

/// A unit of delivery: one group, one integration.
#[derive(Debug)]
struct Job {
    group_id: String,
    log_key: String,
    integration: Integration,
    notification: Option<Notification>,
    firing: Vec<u64>,
    resolved: Vec<u64>,
    repeat_ms: i64,
    unacked: BTreeSet<u64>,
    deadline_ms: i64,
}

/// Alertmanager's rule for whether a receiver needs to hear about a group
/// again, with acknowledgements: acknowledged alerts do not repeat.
fn needs_update(
    e: Option<&Entry>,
    firing: &BTreeSet<u64>,
    unacked: &BTreeSet<u64>,
    resolved: &BTreeSet<u64>,
    send_resolved: bool,
    repeat_ms: i64,
    now: i64,
) -> bool {
    let Some(e) = e else {
        return !firing.is_empty();
    };
    let logged: BTreeSet<u64> = e.firing.iter().copied().collect();
    if !firing.is_subset(&logged) {
        return true;
    }
    if firing.is_empty() {
        return !e.firing.is_empty();
    }
    if send_resolved {
        let logged_res: BTreeSet<u64> = e.resolved.iter().copied().collect();
        if !resolved.is_subset(&logged_res) {
            return true;
        }
    }
    // Nothing changed: repeat, unless every firing alert is acknowledged.
    !unacked.is_empty() && e.at_ms + repeat_ms <= now
}

impl Core {
    /// Flushes the groups that are due; returns when the next one is.
    fn tick(self: &Arc<Self>, now: i64) -> i64 {
        let mut jobs = Vec::new();
        let mut next = now + 1000;
        {
            let mut st = self.state.lock();
            // Forget alerts resolved long ago that no group holds.
            let held: BTreeSet<u64> = st
                .groups
                .values()
                .flat_map(|g| g.alerts.iter().copied())
                .collect();
            st.alerts
                .retain(|fp, a| held.contains(fp) || !a.resolved(now - 3_600_000));
            let ids: Vec<String> = st
                .groups
                .iter()
                .filter(|(_, g)| !g.busy && g.next_flush_ms <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                let (route, key, labels, members) = {
                    let g = &st.groups[&id];
                    (
                        g.route.clone(),
                        g.key.clone(),
                        g.labels.clone(),
                        g.alerts.clone(),
                    )
                };
                let mut firing = BTreeSet::new();
                let mut resolved = BTreeSet::new();
                let mut unacked = BTreeSet::new();
                let mut shown = Vec::new();
                for fp in &members {
                    let Some(a) = st.alerts.get(fp) else { continue };
                    if a.resolved(now) {
                        resolved.insert(*fp);
                        shown.push((*fp, a.clone(), "resolved"));
                        continue;
                    }
                    if !st.silenced_by(&a.labels, now).is_empty()
                        || !st.inhibited_by(*fp, &a.labels, now).is_empty()
                    {
                        continue;
                    }
                    firing.insert(*fp);
                    if st.acked(*fp, a).is_none() {
                        unacked.insert(*fp);
                    }
                    shown.push((*fp, a.clone(), "firing"));
                }
                let integrations = st
                    .tree
                    .receivers
                    .get(&route.receiver)
                    .cloned()
                    .unwrap_or_default();
                let mut any = false;
                for (i, integ) in integrations.into_iter().enumerate() {
                    let log_key = format!("{key}/{}/{}/{i}", route.receiver, integ.kind());
                    let send_resolved = integ.send_resolved();
                    let repeat_ms = route.repeat_interval.as_millis() as i64;
                    if !needs_update(
                        st.shared.nflog.get(&log_key),
                        &firing,
                        &unacked,
                        &resolved,
                        send_resolved,
                        repeat_ms,
                        now,
                    ) {
                        continue;
                    }
                    let alerts: Vec<NotifiedAlert> = shown
                        .iter()
                        .filter(|(_, _, s)| *s == "firing" || send_resolved)
                        .map(|(fp, a, s)| NotifiedAlert {
                            status: (*s).into(),
                            labels: a.labels.clone(),
                            annotations: a.annotations.clone(),
                            starts_at: rfc3339(a.starts_ms),
                            ends_at: if *s == "resolved" || !a.timeout {
                                rfc3339(a.ends_ms)
                            } else {
                                "0001-01-01T00:00:00Z".into()
                            },
                            generator_url: a.generator_url.clone(),
                            fingerprint: format!("{fp:016x}"),
                        })
                        .collect();
                    // Only resolved alerts and a receiver that does not
                    // want them: log (clearing the firing set), send nothing.
                    let notification = (!alerts.is_empty()).then(|| {
                        Notification::new(
                            key.clone(),
                            route.receiver.clone(),
                            labels.clone(),
                            self.opts.external_url.clone(),
                            alerts,
                        )
                    });
                    any = true;
                    jobs.push(Job {
                        group_id: id.clone(),
                        log_key,
                        integration: integ,
                        notification,
                        firing: firing.iter().copied().collect(),
                        resolved: resolved.iter().copied().collect(),
                        repeat_ms,
                        unacked: unacked.clone(),
                        deadline_ms: now + route.group_interval.as_millis() as i64,
                    });
                }
                if let Some(g) = st.groups.get_mut(&id) {
                    g.next_flush_ms = now + route.group_interval.as_millis() as i64;
                    g.busy = any;
                    if !any {
                        prune(
                            g,
                            &members.intersection(&resolved).copied().collect::<Vec<_>>(),
                        );
                    }
                }
                if st.groups.get(&id).is_some_and(|g| g.alerts.is_empty()) {
                    st.groups.remove(&id);
                }
            }
            for g in st.groups.values() {
                if !g.busy {
                    next = next.min(g.next_flush_ms);
                }
            }
        }
        // Jobs of one group run together; the group is free when all end.
        let mut by_group: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for j in jobs {
            by_group.entry(j.group_id.clone()).or_default().push(j);
        }
        let mut deliveries = self.deliveries.lock();
        while deliveries.try_join_next().is_some() {}
        for (id, jobs) in by_group {
            let core = self.clone();
            deliveries.spawn(async move {
                let mut all_ok = true;
                let mut resolved = Vec::new();
                for j in jobs {
                    resolved = j.resolved.clone();
                    all_ok &= core.deliver(j).await;
                }
                let mut st = core.state.lock();
                if let Some(g) = st.groups.get_mut(&id) {
                    g.busy = false;
                    if all_ok {
                        let still: Vec<u64> = resolved
                            .into_iter()
                            .filter(|fp| g.alerts.contains(fp))
                            .collect();
                        prune(g, &still);
                    }
                    if g.alerts.is_empty() {
                        st.groups.remove(&id);
                    }
                }
                drop(st);
                core.wake.notify_one();
            });
        }
        next
    }

    /// Delivers one job with retries; logs it when delivered.
    async fn deliver(self: &Arc<Self>, j: Job) -> bool {
        // HA: later positions give earlier ones time to send and replicate.
        if self.opts.position > 0 {
            tokio::time::sleep(self.opts.peer_timeout * self.opts.position as u32).await;
            let st = self.state.lock();
            let firing: BTreeSet<u64> = j.firing.iter().copied().collect();
            let resolved: BTreeSet<u64> = j.resolved.iter().copied().collect();
            if !needs_update(
                st.shared.nflog.get(&j.log_key),
                &firing,
                &j.unacked,
                &resolved,
                j.integration.send_resolved(),
                j.repeat_ms,
                now_ms(),
            ) {
                drop(st);
                self.state.lock().stats.peer_sent += 1;
                return true;
            }
        }
        if let Some(n) = &j.notification {
            let mut backoff = Duration::from_millis(200);
            loop {
                match j.integration.send(&self.http, n).await {
                    Ok(()) => {
                        tracing::info!(group = %n.group_key, receiver = %n.receiver, integration = j.integration.kind(), alerts = n.alerts.len(), status = %n.status, "notified");
                        break;
                    }
                    Err(e) => {
                        *self
                            .state
                            .lock()
                            .stats
                            .failed
                            .entry(j.integration.kind().into())
                            .or_default() += 1;
                        let give_up =
                            !e.retry || now_ms() + backoff.as_millis() as i64 >= j.deadline_ms;
                        tracing::warn!(group = %n.group_key, receiver = %n.receiver, integration = j.integration.kind(), error = %e, retry = !give_up, "notification failed");
                        if give_up {
                            return false;
                        }
                        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
                        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        let shared = {
            let mut st = self.state.lock();
            st.shared.nflog.insert(
                j.log_key,
                Entry {
                    firing: j.firing,
                    resolved: j.resolved,
                    at_ms: now_ms(),
                },
            );
            st.shared.clone()
        };
        self.persist(shared);
        // Counted once logged and saved: a delivery seen in the stats
        // is one a restart will not repeat.
        if j.notification.is_some() {
            *self
                .state
                .lock()
                .stats
                .sent
                .entry(j.integration.kind().into())
                .or_default() += 1;
        }
        true
    }

    /// Saves the shared state and hands it to the peers.
    pub(crate) fn persist(&self, shared: Shared) {
        if let Err(e) = self.store.save(&shared) {
            tracing::warn!(error = %e, "cannot save the alert manager's state");
        }
        let r = self.replicate.lock().clone();
        if let Some(r) = r {
            (r.0)(shared);
        }
    }

    /// Runs the pipeline until the task is aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut last_gc = 0;
        loop {
            let now = now_ms();
            if now - last_gc > 60_000 {
                last_gc = now;
                let mut st = self.state.lock();
                st.shared.gc(now, self.opts.retention.as_millis() as i64);
            }
            let next = self.tick(now);
            let wait = Duration::from_millis((next - now_ms()).clamp(10, 1000) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

fn prune(g: &mut Group, resolved: &[u64]) {
    for fp in resolved {
        g.alerts.remove(fp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn needs_update_follows_alertmanager_and_acknowledgements() {
        let e = Entry {
            firing: vec![1, 2],
            resolved: vec![],
            at_ms: 1000,
        };
        let r = 60_000;
        // First time: only when something fires.
        assert!(needs_update(
            None,
            &set(&[1]),
            &set(&[1]),
            &set(&[]),
            true,
            r,
            2000
        ));
        assert!(!needs_update(
            None,
            &set(&[]),
            &set(&[]),
            &set(&[1]),
            true,
            r,
            2000
        ));
        // A new firing alert.
        assert!(needs_update(
            Some(&e),
            &set(&[1, 2, 3]),
            &set(&[3]),
            &set(&[]),
            true,
            r,
            2000
        ));
        // Same set, before the repeat interval: no; after: yes.
        assert!(!needs_update(
            Some(&e),
            &set(&[1, 2]),
            &set(&[1, 2]),
            &set(&[]),
            true,
            r,
            2000
        ));
        assert!(needs_update(
            Some(&e),
            &set(&[1, 2]),
            &set(&[1, 2]),
            &set(&[]),
            true,
            r,
            61_000
        ));
        // ... unless all of them are acknowledged.
        assert!(!needs_update(
            Some(&e),
            &set(&[1, 2]),
            &set(&[]),
            &set(&[]),
            true,
            r,
            61_000
        ));
        // One resolved: told when the receiver wants resolved alerts.
        assert!(needs_update(
            Some(&e),
            &set(&[1]),
            &set(&[1]),
            &set(&[2]),
            true,
            r,
            2000
        ));
        assert!(!needs_update(
            Some(&e),
            &set(&[1]),
            &set(&[1]),
            &set(&[2]),
            false,
            r,
            2000
        ));
        // All resolved: always (clears the log).
        assert!(needs_update(
            Some(&e),
            &set(&[]),
            &set(&[]),
            &set(&[1, 2]),
            false,
            r,
            2000
        ));
    }
}
