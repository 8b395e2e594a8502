//! Prometheus' rule-file format: `groups` of recording and alerting rules.
//!
//! [`RuleFile::parse`] reads the YAML, refuses unknown keys, and checks
//! what `promtool check rules` checks — every expression parses, every
//! record name and label name is valid, every template parses and renders
//! — collecting all problems, each naming its group, rule and key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::template;

/// A rule file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleFile {
    /// The groups, each evaluated on its own schedule.
    pub groups: Vec<GroupSpec>,
}

/// A group of rules evaluated together, in order, at one interval.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSpec {
    /// Unique within the file.
    pub name: String,
    /// How often the group runs; the manager's default when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// How far behind the evaluation time queries look (for data that
    /// arrives late, e.g. from a tier below).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_offset: Option<Dur>,
    /// Most series a rule may produce (0: no limit); a rule over it fails
    /// that evaluation, as in Prometheus.
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
    /// Labels added to every rule's output.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The rules.
    pub rules: Vec<RuleSpec>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A recording rule (`record`) or an alerting rule (`alert`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSpec {
    /// Name of the series a recording rule writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Name of the alert an alerting rule raises.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// The PromQL expression.
    pub expr: String,
    /// How long an alert's condition must hold before it fires.
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Dur>,
    /// How long an alert keeps firing after its condition cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<Dur>,
    /// Labels added (alerts: templated).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Alert annotations (templated).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// tiermon's extension: learn the expression's normal behaviour (a
    /// rolling, optionally seasonal, mean and deviation) and alert when it
    /// departs from it. See [`BaselineSpec`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSpec>,
}

/// A baseline: the rule's expression is recorded as `record`, with
/// `record:baseline_mean`, `record:baseline_stddev`, `record:baseline_upper`
/// and `record:baseline_lower` (the bands, `sigmas` deviations away) —
/// ordinary recording rules, so the bands can be graphed. An alerting
/// rule with a baseline fires when `|x − mean| / stddev > sigmas` (its
/// `$value` is that z-score) and, with `min_delta`, `|x − mean| >
/// min_delta` too.
///
/// Without `season`, mean and deviation are over the last `window`. With
/// `season` (e.g. `1d`, `1w`), they are the averages, over the last
/// `seasons` seasons, of the mean and deviation over the `window` that
/// ended at the same time of the season: a Monday-morning peak is
/// compared with earlier Monday mornings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineSpec {
    /// Name the expression is recorded under (for an alerting rule; a
    /// recording rule's own name otherwise).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub record: String,
    /// The rolling window (default 1h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    /// The season's length; none: not seasonal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub season: Option<Dur>,
    /// How many past seasons are averaged (default 3).
    #[serde(skip_serializing_if = "is_zero")]
    pub seasons: u64,
    /// Width of the bands in standard deviations (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigmas: Option<f64>,
    /// Least absolute departure that alerts (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_delta: Option<f64>,
}

impl BaselineSpec {
    fn window(&self) -> Duration {
        self.window
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(3600))
    }
    fn seasons(&self) -> u64 {
        if self.seasons == 0 { 3 } else { self.seasons }
    }
    fn sigmas(&self) -> f64 {
        self.sigmas.unwrap_or(3.0)
    }
}

/// A duration written the Prometheus way (`5m`, `1h30m`).
pub use tiermon_config::PromDuration as Dur;

/// A duration as Prometheus prints it (`1h30m`, `1w`, `0s`).
pub fn format_duration(d: Duration) -> String {
    Dur(d).to_string()
}

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `groups[0] "node".rules[2] "HostDown".expr`.
    pub at: String,
    /// What.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Why a rule file was refused: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", source_prefix(.file), .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct FileError {
    /// The file, when read from one.
    pub file: Option<String>,
    /// The problems.
    pub problems: Vec<Problem>,
}

fn source_prefix(s: &Option<String>) -> String {
    s.as_ref().map(|s| format!("{s}: ")).unwrap_or_default()
}

impl FileError {
    fn one(at: impl Into<String>, message: impl Into<String>) -> Self {
        FileError {
            file: None,
            problems: vec![Problem {
                at: at.into(),
                message: message.into(),
            }],
        }
    }
}

