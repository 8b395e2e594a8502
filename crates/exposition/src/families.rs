//! Whole-document parsing into metric families, with the rules that span
//! lines: metadata placement, grouping, type-specific sample names and
//! labels, histogram structure, and name clashes.

use std::collections::{HashMap, HashSet};

use crate::parser::{Entry, Parser, SampleRef};
use crate::{Format, MetricType, ParseError};

/// A metric's identity within its family: sorted labels.
type GroupKey = Vec<(String, String)>;

/// A metric family: its metadata and its samples, in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// Family name, e.g. `http_requests` (OpenMetrics) or
    /// `http_requests_total` (Prometheus text).
    pub name: String,
    /// Help text, unescaped.
    pub help: Option<String>,
    /// Unit (OpenMetrics only).
    pub unit: Option<String>,
    /// Declared type; `Unknown` when none was declared.
    pub kind: MetricType,
    /// The samples of the family.
    pub samples: Vec<FamilySample>,
}

/// One sample of a family.
#[derive(Debug, Clone)]
pub struct FamilySample {
    /// Full sample name, suffix included (`a_bucket`, `a_total`…).
    pub name: String,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// Timestamp in milliseconds.
    pub timestamp: Option<i64>,
    /// OpenMetrics exemplar.
    pub exemplar: Option<Exemplar>,
}

/// An OpenMetrics exemplar.
#[derive(Debug, Clone)]
pub struct Exemplar {
    /// Exemplar labels, e.g. a trace id.
    pub labels: Vec<(String, String)>,
    /// The observed value.
    pub value: f64,
    /// When it was observed, in milliseconds.
    pub timestamp: Option<i64>,
}

fn same_value(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Values compare bit-exactly, except that any NaN equals any NaN (the text
/// formats have one NaN).
impl PartialEq for FamilySample {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.labels == o.labels
            && same_value(self.value, o.value)
            && self.timestamp == o.timestamp
            && self.exemplar == o.exemplar
    }
}

impl PartialEq for Exemplar {
    fn eq(&self, o: &Self) -> bool {
        self.labels == o.labels && same_value(self.value, o.value) && self.timestamp == o.timestamp
    }
}

/// Sample-name suffixes each type allows, the empty suffix included where
/// the bare name is a sample.
fn suffixes(kind: MetricType, format: Format) -> &'static [&'static str] {
    match (format, kind) {
        (Format::OpenMetrics, MetricType::Counter) => &["_total", "_created"],
        (Format::OpenMetrics, MetricType::Summary) => &["", "_count", "_sum", "_created"],
        (Format::OpenMetrics, MetricType::Histogram) => &["_count", "_sum", "_bucket", "_created"],
        (Format::OpenMetrics, MetricType::GaugeHistogram) => &["_gcount", "_gsum", "_bucket"],
        (Format::OpenMetrics, MetricType::Info) => &["_info"],
        (Format::Prometheus, MetricType::Summary) => &["", "_count", "_sum"],
        (Format::Prometheus, MetricType::Histogram) => &["_count", "_sum", "_bucket"],
        _ => &[""],
    }
}

