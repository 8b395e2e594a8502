//! Writing families in either format.

use std::fmt::Write;

use crate::{Format, MetricFamily, MetricType};

/// Writes `families` as a complete document in `format` (OpenMetrics ends
/// with `# EOF`).
///
/// Families are written as given; converting OpenMetrics-only shapes to the
/// Prometheus format follows what the client libraries do: counters are
/// named after their `_total` sample and lose `_created`, info and stateset
/// become gauges, gauge histograms become histograms.
pub fn encode(families: &[MetricFamily], format: Format) -> String {
    let mut out = String::with_capacity(families.iter().map(|f| 64 + f.samples.len() * 64).sum());
    for f in families {
        match format {
            Format::OpenMetrics => openmetrics_family(&mut out, f),
            Format::Prometheus => prometheus_family(&mut out, f),
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn openmetrics_family(out: &mut String, f: &MetricFamily) {
    if f.kind != MetricType::Unknown {
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
    }
    if let Some(u) = &f.unit {
        let _ = writeln!(out, "# UNIT {} {u}", f.name);
    }
    if let Some(h) = &f.help {
        let _ = write!(out, "# HELP {} ", f.name);
        escape(out, h, true);
        out.push('\n');
    }
    for s in &f.samples {
        out.push_str(&s.name);
        labels(out, &s.labels);
        out.push(' ');
        out.push_str(&format_value(s.value));
        if let Some(t) = s.timestamp {
            out.push(' ');
            seconds(out, t);
        }
        if let Some(e) = &s.exemplar {
            out.push_str(" # ");
            if e.labels.is_empty() {
                out.push_str("{}");
            } else {
                labels(out, &e.labels);
            }
            out.push(' ');
            out.push_str(&format_value(e.value));
            if let Some(t) = e.timestamp {
                out.push(' ');
                seconds(out, t);
            }
        }
        out.push('\n');
    }
}

fn prometheus_family(out: &mut String, f: &MetricFamily) {
    let (name, kind) = match f.kind {
        MetricType::Counter => {
            let total = format!("{}_total", f.name);
            let named_total = f.samples.iter().any(|s| s.name == total);
            (if named_total { total } else { f.name.clone() }, "counter")
        }
        MetricType::Gauge => (f.name.clone(), "gauge"),
        MetricType::Histogram | MetricType::GaugeHistogram => (f.name.clone(), "histogram"),
        MetricType::Summary => (f.name.clone(), "summary"),
        MetricType::Info => (format!("{}_info", f.name), "gauge"),
        MetricType::StateSet => (f.name.clone(), "gauge"),
        MetricType::Unknown => (f.name.clone(), "untyped"),
    };
    if let Some(h) = &f.help {
        let _ = write!(out, "# HELP {name} ");
        escape(out, h, false);
        out.push('\n');
    }
    if f.kind != MetricType::Unknown {
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }
    for s in &f.samples {
        let suffix = s.name.strip_prefix(f.name.as_str()).unwrap_or("");
        if suffix == "_created" {
            continue;
        }
        match (f.kind, suffix) {
            (MetricType::GaugeHistogram, "_gsum") => {
                out.push_str(&f.name);
                out.push_str("_sum");
            }
            (MetricType::GaugeHistogram, "_gcount") => {
                out.push_str(&f.name);
                out.push_str("_count");
            }
            _ => out.push_str(&s.name),
        }
        labels(out, &s.labels);
        out.push(' ');
        out.push_str(&format_value(s.value));
        if let Some(t) = s.timestamp {
            let _ = write!(out, " {t}");
        }
        out.push('\n');
    }
}

fn labels(out: &mut String, labels: &[(String, String)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (n, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n);
        out.push_str("=\"");
        escape(out, v, true);
        out.push('"');
    }
    out.push('}');
}

fn escape(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn seconds(out: &mut String, ms: i64) {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:03}", a / 1000, a % 1000);
}

/// A value as the formats write it: `+Inf`, `-Inf`, `NaN`, or the shortest
/// decimal that parses back to the same float.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else if v.abs() >= 1e21 || (v != 0.0 && v.abs() < 1e-6) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}
