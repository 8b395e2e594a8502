//! Label matchers with Prometheus' semantics.

use std::fmt;

use regex::Regex;

/// How a [`Matcher`] compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        })
    }
}

/// A matcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    /// The regular expression does not compile.
    #[error("invalid regular expression {pattern:?} for label {label:?}: {source}")]
    Regex {
        /// Label the matcher applies to.
        label: String,
        /// The pattern as given.
        pattern: String,
        /// What the regex compiler said.
        #[source]
        source: Box<regex::Error>,
    },
}

/// Selects series by one label. A series without the label is matched as if
/// the label's value were the empty string, so `{a=""}` selects series that
/// lack `a` and `{a!=""}` those that have it.
#[derive(Clone)]
pub struct Matcher {
    name: String,
    op: MatchOp,
    value: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Literal,
    /// A regex that is a plain alternation of literals: `a|b|c`.
    Set(Vec<String>),
    Regex(Regex),
}

impl Matcher {
    /// A matcher `name op value`. Regular expressions are fully anchored
    /// (`^(?s:value)$`), as in Prometheus.
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let kind = match op {
            MatchOp::Equal | MatchOp::NotEqual => Kind::Literal,
            MatchOp::Regex | MatchOp::NotRegex => match literal_alternatives(&value) {
                Some(set) => Kind::Set(set),
                None => Kind::Regex(Regex::new(&format!("^(?s:{value})$")).map_err(|e| {
                    MatcherError::Regex {
                        label: name.clone(),
                        pattern: value.clone(),
                        source: Box::new(e),
                    }
                })?),
            },
        };
        Ok(Self {
            name,
            op,
            value,
            kind,
        })
    }

    /// The label this matcher applies to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The comparison.
    pub fn op(&self) -> MatchOp {
        self.op
    }

    /// The value or pattern as given.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the label value `v` (empty when the label is absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        let positive = match &self.kind {
            Kind::Literal => v == self.value,
            Kind::Set(set) => set.iter().any(|s| s == v),
            Kind::Regex(re) => re.is_match(v),
        };
        match self.op {
            MatchOp::Equal | MatchOp::Regex => positive,
            MatchOp::NotEqual | MatchOp::NotRegex => !positive,
        }
    }

    /// Whether this matcher selects series that lack the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For `=` and for `=~` over literal alternatives, the exact values that
    /// match; storage uses them to look postings up directly.
    pub fn set_matches(&self) -> Option<Vec<&str>> {
        match (&self.kind, self.op) {
            (Kind::Literal, MatchOp::Equal) => Some(vec![self.value.as_str()]),
            (Kind::Set(s), MatchOp::Regex) => Some(s.iter().map(String::as_str).collect()),
            _ => None,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op, self.value)
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

/// `a|b|c` where every alternative is free of regex syntax.
fn literal_alternatives(pattern: &str) -> Option<Vec<String>> {
    let alts: Vec<&str> = pattern.split('|').collect();
    if alts.iter().all(|a| regex::escape(a) == *a) {
        Some(alts.into_iter().map(str::to_owned).collect())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(op: MatchOp, pattern: &str, yes: &[&str], no: &[&str]) {
        let m = Matcher::new(op, "l", pattern).unwrap();
        for v in yes {
            assert!(m.matches(v), "{m} should match {v:?}");
        }
        for v in no {
            assert!(!m.matches(v), "{m} should not match {v:?}");
        }
    }

    #[test]
    fn equality() {
        check(MatchOp::Equal, "a", &["a"], &["", "ab"]);
        check(MatchOp::NotEqual, "a", &["", "ab"], &["a"]);
        check(MatchOp::Equal, "", &[""], &["a"]);
    }

    #[test]
    fn regexes_are_fully_anchored() {
        check(MatchOp::Regex, "a.*", &["a", "abc"], &["ba", ""]);
        check(MatchOp::Regex, "b", &["b"], &["abc", "ab", "bc"]);
        check(MatchOp::Regex, "a|b", &["a", "b"], &["ab", ""]);
        check(
            MatchOp::Regex,
            "foo|ba.",
            &["foo", "bar"],
            &["foobar", "fo"],
        );
        check(MatchOp::Regex, ".*", &["", "x"], &[]);
        check(MatchOp::Regex, ".+", &["x"], &[""]);
        check(MatchOp::NotRegex, "a.*", &["", "ba"], &["a", "abc"]);
        // `.` matches newlines, as in Prometheus.
        check(MatchOp::Regex, "a.b", &["a\nb"], &[]);
    }

    #[test]
    fn set_matches_for_literal_alternatives() {
        let m = Matcher::new(MatchOp::Regex, "job", "node|api").unwrap();
        assert_eq!(m.set_matches(), Some(vec!["node", "api"]));
        let m = Matcher::new(MatchOp::Regex, "job", "no.e").unwrap();
        assert_eq!(m.set_matches(), None);
    }

    #[test]
    fn bad_regex_names_label_and_pattern() {
        let err = Matcher::new(MatchOp::Regex, "job", "a(")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a(\"") && err.contains("\"job\""), "{err}");
    }
}