/// Parses a whole document into families, checking every rule of the
/// format. This is what `tiermon check metrics` runs.
pub fn parse_families(src: &[u8], format: Format) -> Result<Vec<MetricFamily>, ParseError> {
    let mut parser = Parser::from_bytes(src, format)?;
    let mut b = Builder {
        format,
        ..Builder::default()
    };
    while let Some(entry) = parser.next_entry()? {
        let line = parser.line();
        let at = |message: String| ParseError {
            line,
            column: 1,
            message,
        };
        match entry {
            Entry::Comment => {}
            Entry::Help { name, help } => {
                let f = b.family_for_metadata(name, line, false).map_err(at)?;
                if f.help.is_some() {
                    return Err(at(format!("second HELP line for {name}")));
                }
                f.help = Some(help.into_owned());
            }
            Entry::Type { name, kind } => {
                let f = b.family_for_metadata(name, line, true).map_err(at)?;
                if f.typed {
                    return Err(at(format!("second TYPE line for {name}")));
                }
                f.typed = true;
                f.fam.kind = kind;
            }
            Entry::Unit { name, unit } => {
                let f = b.family_for_metadata(name, line, false).map_err(at)?;
                if f.fam.unit.is_some() {
                    return Err(at(format!("second UNIT line for {name}")));
                }
                f.fam.unit = Some(unit.to_owned());
            }
            Entry::Sample(s) => b.sample(&s, line).map_err(at)?,
        }
    }
    b.finish_current()?;
    let mut out = b.done;
    if format == Format::Prometheus {
        out.extend(b.prom_open.into_values().map(|(i, f)| (i, f.fam)));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

/// A family being read.
#[derive(Debug, Clone)]
struct Open {
    fam: MetricFamily,
    typed: bool,
    lines: Vec<usize>,
    first_line: usize,
    // Grouping (OpenMetrics): the current group key, the groups seen, and
    // the current group's timestamp.
    group: Option<Vec<(String, String)>>,
    seen_groups: HashSet<Vec<(String, String)>>,
    group_ts: Option<i64>,
    /// Series of the current group at the current timestamp.
    group_series: HashSet<(String, Vec<(String, String)>)>,
}

impl std::ops::Deref for Open {
    type Target = MetricFamily;
    fn deref(&self) -> &MetricFamily {
        &self.fam
    }
}

impl Open {
    fn new(name: &str, kind: MetricType, line: usize) -> Self {
        Self {
            fam: MetricFamily {
                name: name.to_owned(),
                help: None,
                unit: None,
                kind,
                samples: Vec::new(),
            },
            typed: false,
            lines: Vec::new(),
            first_line: line,
            group: None,
            seen_groups: HashSet::new(),
            group_ts: None,
            group_series: HashSet::new(),
        }
    }

    fn allows(&self, sample: &str, format: Format) -> bool {
        sample
            .strip_prefix(self.fam.name.as_str())
            .is_some_and(|suffix| suffixes(self.fam.kind, format).contains(&suffix))
    }
}

impl std::ops::DerefMut for Open {
    fn deref_mut(&mut self) -> &mut MetricFamily {
        &mut self.fam
    }
}

#[derive(Debug, Default)]
struct Builder {
    format: Format,
    current: Option<Open>,
    /// Finished families with the index they were opened at.
    done: Vec<(usize, MetricFamily)>,
    /// Sample and family names taken, for OpenMetrics' clash rule.
    taken: HashSet<String>,
    /// Prometheus format: families stay open, since samples of one family
    /// need not be contiguous.
    prom_open: HashMap<String, (usize, Open)>,
    opened: usize,
}

impl Builder {
    fn family_for_metadata(
        &mut self,
        name: &str,
        line: usize,
        is_type: bool,
    ) -> Result<&mut Open, String> {
        match self.format {
            Format::OpenMetrics => {
                let same = self.current.as_ref().is_some_and(|c| c.fam.name == name);
                if same {
                    let c = self.current.as_mut().expect("checked above");
                    if !c.samples.is_empty() {
                        return Err(format!("metadata for {name} after its samples"));
                    }
                } else {
                    self.finish_current().map_err(|e| e.message)?;
                    self.current = Some(Open::new(name, MetricType::Unknown, line));
                    self.opened += 1;
                }
                Ok(self.current.as_mut().expect("set above"))
            }
            Format::Prometheus => {
                let opened = &mut self.opened;
                let (_, f) = self.prom_open.entry(name.to_owned()).or_insert_with(|| {
                    *opened += 1;
                    (*opened, Open::new(name, MetricType::Unknown, line))
                });
                if is_type && !f.samples.is_empty() {
                    return Err(format!("TYPE for {name} after its samples"));
                }
                Ok(f)
            }
        }
    }

    fn sample(&mut self, s: &SampleRef<'_>, line: usize) -> Result<(), String> {
        let format = self.format;
        let sample = FamilySample {
            name: s.name.to_owned(),
            labels: s
                .labels()
                .map(|(n, v)| (n.to_owned(), v.into_owned()))
                .collect(),
            value: s.value,
            timestamp: s.timestamp,
            exemplar: s.exemplar.as_ref().map(|e| Exemplar {
                labels: e
                    .labels()
                    .map(|(n, v)| (n.to_owned(), v.into_owned()))
                    .collect(),
                value: e.value,
                timestamp: e.timestamp,
            }),
        };
        let fam = match format {
            Format::OpenMetrics => {
                if !self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.allows(s.name, format))
                {
                    self.finish_current().map_err(|e| e.message)?;
                    self.current = Some(Open::new(s.name, MetricType::Unknown, line));
                    self.opened += 1;
                }
                self.current.as_mut().expect("set above")
            }
            Format::Prometheus => {
                let owner = prometheus_owner(&self.prom_open, s.name);
                let opened = &mut self.opened;
                let (_, f) = self.prom_open.entry(owner).or_insert_with(|| {
                    *opened += 1;
                    (*opened, Open::new(s.name, MetricType::Unknown, line))
                });
                f
            }
        };
        if check_sample(fam, &sample, format)? {
            fam.lines.push(line);
            fam.fam.samples.push(sample);
        }
        Ok(())
    }

    fn finish_current(&mut self) -> Result<(), ParseError> {
        let Some(f) = self.current.take() else {
            return Ok(());
        };
        let err = |line: usize, message: String| ParseError {
            line,
            column: 1,
            message,
        };
        let name = &f.fam.name;
        let mut names: Vec<&str> = suffixes(f.fam.kind, self.format).to_vec();
        if !names.contains(&"") {
            names.push("");
        }
        for suffix in names {
            let full = format!("{name}{suffix}");
            if !self.taken.insert(full.clone()) {
                return Err(err(
                    f.first_line,
                    format!("family {name} clashes with an earlier use of the name {full}"),
                ));
            }
        }
        if let Some(unit) = f.fam.unit.as_deref().filter(|u| !u.is_empty()) {
            if !name.ends_with(&format!("_{unit}")) {
                return Err(err(
                    f.first_line,
                    format!("metric name {name} does not end with its unit _{unit}"),
                ));
            }
            if matches!(f.fam.kind, MetricType::Info | MetricType::StateSet) {
                return Err(err(
                    f.first_line,
                    format!("{} {name} cannot have a unit", f.fam.kind),
                ));
            }
        }
        if matches!(
            f.fam.kind,
            MetricType::Histogram | MetricType::GaugeHistogram
        ) {
            check_histogram(&f)?;
        }
        let idx = self.opened;
        self.done.push((idx, f.fam));
        Ok(())
    }
}

/// Prometheus format: the family a sample belongs to — a declared
/// histogram or summary owns its `_bucket`, `_sum`, `_count` samples.
fn prometheus_owner(open: &HashMap<String, (usize, Open)>, sample: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && let Some((_, f)) = open.get(base)
            && f.allows(sample, Format::Prometheus)
        {
            return base.to_owned();
        }
    }
    sample.to_owned()
}

