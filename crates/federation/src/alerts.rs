//! Alert states up the hierarchy. A sender attaches its whole set of
//! pending and firing alerts to a batch (`Batch.alerts_snapshot`) when the
//! set changed, on every new stream and at least every
//! [`ForwarderOptions::alerts_refresh`](crate::ForwarderOptions); the
//! receiver keeps the latest set of each child while the child reports,
//! and relays them upward with its own. So the global tier lists every
//! datacenter's alerts, each named by where it was evaluated (`source`),
//! and a datacenter gone dark shows as dark rather than as alerts frozen
//! in their last state.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tiermon_proto::v1;

use crate::Identity;

/// Most alerts a receiver keeps of one child; more are dropped (and
/// counted).
pub(crate) const MAX_ALERTS_PER_CHILD: usize = 100_000;

/// Where a sender's alert states come from: its rules' pending and firing
/// alerts, and those its children relayed to it.
#[derive(Clone)]
pub struct AlertFeed(Arc<dyn Fn() -> Vec<v1::Alert> + Send + Sync>);

impl AlertFeed {
    /// A feed that calls `f` for the current set.
    pub fn new(f: impl Fn() -> Vec<v1::Alert> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The current set.
    pub fn get(&self) -> Vec<v1::Alert> {
        (self.0)()
    }
}

impl std::fmt::Debug for AlertFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlertFeed")
    }
}

fn label_key(a: &v1::Alert) -> Vec<(&str, &str)> {
    let mut k: Vec<(&str, &str)> = a
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    k.sort_unstable();
    k
}

/// The sending side of one stream: what it last sent and when.
#[derive(Debug)]
pub(crate) struct Outbox {
    feed: Option<AlertFeed>,
    refresh: Duration,
    /// Hash of the last set sent on this stream, and when.
    sent: Option<(u64, Instant)>,
}

/// A set attached to a batch, to be noted as sent once the batch is.
pub(crate) struct Attached(u64);

impl Outbox {
    pub(crate) fn new(feed: Option<AlertFeed>, refresh: Duration) -> Self {
        Self {
            feed,
            refresh,
            sent: None,
        }
    }

    /// Attaches the current set to `batch` when it changed since the last
    /// one sent on this stream, none was sent yet, or the last is older
    /// than the refresh interval. A set whose encoding exceeds `max_bytes`
    /// keeps its firing alerts first and loses the rest, with an error.
    pub(crate) fn attach(&self, batch: &mut v1::Batch, max_bytes: usize) -> Option<Attached> {
        let feed = self.feed.as_ref()?;
        let mut alerts = feed.get();
        // Firing first, then by labels: a stable order, so that an
        // unchanged set hashes the same, and the part kept when the set
        // is too big is the part that matters.
        alerts.sort_by(|a, b| {
            let firing = |x: &v1::Alert| x.state != v1::alert::State::Firing as i32;
            (firing(a), label_key(a)).cmp(&(firing(b), label_key(b)))
        });
        let mut size = 0usize;
        let keep = alerts
            .iter()
            .position(|a| {
                size += a.encoded_len() + 2;
                size > max_bytes
            })
            .unwrap_or(alerts.len());
        if keep < alerts.len() {
            tracing::error!(
                alerts = alerts.len(),
                sent = keep,
                max_bytes,
                "too many alerts for one batch; the tier above gets the firing ones first and not the rest"
            );
            alerts.truncate(keep);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for a in &alerts {
            a.encode_to_vec().hash(&mut h);
        }
        let hash = h.finish();
        let due = match self.sent {
            None => true,
            Some((last, at)) => last != hash || at.elapsed() >= self.refresh,
        };
        if !due {
            return None;
        }
        batch.alerts = alerts;
        batch.alerts_snapshot = true;
        Some(Attached(hash))
    }

    /// Notes that the batch carrying `a` went out.
    pub(crate) fn sent(&mut self, a: Option<Attached>) {
        if let Some(Attached(hash)) = a {
            self.sent = Some((hash, Instant::now()));
        }
    }
}

/// Why an alert of a child's set is not kept.
fn problem(a: &v1::Alert) -> Option<String> {
    match v1::alert::State::try_from(a.state) {
        Ok(v1::alert::State::Pending | v1::alert::State::Firing) => {}
        _ => return Some(format!("state {} is neither pending nor firing", a.state)),
    }
    if a.labels.is_empty() {
        return Some("an alert without labels".to_owned());
    }
    let mut names: Vec<&str> = Vec::with_capacity(a.labels.len());
    for l in a.labels.iter().chain(&a.annotations) {
        if !tiermon_model::is_valid_label_name(&l.name) {
            return Some(format!("invalid label or annotation name {:?}", l.name));
        }
    }
    for l in &a.labels {
        if names.contains(&l.name.as_str()) {
            return Some(format!("label {:?} given twice", l.name));
        }
        names.push(&l.name);
    }
    None
}

#[derive(Debug)]
struct Held {
    identity: Identity,
    alerts: Vec<v1::Alert>,
}

/// The latest set of each child, on the receiving side.
#[derive(Debug, Default)]
pub(crate) struct AlertBook {
    /// By (id, replica).
    held: HashMap<(String, String), Held>,
    /// Alerts refused from children's sets, all time.
    pub(crate) dropped: u64,
}

impl AlertBook {
    /// Replaces `child`'s set with `alerts`, less those that are refused.
    pub(crate) fn replace(&mut self, child: &Identity, mut alerts: Vec<v1::Alert>) {
        let key = (child.id.clone(), child.replica.clone());
        let before = alerts.len();
        let mut first = None;
        alerts.retain(|a| match problem(a) {
            None => true,
            Some(p) => {
                first.get_or_insert(p);
                false
            }
        });
        if alerts.len() > MAX_ALERTS_PER_CHILD {
            first.get_or_insert(format!(
                "{} alerts, more than the {MAX_ALERTS_PER_CHILD} kept per child",
                alerts.len()
            ));
            alerts.truncate(MAX_ALERTS_PER_CHILD);
        }
        let dropped = before - alerts.len();
        if dropped > 0 {
            self.dropped += dropped as u64;
            tracing::warn!(
                sender = %child.display(),
                dropped,
                problem = first.as_deref().unwrap_or_default(),
                "alerts from a child were refused; the rest of its set is kept"
            );
        }
        // The child's datacenter names where its alerts come from, as an
        // external label does: kept when the alert has one already.
        if !child.datacenter.is_empty() {
            for a in &mut alerts {
                if !a.labels.iter().any(|l| l.name == "datacenter") {
                    a.labels.push(v1::Label {
                        name: "datacenter".into(),
                        value: child.datacenter.clone(),
                    });
                }
            }
        }
        self.held.insert(
            key,
            Held {
                identity: child.clone(),
                alerts,
            },
        );
    }

