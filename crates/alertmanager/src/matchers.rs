//! Alertmanager's label matchers: `name="value"`, `name!=value`,
//! `name=~"regex"`, `name!~"regex"`, alone or as a list in braces
//! (`{a="b", c=~"d.*"}`), with Prometheus' anchored regular expressions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tiermon_model::{MatchOp, Matcher};

/// Matchers that must all hold.
#[derive(Debug, Clone, Default)]
pub struct Matchers(pub Vec<Matcher>);

impl Matchers {
    /// Whether every matcher holds for `labels` (a missing label is empty).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|m| m.matches(labels.get(m.name()).map(String::as_str).unwrap_or("")))
    }

    /// The matchers as Alertmanager prints them: `{a="b", c=~"d"}`.
    pub fn to_text(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|m| {
                let op = match m.op() {
                    MatchOp::Equal => "=",
                    MatchOp::NotEqual => "!=",
                    MatchOp::Regex => "=~",
                    MatchOp::NotRegex => "!~",
                };
                let mut v = String::with_capacity(m.value().len() + 2);
                for c in m.value().chars() {
                    match c {
                        '\\' => v.push_str("\\\\"),
                        '"' => v.push_str("\\\""),
                        '\n' => v.push_str("\\n"),
                        '\t' => v.push_str("\\t"),
                        c => v.push(c),
                    }
                }
                format!("{}{op}\"{v}\"", m.name())
            })
            .collect();
        format!("{{{}}}", parts.join(","))
    }
}

/// Parses one matcher or a braced list of them.
pub fn parse(text: &str) -> Result<Vec<Matcher>, String> {
    let t = text.trim();
    let inner = match t.strip_prefix('{') {
        Some(rest) => rest
            .strip_suffix('}')
            .ok_or_else(|| format!("{text:?}: missing closing '}}'"))?,
        None => t,
    };
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (m, after) = one(rest).map_err(|e| format!("{text:?}: {e}"))?;
        out.push(m);
        rest = after.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("{text:?}: expected ',' before {rest:?}"));
        }
    }
    if out.is_empty() && t.strip_prefix('{').is_none() {
        return Err(format!("{text:?}: empty matcher"));
    }
    Ok(out)
}

fn one(s: &str) -> Result<(Matcher, &str), String> {
    let end = s.find(['=', '!', '~', ' ', ',']).unwrap_or(s.len());
    let name = s[..end].trim();
    let name = name.trim_matches('"');
    if name.is_empty() {
        return Err("a matcher needs a label name".into());
    }
    let rest = s[end..].trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
        (MatchOp::Regex, r)
    } else if let Some(r) = rest.strip_prefix("!~") {
        (MatchOp::NotRegex, r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        (MatchOp::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (MatchOp::Equal, r)
    } else {
        return Err(format!("expected =, !=, =~ or !~ after {name:?}"));
    };
    let rest = rest.trim_start();
    let (value, rest) = if let Some(q) = rest.strip_prefix('"') {
        let mut v = String::new();
        let mut chars = q.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, 't')) => v.push('\t'),
                    Some((_, c)) => v.push(c),
                    None => break,
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => v.push(c),
            }
        }
        let end = end.ok_or("unterminated quoted value")?;
        (v, &q[end..])
    } else {
        let end = rest.find(',').unwrap_or(rest.len());
        (rest[..end].trim().to_owned(), &rest[end..])
    };
    let m = Matcher::new(op, name, value).map_err(|e| e.to_string())?;
    Ok((m, rest))
}

/// A matcher in the v2 API's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiMatcher {
    /// Label.
    pub name: String,
    /// Value or pattern.
    pub value: String,
    /// Whether `value` is a regular expression.
    pub is_regex: bool,
    /// Whether it must (true) or must not (false) match.
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

impl ApiMatcher {
    /// The matcher.
    pub fn to_matcher(&self) -> Result<Matcher, String> {
        let op = match (self.is_regex, self.is_equal) {
            (false, true) => MatchOp::Equal,
            (false, false) => MatchOp::NotEqual,
            (true, true) => MatchOp::Regex,
            (true, false) => MatchOp::NotRegex,
        };
        Matcher::new(op, self.name.clone(), self.value.clone()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn alertmanager_matcher_syntax() {
        let m = Matchers(parse(r#"{severity="critical", alertname=~"Host.*",team!=web}"#).unwrap());
        assert_eq!(m.0.len(), 3);
        assert!(m.matches(&labels(&[
            ("severity", "critical"),
            ("alertname", "HostDown")
        ])));
        assert!(!m.matches(&labels(&[
            ("severity", "critical"),
            ("alertname", "XHostDown")
        ])));
        assert!(!m.matches(&labels(&[
            ("severity", "critical"),
            ("alertname", "HostDown"),
            ("team", "web")
        ])));
        let one = parse("severity = warning").unwrap();
        assert_eq!(one[0].value(), "warning");
        let q = parse(r#"msg="a \"quoted\", value""#).unwrap();
        assert_eq!(q[0].value(), r#"a "quoted", value"#);
        assert_eq!(Matchers(parse(r#"a="b""#).unwrap()).to_text(), r#"{a="b"}"#);
    }

    proptest::proptest! {
        /// What `to_text` prints parses back to the same matchers, and no
        /// input panics the parser.
        #[test]
        fn printed_matchers_parse_back(
            pairs in proptest::collection::vec(("[a-z_][a-z0-9_]{0,8}", "\\PC{0,12}", 0u8..4), 1..5),
            junk in "\\PC{0,40}",
        ) {
            let ms: Vec<Matcher> = pairs
                .iter()
                .filter_map(|(n, v, op)| {
                    let op = [MatchOp::Equal, MatchOp::NotEqual, MatchOp::Regex, MatchOp::NotRegex][*op as usize];
                    Matcher::new(op, n.clone(), v.clone()).ok()
                })
                .collect();
            let text = Matchers(ms.clone()).to_text();
            let back = parse(&text).unwrap();
            proptest::prop_assert_eq!(back.len(), ms.len());
            for (a, b) in back.iter().zip(&ms) {
                proptest::prop_assert_eq!((a.name(), a.op(), a.value()), (b.name(), b.op(), b.value()));
            }
            let _ = parse(&junk);
        }
    }

    #[test]
    fn bad_matchers_are_errors_that_quote_the_input() {
        for bad in ["", "=x", "a", "a=~\"(\"", "{a=\"b\"", "a=\"unterminated"] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) || bad.is_empty(),
                "{bad}: {e}"
            );
        }
    }
}