fn label<'a>(s: &'a FamilySample, name: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Checks one sample against its family; `Ok(false)` for an exact repeat
/// of a series at the same timestamp within a metric, which OpenMetrics
/// parsers drop (the first one wins).
fn check_sample(f: &mut Open, s: &FamilySample, format: Format) -> Result<bool, String> {
    let kind = f.fam.kind;
    let name = f.fam.name.clone();
    let suffix = &s.name[name.len().min(s.name.len())..];
    let is_hist = matches!(kind, MetricType::Histogram | MetricType::GaugeHistogram);
    if is_hist && suffix == "_bucket" {
        let le = label(s, "le").ok_or_else(|| format!("{} needs an \"le\" label", s.name))?;
        let b = crate::number::parse_value(le.as_bytes()).filter(|b| !b.is_nan());
        if b.is_none()
            || (format == Format::OpenMetrics && b == Some(f64::INFINITY) && le != "+Inf")
        {
            return Err(format!(
                "invalid le label {le:?} on {}: expected a number, with +Inf written as \"+Inf\"",
                s.name
            ));
        }
    }
    if kind == MetricType::Summary && suffix.is_empty() {
        let q = label(s, "quantile")
            .ok_or_else(|| format!("summary sample {} needs a \"quantile\" label", s.name))?;
        match crate::number::parse_value(q.as_bytes()) {
            Some(v) if format == Format::Prometheus && !v.is_nan() => {}
            Some(v) if (0.0..=1.0).contains(&v) => {}
            _ => {
                return Err(format!(
                    "invalid quantile label {q:?} on {}: expected a number between 0 and 1",
                    s.name
                ));
            }
        }
    }
    if format == Format::Prometheus {
        return Ok(true);
    }
    if kind == MetricType::StateSet && label(s, &name).is_none() {
        return Err(format!(
            "stateset sample {} needs a label named {name}",
            s.name
        ));
    }
    let integral = |v: f64| v.is_finite() && v.fract() == 0.0;
    if is_hist && suffix == "_bucket" && !integral(s.value) {
        return Err(format!(
            "bucket value of {} must be an integer, found {}",
            s.name, s.value
        ));
    }
    if matches!(suffix, "_count" | "_gcount")
        && matches!(
            kind,
            MetricType::Histogram | MetricType::GaugeHistogram | MetricType::Summary
        )
        && !integral(s.value)
    {
        return Err(format!(
            "count value of {} must be an integer, found {}",
            s.name, s.value
        ));
    }
    // Grouping: the samples of one metric (labels minus le/quantile/the
    // stateset label) are contiguous, with consistent timestamps.
    let key: Vec<(String, String)> = match kind {
        MetricType::Info => Vec::new(),
        _ => {
            let drop = match (kind, suffix) {
                (MetricType::Summary, "") => Some("quantile"),
                (MetricType::StateSet, _) => Some(name.as_str()),
                (MetricType::Histogram | MetricType::GaugeHistogram, "_bucket") => Some("le"),
                _ => None,
            };
            let mut k: Vec<_> = s
                .labels
                .iter()
                .filter(|(n, _)| Some(n.as_str()) != drop)
                .cloned()
                .collect();
            k.sort();
            k
        }
    };
    if f.group.as_ref() == Some(&key) {
        if s.timestamp.is_some() != f.group_ts.is_some() {
            return Err(format!(
                "{} mixes samples with and without timestamps in one metric",
                s.name
            ));
        }
        if let (Some(prev), Some(t)) = (f.group_ts, s.timestamp)
            && t < prev
            && kind != MetricType::Info
        {
            return Err(format!(
                "timestamp of {} goes backwards within a metric",
                s.name
            ));
        }
    } else if f.seen_groups.contains(&key) {
        return Err(format!(
            "samples of {} with these labels are not contiguous (metrics must be grouped)",
            s.name
        ));
    }
    if f.group.as_ref() != Some(&key) || f.group_ts != s.timestamp {
        f.group_series.clear();
    }
    let mut labels = s.labels.clone();
    labels.sort();
    let repeat = !f.group_series.insert((s.name.clone(), labels));
    f.group_ts = s.timestamp;
    f.seen_groups.insert(key.clone());
    f.group = Some(key);

    let v = s.value;
    match kind {
        MetricType::StateSet if v != 0.0 && v != 1.0 => {
            return Err(format!(
                "stateset sample {} must be 0 or 1, found {v}",
                s.name
            ));
        }
        MetricType::Info if v != 1.0 => {
            return Err(format!("info sample {} must be 1, found {v}", s.name));
        }
        MetricType::Summary if suffix.is_empty() && v < 0.0 => {
            return Err(format!("quantile value of {} cannot be negative", s.name));
        }
        _ => {}
    }
    if matches!(
        suffix,
        "_total" | "_sum" | "_count" | "_bucket" | "_gcount" | "_gsum"
    ) && kind != MetricType::Unknown
        && kind != MetricType::Gauge
    {
        if v.is_nan() {
            return Err(format!("{} is counter-like and cannot be NaN", s.name));
        }
        if v < 0.0 && suffix != "_gsum" {
            return Err(format!(
                "{} is counter-like and cannot be negative, found {v}",
                s.name
            ));
        }
    }
    if s.exemplar.is_some()
        && !((is_hist && suffix == "_bucket")
            || (kind == MetricType::Counter && suffix == "_total"))
    {
        return Err(format!(
            "{} cannot have an exemplar: only histogram buckets and counter totals can",
            s.name
        ));
    }
    Ok(!repeat)
}

