//! Alert templates as Prometheus expands them: Go's text/template (the
//! `gotmpl` crate) with Prometheus' prelude — `$labels`, `$value`,
//! `$externalLabels`, `$externalURL` — and its functions (`humanize`,
//! `humanize1024`, `humanizeDuration`, `humanizePercentage`,
//! `humanizeTimestamp`, `query`, `first`, `label`, `value`,
//! `sortByLabel`, `reReplaceAll`, `match`, `title`, `toUpper`, `toLower`,
//! `stripPort`, `stripDomain`, `safeHtml`, `parseDuration`, `args`,
//! `externalURL`, `pathPrefix`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use gotmpl::{FuncMap, Template, TemplateError, Value};

/// What a template sees.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// The alert's labels (`$labels`, `.Labels`).
    pub labels: BTreeMap<String, String>,
    /// The tier's external labels.
    pub external_labels: BTreeMap<String, String>,
    /// The tier's external URL.
    pub external_url: String,
    /// The expression's value for the alert (`$value`, `.Value`).
    pub value: f64,
}

/// Runs an instant query for the `query` function: (labels, value) pairs.
pub type QueryFn =
    Arc<dyn Fn(&str) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> + Send + Sync>;

thread_local! {
    static QUERY: RefCell<Option<QueryFn>> = const { RefCell::new(None) };
}

const PRELUDE: &str = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// A parsed template, expanded many times.
#[derive(Clone)]
pub struct Compiled {
    tmpl: Option<Template>,
    text: String,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Compiled").field(&self.text).finish()
    }
}

impl Compiled {
    /// Parses `text` (a plain string without `{{` costs nothing to expand).
    pub fn new(text: &str) -> Result<Self, String> {
        if !text.contains("{{") {
            return Ok(Self {
                tmpl: None,
                text: text.to_owned(),
            });
        }
        let tmpl = Template::new("__alert")
            .funcs(FUNCS.clone())
            .parse(&format!("{PRELUDE}{text}"))
            .map_err(|e| describe(&e))?;
        Ok(Self {
            tmpl: Some(tmpl),
            text: text.to_owned(),
        })
    }

    /// The template's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Expands the template over `data`; `query` serves the `query`
    /// function.
    pub fn expand(&self, data: &Data, query: Option<&QueryFn>) -> Result<String, String> {
        let Some(t) = &self.tmpl else {
            return Ok(self.text.clone());
        };
        let prev = QUERY.with(|q| q.replace(query.cloned()));
        let r = t.execute_to_string(&data_value(data));
        QUERY.with(|q| *q.borrow_mut() = prev);
        r.map_err(|e| describe(&e))
    }
}

/// Whether `text` parses and expands over sample data, as promtool checks.
pub fn check(text: &str) -> Result<(), String> {
    let c = Compiled::new(text)?;
    let mut data = Data::default();
    data.labels.insert("instance".into(), "host:9100".into());
    let q: QueryFn = Arc::new(|_| Ok(Vec::new()));
    c.expand(&data, Some(&q)).map(drop)
}

fn describe(e: &TemplateError) -> String {
    format!("template: {e}")
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Map(Arc::new(
        m.iter()
            .map(|(k, v)| {
                (
                    Arc::<str>::from(k.as_str()),
                    Value::String(v.as_str().into()),
                )
            })
            .collect(),
    ))
}

fn data_value(d: &Data) -> Value {
    let mut m = BTreeMap::new();
    m.insert("Labels".into(), string_map(&d.labels));
    m.insert("ExternalLabels".into(), string_map(&d.external_labels));
    m.insert(
        "ExternalURL".into(),
        Value::String(d.external_url.as_str().into()),
    );
    m.insert("Value".into(), Value::Float(d.value));
    Value::Map(Arc::new(m))
}

fn err(m: impl Into<String>) -> TemplateError {
    TemplateError::Exec(m.into())
}

fn arg<'a>(name: &str, args: &'a [Value], i: usize) -> gotmpl::Result<&'a Value> {
    args.get(i).ok_or_else(|| {
        err(format!(
            "{name}: wants {} arguments, got {}",
            i + 1,
            args.len()
        ))
    })
}

/// A number from a template value, as Prometheus' `convertToFloat`.
fn float(name: &str, v: &Value) -> gotmpl::Result<f64> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Uint(u) => Ok(*u as f64),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| err(format!("{name}: {s:?} is not a number"))),
        other => Err(err(format!(
            "{name}: {} is not a number",
            other.type_name()
        ))),
    }
}