impl RuleFile {
    /// Reads and checks a rule file.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            file: Some(name.clone()),
            ..FileError::one("<file>", e.to_string())
        })?;
        Self::parse(&text).map_err(|e| FileError {
            file: Some(name),
            ..e
        })
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> Result<Self, FileError> {
        // An empty file is an empty rule file, as for promtool.
        if text.trim().is_empty() {
            return Ok(RuleFile::default());
        }
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| FileError::one("<file>", e.to_string()))?;
        let file: RuleFile = tiermon_config::deserialize(raw).map_err(|e| match e {
            tiermon_config::Error::Invalid { key, message } => FileError::one(key, message),
            other => FileError::one("<file>", other.to_string()),
        })?;
        let problems = file.check();
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(FileError {
                file: None,
                problems,
            })
        }
    }

    /// Every problem `promtool check rules` would report.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut names = BTreeMap::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let gat = format!("groups[{gi}] {:?}", g.name);
            let mut bad = |at: String, m: String| out.push(Problem { at, message: m });
            if g.name.is_empty() {
                bad(format!("groups[{gi}].name"), "a group needs a name".into());
            } else if let Some(prev) = names.insert(g.name.clone(), gi) {
                bad(
                    format!("{gat}.name"),
                    format!("repeats the name of groups[{prev}]"),
                );
            }
            if let Some(Dur(d)) = g.interval
                && d.is_zero()
            {
                bad(format!("{gat}.interval"), "must be more than 0s".into());
            }
            for name in g.labels.keys() {
                if !tiermon_model::is_valid_label_name(name) {
                    bad(
                        format!("{gat}.labels.{name}"),
                        "is not a valid label name".into(),
                    );
                }
            }
            for (ri, r) in g.rules.iter().enumerate() {
                let what = r.alert.as_deref().or(r.record.as_deref()).unwrap_or("");
                let at = format!("{gat}.rules[{ri}] {what:?}");
                for p in r.check() {
                    bad(format!("{at}.{}", p.at), p.message);
                }
            }
        }
        out
    }
}

impl GroupSpec {
    /// Parses and checks one group in YAML (the body the ruler API takes).
    pub fn parse(text: &str) -> Result<Self, FileError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| FileError::one("<group>", e.to_string()))?;
        let g: GroupSpec = tiermon_config::deserialize(raw).map_err(|e| match e {
            tiermon_config::Error::Invalid { key, message } => FileError::one(key, message),
            other => FileError::one("<group>", other.to_string()),
        })?;
        let problems = RuleFile {
            groups: vec![g.clone()],
        }
        .check();
        if problems.is_empty() {
            Ok(g)
        } else {
            Err(FileError {
                file: None,
                problems,
            })
        }
    }
}

impl RuleSpec {
    /// The plain rules this rule stands for: itself, or for a baseline the
    /// recording rules of the series and its bands, then the alert.
    pub fn expand(&self) -> Vec<RuleSpec> {
        let Some(b) = &self.baseline else {
            return vec![self.clone()];
        };
        let name = if b.record.is_empty() {
            self.record.clone().unwrap_or_default()
        } else {
            b.record.clone()
        };
        let w = format_duration(b.window());
        let (mean, stddev) = match b.season {
            None => (
                format!("avg_over_time({name}[{w}])"),
                format!("stddev_over_time({name}[{w}])"),
            ),
            Some(Dur(season)) => {
                let n = b.seasons();
                let over = |f: &str| {
                    let terms: Vec<String> = (1..=n)
                        .map(|k| {
                            format!(
                                "{f}({name}[{w}] offset {})",
                                format_duration(season * k as u32)
                            )
                        })
                        .collect();
                    format!("({}) / {n}", terms.join(" + "))
                };
                (over("avg_over_time"), over("stddev_over_time"))
            }
        };
        let rec = |record: String, expr: String| RuleSpec {
            record: Some(record),
            expr,
            labels: if self.alert.is_some() {
                BTreeMap::new()
            } else {
                self.labels.clone()
            },
            ..RuleSpec::default()
        };
        let sig = tiermon_promql::format_float(b.sigmas());
        let mut out = vec![
            rec(name.clone(), self.expr.clone()),
            rec(format!("{name}:baseline_mean"), mean),
            rec(format!("{name}:baseline_stddev"), stddev),
            rec(
                format!("{name}:baseline_upper"),
                format!("{name}:baseline_mean + {sig} * {name}:baseline_stddev"),
            ),
            rec(
                format!("{name}:baseline_lower"),
                format!("{name}:baseline_mean - {sig} * {name}:baseline_stddev"),
            ),
        ];
        if let Some(alert) = &self.alert {
            let mut expr =
                format!("abs({name} - {name}:baseline_mean) / {name}:baseline_stddev > {sig}");
            if let Some(d) = b.min_delta {
                expr = format!(
                    "({expr}) and abs({name} - {name}:baseline_mean) > {}",
                    tiermon_promql::format_float(d)
                );
            }
            out.push(RuleSpec {
                alert: Some(alert.clone()),
                expr,
                baseline: None,
                ..self.clone()
            });
        }
        out
    }

