//! Relabelling, as Prometheus' `relabel_configs` and
//! `metric_relabel_configs` define it: regular expressions are fully
//! anchored, `$1`/`${name}` expand capture groups, and an empty result of
//! `replace` deletes the target label.

use std::fmt;

use md5::{Digest, Md5};
use regex::Regex;
use serde::{Deserialize, Deserializer};
use tiermon_model::LabelsBuilder;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Set `target_label` to `replacement` (with capture groups) when
    /// `regex` matches the joined source values.
    #[default]
    Replace,
    /// Drop the series/target when `regex` does not match.
    Keep,
    /// Drop it when `regex` matches.
    Drop,
    /// Keep it only when the joined source values equal `target_label`'s.
    KeepEqual,
    /// Drop it when they are equal.
    DropEqual,
    /// Set `target_label` to the md5 of the source values modulo `modulus`.
    HashMod,
    /// Copy labels whose name matches `regex` to the name `replacement`.
    LabelMap,
    /// Delete labels whose name matches.
    LabelDrop,
    /// Delete labels whose name does not match.
    LabelKeep,
    /// Set `target_label` to the source values in lower case.
    Lowercase,
    /// … in upper case.
    Uppercase,
}

/// A relabelling rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelabelConfig {
    /// Labels whose values are joined with `separator`.
    pub source_labels: Vec<String>,
    /// Joins the source values (`;`).
    pub separator: String,
    /// The label written by replace, hashmod, lowercase, uppercase and
    /// compared by keepequal/dropequal.
    pub target_label: String,
    /// Matched against the joined values (anchored at both ends).
    pub regex: RelabelRegex,
    /// For hashmod.
    pub modulus: u64,
    /// What replace and labelmap write (`$1`).
    pub replacement: String,
    /// The action.
    pub action: Action,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        Self {
            source_labels: Vec::new(),
            separator: ";".into(),
            target_label: String::new(),
            regex: RelabelRegex::default(),
            modulus: 0,
            replacement: "$1".into(),
            action: Action::Replace,
        }
    }
}

/// An anchored regular expression; compares by its source text.
#[derive(Clone)]
pub struct RelabelRegex {
    source: String,
    re: Regex,
}

impl RelabelRegex {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            source: source.to_owned(),
            re: Regex::new(&format!("^(?s:{source})$"))?,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl Default for RelabelRegex {
    fn default() -> Self {
        Self::new("(.*)").expect("the default regex compiles")
    }
}

impl PartialEq for RelabelRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for RelabelRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for RelabelRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelabelRegex::new(&s).map_err(|e| serde::de::Error::custom(format!("regex {s:?}: {e}")))
    }
}

impl RelabelConfig {
    /// Checks the combinations Prometheus refuses; the error says which.
    pub fn validate(&self) -> Result<(), String> {
        let default = RelabelConfig::default();
        let needs_target = matches!(
            self.action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && self.target_label.is_empty() {
            return Err(format!(
                "action {:?} needs target_label",
                self.action_name()
            ));
        }
        // replace may build its target name from capture groups; the others
        // write exactly the label named.
        if needs_target
            && self.action != Action::Replace
            && !tiermon_model::is_valid_label_name(&self.target_label)
        {
            return Err(format!(
                "target_label {:?} is not a valid label name",
                self.target_label
            ));
        }
        if self.action == Action::Replace
            && !self.target_label.contains('$')
            && !tiermon_model::is_valid_label_name(&self.target_label)
        {
            return Err(format!(
                "target_label {:?} is not a valid label name",
                self.target_label
            ));
        }
        if self.action == Action::HashMod && self.modulus == 0 {
            return Err("action \"hashmod\" needs a modulus above 0".into());
        }
        if matches!(
            self.action,
            Action::LabelDrop | Action::LabelKeep | Action::LabelMap
        ) && !self.source_labels.is_empty()
        {
            return Err(format!(
                "action {:?} works on label names: source_labels is not allowed",
                self.action_name()
            ));
        }
        if matches!(self.action, Action::LabelDrop | Action::LabelKeep)
            && (!self.target_label.is_empty() || self.replacement != default.replacement)
        {
            return Err(format!("action {:?} takes only regex", self.action_name()));
        }
        if matches!(self.action, Action::KeepEqual | Action::DropEqual)
            && (self.regex != default.regex || self.replacement != default.replacement)
        {
            return Err(format!(
                "action {:?} compares with target_label: regex and replacement are not allowed",
                self.action_name()
            ));
        }
        for name in &self.source_labels {
            if !tiermon_model::is_valid_label_name(name) {
                return Err(format!("source label {name:?} is not a valid label name"));
            }
        }
        Ok(())
    }

    fn action_name(&self) -> &'static str {
        match self.action {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }

    /// Applies this rule; `false` means the series or target is dropped.
    pub fn apply(&self, lb: &mut LabelsBuilder) -> bool {
        let val = self.joined(lb);
        let re = &self.regex.re;
        match self.action {
            Action::Drop => return !re.is_match(&val),
            Action::Keep => return re.is_match(&val),
            Action::DropEqual => return lb.get(&self.target_label).unwrap_or("") != val,
            Action::KeepEqual => return lb.get(&self.target_label).unwrap_or("") == val,
            Action::Replace => {
                let Some(caps) = re.captures(&val) else {
                    return true;
                };
                let mut target = String::new();
                caps.expand(&self.target_label, &mut target);
                if !tiermon_model::is_valid_label_name(&target) {
                    return true;
                }
                let mut res = String::new();
                caps.expand(&self.replacement, &mut res);
                if res.is_empty() {
                    lb.del(&target);
                } else {
                    lb.set(target, res);
                }
            }
            Action::Lowercase => {
                lb.set(self.target_label.as_str(), val.to_lowercase());
            }
            Action::Uppercase => {
                lb.set(self.target_label.as_str(), val.to_uppercase());
            }
            Action::HashMod => {
                let m = hash_mod(&val, self.modulus);
                lb.set(self.target_label.as_str(), m.to_string());
            }
            Action::LabelMap => {
                let adds: Vec<(String, String)> = lb
                    .iter()
                    .filter(|(n, _)| re.is_match(n))
                    .map(|(n, v)| {
                        (
                            re.replace_all(n, self.replacement.as_str()).into_owned(),
                            v.to_owned(),
                        )
                    })
                    .collect();
                for (n, v) in adds {
                    lb.set(n, v);
                }
            }
            Action::LabelDrop => {
                lb.retain(|n, _| !re.is_match(n));
            }
            Action::LabelKeep => {
                lb.retain(|n, _| re.is_match(n));
            }
        }
        true
    }

    fn joined(&self, lb: &LabelsBuilder) -> String {
        let mut out = String::new();
        for (i, name) in self.source_labels.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.separator);
            }
            out.push_str(lb.get(name).unwrap_or(""));
        }
        out
    }
}