/// OpenMetrics histogram structure, per metric (group) and timestamp:
/// ordered buckets ending in +Inf, cumulative counts, `_count` equal to the
/// +Inf bucket, `_sum` and `_count` together, no `_sum` with negative
/// buckets, no negative `_gsum` without them.
fn check_histogram(f: &Open) -> Result<(), ParseError> {
    #[derive(Default)]
    struct G {
        bucket: Option<f64>,
        value: f64,
        count: Option<f64>,
        neg_buckets: bool,
        sum: bool,
        gsum: bool,
        neg_gsum: bool,
        line: usize,
    }
    let name = &f.fam.name;
    let check = |g: &G| -> Result<(), ParseError> {
        let e = |m: String| {
            Err(ParseError {
                line: g.line,
                column: 1,
                message: m,
            })
        };
        if g.bucket != Some(f64::INFINITY) {
            return e(format!("histogram {name} has no +Inf bucket"));
        }
        if g.count.is_some_and(|c| c != g.value) {
            return e(format!(
                "_count of histogram {name} differs from its +Inf bucket"
            ));
        }
        if g.sum && g.count.is_none() {
            return e(format!("histogram {name} has _sum without _count"));
        }
        if g.gsum && g.count.is_none() {
            return e(format!("gauge histogram {name} has _gsum without _gcount"));
        }
        if !(g.sum || g.gsum) && g.count.is_some() {
            return e(format!("histogram {name} has a count without a sum"));
        }
        if g.neg_buckets && g.sum {
            return e(format!(
                "histogram {name} has negative buckets, so it cannot have _sum"
            ));
        }
        if !g.neg_buckets && g.neg_gsum {
            return e(format!(
                "gauge histogram {name} has a negative _gsum but no negative buckets"
            ));
        }
        Ok(())
    };
    // (labels without le, timestamp, state) of the metric being checked.
    let mut cur: Option<(GroupKey, Option<i64>, G)> = None;
    for (s, &line) in f.fam.samples.iter().zip(&f.lines) {
        let suffix = &s.name[name.len()..];
        let mut key: Vec<_> = s
            .labels
            .iter()
            .filter(|(n, _)| !(suffix == "_bucket" && n == "le"))
            .cloned()
            .collect();
        key.sort();
        let same = cur
            .as_ref()
            .is_some_and(|(k, t, _)| *k == key && *t == s.timestamp);
        if !same {
            if let Some((_, _, g)) = &cur {
                check(g)?;
            }
            cur = Some((
                key,
                s.timestamp,
                G {
                    line,
                    ..G::default()
                },
            ));
        }
        let g = &mut cur.as_mut().expect("set above").2;
        match suffix {
            "_bucket" => {
                let le = label(s, "le")
                    .and_then(|l| crate::number::parse_value(l.as_bytes()))
                    .unwrap_or(f64::NAN);
                if le < 0.0 {
                    g.neg_buckets = true;
                }
                if g.bucket.is_some_and(|b| le <= b) {
                    return Err(ParseError {
                        line,
                        column: 1,
                        message: format!("buckets of histogram {name} are out of order"),
                    });
                }
                if s.value < g.value {
                    return Err(ParseError {
                        line,
                        column: 1,
                        message: format!("bucket counts of histogram {name} decrease"),
                    });
                }
                g.bucket = Some(le);
                g.value = s.value;
            }
            "_count" | "_gcount" => g.count = Some(s.value),
            "_sum" => g.sum = true,
            "_gsum" => {
                g.gsum = true;
                if s.value < 0.0 {
                    g.neg_gsum = true;
                }
            }
            _ => {}
        }
    }
    if let Some((_, _, g)) = &cur {
        check(g)?;
    }
    Ok(())
}
