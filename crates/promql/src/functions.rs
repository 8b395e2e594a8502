//! PromQL functions and aggregation operators.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Timelike};
use promql_parser::parser::{AggregateExpr, Call, Expr, LabelModifier};
use tiermon_model::{Labels, METRIC_NAME, is_valid_label_name};

use crate::eval::{Ev, Mat, VSeries, Val, dedup, drop_name, format_float, labels_with};
use crate::{Error, WindowField};

fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Order by value, ascending or descending, NaN last (as `sort`,
/// `sort_desc`, `topk` and `bottomk` order their output).
fn by_value(a: f64, b: f64, desc: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ if desc => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Go's `math.Max`/`math.Min`: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn arg(c: &Call, i: usize) -> Result<&Expr, Error> {
    c.args
        .args
        .get(i)
        .map(|b| b.as_ref())
        .ok_or_else(|| Error::BadData(format!("missing argument {} of {}", i + 1, c.func.name)))
}

/// Applies `f` to every value of a vector, dropping the metric name.
fn map_vector(vs: Vec<VSeries>, f: impl Fn(f64, usize) -> Option<f64>) -> Result<Val, Error> {
    let out = vs
        .into_iter()
        .filter_map(|s| {
            let v: Vec<Option<f64>> =
                s.v.iter()
                    .enumerate()
                    .map(|(i, x)| x.and_then(|x| f(x, i)))
                    .collect();
            v.iter().any(Option::is_some).then(|| VSeries {
                labels: drop_name(&s.labels),
                v,
                ts: None,
            })
        })
        .collect();
    Ok(Val::Vector(dedup(out)?))
}

/// `min`, `max`, `sum`, `count` and `avg_over_time` over a store's
/// downsampled windows ([`crate::Queryable::select_windows`]): the
/// minimum of the windows' minimums, the sum of their counts, the sum of
/// their sums over the sum of their counts… `None` when the store keeps no
/// windows (or for another function).
fn over_windows(
    ev: &mut Ev<'_>,
    name: &str,
    ms: &promql_parser::parser::MatrixSelector,
) -> Result<Option<Val>, Error> {
    let field = match name {
        "min_over_time" => WindowField::Min,
        "max_over_time" => WindowField::Max,
        "sum_over_time" | "avg_over_time" => WindowField::Sum,
        "count_over_time" => WindowField::Count,
        _ => return Ok(None),
    };
    let Some(m) = ev.matrix_windows(ms, field)? else {
        return Ok(None);
    };
    let sum = |w: &[(i64, f64)]| {
        let (s, c) = w
            .iter()
            .fold((0.0, 0.0), |(s, c), &(_, v)| kahan_inc(v, s, c));
        if s.is_infinite() { s } else { s + c }
    };
    if name != "avg_over_time" {
        return map_matrix(
            &m,
            |w, _| {
                let vals = w.iter().map(|&(_, v)| v);
                Some(match field {
                    WindowField::Min => {
                        vals.fold(f64::NAN, |a, v| if a.is_nan() || v < a { v } else { a })
                    }
                    WindowField::Max => {
                        vals.fold(f64::NAN, |a, v| if a.is_nan() || v > a { v } else { a })
                    }
                    WindowField::Sum | WindowField::Count => sum(w),
                })
            },
            false,
        )
        .map(Some);
    }
    let Some(counts) = ev.matrix_windows(ms, WindowField::Count)? else {
        return Ok(None);
    };
    // Sums and counts are matched by labels; a series whose count is
    // missing (gone between the two reads) is left out.
    let by_labels: HashMap<&Labels, usize> = counts
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.labels, i))
        .collect();
    let mut out = Vec::with_capacity(m.series.len());
    for (s, series) in m.series.iter().enumerate() {
        let Some(&cs) = by_labels.get(&series.labels) else {
            continue;
        };
        let v: Vec<Option<f64>> = (0..m.ends.len())
            .map(|i| {
                let (w, wc) = (m.window(s, i), counts.window(cs, i));
                (!w.is_empty() && !wc.is_empty()).then(|| sum(w) / sum(wc))
            })
            .collect();
        if v.iter().any(Option::is_some) {
            out.push(VSeries {
                labels: drop_name(&series.labels),
                v,
                ts: None,
            });
        }
    }
    Ok(Some(Val::Vector(dedup(out)?)))
}

