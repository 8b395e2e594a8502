//! The streaming, zero-copy line parser shared by both formats.
//!
//! [`Parser`] yields one [`Entry`] per meaningful line and never allocates
//! for a sample: the series text, name and label section are slices of the
//! input, and labels are decoded only when asked for (on a scrape-cache
//! miss). It checks the grammar of each line; rules that span lines
//! (grouping, histogram structure, metadata order) are checked by
//! [`crate::parse_families`].

use std::borrow::Cow;

use crate::error::{ParseError, found};
use crate::number::{parse_millis, parse_seconds_as_millis, parse_value};
use crate::{Format, MetricType};

/// One meaningful line of an exposition document.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<'a> {
    /// `# HELP name text`; the text is unescaped.
    Help {
        /// Metric family name.
        name: &'a str,
        /// Help text with `\\`, `\n` (and in OpenMetrics `\"`) unescaped.
        help: Cow<'a, str>,
    },
    /// `# TYPE name type`.
    Type {
        /// Metric family name.
        name: &'a str,
        /// The declared type.
        kind: MetricType,
    },
    /// `# UNIT name unit` (OpenMetrics only).
    Unit {
        /// Metric family name.
        name: &'a str,
        /// The unit, possibly empty.
        unit: &'a str,
    },
    /// Any other `#` line (Prometheus format only).
    Comment,
    /// A sample line.
    Sample(SampleRef<'a>),
}

/// A sample line, borrowed from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRef<'a> {
    /// The raw series text, `name{labels}` exactly as written: the key of a
    /// scrape cache.
    pub series: &'a str,
    /// The metric name.
    pub name: &'a str,
    /// The raw text between the braces, already validated.
    pub(crate) labels: &'a str,
    /// The value.
    pub value: f64,
    /// Timestamp in milliseconds, when the line carries one.
    pub timestamp: Option<i64>,
    /// The exemplar, when the line carries one (OpenMetrics only).
    pub exemplar: Option<ExemplarRef<'a>>,
}

/// An OpenMetrics exemplar, borrowed from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct ExemplarRef<'a> {
    pub(crate) labels: &'a str,
    /// The exemplar's value.
    pub value: f64,
    /// The exemplar's timestamp in milliseconds.
    pub timestamp: Option<i64>,
}

impl<'a> SampleRef<'a> {
    /// The labels as name/value pairs in the order written, values
    /// unescaped. Allocates only for values that contain escapes.
    pub fn labels(&self) -> LabelIter<'a> {
        LabelIter {
            rest: self.labels.as_bytes(),
            src: self.labels,
        }
    }

    /// Whether the sample has no labels besides its name.
    pub fn has_labels(&self) -> bool {
        !self.labels.is_empty()
    }
}

impl<'a> ExemplarRef<'a> {
    /// The exemplar's labels, as for [`SampleRef::labels`].
    pub fn labels(&self) -> LabelIter<'a> {
        LabelIter {
            rest: self.labels.as_bytes(),
            src: self.labels,
        }
    }
}

/// Iterator over an already validated label section.
#[derive(Debug, Clone)]
pub struct LabelIter<'a> {
    rest: &'a [u8],
    src: &'a str,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        // Grammar was checked by the parser: blanks, name, blanks, '=',
        // blanks, '"', value, '"', blanks, optional ','.
        let off = |rest: &[u8]| self.src.len() - rest.len();
        let mut r = skip_blanks(self.rest);
        if r.first() == Some(&b',') {
            r = skip_blanks(&r[1..]);
        }
        if r.is_empty() {
            return None;
        }
        let n = r.iter().position(|&b| !is_label_char(b)).unwrap_or(r.len());
        let start = off(r);
        let name = &self.src[start..start + n];
        r = skip_blanks(&r[n..]);
        r = skip_blanks(&r[1..]); // '='
        let vstart = off(r) + 1;
        let (len, escaped) = quoted_len(&r[1..]).unwrap_or((r.len() - 1, false));
        let raw = &self.src[vstart..vstart + len];
        self.rest = &r[1 + len + 1..];
        let value = if escaped {
            Cow::Owned(unescape(raw, true))
        } else {
            Cow::Borrowed(raw)
        };
        Some((name, value))
    }
}