    /// The alerts of every child `live` says still reports. The replicas
    /// of a pair evaluate the same rules: one alert per label set and
    /// child id, firing before pending, then the earliest active.
    pub(crate) fn current(&self, live: impl Fn(&Identity) -> bool) -> Vec<v1::Alert> {
        // By child id and label set.
        type Key<'a> = (&'a str, Vec<(&'a str, &'a str)>);
        let mut best: HashMap<Key<'_>, &v1::Alert> = HashMap::new();
        for h in self.held.values().filter(|h| live(&h.identity)) {
            for a in &h.alerts {
                let slot = best
                    .entry((h.identity.id.as_str(), label_key(a)))
                    .or_insert(a);
                fn rank(x: &v1::Alert) -> (bool, i64, &str) {
                    (
                        x.state != v1::alert::State::Firing as i32,
                        x.active_at_ms,
                        x.source.as_str(),
                    )
                }
                if rank(a) < rank(slot) {
                    *slot = a;
                }
            }
        }
        let mut out: Vec<(Vec<(&str, &str)>, &v1::Alert)> =
            best.into_iter().map(|((_, k), a)| (k, a)).collect();
        out.sort_by(|a, b| (&a.0, &a.1.source).cmp(&(&b.0, &b.1.source)));
        out.into_iter().map(|(_, a)| a.clone()).collect()
    }