    /// Whether this is an alerting rule.
    pub fn is_alert(&self) -> bool {
        self.alert.is_some()
    }

    /// The rule's name: its alert or its record.
    pub fn name(&self) -> &str {
        self.alert
            .as_deref()
            .or(self.record.as_deref())
            .unwrap_or("")
    }

    /// The rule's problems, each `at` a key of the rule.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |at: &str, m: String| {
            out.push(Problem {
                at: at.into(),
                message: m,
            })
        };
        match (&self.record, &self.alert) {
            (Some(_), Some(_)) => bad("record", "a rule has either `record` or `alert`".into()),
            (None, None) => bad("alert", "a rule needs `record` or `alert`".into()),
            (Some(r), None) => {
                if !tiermon_model::is_valid_metric_name(r) {
                    bad("record", format!("{r:?} is not a valid metric name"));
                }
                if !self.annotations.is_empty() {
                    bad("annotations", "only alerting rules have annotations".into());
                }
                if self.for_.is_some() {
                    bad("for", "only alerting rules have `for`".into());
                }
                if self.keep_firing_for.is_some() {
                    bad("keep_firing_for", "only alerting rules have it".into());
                }
            }
            (None, Some(a)) => {
                if a.is_empty() {
                    bad("alert", "an alert needs a name".into());
                }
            }
        }
        if let Some(b) = &self.baseline {
            if self.alert.is_some() && !tiermon_model::is_valid_metric_name(&b.record) {
                bad(
                    "baseline.record",
                    format!(
                        "{:?} is not a valid metric name (an alert's baseline needs one)",
                        b.record
                    ),
                );
            }
            if let Some(r) = &self.record
                && !b.record.is_empty()
                && &b.record != r
            {
                bad(
                    "baseline.record",
                    "a recording rule's baseline is recorded under the rule's own name".into(),
                );
            }
            if b.window().is_zero() {
                bad("baseline.window", "must be more than 0s".into());
            }
            if let Some(Dur(s)) = b.season
                && s < b.window()
            {
                bad("baseline.season", "must be at least the window".into());
            }
            if !(b.sigmas() > 0.0 && b.sigmas().is_finite()) {
                bad("baseline.sigmas", "must be a positive number".into());
            }
        }
        if self.expr.trim().is_empty() {
            bad("expr", "a rule needs an expression".into());
        } else if let Err(e) = promql_parser::parser::parse(&self.expr) {
            bad("expr", format!("does not parse: {e}"));
        } else if self.baseline.is_some() {
            for r in self.expand() {
                if let Err(e) = promql_parser::parser::parse(&r.expr) {
                    bad(
                        "baseline",
                        format!("the rule {:?} it makes does not parse: {e}", r.name()),
                    );
                }
            }
        }
        for (name, value) in &self.labels {
            if !tiermon_model::is_valid_label_name(name) || name == "__name__" {
                bad(
                    &format!("labels.{name}"),
                    "is not a valid label name".into(),
                );
            }
            if self.is_alert()
                && let Err(e) = template::check(value)
            {
                bad(&format!("labels.{name}"), e);
            }
        }
        for (name, value) in &self.annotations {
            if !tiermon_model::is_valid_label_name(name) {
                bad(
                    &format!("annotations.{name}"),
                    "is not a valid annotation name".into(),
                );
            }
            if let Err(e) = template::check(value) {
                bad(&format!("annotations.{name}"), e);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prometheus_rule_file_loads() {
        let f = RuleFile::parse(
            r#"
groups:
  - name: node
    interval: 15s
    rules:
      - record: instance:node_cpu:rate5m
        expr: sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))
      - alert: HostDown
        expr: up == 0
        for: 1m
        keep_firing_for: 30s
        labels:
          severity: critical
          Team: SRE
        annotations:
          summary: "{{ $labels.instance }} is down"
          description: 'value {{ $value | humanize }} for {{ .Labels.job }}'
"#,
        )
        .unwrap();
        let g = &f.groups[0];
        assert_eq!(g.interval, Some(Dur(Duration::from_secs(15))));
        assert_eq!(g.rules.len(), 2);
        let a = &g.rules[1];
        assert_eq!(a.name(), "HostDown");
        assert_eq!(a.for_, Some(Dur(Duration::from_secs(60))));
        // Keys keep their case.
        assert_eq!(a.labels["Team"], "SRE");
    }

    #[test]
    fn every_problem_is_named_with_its_rule_and_key() {
        let e = RuleFile::parse(
            r#"
groups:
  - name: g
    rules:
      - alert: Broken
        expr: sum(rate(x[5m])
        annotations:
          summary: "{{ $labels.instance "
      - record: "bad name"
        expr: up
      - record: ok
        alert: both
        expr: up
  - name: g
    rules: []
"#,
        )
        .unwrap_err();
        let text = e.to_string();
        for want in [
            r#"groups[0] "g".rules[0] "Broken".expr: does not parse"#,
            r#"groups[0] "g".rules[0] "Broken".annotations.summary"#,
            r#"groups[0] "g".rules[1] "bad name".record: "bad name" is not a valid metric name"#,
            r#"groups[0] "g".rules[2] "both".record: a rule has either"#,
            r#"groups[1] "g".name: repeats the name of groups[0]"#,
        ] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused_by_path() {
        let e = RuleFile::parse(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    fore: 5m\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("groups[0].rules[0]"), "{e}");
        assert!(e.to_string().contains("fore"), "{e}");
        let e = RuleFile::parse("groups:\n- name: g\n  interval: soon\n  rules: []\n").unwrap_err();
        assert!(e.to_string().contains("groups[0].interval"), "{e}");
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn a_baseline_expands_into_recorded_bands_and_an_alert() {
        let f = RuleFile::parse(
            r#"
groups:
  - name: b
    rules:
      - alert: RequestRateAnomalous
        expr: sum by (instance) (rate(http_requests_total[5m]))
        for: 10m
        labels: {severity: warning}
        baseline:
          record: instance:requests:rate5m
          window: 1h
          season: 1w
          seasons: 2
          sigmas: 2.5
          min_delta: 10
"#,
        )
        .unwrap();
        let rules = f.groups[0].rules[0].expand();
        let names: Vec<&str> = rules.iter().map(RuleSpec::name).collect();
        assert_eq!(
            names,
            [
                "instance:requests:rate5m",
                "instance:requests:rate5m:baseline_mean",
                "instance:requests:rate5m:baseline_stddev",
                "instance:requests:rate5m:baseline_upper",
                "instance:requests:rate5m:baseline_lower",
                "RequestRateAnomalous",
            ]
        );
        assert_eq!(
            rules[1].expr,
            "(avg_over_time(instance:requests:rate5m[1h] offset 1w) + avg_over_time(instance:requests:rate5m[1h] offset 2w)) / 2"
        );
        assert!(rules[5].expr.contains("> 2.5"), "{}", rules[5].expr);
        assert!(rules[5].expr.contains("> 10"), "{}", rules[5].expr);
        assert_eq!(rules[5].labels["severity"], "warning");
        assert!(
            rules[0].labels.is_empty(),
            "the recorded series carry no alert labels"
        );
        for r in &rules {
            assert!(promql_parser::parser::parse(&r.expr).is_ok(), "{}", r.expr);
        }
        let e = RuleFile::parse("groups:\n- name: b\n  rules:\n  - alert: A\n    expr: up\n    baseline: {window: 0s}\n").unwrap_err();
        let t = e.to_string();
        assert!(t.contains("baseline.record"), "{t}");
        assert!(t.contains("baseline.window"), "{t}");
    }

    #[test]
    fn files_round_trip_through_yaml_serialisation() {
        let f = RuleFile::parse(
            "groups:\n- name: g\n  interval: 1m30s\n  rules:\n  - alert: A\n    expr: up == 0\n    for: 5m\n",
        )
        .unwrap();
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("\"1m30s\""), "{json}");
        let back: RuleFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
    }
}