/// Applies a window function to every series and step of a range vector.
fn map_matrix(
    m: &Mat,
    f: impl Fn(&[(i64, f64)], usize) -> Option<f64>,
    keep_name: bool,
) -> Result<Val, Error> {
    Ok(Val::Vector(dedup(map_series(m, f, keep_name))?))
}

/// [`map_matrix`] over the range-vector expression `e`, with `f` given
/// each window, its step's end and the range. A plain range selector is
/// read and reduced a batch of series at a time, so that its samples are
/// never all in memory at once.
fn map_range(
    ev: &mut Ev<'_>,
    e: &Expr,
    keep_name: bool,
    f: impl Fn(&[(i64, f64)], i64, i64) -> Option<f64>,
) -> Result<Val, Error> {
    let mut out = Vec::new();
    let mut reduce =
        |m: &Mat| out.extend(map_series(m, |w, i| f(w, m.ends[i], m.range), keep_name));
    if let Expr::MatrixSelector(ms) = e {
        ev.matrix_selector_batches(ms, |m| reduce(&m))?;
    } else {
        let m = ev.eval_matrix(e)?;
        reduce(&m);
    }
    Ok(Val::Vector(dedup(out)?))
}

/// `f` over each series' window at each step; series with no value at
/// any step are left out.
fn map_series(
    m: &Mat,
    f: impl Fn(&[(i64, f64)], usize) -> Option<f64>,
    keep_name: bool,
) -> Vec<VSeries> {
    let n = m.ends.len();
    let mut out = Vec::with_capacity(m.series.len());
    for s in 0..m.series.len() {
        let v: Vec<Option<f64>> = (0..n)
            .map(|i| {
                let w = m.window(s, i);
                if w.is_empty() { None } else { f(w, i) }
            })
            .collect();
        if v.iter().any(Option::is_some) {
            let labels = &m.series[s].labels;
            out.push(VSeries {
                labels: if keep_name {
                    labels.clone()
                } else {
                    drop_name(labels)
                },
                v,
                ts: None,
            });
        }
    }
    out
}