fn text(name: &str, args: &[Value], i: usize) -> gotmpl::Result<String> {
    Ok(match arg(name, args, i)? {
        Value::String(s) => s.to_string(),
        other => other.to_string(),
    })
}

fn s(v: String) -> gotmpl::Result<Value> {
    Ok(Value::String(v.into()))
}

/// Go's `%.{prec}g`.
pub fn fmt_g(v: f64, prec: usize) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return "0".into();
    }
    let p = prec.max(1);
    let e = format!("{:.*e}", p - 1, v);
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= p as i32 {
        let mant = trim_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_owned()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Prometheus' `humanize`: SI prefixes, four significant digits.
pub fn humanize(mut v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    if v.abs() >= 1.0 {
        let mut prefix = "";
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
        return format!("{}{prefix}", fmt_g(v, 4));
    }
    let (v, prefix) = small(v);
    format!("{}{prefix}", fmt_g(v, 4))
}

/// `v` (below 1 in magnitude) scaled into [1, 1000) with its SI prefix.
fn small(mut v: f64) -> (f64, &'static str) {
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    (v, prefix)
}

/// Prometheus' `humanize1024`: binary prefixes.
pub fn humanize1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", fmt_g(v, 4))
}

/// Prometheus' `humanizeDuration` of seconds.
pub fn humanize_duration(mut v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    if v == 0.0 {
        return "0s".into();
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        v = v.abs();
        let d = v as i64;
        let (secs, mins, hours, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {mins}m {secs}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {mins}m {secs}s")
        } else if mins != 0 {
            format!("{sign}{mins}m {secs}s")
        } else {
            format!("{sign}{}s", fmt_g(v, 4))
        };
    }
    let (v, prefix) = small(v);
    format!("{}{prefix}s", fmt_g(v, 4))
}

/// Go's `time.Time.String()` in UTC for a Unix time in seconds.
fn humanize_timestamp(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    // As Prometheus: nanoseconds, then model.Time's milliseconds.
    let ms = ((v * 1e9) as i64).div_euclid(1_000_000);
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => {
            let frac = ms.rem_euclid(1000);
            let frac = if frac == 0 {
                String::new()
            } else {
                format!(".{frac:03}").trim_end_matches('0').to_owned()
            };
            format!("{}{frac} +0000 UTC", t.format("%Y-%m-%d %H:%M:%S"))
        }
        None => fmt_g(v, 4),
    }
}

fn sample_value(labels: BTreeMap<String, String>, v: f64) -> Value {
    let mut m = BTreeMap::new();
    m.insert("Labels".into(), string_map(&labels));
    m.insert("Value".into(), Value::Float(v));
    Value::Map(Arc::new(m))
}

fn one_f(name: &'static str, f: fn(f64) -> String) -> gotmpl::ValueFunc {
    Arc::new(move |args: &[Value]| s(f(float(name, arg(name, args, 0)?)?)))
}

fn one_s(name: &'static str, f: fn(&str) -> String) -> gotmpl::ValueFunc {
    Arc::new(move |args: &[Value]| s(f(&text(name, args, 0)?)))
}