/// A pull parser over one exposition document.
#[derive(Debug)]
pub struct Parser<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    format: Format,
    eof_seen: bool,
    done: bool,
}

impl<'a> Parser<'a> {
    /// A parser over `src` in `format`.
    pub fn new(src: &'a str, format: Format) -> Self {
        Self {
            src,
            pos: 0,
            line: 0,
            format,
            eof_seen: false,
            done: false,
        }
    }

    /// A parser over raw bytes, which must be UTF-8.
    pub fn from_bytes(buf: &'a [u8], format: Format) -> Result<Self, ParseError> {
        match std::str::from_utf8(buf) {
            Ok(src) => Ok(Self::new(src, format)),
            Err(e) => {
                let valid = &buf[..e.valid_up_to()];
                let line = memchr::memchr_iter(b'\n', valid).count() + 1;
                let line_start = memchr::memrchr(b'\n', valid).map_or(0, |i| i + 1);
                let column = String::from_utf8_lossy(&valid[line_start..])
                    .chars()
                    .count()
                    + 1;
                Err(ParseError {
                    line,
                    column,
                    message: "invalid UTF-8".to_owned(),
                })
            }
        }
    }

    /// The 1-based number of the line last returned.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The next entry; `Ok(None)` at the end of a valid document. After an
    /// error the parser is finished.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>, ParseError> {
        let r = self.advance();
        if r.is_err() {
            self.done = true;
        }
        r
    }

    fn advance(&mut self) -> Result<Option<Entry<'a>>, ParseError> {
        let bytes = self.src.as_bytes();
        loop {
            if self.done {
                return Ok(None);
            }
            if self.pos >= bytes.len() {
                self.done = true;
                if self.format == Format::OpenMetrics && !self.eof_seen {
                    return Err(ParseError {
                        line: self.line + 1,
                        column: 1,
                        message: "expected \"# EOF\" at the end of an OpenMetrics document"
                            .to_owned(),
                    });
                }
                return Ok(None);
            }
            let start = self.pos;
            let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
            self.pos = end + 1;
            self.line += 1;
            let line = &self.src[start..end];
            if self.eof_seen {
                return Err(self.err(line, 0, "unexpected content after \"# EOF\"".to_owned()));
            }
            let entry = match self.format {
                Format::OpenMetrics => self.openmetrics_line(line)?,
                Format::Prometheus => self.prometheus_line(line)?,
            };
            if let Some(e) = entry {
                return Ok(Some(e));
            }
        }
    }

    fn err(&self, line: &str, byte_off: usize, message: String) -> ParseError {
        let off = byte_off.min(line.len());
        let column = line.get(..off).map_or(off, |s| s.chars().count()) + 1;
        ParseError {
            line: self.line,
            column,
            message,
        }
    }

    fn prometheus_line(&mut self, line: &'a str) -> Result<Option<Entry<'a>>, ParseError> {
        let b = line.as_bytes();
        let t = skip_blanks(b);
        if t.is_empty() {
            return Ok(None);
        }
        if t[0] == b'#' {
            let off = b.len() - t.len();
            return self.prometheus_comment(line, off + 1);
        }
        let off = b.len() - t.len();
        self.sample(line, off).map(|s| Some(Entry::Sample(s)))
    }

    /// `#` lines of the Prometheus format: HELP and TYPE, anything else is a
    /// comment. `at` points just past the `#`.
    fn prometheus_comment(
        &mut self,
        line: &'a str,
        at: usize,
    ) -> Result<Option<Entry<'a>>, ParseError> {
        let b = line.as_bytes();
        let r = skip_blanks(&b[at..]);
        let kw_len = r
            .iter()
            .position(|&c| c == b' ' || c == b'\t')
            .unwrap_or(r.len());
        let kw = &r[..kw_len];
        if kw != b"HELP" && kw != b"TYPE" {
            return Ok(Some(Entry::Comment));
        }
        let mut p = b.len() - r.len() + kw_len;
        if p >= b.len() {
            // "# HELP" alone is a comment to Prometheus' lexer.
            return Ok(Some(Entry::Comment));
        }
        p += skip_blanks(&b[p..]).as_ptr() as usize - b[p..].as_ptr() as usize;
        let name_len = metric_name_len(&b[p..]);
        if name_len == 0 {
            return Err(self.err(
                line,
                p,
                format!(
                    "expected a metric name after # {}, found {}",
                    ascii(kw),
                    found(&b[p..])
                ),
            ));
        }
        let name = &line[p..p + name_len];
        p += name_len;
        let rest = &b[p..];
        if !rest.is_empty() && rest[0] != b' ' && rest[0] != b'\t' {
            return Err(self.err(
                line,
                p,
                format!(
                    "expected a blank after the metric name, found {}",
                    found(rest)
                ),
            ));
        }
        let text_start = p + (rest.len() - skip_blanks(rest).len());
        let text = &line[text_start..];
        if kw == b"HELP" {
            let help = if text.contains('\\') {
                Cow::Owned(unescape(text, false))
            } else {
                Cow::Borrowed(text)
            };
            Ok(Some(Entry::Help { name, help }))
        } else {
            let text = text.trim_end_matches([' ', '\t']);
            let kind = match text {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                "untyped" => MetricType::Unknown,
                _ => {
                    return Err(self.err(
                        line,
                        text_start,
                        format!("expected one of counter, gauge, histogram, summary, untyped as the type of {name}, found {text:?}"),
                    ));
                }
            };
            Ok(Some(Entry::Type { name, kind }))
        }
    }

    fn openmetrics_line(&mut self, line: &'a str) -> Result<Option<Entry<'a>>, ParseError> {
        let b = line.as_bytes();
        if b.is_empty() {
            return Err(self.err(
                line,
                0,
                "blank lines are not allowed in OpenMetrics".to_owned(),
            ));
        }
        if b[0] != b'#' {
            return self.sample(line, 0).map(|s| Some(Entry::Sample(s)));
        }
        if line == "# EOF" {
            self.eof_seen = true;
            if self.pos < self.src.len() {
                self.line += 1;
                let rest = &self.src[self.pos..];
                let l = rest.split('\n').next().unwrap_or("");
                return Err(self.err(l, 0, "unexpected content after \"# EOF\"".to_owned()));
            }
            self.done = true;
            return Ok(None);
        }
        if !line.starts_with("# ") {
            return Err(self.err(
                line,
                1,
                format!("expected a space after '#', found {}", found(&b[1..])),
            ));
        }
        let kw_end = 2 + b[2..]
            .iter()
            .position(|&c| c == b' ')
            .unwrap_or(b.len() - 2);
        let kw = &line[2..kw_end];
        if !matches!(kw, "HELP" | "TYPE" | "UNIT") {
            return Err(self.err(
                line,
                2,
                format!("expected HELP, TYPE, UNIT or EOF after '# ', found {kw:?}"),
            ));
        }
        if kw_end >= b.len() {
            return Err(self.err(line, kw_end, format!("expected a metric name after # {kw}")));
        }
        let p = kw_end + 1;
        let name_len = metric_name_len(&b[p..]);
        if name_len == 0 {
            return Err(self.err(
                line,
                p,
                format!(
                    "expected a metric name after # {kw}, found {}",
                    found(&b[p..])
                ),
            ));
        }
        let name = &line[p..p + name_len];
        let q = p + name_len;
        if q >= b.len() {
            return Err(self.err(
                line,
                q,
                format!(
                    "expected a space and the {} after the metric name",
                    kw.to_lowercase()
                ),
            ));
        }
        if b[q] != b' ' {
            return Err(self.err(
                line,
                q,
                format!(
                    "expected a space after the metric name, found {}",
                    found(&b[q..])
                ),
            ));
        }
        let text = &line[q + 1..];
        match kw {
            "HELP" => {
                let help = if text.contains('\\') {
                    Cow::Owned(unescape(text, true))
                } else {
                    Cow::Borrowed(text)
                };
                Ok(Some(Entry::Help { name, help }))
            }
            "TYPE" => {
                let kind = match text {
                    "counter" => MetricType::Counter,
                    "gauge" => MetricType::Gauge,
                    "histogram" => MetricType::Histogram,
                    "gaugehistogram" => MetricType::GaugeHistogram,
                    "summary" => MetricType::Summary,
                    "info" => MetricType::Info,
                    "stateset" => MetricType::StateSet,
                    "unknown" => MetricType::Unknown,
                    _ => {
                        return Err(self.err(
                            line,
                            q + 1,
                            format!(
                                "expected one of counter, gauge, histogram, gaugehistogram, summary, info, stateset, unknown as the type of {name}, found {text:?}"
                            ),
                        ));
                    }
                };
                Ok(Some(Entry::Type { name, kind }))
            }
            _ => {
                if let Some(i) = text.bytes().position(|c| !is_label_char(c) && c != b':') {
                    return Err(self.err(
                        line,
                        q + 1 + i,
                        format!(
                            "invalid character in unit of {name}: {}",
                            found(&text.as_bytes()[i..])
                        ),
                    ));
                }
                Ok(Some(Entry::Unit { name, unit: text }))
            }
        }
    }

    /// A sample line starting at byte `at` of `line`.
    fn sample(&self, line: &'a str, at: usize) -> Result<SampleRef<'a>, ParseError> {
        let om = self.format == Format::OpenMetrics;
        let b = line.as_bytes();
        let mut p = at;
        let name_len = metric_name_len(&b[p..]);
        if name_len == 0 {
            return Err(self.err(
                line,
                p,
                format!("expected a metric name, found {}", found(&b[p..])),
            ));
        }
        let name = &line[p..p + name_len];
        p += name_len;
        let mut labels = "";
        let mut series = name;
        let brace = if om { p } else { self.after_blanks(b, p) };
        if b.get(brace) == Some(&b'{') {
            let ls = brace + 1;
            p = self.label_set(line, ls)?;
            labels = &line[ls..p - 1];
            series = &line[at..p];
        }
        // Separator before the value.
        match b.get(p) {
            Some(b' ') => p += 1,
            Some(b'\t') if !om => p += 1,
            other => {
                let what = if other.is_none() {
                    "end of line".to_owned()
                } else {
                    found(&b[p..])
                };
                return Err(self.err(
                    line,
                    p,
                    format!("expected a space and a value after {series:?}, found {what}"),
                ));
            }
        }
        if !om {
            p = self.after_blanks(b, p);
        }
        let vend = p + token_len(&b[p..]);
        if vend == p {
            return Err(self.err(
                line,
                p,
                format!("expected a value, found {}", found(&b[p..])),
            ));
        }
        let value = parse_value(&b[p..vend]).ok_or_else(|| {
            self.err(
                line,
                p,
                format!("expected a number as value, found {:?}", &line[p..vend]),
            )
        })?;
        p = vend;
        let mut timestamp = None;
        let mut exemplar = None;
        if om {
            if p < b.len() {
                self.om_space(line, p)?;
                p += 1;
                if b.get(p) != Some(&b'#') {
                    let tend = p + token_len(&b[p..]);
                    if tend == p {
                        return Err(self.err(
                            line,
                            p,
                            format!("expected a timestamp, found {}", found(&b[p..])),
                        ));
                    }
                    timestamp = Some(parse_seconds_as_millis(&b[p..tend]).ok_or_else(|| {
                        self.err(
                            line,
                            p,
                            format!(
                                "expected a timestamp in seconds, found {:?}",
                                &line[p..tend]
                            ),
                        )
                    })?);
                    p = tend;
                    if p < b.len() {
                        self.om_space(line, p)?;
                        p += 1;
                        if b.get(p) != Some(&b'#') {
                            return Err(self.err(line, p, format!("expected end of line or an exemplar (\" # {{...}}\"), found {}", found(&b[p..]))));
                        }
                    }
                }
                if p < b.len() {
                    exemplar = Some(self.exemplar(line, p)?);
                }
            }
        } else {
            p = self.after_blanks(b, p);
            if p < b.len() {
                let tend = p + token_len(&b[p..]);
                timestamp = Some(parse_millis(&b[p..tend]).ok_or_else(|| {
                    self.err(
                        line,
                        p,
                        format!(
                            "expected an integer timestamp in milliseconds, found {:?}",
                            &line[p..tend]
                        ),
                    )
                })?);
                p = self.after_blanks(b, tend);
                if p < b.len() {
                    return Err(self.err(
                        line,
                        p,
                        format!(
                            "expected end of line after the timestamp, found {}",
                            found(&b[p..])
                        ),
                    ));
                }
            }
        }
        Ok(SampleRef {
            series,
            name,
            labels,
            value,
            timestamp,
            exemplar,
        })
    }

    /// ` # {labels} value[ timestamp]` starting at the `#` at byte `p`.
    fn exemplar(&self, line: &'a str, mut p: usize) -> Result<ExemplarRef<'a>, ParseError> {
        let b = line.as_bytes();
        p += 1;
        if b.get(p) != Some(&b' ') {
            return Err(self.err(
                line,
                p,
                format!(
                    "expected a space after the exemplar's '#', found {}",
                    found(&b[p..])
                ),
            ));
        }
        p += 1;
        if b.get(p) != Some(&b'{') {
            return Err(self.err(
                line,
                p,
                format!(
                    "expected '{{' to open the exemplar's labels, found {}",
                    found(&b[p..])
                ),
            ));
        }
        let ls = p + 1;
        p = self.label_set(line, ls)?;
        let labels = &line[ls..p - 1];
        let chars: usize = LabelIter {
            rest: labels.as_bytes(),
            src: labels,
        }
        .map(|(n, v)| n.chars().count() + v.chars().count())
        .sum();
        if chars > 128 {
            return Err(self.err(
                line,
                ls,
                format!("exemplar labels have {chars} characters, more than the 128 allowed"),
            ));
        }
        if b.get(p) != Some(&b' ') {
            return Err(self.err(
                line,
                p,
                format!(
                    "expected a space and the exemplar's value, found {}",
                    found(&b[p..])
                ),
            ));
        }
        p += 1;
        let vend = p + token_len(&b[p..]);
        let value = parse_value(&b[p..vend]).ok_or_else(|| {
            self.err(
                line,
                p,
                format!(
                    "expected a number as the exemplar's value, found {:?}",
                    &line[p..vend]
                ),
            )
        })?;
        p = vend;
        let mut timestamp = None;
        if p < b.len() {
            self.om_space(line, p)?;
            p += 1;
            let tend = p + token_len(&b[p..]);
            timestamp = Some(parse_seconds_as_millis(&b[p..tend]).ok_or_else(|| {
                self.err(
                    line,
                    p,
                    format!(
                        "expected the exemplar's timestamp in seconds, found {:?}",
                        &line[p..tend]
                    ),
                )
            })?);
            if tend < b.len() {
                return Err(self.err(
                    line,
                    tend,
                    format!(
                        "expected end of line after the exemplar, found {}",
                        found(&b[tend..])
                    ),
                ));
            }
        }
        Ok(ExemplarRef {
            labels,
            value,
            timestamp,
        })
    }

    /// Checks a label set whose `{` is just before byte `p`; returns the
    /// position just past its `}`.
    fn label_set(&self, line: &str, mut p: usize) -> Result<usize, ParseError> {
        let om = self.format == Format::OpenMetrics;
        let b = line.as_bytes();
        // Names seen, to reject duplicates without allocating: label sets
        // are short, so comparing with each earlier name is cheapest.
        let start = p;
        let mut seen = [(0usize, 0usize); 32];
        let mut nseen = 0;
        let mut first = true;
        loop {
            if !om {
                p = self.after_blanks(b, p);
            }
            match b.get(p) {
                Some(b'}') => {
                    if om && !first {
                        return Err(self.err(line, p, "expected a label name after ',', found '}' (trailing commas are not allowed in OpenMetrics)".to_owned()));
                    }
                    return Ok(p + 1);
                }
                None => {
                    return Err(self.err(
                        line,
                        p,
                        "expected a label name or '}', found end of line".to_owned(),
                    ));
                }
                _ => {}
            }
            let n = label_name_len(&b[p..]);
            if n == 0 {
                return Err(self.err(
                    line,
                    p,
                    format!("expected a label name, found {}", found(&b[p..])),
                ));
            }
            let name = &b[p..p + n];
            let dup = if nseen < seen.len() {
                seen[..nseen].iter().any(|&(o, l)| &b[o..o + l] == name)
            } else {
                names_in(&b[start..p]).any(|n| n == name)
            };
            if nseen < seen.len() {
                seen[nseen] = (p, n);
                nseen += 1;
            }
            if dup {
                return Err(self.err(line, p, format!("duplicate label name {:?}", ascii(name))));
            }
            p += n;
            if !om {
                p = self.after_blanks(b, p);
            }
            if b.get(p) != Some(&b'=') {
                return Err(self.err(
                    line,
                    p,
                    format!(
                        "expected '=' after label name {:?}, found {}",
                        ascii(name),
                        found(&b[p..])
                    ),
                ));
            }
            p += 1;
            if !om {
                p = self.after_blanks(b, p);
            }
            if b.get(p) != Some(&b'"') {
                return Err(self.err(
                    line,
                    p,
                    format!(
                        "expected '\"' to open the value of label {:?}, found {}",
                        ascii(name),
                        found(&b[p..])
                    ),
                ));
            }
            p += 1;
            let (len, _) = quoted_len(&b[p..]).ok_or_else(|| {
                self.err(
                    line,
                    p - 1,
                    format!(
                        "expected '\"' to close the value of label {:?}, found end of line",
                        ascii(name)
                    ),
                )
            })?;
            p += len + 1;
            if !om {
                p = self.after_blanks(b, p);
            }
            match b.get(p) {
                Some(b',') => {
                    p += 1;
                    first = false;
                    if !om {
                        p = self.after_blanks(b, p);
                        if b.get(p) == Some(&b'}') {
                            return Ok(p + 1);
                        }
                    }
                }
                Some(b'}') => return Ok(p + 1),
                _ => {
                    return Err(self.err(
                        line,
                        p,
                        format!(
                            "expected ',' or '}}' after a label value, found {}",
                            found(&b[p..])
                        ),
                    ));
                }
            }
        }
    }

    /// OpenMetrics separates tokens with exactly one space, never a tab.
    fn om_space(&self, line: &str, p: usize) -> Result<(), ParseError> {
        match line.as_bytes().get(p) {
            Some(b' ') => Ok(()),
            _ => Err(self.err(
                line,
                p,
                format!(
                    "expected a space, found {}",
                    found(&line.as_bytes()[p.min(line.len())..])
                ),
            )),
        }
    }

    fn after_blanks(&self, b: &[u8], p: usize) -> usize {
        b.len() - skip_blanks(&b[p.min(b.len())..]).len()
    }
}

/// Names in a raw label section, for the duplicate check of long sets;
/// does not decode values.
fn names_in(mut r: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        r = skip_blanks(r);
        if r.first() == Some(&b',') {
            r = skip_blanks(&r[1..]);
        }
        let n = label_name_len(r);
        if n == 0 {
            return None;
        }
        let name = &r[..n];
        let q = memchr::memchr(b'"', r)?;
        let (len, _) = quoted_len(&r[q + 1..])?;
        r = &r[q + 1 + len + 1..];
        Some(name)
    })
}

