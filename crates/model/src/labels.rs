//! Label sets and series identity.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

/// The label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label: a name and a value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Label name, e.g. `instance`.
    pub name: Arc<str>,
    /// Label value; never empty inside a [`Labels`] (empty means absent).
    pub value: Arc<str>,
}

impl Label {
    /// A label from any strings.
    pub fn new(name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// An immutable label set, sorted by name, without empty values, with at
/// most one label per name.
///
/// Cloning is a reference-count increment; comparison and hashing walk the
/// sorted pairs. Order is Prometheus' order: label by label, name then value.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Arc<[Label]>);

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A label set from name/value pairs in any order. A later pair with the
    /// same name wins; pairs with an empty value are dropped (Prometheus
    /// treats an empty value as an absent label).
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<Arc<str>>,
        V: Into<Arc<str>>,
    {
        let mut b = LabelsBuilder::new();
        for (n, v) in pairs {
            b.set(n, v);
        }
        b.build()
    }

    /// A label set from labels already sorted by name, unique, with
    /// non-empty values (as storage keeps them). Checked in debug builds.
    pub fn from_sorted(labels: Vec<Label>) -> Self {
        debug_assert!(
            labels.windows(2).all(|w| w[0].name < w[1].name),
            "labels not sorted or not unique"
        );
        Labels(labels.into())
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| (*l.name).cmp(name))
            .ok()
            .map(|i| &*self.0[i].value)
    }

    /// The metric name (`__name__`), if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// The labels in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// Number of labels, the metric name included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set has no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A builder starting from this set.
    pub fn to_builder(&self) -> LabelsBuilder {
        LabelsBuilder {
            labels: self.0.to_vec(),
        }
    }

    /// The stable identity of this set: the same on every tier, platform
    /// and run (xxh3 over the sorted pairs, with separators that cannot
    /// appear in UTF-8).
    pub fn series_id(&self) -> SeriesId {
        series_id_of(self.0.iter().map(|l| (&*l.name, &*l.value)))
    }

    /// Approximate heap bytes held by this set (strings counted fully, as if
    /// not shared).
    pub fn heap_size(&self) -> usize {
        self.0.len() * std::mem::size_of::<Label>()
            + self
                .0
                .iter()
                .map(|l| l.name.len() + l.value.len())
                .sum::<usize>()
    }
}

/// [`Labels::series_id`] of the set with these `(name, value)` pairs,
/// sorted by name, for a caller that keeps them in another form.
pub fn series_id_of<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> SeriesId {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name, value) in pairs {
        h.update(name.as_bytes());
        h.update(&[0xff]);
        h.update(value.as_bytes());
        h.update(&[0xfe]);
    }
    SeriesId(h.digest())
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Prints the set in PromQL selector form: `name{a="b", c="d"}`.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        if let Some(n) = name {
            f.write_str(n)?;
        }
        let mut rest = self.0.iter().filter(|l| &*l.name != METRIC_NAME).peekable();
        if rest.peek().is_none() && name.is_some() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, l) in rest.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}=\"", l.name)?;
            for c in l.value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Builds a [`Labels`] by setting and deleting labels, as relabelling does.
#[derive(Debug, Clone, Default)]
pub struct LabelsBuilder {
    labels: Vec<Label>,
}

impl LabelsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder with room for `n` labels.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            labels: Vec::with_capacity(n),
        }
    }

    /// Sets `name` to `value`, replacing any earlier value. An empty value
    /// deletes the label.
    pub fn set(&mut self, name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> &mut Self {
        let name = name.into();
        let value = value.into();
        if value.is_empty() {
            return self.del(&name);
        }
        match self.labels.iter_mut().find(|l| l.name == name) {
            Some(l) => l.value = value,
            None => self.labels.push(Label { name, value }),
        }
        self
    }

    /// Removes label `name` if present.
    pub fn del(&mut self, name: &str) -> &mut Self {
        self.labels.retain(|l| &*l.name != name);
        self
    }

    /// The current value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| &*l.name == name)
            .map(|l| &*l.value)
    }

    /// The labels as (name, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|l| (&*l.name, &*l.value))
    }

    /// Keeps only the labels for which `keep(name, value)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) -> &mut Self {
        self.labels.retain(|l| keep(&l.name, &l.value));
        self
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The finished, sorted set.
    pub fn build(&self) -> Labels {
        let mut v = self.labels.clone();
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Labels(v.into())
    }
}

/// A stable 64-bit identity of a label set; see [`Labels::series_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesId(pub u64);

impl fmt::Display for SeriesId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Deduplicates strings so that a label name or value repeated across many
/// series is held once. Thread-safe; strings live as long as any holder.
#[derive(Debug, Default)]
pub struct Interner {
    set: Mutex<HashSet<Arc<str>>>,
}

impl Interner {
    /// An empty interner.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared copy of `s`, adding it on first sight.
    pub fn intern(&self, s: &str) -> Arc<str> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // set itself is still consistent.
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        set.insert(a.clone());
        a
    }

    /// Number of distinct strings held.
    pub fn len(&self) -> usize {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no string is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sorted_deduplicated_and_empty_values_dropped() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1"), ("b", "3"), ("c", "")]);
        let pairs: Vec<_> = l.iter().map(|l| (&*l.name, &*l.value)).collect();
        assert_eq!(pairs, [("a", "1"), ("b", "3")]);
        assert_eq!(l.get("b"), Some("3"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn display_escapes_values() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "a\"b\\c\nd")]);
        assert_eq!(l.to_string(), r#"up{job="a\"b\\c\nd"}"#);
        assert_eq!(Labels::from_pairs([("__name__", "up")]).to_string(), "up");
        assert_eq!(Labels::from_pairs([("a", "1")]).to_string(), r#"{a="1"}"#);
    }

    #[test]
    fn series_id_is_stable() {
        // Pinned: the id travels between tiers and is stored on disk.
        let l = Labels::from_pairs([("__name__", "up"), ("job", "node")]);
        assert_eq!(
            l.series_id(),
            Labels::from_pairs([("job", "node"), ("__name__", "up")]).series_id()
        );
        assert_eq!(
            l.series_id().to_string(),
            format!("{:016x}", l.series_id().0)
        );
        // Separators keep ("ab","c") and ("a","bc") apart.
        assert_ne!(
            Labels::from_pairs([("ab", "c")]).series_id(),
            Labels::from_pairs([("a", "bc")]).series_id()
        );
    }

    #[test]
    fn interner_shares_strings() {
        let i = Interner::new();
        let a = i.intern("instance");
        let b = i.intern("instance");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
    }

    proptest! {
        #[test]
        fn order_matches_pairwise_comparison(
            a in proptest::collection::btree_map("[a-c]{1,2}", "[x-z]{1,2}", 0..4),
            b in proptest::collection::btree_map("[a-c]{1,2}", "[x-z]{1,2}", 0..4),
        ) {
            let la = Labels::from_pairs(a.clone());
            let lb = Labels::from_pairs(b.clone());
            let va: Vec<_> = a.into_iter().collect();
            let vb: Vec<_> = b.into_iter().collect();
            prop_assert_eq!(la.cmp(&lb), va.cmp(&vb));
            prop_assert_eq!(la == lb, la.series_id() == lb.series_id());
        }
    }
}