static FUNCS: LazyLock<FuncMap> = LazyLock::new(|| {
    let mut m = FuncMap::new();
    m.insert("humanize".into(), one_f("humanize", humanize));
    m.insert("humanize1024".into(), one_f("humanize1024", humanize1024));
    m.insert(
        "humanizeDuration".into(),
        one_f("humanizeDuration", humanize_duration),
    );
    m.insert(
        "humanizePercentage".into(),
        one_f("humanizePercentage", |v| {
            format!("{}%", fmt_g(v * 100.0, 4))
        }),
    );
    m.insert(
        "humanizeTimestamp".into(),
        one_f("humanizeTimestamp", humanize_timestamp),
    );
    m.insert("toUpper".into(), one_s("toUpper", |t| t.to_uppercase()));
    m.insert("toLower".into(), one_s("toLower", |t| t.to_lowercase()));
    m.insert(
        "title".into(),
        one_s("title", |t| {
            let mut out = String::with_capacity(t.len());
            let mut start = true;
            for c in t.chars() {
                if start && c.is_alphabetic() {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                start = !c.is_alphanumeric() && c != '\'';
            }
            out
        }),
    );
    m.insert("safeHtml".into(), one_s("safeHtml", str::to_owned));
    m.insert(
        "stripPort".into(),
        one_s("stripPort", |t| {
            if let Some(rest) = t.strip_prefix('[')
                && let Some((host, _)) = rest.split_once(']')
            {
                return host.to_owned();
            }
            match t.rsplit_once(':') {
                Some((h, _)) if !h.contains(':') => h.to_owned(),
                _ => t.to_owned(),
            }
        }),
    );
    m.insert(
        "stripDomain".into(),
        one_s("stripDomain", |t| {
            let (host, port) = match t.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (t, None),
            };
            if host.parse::<std::net::IpAddr>().is_ok() {
                return t.to_owned();
            }
            let short = host.split('.').next().unwrap_or(host);
            match port {
                Some(p) => format!("{short}:{p}"),
                None => short.to_owned(),
            }
        }),
    );
    m.insert(
        "parseDuration".into(),
        Arc::new(|args: &[Value]| {
            let t = text("parseDuration", args, 0)?;
            tiermon_model::parse_duration(&t)
                .map(|d| Value::Float(d.as_secs_f64()))
                .map_err(|e| err(format!("parseDuration: {e}")))
        }),
    );
    m.insert(
        "reReplaceAll".into(),
        Arc::new(|args: &[Value]| {
            let re = regex::Regex::new(&text("reReplaceAll", args, 0)?)
                .map_err(|e| err(format!("reReplaceAll: {e}")))?;
            let repl = text("reReplaceAll", args, 1)?;
            let t = text("reReplaceAll", args, 2)?;
            s(re.replace_all(&t, repl.as_str()).into_owned())
        }),
    );
    m.insert(
        "match".into(),
        Arc::new(|args: &[Value]| {
            let re = regex::Regex::new(&text("match", args, 0)?)
                .map_err(|e| err(format!("match: {e}")))?;
            Ok(Value::Bool(re.is_match(&text("match", args, 1)?)))
        }),
    );
    m.insert(
        "args".into(),
        Arc::new(|args: &[Value]| {
            let m: BTreeMap<Arc<str>, Value> = args
                .iter()
                .enumerate()
                .map(|(i, v)| (Arc::from(format!("arg{i}").as_str()), v.clone()))
                .collect();
            Ok(Value::Map(Arc::new(m)))
        }),
    );
    m.insert(
        "query".into(),
        Arc::new(|args: &[Value]| {
            let q = text("query", args, 0)?;
            let f = QUERY
                .with(|c| c.borrow().clone())
                .ok_or_else(|| err("query: no store to query here"))?;
            let rows = f(&q).map_err(|e| err(format!("query {q:?}: {e}")))?;
            Ok(Value::List(
                rows.into_iter().map(|(l, v)| sample_value(l, v)).collect(),
            ))
        }),
    );
    m.insert(
        "first".into(),
        Arc::new(|args: &[Value]| match arg("first", args, 0)? {
            Value::List(l) => l
                .first()
                .cloned()
                .ok_or_else(|| err("first: the query returned nothing")),
            other => Err(err(format!(
                "first: {} is not a query result",
                other.type_name()
            ))),
        }),
    );
    m.insert(
        "label".into(),
        Arc::new(|args: &[Value]| {
            let name = text("label", args, 0)?;
            let v = arg("label", args, 1)?;
            Ok(v.field("Labels")
                .and_then(|l| l.field(&name))
                .cloned()
                .unwrap_or(Value::String("".into())))
        }),
    );
    m.insert(
        "value".into(),
        Arc::new(|args: &[Value]| {
            Ok(arg("value", args, 0)?
                .field("Value")
                .cloned()
                .unwrap_or(Value::Nil))
        }),
    );
    m.insert(
        "strvalue".into(),
        Arc::new(|args: &[Value]| {
            Ok(arg("strvalue", args, 0)?
                .field("Labels")
                .and_then(|l| l.field("__value__"))
                .cloned()
                .unwrap_or(Value::String("".into())))
        }),
    );
    m.insert(
        "sortByLabel".into(),
        Arc::new(|args: &[Value]| {
            let name = text("sortByLabel", args, 0)?;
            let Value::List(l) = arg("sortByLabel", args, 1)? else {
                return Err(err("sortByLabel: not a query result"));
            };
            let key = |v: &Value| {
                v.field("Labels")
                    .and_then(|l| l.field(&name))
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            let mut v: Vec<Value> = l.to_vec();
            v.sort_by_key(key);
            Ok(Value::List(v.into()))
        }),
    );
    m
});

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(t: &str, value: f64) -> String {
        let mut d = Data {
            value,
            ..Data::default()
        };
        d.labels
            .insert("instance".into(), "web-1.dc1.example:9100".into());
        d.labels.insert("job".into(), "node".into());
        Compiled::new(t).unwrap().expand(&d, None).unwrap()
    }

    #[test]
    fn the_prelude_gives_labels_and_value() {
        assert_eq!(
            expand(
                "{{ $labels.instance }} of {{ .Labels.job }} is {{ $value }}",
                3.0
            ),
            "web-1.dc1.example:9100 of node is 3"
        );
        assert_eq!(expand("plain text", 1.0), "plain text");
        assert_eq!(expand(r#"{{ printf "%.2f" $value }}%"#, 97.1234), "97.12%");
        assert_eq!(
            expand("{{ $labels.instance | stripPort | stripDomain }}", 0.0),
            "web-1"
        );
    }

    #[test]
    fn humanize_functions_match_prometheus() {
        // Expected strings are Prometheus' own (template_test.go).
        assert_eq!(humanize(1234567.0), "1.235M");
        assert_eq!(humanize(0.0), "0");
        assert_eq!(humanize(0.001234), "1.234m");
        assert_eq!(humanize(12.0), "12");
        assert_eq!(humanize(1e30), "1e+06Y");
        assert_eq!(humanize1024(1048576.0), "1Mi");
        assert_eq!(humanize1024(1.0), "1");
        assert_eq!(humanize_duration(0.0), "0s");
        assert_eq!(humanize_duration(1.0), "1s");
        assert_eq!(humanize_duration(60.0), "1m 0s");
        assert_eq!(humanize_duration(3600.0), "1h 0m 0s");
        assert_eq!(humanize_duration(86400.0), "1d 0h 0m 0s");
        assert_eq!(
            humanize_duration(86400.0 + 3600.0 + 60.0 + 1.0),
            "1d 1h 1m 1s"
        );
        assert_eq!(humanize_duration(0.1), "100ms");
        assert_eq!(humanize_duration(0.0001), "100us");
        assert_eq!(humanize_duration(-1.5), "-1.5s");
        assert_eq!(expand("{{ humanizePercentage 0.25 }}", 0.0), "25%");
        assert_eq!(
            expand("{{ 1435065584.128 | humanizeTimestamp }}", 0.0),
            "2015-06-23 13:19:44.128 +0000 UTC"
        );
        assert_eq!(expand(r#"{{ "1234" | humanize }}"#, 0.0), "1.234k");
    }

    #[test]
    fn string_functions() {
        assert_eq!(expand(r#"{{ "aa bb CC" | title }}"#, 0.0), "Aa Bb CC");
        assert_eq!(
            expand(r#"{{ reReplaceAll "(a)b" "x$1" "abab" }}"#, 0.0),
            "xaxa"
        );
        assert_eq!(
            expand(r#"{{ if match "^web" $labels.instance }}yes{{ end }}"#, 0.0),
            "yes"
        );
        assert_eq!(expand(r#"{{ "1m30s" | parseDuration }}"#, 0.0), "90");
        assert_eq!(
            expand(r#"{{ with args 1 "b" }}{{ .arg1 }}{{ end }}"#, 0.0),
            "b"
        );
    }

    #[test]
    fn query_reads_through_the_callback() {
        let q: QueryFn = Arc::new(|e| {
            assert_eq!(e, "up");
            Ok(vec![
                ([("instance".to_string(), "b".to_string())].into(), 0.0),
                ([("instance".to_string(), "a".to_string())].into(), 1.0),
            ])
        });
        let c = Compiled::new(
            r#"{{ range query "up" | sortByLabel "instance" }}{{ .Labels.instance }}={{ .Value }} {{ end }}/{{ with query "up" }}{{ . | first | value }}{{ end }}"#,
        )
        .unwrap();
        assert_eq!(c.expand(&Data::default(), Some(&q)).unwrap(), "a=1 b=0 /0");
        // Without a store, `query` is an error, not a panic.
        assert!(
            c.expand(&Data::default(), None)
                .unwrap_err()
                .contains("query")
        );
    }

    #[test]
    fn bad_templates_are_errors() {
        assert!(check("{{ $labels.instance ").is_err());
        assert!(check("{{ nosuchfunc 1 }}").is_err());
        assert!(check("{{ humanize \"abc\" }}").is_err());
        assert!(check("{{ $labels.instance }}").is_ok());
    }

    #[test]
    fn fmt_g_is_gos() {
        for (v, want) in [
            (1.0, "1"),
            (1234.5678, "1235"),
            (12345.0, "1.234e+04"),
            (0.0001234, "0.0001234"),
            (0.00001234, "1.234e-05"),
            (100.0, "100"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(fmt_g(v, 4), want, "{v}");
        }
    }
}