/// Length of a quoted string's body (up to, not including, the closing
/// quote) and whether it contains escapes; `None` when unterminated.
#[inline]
fn quoted_len(b: &[u8]) -> Option<(usize, bool)> {
    let mut i = 0;
    let mut escaped = false;
    loop {
        let j = memchr::memchr2(b'"', b'\\', &b[i..])?;
        if b[i + j] == b'"' {
            return Some((i + j, escaped));
        }
        escaped = true;
        i += j + 2;
        if i > b.len() {
            return None;
        }
    }
}

/// Decodes `\\`, `\n` and `\"` (the last only when `quote` is set); any
/// other backslash is kept as written.
pub(crate) fn unescape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quote => out.push('"'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[inline]
fn skip_blanks(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    &b[n..]
}

/// Length of the token up to the next space or tab.
#[inline]
fn token_len(b: &[u8]) -> usize {
    b.iter()
        .position(|&c| c == b' ' || c == b'\t')
        .unwrap_or(b.len())
}

#[inline]
fn is_label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[inline]
fn metric_name_len(b: &[u8]) -> usize {
    match b.first() {
        Some(&c) if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {}
        _ => return 0,
    }
    1 + b[1..]
        .iter()
        .position(|&c| !(is_label_char(c) || c == b':'))
        .unwrap_or(b.len() - 1)
}

#[inline]
fn label_name_len(b: &[u8]) -> usize {
    match b.first() {
        Some(&c) if c.is_ascii_alphabetic() || c == b'_' => {}
        _ => return 0,
    }
    1 + b[1..]
        .iter()
        .position(|&c| !is_label_char(c))
        .unwrap_or(b.len() - 1)
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