/// Applies `rules` in order; `false` as soon as one drops.
pub fn relabel(rules: &[RelabelConfig], lb: &mut LabelsBuilder) -> bool {
    rules.iter().all(|r| r.apply(lb))
}

/// Prometheus' hashmod: the last 8 bytes of the MD5 of `val`, big-endian,
/// modulo `modulus`.
fn hash_mod(val: &str, modulus: u64) -> u64 {
    let sum = Md5::digest(val.as_bytes());
    let mut last = [0u8; 8];
    last.copy_from_slice(&sum[8..16]);
    u64::from_be_bytes(last) % modulus.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiermon_model::Labels;

    fn rules(yaml: &str) -> Vec<RelabelConfig> {
        #[derive(Deserialize)]
        struct W {
            r: Vec<RelabelConfig>,
        }
        let raw = config::Config::builder()
            .add_source(config::File::from_str(
                &format!("r:\n{yaml}"),
                config::FileFormat::Yaml,
            ))
            .build()
            .unwrap();
        let w: W = raw.try_deserialize().unwrap();
        for r in &w.r {
            r.validate().unwrap();
        }
        w.r
    }

    fn run(yaml: &str, input: &[(&str, &str)]) -> Option<Labels> {
        let mut lb = LabelsBuilder::new();
        for (n, v) in input {
            lb.set(*n, *v);
        }
        relabel(&rules(yaml), &mut lb).then(|| lb.build())
    }

    fn l(pairs: &[(&str, &str)]) -> Option<Labels> {
        Some(Labels::from_pairs(pairs.iter().copied()))
    }

    // Cases follow Prometheus' model/relabel tests.
    #[test]
    fn replace_with_capture_groups() {
        let got = run(
            "  - source_labels: [a]\n    regex: 'f(.*)'\n    target_label: d\n    replacement: 'ch${1}-ch${1}'\n",
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
        );
        assert_eq!(
            got,
            l(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "choo-choo")])
        );
    }

    #[test]
    fn replace_joins_sources_and_is_anchored() {
        let yaml = "  - source_labels: [a, b]\n    regex: 'f(.*);(.*)r'\n    target_label: a\n    replacement: 'b${1}${2}m'\n  - source_labels: [c, a]\n    regex: '(b).*b(.*)ba(.*)'\n    target_label: d\n    replacement: '$1$2$2$3'\n";
        let got = run(yaml, &[("a", "foo"), ("b", "bar"), ("c", "baz")]);
        assert_eq!(
            got,
            l(&[("a", "boobam"), ("b", "bar"), ("c", "baz"), ("d", "boooom")])
        );
        // "o" alone does not match "foo": the regex is anchored.
        let got = run(
            "  - source_labels: [a]\n    regex: 'o'\n    target_label: z\n    replacement: x\n",
            &[("a", "foo")],
        );
        assert_eq!(got, l(&[("a", "foo")]));
    }

    #[test]
    fn an_empty_replacement_deletes_and_an_invalid_target_is_skipped() {
        let got = run(
            "  - source_labels: [a]\n    target_label: b\n    replacement: ''\n",
            &[("a", "foo"), ("b", "bar")],
        );
        assert_eq!(got, l(&[("a", "foo")]));
        let got = run(
            "  - source_labels: [a]\n    regex: '(.*)'\n    target_label: '${1}'\n    replacement: x\n",
            &[("a", "not-a-name")],
        );
        assert_eq!(got, l(&[("a", "not-a-name")]));
        let got = run(
            "  - source_labels: [a]\n    regex: '(.*)'\n    target_label: 'l_${1}'\n    replacement: x\n",
            &[("a", "ok")],
        );
        assert_eq!(got, l(&[("a", "ok"), ("l_ok", "x")]));
    }

    #[test]
    fn keep_drop_and_their_equal_forms() {
        let keep = "  - source_labels: [a]\n    regex: 'f.*'\n    action: keep\n";
        assert!(run(keep, &[("a", "foo")]).is_some());
        assert!(run(keep, &[("a", "bar")]).is_none());
        assert!(run(keep, &[]).is_none());
        let drop = "  - source_labels: [a]\n    regex: 'f.*'\n    action: drop\n";
        assert!(run(drop, &[("a", "foo")]).is_none());
        assert!(run(drop, &[("a", "bar")]).is_some());
        let ke = "  - source_labels: [a]\n    target_label: b\n    action: keepequal\n";
        assert!(run(ke, &[("a", "x"), ("b", "x")]).is_some());
        assert!(run(ke, &[("a", "x"), ("b", "y")]).is_none());
        let de = "  - source_labels: [a]\n    target_label: b\n    action: dropequal\n";
        assert!(run(de, &[("a", "x"), ("b", "x")]).is_none());
        assert!(run(de, &[("a", "x"), ("b", "y")]).is_some());
    }

    #[test]
    fn hashmod_matches_prometheus() {
        // Prometheus' relabel_test: "foo" mod 1000 is 976.
        let got = run(
            "  - source_labels: [c]\n    target_label: d\n    modulus: 1000\n    action: hashmod\n",
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
        );
        assert_eq!(
            got,
            l(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "976")])
        );
    }

    #[test]
    fn labelmap_labeldrop_labelkeep() {
        let got = run(
            "  - regex: '__meta_(.+)'\n    action: labelmap\n    replacement: 'm_$1'\n",
            &[("__meta_rack", "r1"), ("a", "x")],
        );
        assert_eq!(
            got,
            l(&[("__meta_rack", "r1"), ("a", "x"), ("m_rack", "r1")])
        );
        let got = run(
            "  - regex: '__meta_.+'\n    action: labeldrop\n",
            &[("__meta_rack", "r1"), ("a", "x")],
        );
        assert_eq!(got, l(&[("a", "x")]));
        let got = run(
            "  - regex: 'a|b'\n    action: labelkeep\n",
            &[("a", "1"), ("b", "2"), ("c", "3")],
        );
        assert_eq!(got, l(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn case_changes() {
        let got = run(
            "  - source_labels: [a]\n    target_label: lo\n    action: lowercase\n  - source_labels: [a]\n    target_label: up\n    action: uppercase\n",
            &[("a", "AbC")],
        );
        assert_eq!(got, l(&[("a", "AbC"), ("lo", "abc"), ("up", "ABC")]));
    }

    #[test]
    fn invalid_combinations_are_refused() {
        let bad = [
            RelabelConfig {
                action: Action::HashMod,
                target_label: "x".into(),
                ..Default::default()
            },
            RelabelConfig {
                action: Action::Replace,
                ..Default::default()
            },
            RelabelConfig {
                action: Action::LabelDrop,
                source_labels: vec!["a".into()],
                ..Default::default()
            },
            RelabelConfig {
                action: Action::KeepEqual,
                target_label: "x".into(),
                regex: RelabelRegex::new("a").unwrap(),
                ..Default::default()
            },
            RelabelConfig {
                action: Action::Lowercase,
                target_label: "0bad".into(),
                ..Default::default()
            },
        ];
        for r in bad {
            assert!(r.validate().is_err(), "{r:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn relabelling_never_panics_and_keeps_names_valid(
            names in proptest::collection::vec("[a-z_][a-z0-9_]{0,6}", 1..6),
            values in proptest::collection::vec(".{0,8}", 1..6),
            re in "[a-z.*()|]{0,8}",
            repl in "[a-z$0-9{}]{0,8}",
            target in "[a-z$0-9{}_]{1,6}",
        ) {
            let Ok(regex) = RelabelRegex::new(&re) else { return Ok(()); };
            let mut lb = LabelsBuilder::new();
            for (n, v) in names.iter().zip(values.iter()) {
                lb.set(n.as_str(), v.as_str());
            }
            for action in [Action::Replace, Action::LabelMap, Action::Keep, Action::HashMod] {
                let r = RelabelConfig {
                    source_labels: if action == Action::LabelMap { vec![] } else { names.clone() },
                    target_label: target.clone(),
                    regex: regex.clone(),
                    replacement: repl.clone(),
                    modulus: 7,
                    action,
                    ..Default::default()
                };
                let mut b = lb.clone();
                r.apply(&mut b);
                for (n, _) in b.iter() {
                    // labelmap may write any name Prometheus would; replace
                    // only valid ones.
                    if action == Action::Replace {
                        proptest::prop_assert!(tiermon_model::is_valid_label_name(n), "{n}");
                    }
                }
            }
        }
    }
}