fn extrapolated_rate(
    w: &[(i64, f64)],
    end: i64,
    range: i64,
    counter: bool,
    rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (t0, v0) = w[0];
    let (tn, vn) = w[w.len() - 1];
    let mut result = vn - v0;
    if counter {
        let mut last = 0.0;
        for &(_, v) in w {
            if v < last {
                result += last;
            }
            last = v;
        }
    }
    let range_start = end - range;
    let mut to_start = (t0 - range_start) as f64 / 1000.0;
    let to_end = (end - tn) as f64 / 1000.0;
    let sampled = (tn - t0) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    if counter && result > 0.0 && v0 >= 0.0 {
        let to_zero = sampled * (v0 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg / 2.0
    };
    result *= interval / sampled;
    if rate {
        result /= range as f64 / 1000.0;
    }
    Some(result)
}

fn instant_delta(w: &[(i64, f64)], rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (t1, v1) = w[w.len() - 2];
    let (t2, v2) = w[w.len() - 1];
    let mut d = if rate && v2 < v1 { v2 } else { v2 - v1 };
    if rate {
        let dt = t2 - t1;
        if dt == 0 {
            return None;
        }
        d /= dt as f64 / 1000.0;
    }
    Some(d)
}

fn linear_regression(w: &[(i64, f64)], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init = w[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in w.iter().enumerate() {
        if const_y && i > 0 && v != init {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Prometheus' `quantile` over a set of values.
pub(crate) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Go's sort.Float64s: NaN first.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

fn avg_values(w: impl Iterator<Item = f64>) -> f64 {
    let (mut mean, mut count, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for v in w {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

fn stdvar_values(w: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for v in w {
        count += 1.0;
        let delta = v - (mean + cmean);
        (mean, cmean) = kahan_inc(delta / count, mean, cmean);
        (aux, caux) = kahan_inc(delta * (v - (mean + cmean)), aux, caux);
    }
    (aux + caux) / count
}

fn holt_winters(w: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, w[0].1);
    let mut b = w[1].1 - w[0].1;
    for (i, &(_, x)) in w.iter().enumerate().skip(1) {
        let trend = if i == 1 {
            b
        } else {
            tf * (s1 - s0) + (1.0 - tf) * b
        };
        b = trend;
        s0 = s1;
        s1 = sf * x + (1.0 - sf) * (s1 + b);
    }
    Some(s1)
}

/// The labels `absent()` gives: the equality matchers of a plain selector.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let mut seen: HashMap<&str, Option<&str>> = HashMap::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        let eq = matches!(m.op, promql_parser::label::MatchOp::Equal);
        seen.entry(&m.name)
            .and_modify(|v| *v = None)
            .or_insert(if eq { Some(&m.value) } else { None });
    }
    Labels::from_pairs(seen.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))))
}

/// `absent()` and `absent_over_time()`: 1 at the steps where `present`
/// is false, labelled from the selector's equality matchers.
fn absent(e: &Expr, n: usize, present: impl Fn(usize) -> bool) -> Val {
    let v: Vec<Option<f64>> = (0..n).map(|i| (!present(i)).then_some(1.0)).collect();
    if v.iter().all(Option::is_none) {
        return Val::Vector(Vec::new());
    }
    Val::Vector(vec![VSeries {
        labels: absent_labels(e),
        v,
        ts: None,
    }])
}

fn date_fn(ev: &mut Ev<'_>, c: &Call, f: fn(DateTime<chrono::Utc>) -> f64) -> Result<Val, Error> {
    let conv = move |x: f64| {
        if !x.is_finite() {
            return Some(f64::NAN);
        }
        DateTime::from_timestamp(x.floor() as i64, 0).map(f)
    };
    if c.args.args.is_empty() {
        let v: Vec<Option<f64>> = ev
            .ts
            .iter()
            .map(|&t| conv(t.div_euclid(1000) as f64))
            .collect();
        return Ok(Val::Vector(vec![VSeries {
            labels: Labels::empty(),
            v,
            ts: None,
        }]));
    }
    let vs = ev.eval_vector(arg(c, 0)?)?;
    map_vector(vs, |x, _| conv(x))
}

fn days_in_month(d: DateTime<chrono::Utc>) -> f64 {
    let (y, m) = (d.year(), d.month());
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let first_next = chrono::NaiveDate::from_ymd_opt(ny, nm, 1);
    let first = chrono::NaiveDate::from_ymd_opt(y, m, 1);
    match (first, first_next) {
        (Some(a), Some(b)) => (b - a).num_days() as f64,
        _ => f64::NAN,
    }
}

pub(crate) fn call(ev: &mut Ev<'_>, c: &Call) -> Result<Val, Error> {
    let name = c.func.name;
    let n = ev.ts.len();
    let simple: Option<fn(f64) -> f64> = match name {
        "abs" => Some(f64::abs),
        "ceil" => Some(f64::ceil),
        "floor" => Some(f64::floor),
        "exp" => Some(f64::exp),
        "sqrt" => Some(f64::sqrt),
        "ln" => Some(f64::ln),
        "log2" => Some(f64::log2),
        "log10" => Some(f64::log10),
        "sin" => Some(f64::sin),
        "cos" => Some(f64::cos),
        "tan" => Some(f64::tan),
        "asin" => Some(f64::asin),
        "acos" => Some(f64::acos),
        "atan" => Some(f64::atan),
        "sinh" => Some(f64::sinh),
        "cosh" => Some(f64::cosh),
        "tanh" => Some(f64::tanh),
        "asinh" => Some(f64::asinh),
        "acosh" => Some(f64::acosh),
        "atanh" => Some(f64::atanh),
        "deg" => Some(|x: f64| x * 180.0 / std::f64::consts::PI),
        "rad" => Some(|x: f64| x * std::f64::consts::PI / 180.0),
        "sgn" => Some(|x: f64| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }),
        _ => None,
    };
    if let Some(f) = simple {
        let vs = ev.eval_vector(arg(c, 0)?)?;
        return map_vector(vs, |x, _| Some(f(x)));
    }
    match name {
        "time" => Ok(Val::Scalar(
            ev.ts.iter().map(|&t| t as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; n])),
        "vector" => {
            let s = ev.eval_scalar(arg(c, 0)?)?;
            Ok(Val::Vector(vec![VSeries {
                labels: Labels::empty(),
                v: s.into_iter().map(Some).collect(),
                ts: None,
            }]))
        }
        "scalar" => {
            let vs = ev.eval_vector(arg(c, 0)?)?;
            Ok(Val::Scalar(
                (0..n)
                    .map(|i| {
                        let mut it = vs.iter().filter_map(|s| s.v[i]);
                        match (it.next(), it.next()) {
                            (Some(v), None) => v,
                            _ => f64::NAN,
                        }
                    })
                    .collect(),
            ))
        }
        "timestamp" => {
            let vs = ev.eval_vector(arg(c, 0)?)?;
            let ts = ev.ts.clone();
            let out = vs
                .into_iter()
                .map(|s| VSeries {
                    labels: drop_name(&s.labels),
                    v: s.v
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            x.map(|_| match &s.ts {
                                Some(t) => t[i] as f64 / 1000.0,
                                None => ts[i] as f64 / 1000.0,
                            })
                        })
                        .collect(),
                    ts: None,
                })
                .collect();
            Ok(Val::Vector(dedup(out)?))
        }
        "round" => {
            let vs = ev.eval_vector(arg(c, 0)?)?;
            let to = match c.args.args.get(1) {
                Some(e) => ev.eval_scalar(e)?,
                None => vec![1.0; n],
            };
            map_vector(vs, |x, i| {
                let inv = 1.0 / to[i];
                Some((x * inv + 0.5).floor() / inv)
            })
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let vs = ev.eval_vector(arg(c, 0)?)?;
            let a = ev.eval_scalar(arg(c, 1)?)?;
            let b = if name == "clamp" {
                ev.eval_scalar(arg(c, 2)?)?
            } else {
                Vec::new()
            };
            map_vector(vs, |x, i| match name {
                "clamp" => {
                    if b[i] < a[i] {
                        None
                    } else {
                        Some(go_max(a[i], go_min(b[i], x)))
                    }
                }
                "clamp_min" => Some(go_max(a[i], x)),
                _ => Some(go_min(a[i], x)),
            })
        }
        "sort" | "sort_desc" => {
            let vs = ev.eval_vector(arg(c, 0)?)?;
            let mut vs = vs;
            if n == 1 {
                let desc = name == "sort_desc";
                vs.sort_by(|a, b| {
                    let (x, y) = (a.v[0].unwrap_or(f64::NAN), b.v[0].unwrap_or(f64::NAN));
                    by_value(x, y, desc)
                });
            }
            Ok(Val::Vector(vs))
        }
        "label_replace" => {
            let vs = ev.eval_vector(arg(c, 0)?)?;
            let strs: Vec<String> = (1..5)
                .map(|i| match ev.eval(arg(c, i)?)? {
                    Val::Str(s) => Ok(s),
                    _ => Err(Error::BadData(
                        "label_replace takes string arguments".into(),
                    )),
                })
                .collect::<Result<_, _>>()?;
            let (dst, repl, src, re) = (&strs[0], &strs[1], &strs[2], &strs[3]);
            let regex = regex::Regex::new(&format!("^(?s:{re})$")).map_err(|e| {
                Error::BadData(format!(
                    "invalid regular expression in label_replace(): {re}: {e}"
                ))
            })?;
            if !is_valid_label_name(dst) {
                return Err(Error::BadData(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            let out = vs
                .into_iter()
                .map(|s| {
                    let v = s.labels.get(src).unwrap_or("");
                    let labels = match regex.captures(v) {
                        Some(caps) => {
                            let mut res = String::new();
                            caps.expand(repl, &mut res);
                            labels_with(&s.labels, &[(dst, &res)], &[])
                        }
                        None => s.labels.clone(),
                    };
                    VSeries { labels, ..s }
                })
                .collect();
            Ok(Val::Vector(dedup(out)?))
        }
        "label_join" => {
            let vs = ev.eval_vector(arg(c, 0)?)?;
            let mut strs = Vec::new();
            for i in 1..c.args.args.len() {
                match ev.eval(arg(c, i)?)? {
                    Val::Str(s) => strs.push(s),
                    _ => return Err(Error::BadData("label_join takes string arguments".into())),
                }
            }
            if strs.len() < 2 {
                return Err(Error::BadData(
                    "label_join needs a destination and a separator".into(),
                ));
            }
            let (dst, sep, srcs) = (&strs[0], &strs[1], &strs[2..]);
            if !is_valid_label_name(dst) {
                return Err(Error::BadData(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let out = vs
                .into_iter()
                .map(|s| {
                    let joined: Vec<&str> =
                        srcs.iter().map(|n| s.labels.get(n).unwrap_or("")).collect();
                    let labels = labels_with(&s.labels, &[(dst, &joined.join(sep))], &[]);
                    VSeries { labels, ..s }
                })
                .collect();
            Ok(Val::Vector(dedup(out)?))
        }
        "absent" => {
            let e = arg(c, 0)?;
            let vs = ev.eval_vector(e)?;
            Ok(absent(e, n, |i| vs.iter().any(|s| s.v[i].is_some())))
        }
        "absent_over_time" => {
            let e = arg(c, 0)?;
            let m = ev.eval_matrix(e)?;
            Ok(absent(e, n, |i| {
                (0..m.series.len()).any(|s| !m.window(s, i).is_empty())
            }))
        }
        "rate" | "increase" | "delta" => {
            let counter = name != "delta";
            let rate = name == "rate";
            map_range(ev, arg(c, 0)?, false, |w, end, range| {
                extrapolated_rate(w, end, range, counter, rate)
            })
        }
        "irate" | "idelta" => map_range(ev, arg(c, 0)?, false, |w, _, _| {
            instant_delta(w, name == "irate")
        }),
        "deriv" => map_range(ev, arg(c, 0)?, false, |w, _, _| {
            (w.len() >= 2).then(|| linear_regression(w, w[0].0).0)
        }),
        "predict_linear" => {
            let m = ev.eval_matrix(arg(c, 0)?)?;
            let d = ev.eval_scalar(arg(c, 1)?)?;
            let evals = ev.ts.clone();
            map_matrix(
                &m,
                |w, i| {
                    (w.len() >= 2).then(|| {
                        let (slope, intercept) = linear_regression(w, evals[i]);
                        intercept + slope * d[i]
                    })
                },
                false,
            )
        }
        "holt_winters" | "double_exponential_smoothing" => {
            let m = ev.eval_matrix(arg(c, 0)?)?;
            let sf = ev.eval_scalar(arg(c, 1)?)?;
            let tf = ev.eval_scalar(arg(c, 2)?)?;
            if let Some(i) = (0..n).find(|&i| !(sf[i] > 0.0 && sf[i] < 1.0)) {
                return Err(Error::BadData(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {}",
                    sf[i]
                )));
            }
            if let Some(i) = (0..n).find(|&i| !(tf[i] > 0.0 && tf[i] < 1.0)) {
                return Err(Error::BadData(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {}",
                    tf[i]
                )));
            }
            map_matrix(&m, |w, i| holt_winters(w, sf[i], tf[i]), false)
        }
        "changes" | "resets" => map_range(ev, arg(c, 0)?, false, |w, _, _| {
            let mut k = 0.0;
            for p in w.windows(2) {
                let (a, b) = (p[0].1, p[1].1);
                let hit = if name == "changes" {
                    a != b && !(a.is_nan() && b.is_nan())
                } else {
                    b < a
                };
                if hit {
                    k += 1.0;
                }
            }
            Some(k)
        }),
        "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "stddev_over_time" | "stdvar_over_time" | "last_over_time"
        | "present_over_time" => {
            if let Expr::MatrixSelector(ms) = arg(c, 0)?
                && let Some(v) = over_windows(ev, name, ms)?
            {
                return Ok(v);
            }
            let keep = name == "last_over_time";
            map_range(ev, arg(c, 0)?, keep, |w, _, _| {
                let vals = w.iter().map(|&(_, v)| v);
                Some(match name {
                    "avg_over_time" => avg_values(vals),
                    "min_over_time" => {
                        vals.fold(f64::NAN, |a, v| if a.is_nan() || v < a { v } else { a })
                    }
                    "max_over_time" => {
                        vals.fold(f64::NAN, |a, v| if a.is_nan() || v > a { v } else { a })
                    }
                    "sum_over_time" => {
                        let (s, c) = vals.fold((0.0, 0.0), |(s, c), v| kahan_inc(v, s, c));
                        if s.is_infinite() { s } else { s + c }
                    }
                    "count_over_time" => w.len() as f64,
                    "stddev_over_time" => stdvar_values(vals).sqrt(),
                    "stdvar_over_time" => stdvar_values(vals),
                    "last_over_time" => w[w.len() - 1].1,
                    _ => 1.0,
                })
            })
        }
        "quantile_over_time" => {
            let q = ev.eval_scalar(arg(c, 0)?)?;
            let m = ev.eval_matrix(arg(c, 1)?)?;
            map_matrix(
                &m,
                |w, i| Some(quantile(q[i], w.iter().map(|&(_, v)| v).collect())),
                false,
            )
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(c, 0)?)?;
            let vs = ev.eval_vector(arg(c, 1)?)?;
            histogram_quantile(&q, vs, n)
        }
        "day_of_month" => date_fn(ev, c, |d| d.day() as f64),
        "day_of_week" => date_fn(ev, c, |d| d.weekday().num_days_from_sunday() as f64),
        "day_of_year" => date_fn(ev, c, |d| d.ordinal() as f64),
        "days_in_month" => date_fn(ev, c, days_in_month),
        "hour" => date_fn(ev, c, |d| d.hour() as f64),
        "minute" => date_fn(ev, c, |d| d.minute() as f64),
        "month" => date_fn(ev, c, |d| d.month() as f64),
        "year" => date_fn(ev, c, |d| d.year() as f64),
        other => Err(Error::BadData(format!(
            "function {other}() is not supported"
        ))),
    }
}

fn histogram_quantile(q: &[f64], vs: Vec<VSeries>, n: usize) -> Result<Val, Error> {
    // Group the bucket series by their labels without `le`.
    let mut groups: HashMap<Labels, Vec<(f64, usize)>> = HashMap::new();
    let mut order: Vec<Labels> = Vec::new();
    for (k, s) in vs.iter().enumerate() {
        let Some(le) = s.labels.get("le") else {
            continue;
        };
        let Ok(upper) = parse_le(le) else { continue };
        // Grouped with the metric name, which goes afterwards: two
        // histograms with the same other labels are an error, not merged.
        let key = labels_with(&s.labels, &[], &["le"]);
        let e = groups.entry(key.clone()).or_default();
        if e.is_empty() {
            order.push(key);
        }
        e.push((upper, k));
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let members = &groups[&key];
        let v: Vec<Option<f64>> = (0..n)
            .map(|i| {
                let mut buckets: Vec<(f64, f64)> = members
                    .iter()
                    .filter_map(|&(ub, k)| vs[k].v[i].map(|c| (ub, c)))
                    .collect();
                (!buckets.is_empty()).then(|| bucket_quantile(q[i], &mut buckets))
            })
            .collect();
        if v.iter().any(Option::is_some) {
            out.push(VSeries {
                labels: drop_name(&key),
                v,
                ts: None,
            });
        }
    }
    Ok(Val::Vector(dedup(out)?))
}

fn parse_le(s: &str) -> Result<f64, ()> {
    match s.trim() {
        "+Inf" | "+inf" | "Inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        t => t.parse().map_err(|_| ()),
    }
}

fn bucket_quantile(q: f64, b: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().is_none_or(|l| l.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce equal bounds.
    let mut c: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(ub, n) in b.iter() {
        match c.last_mut() {
            Some(last) if last.0 == ub => last.1 += n,
            _ => c.push((ub, n)),
        }
    }
    // Monotonic counts.
    let mut max = f64::NEG_INFINITY;
    for x in c.iter_mut() {
        if x.1 < max {
            x.1 = max;
        } else {
            max = x.1;
        }
    }
    if c.len() < 2 {
        return f64::NAN;
    }
    let total = c[c.len() - 1].1;
    if total == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * total;
    let idx = c[..c.len() - 1].partition_point(|x| x.1 < rank);
    if idx == c.len() - 1 {
        return c[c.len() - 2].0;
    }
    if idx == 0 && c[0].0 <= 0.0 {
        return c[0].0;
    }
    let (mut start, end, mut count) = (0.0, c[idx].0, c[idx].1);
    if idx > 0 {
        start = c[idx - 1].0;
        count -= c[idx - 1].1;
        rank -= c[idx - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// The grouping key and the output labels of a series for an aggregation.
fn group_labels(l: &Labels, m: Option<&LabelModifier>) -> Labels {
    match m {
        None => Labels::empty(),
        Some(LabelModifier::Include(by)) => Labels::from_pairs(
            l.iter()
                .filter(|x| by.labels.iter().any(|n| **n == *x.name))
                .map(|x| (x.name.clone(), x.value.clone())),
        ),
        Some(LabelModifier::Exclude(without)) => Labels::from_pairs(
            l.iter()
                .filter(|x| {
                    &*x.name != METRIC_NAME && !without.labels.iter().any(|n| **n == *x.name)
                })
                .map(|x| (x.name.clone(), x.value.clone())),
        ),
    }
}

pub(crate) fn aggregate(ev: &mut Ev<'_>, a: &AggregateExpr) -> Result<Val, Error> {
    let op = a.op.to_string();
    let n = ev.ts.len();
    let param = match &a.param {
        None => None,
        Some(p) => Some(ev.eval(p)?),
    };
    let vs = ev.eval_vector(&a.expr)?;
    let modifier = a.modifier.as_ref();
    let keys: Vec<Labels> = vs
        .iter()
        .map(|s| group_labels(&s.labels, modifier))
        .collect();
    let mut index: HashMap<&Labels, usize> = HashMap::new();
    let mut groups: Vec<(&Labels, Vec<usize>)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match index.get(k) {
            Some(&g) => groups[g].1.push(i),
            None => {
                index.insert(k, groups.len());
                groups.push((k, vec![i]));
            }
        }
    }
    let scalar_param = |p: &Option<Val>| -> Result<Vec<f64>, Error> {
        match p {
            Some(Val::Scalar(v)) => Ok(v.clone()),
            _ => Err(Error::BadData(format!("{op} needs a scalar parameter"))),
        }
    };
    match op.as_str() {
        "topk" | "bottomk" => {
            let k = scalar_param(&param)?;
            let top = op == "topk";
            let mut keep = vec![vec![false; n]; vs.len()];
            for (_, members) in &groups {
                for i in 0..n {
                    let kk = k[i];
                    if kk.is_nan() || kk < 1.0 {
                        continue;
                    }
                    let mut present: Vec<usize> = members
                        .iter()
                        .copied()
                        .filter(|&m| vs[m].v[i].is_some())
                        .collect();
                    present.sort_by(|&x, &y| {
                        let (a, b) = (
                            vs[x].v[i].unwrap_or(f64::NAN),
                            vs[y].v[i].unwrap_or(f64::NAN),
                        );
                        by_value(a, b, top)
                    });
                    for &m in present.iter().take(kk.min(1e9) as usize) {
                        keep[m][i] = true;
                    }
                }
            }
            let mut out: Vec<VSeries> = vs
                .into_iter()
                .zip(keep)
                .filter_map(|(s, kp)| {
                    let v: Vec<Option<f64>> =
                        s.v.iter()
                            .zip(&kp)
                            .map(|(x, &k)| if k { *x } else { None })
                            .collect();
                    v.iter().any(Option::is_some).then_some(VSeries {
                        labels: s.labels,
                        v,
                        ts: None,
                    })
                })
                .collect();
            if n == 1 {
                out.sort_by(|x, y| {
                    let (a, b) = (x.v[0].unwrap_or(f64::NAN), y.v[0].unwrap_or(f64::NAN));
                    by_value(a, b, top)
                });
            }
            return Ok(Val::Vector(out));
        }
        "count_values" => {
            let label = match &param {
                Some(Val::Str(s)) => s.clone(),
                _ => {
                    return Err(Error::BadData(
                        "count_values needs a string parameter".into(),
                    ));
                }
            };
            if !is_valid_label_name(&label) {
                return Err(Error::BadData(format!("invalid label name {label:?}")));
            }
            let mut out: Vec<VSeries> = Vec::new();
            let mut out_index: HashMap<Labels, usize> = HashMap::new();
            for (key, members) in &groups {
                for i in 0..n {
                    for &m in members {
                        let Some(v) = vs[m].v[i] else { continue };
                        let l = labels_with(key, &[(&label, &format_float(v))], &[]);
                        let idx = *out_index.entry(l.clone()).or_insert_with(|| {
                            out.push(VSeries {
                                labels: l,
                                v: vec![None; n],
                                ts: None,
                            });
                            out.len() - 1
                        });
                        let slot = &mut out[idx].v[i];
                        *slot = Some(slot.unwrap_or(0.0) + 1.0);
                    }
                }
            }
            return Ok(Val::Vector(out));
        }
        "limitk" | "limit_ratio" => {
            return Err(Error::BadData(format!("{op} is not supported")));
        }
        _ => {}
    }
    let q = if op == "quantile" {
        Some(scalar_param(&param)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(groups.len());
    for (key, members) in groups {
        let v: Vec<Option<f64>> = (0..n)
            .map(|i| {
                let vals: Vec<f64> = members.iter().filter_map(|&m| vs[m].v[i]).collect();
                if vals.is_empty() {
                    return None;
                }
                Some(match op.as_str() {
                    "sum" => vals.iter().sum(),
                    "avg" => {
                        let (mut mean, mut count) = (0.0f64, 0.0f64);
                        for &v in &vals {
                            count += 1.0;
                            if mean.is_infinite() {
                                if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                                    continue;
                                }
                                if !v.is_infinite() && !v.is_nan() {
                                    continue;
                                }
                            }
                            mean += v / count - mean / count;
                        }
                        mean
                    }
                    "min" => vals
                        .iter()
                        .fold(f64::NAN, |a, &v| if a.is_nan() || v < a { v } else { a }),
                    "max" => vals
                        .iter()
                        .fold(f64::NAN, |a, &v| if a.is_nan() || v > a { v } else { a }),
                    "count" => vals.len() as f64,
                    "group" => 1.0,
                    "stddev" | "stdvar" => {
                        let (mut count, mut mean, mut value) = (0.0f64, 0.0f64, 0.0f64);
                        for &v in &vals {
                            count += 1.0;
                            let delta = v - mean;
                            mean += delta / count;
                            value += delta * (v - mean);
                        }
                        let var = value / count;
                        if op == "stddev" { var.sqrt() } else { var }
                    }
                    "quantile" => quantile(q.as_ref().map_or(f64::NAN, |q| q[i]), vals),
                    _ => f64::NAN,
                })
            })
            .collect();
        if !matches!(
            op.as_str(),
            "sum" | "avg" | "min" | "max" | "count" | "group" | "stddev" | "stdvar" | "quantile"
        ) {
            return Err(Error::BadData(format!("aggregation {op} is not supported")));
        }
        if v.iter().any(Option::is_some) {
            out.push(VSeries {
                labels: key.clone(),
                v,
                ts: None,
            });
        }
    }
    Ok(Val::Vector(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_prometheus() {
        assert_eq!(quantile(0.5, vec![1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(0.0, vec![3.0, 1.0]), 1.0);
        assert_eq!(quantile(2.0, vec![1.0]), f64::INFINITY);
        assert!(quantile(0.5, vec![]).is_nan());
    }

    #[test]
    fn bucket_quantile_matches_the_classic_histogram_rules() {
        let mut b = vec![
            (0.1, 10.0),
            (0.5, 50.0),
            (1.0, 90.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((bucket_quantile(0.5, &mut b) - 0.5).abs() < 1e-12);
        let mut b = vec![(0.1, 10.0), (f64::INFINITY, 100.0)];
        // Rank in the +Inf bucket: the highest finite bound.
        assert_eq!(bucket_quantile(0.99, &mut b), 0.1);
        let mut b = vec![(1.0, 1.0)];
        assert!(bucket_quantile(0.5, &mut b).is_nan(), "no +Inf bucket");
    }

    #[test]
    fn rate_extrapolates_to_the_window_edges() {
        // A counter going up by 1 every 15 s, window of 60 s ending at 60 s.
        let w: Vec<(i64, f64)> = (0..=4).map(|i| (i * 15_000, i as f64)).collect();
        let r = extrapolated_rate(&w, 60_000, 60_000, true, true).unwrap();
        assert!((r - 4.0 / 60.0).abs() < 1e-12, "{r}");
        // A reset adds the value before it: 5→6 is 1, then 0→1 is 1.
        let w = vec![(0, 5.0), (15_000, 6.0), (30_000, 1.0)];
        let inc = extrapolated_rate(&w, 30_000, 30_000, true, false).unwrap();
        assert_eq!(inc, 2.0);
    }
}