    /// How many alerts each child `live` says still reports holds, by
    /// state.
    pub(crate) fn counts(
        &self,
        live: impl Fn(&Identity) -> bool,
    ) -> Vec<(Identity, &'static str, usize)> {
        let mut out = Vec::new();
        for h in self.held.values().filter(|h| live(&h.identity)) {
            let firing = h
                .alerts
                .iter()
                .filter(|a| a.state == v1::alert::State::Firing as i32)
                .count();
            out.push((h.identity.clone(), "firing", firing));
            out.push((h.identity.clone(), "pending", h.alerts.len() - firing));
        }
        out.sort_by(|a, b| (&a.0.id, &a.0.replica, a.1).cmp(&(&b.0.id, &b.0.replica, b.1)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, state: v1::alert::State, active: i64, source: &str) -> v1::Alert {
        v1::Alert {
            labels: vec![
                v1::Label {
                    name: "alertname".into(),
                    value: name.into(),
                },
                v1::Label {
                    name: "severity".into(),
                    value: "page".into(),
                },
            ],
            annotations: Vec::new(),
            state: state as i32,
            active_at_ms: active,
            value: 1.0,
            source: source.into(),
        }
    }

    fn child(id: &str, replica: &str, dc: &str) -> Identity {
        Identity {
            id: id.into(),
            tier: "secondary".into(),
            datacenter: dc.into(),
            replica: replica.into(),
        }
    }

    fn names(v: &[v1::Alert]) -> Vec<String> {
        v.iter()
            .map(|a| {
                let mut l: Vec<String> = a
                    .labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect();
                l.sort();
                format!("{} {}", l.join(","), a.source)
            })
            .collect()
    }

    use v1::alert::State::{Firing, Inactive, Pending};

    fn all(_: &Identity) -> bool {
        true
    }

    #[test]
    fn a_new_set_replaces_the_old_and_a_silent_child_is_not_shown() {
        let mut book = AlertBook::default();
        let c = child("secondary/a", "", "dc1");
        book.replace(&c, vec![alert("A", Firing, 10, "s")]);
        assert_eq!(
            names(&book.current(all)),
            ["alertname=A,datacenter=dc1,severity=page s"]
        );
        book.replace(&c, vec![alert("B", Pending, 10, "s")]);
        assert_eq!(
            names(&book.current(all)),
            ["alertname=B,datacenter=dc1,severity=page s"]
        );
        // Until a new set comes, the set stays.
        assert_eq!(book.current(all).len(), 1);
        // Silent past the timeout: its alerts are no longer shown.
        let silent = |i: &Identity| i.id != "secondary/a";
        assert!(book.current(silent).is_empty());
        assert!(book.counts(silent).is_empty());
        // An empty set is "no alerts".
        book.replace(&c, Vec::new());
        assert!(book.current(all).is_empty());
    }

    #[test]
    fn replicas_of_a_pair_give_one_alert_each_and_bad_alerts_are_counted() {
        let mut book = AlertBook::default();
        let a = child("secondary/pair-1", "a", "dc1");
        let b = child("secondary/pair-1", "b", "dc1");
        let other = child("secondary/pair-2", "a", "dc1");
        book.replace(&a, vec![alert("X", Pending, 5, "sa")]);
        book.replace(&b, vec![alert("X", Firing, 9, "sb")]);
        book.replace(&other, vec![alert("X", Firing, 1, "s2")]);
        // Firing beats pending within the pair; the other pair is its own.
        assert_eq!(
            names(&book.current(all)),
            [
                "alertname=X,datacenter=dc1,severity=page s2",
                "alertname=X,datacenter=dc1,severity=page sb",
            ]
        );
        let mut bad = alert("Y", Firing, 1, "sa");
        bad.labels.push(v1::Label {
            name: "alertname".into(),
            value: "again".into(),
        });
        let mut nameless = alert("Z", Firing, 1, "sa");
        nameless.labels[1].name = "0bad".into();
        book.replace(
            &a,
            vec![
                alert("Q", Inactive, 1, "sa"),
                bad,
                nameless,
                v1::Alert {
                    state: Firing as i32,
                    ..v1::Alert::default()
                },
                alert("W", Firing, 1, "sa"),
            ],
        );
        assert_eq!(book.dropped, 4);
        let counts = book.counts(all);
        assert!(counts.contains(&(a.clone(), "firing", 1)), "{counts:?}");
        // A datacenter label of the alert's own is kept.
        let mut own = alert("V", Firing, 1, "s");
        own.labels.push(v1::Label {
            name: "datacenter".into(),
            value: "elsewhere".into(),
        });
        book.replace(&other, vec![own]);
        assert!(
            names(&book.current(all))
                .contains(&"alertname=V,datacenter=elsewhere,severity=page s".to_owned())
        );
    }

    #[test]
    fn a_sender_attaches_a_set_when_it_changes_or_is_due() {
        let state = Arc::new(parking_lot::Mutex::new(vec![alert("A", Firing, 1, "s")]));
        let s2 = state.clone();
        let mut out = Outbox::new(
            Some(AlertFeed::new(move || s2.lock().clone())),
            Duration::from_millis(200),
        );
        let mut b = v1::Batch::default();
        let first = out.attach(&mut b, 1 << 20);
        assert!(first.is_some() && b.alerts_snapshot && b.alerts.len() == 1);
        // Not sent (the batch was dropped): still due.
        assert!(out.attach(&mut v1::Batch::default(), 1 << 20).is_some());
        out.sent(first);
        let mut b = v1::Batch::default();
        assert!(out.attach(&mut b, 1 << 20).is_none());
        assert!(!b.alerts_snapshot);
        // The same set in another order is the same set.
        state.lock().insert(0, alert("B", Pending, 1, "s"));
        let mut b = v1::Batch::default();
        let a = out.attach(&mut b, 1 << 20);
        assert_eq!(names(&b.alerts).len(), 2);
        out.sent(a);
        state.lock().reverse();
        assert!(out.attach(&mut v1::Batch::default(), 1 << 20).is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(out.attach(&mut v1::Batch::default(), 1 << 20).is_some());
        // Too big: firing first.
        let one = alert("A", Firing, 1, "s").encoded_len() + 2;
        let mut b = v1::Batch::default();
        out.attach(&mut b, one + 1);
        assert_eq!(b.alerts.len(), 1);
        assert_eq!(b.alerts[0].state, Firing as i32);
        // No feed: nothing, ever.
        let none = Outbox::new(None, Duration::ZERO);
        let mut b = v1::Batch::default();
        assert!(none.attach(&mut b, 1 << 20).is_none() && !b.alerts_snapshot);
    }
}
