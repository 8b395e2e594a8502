//! The evaluator: every node is evaluated once for all steps of a query.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{
    self, AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    SubqueryExpr, VectorMatchCardinality, VectorSelector,
};
use tiermon_model::{Labels, LabelsBuilder, METRIC_NAME, MatchOp, Matcher, STALE_NAN};

use crate::functions;
use crate::{Error, Options, Queryable, Sample, Series, Value, WindowField};

/// Evaluates PromQL queries.
#[derive(Debug, Clone)]
pub struct Engine {
    opts: Options,
    cancel: Option<Arc<AtomicBool>>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(Options::default())
    }
}

/// One series of an instant vector over all steps.
#[derive(Debug, Clone)]
pub(crate) struct VSeries {
    pub labels: Labels,
    pub v: Vec<Option<f64>>,
    /// Timestamps of the samples a plain selector picked (for
    /// `timestamp()`); `None` once anything else touched the series.
    pub ts: Option<Vec<i64>>,
}

/// A range vector: per series, raw samples; per step, the window
/// `[end - range, end]`. (Functions that need "now", like
/// `predict_linear`, use the step's time, even under `@`, as Prometheus
/// does.)
#[derive(Debug, Clone)]
pub(crate) struct Mat {
    pub series: Vec<Series>,
    pub range: i64,
    pub ends: Vec<i64>,
}

impl Mat {
    /// Samples of series `s` in step `i`'s window.
    pub fn window(&self, s: usize, i: usize) -> &[(i64, f64)] {
        let samples = &self.series[s].samples;
        let end = self.ends[i];
        let start = end - self.range;
        let lo = samples.partition_point(|&(t, _)| t < start);
        let hi = samples.partition_point(|&(t, _)| t <= end);
        &samples[lo..hi.max(lo)]
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Val {
    Scalar(Vec<f64>),
    Str(String),
    Vector(Vec<VSeries>),
    Matrix(Mat),
}

pub(crate) struct Ev<'a> {
    pub store: &'a dyn Queryable,
    pub cancel: Option<&'a AtomicBool>,
    pub opts: &'a Options,
    /// Evaluation timestamps.
    pub ts: Vec<i64>,
    /// Query start and end (for `@ start()` / `@ end()`).
    pub start: i64,
    pub end: i64,
    pub loaded: usize,
}

fn millis(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => millis(d),
        Some(Offset::Neg(d)) => -millis(d),
    }
}

fn system_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Drops staleness markers (range vectors never hold them) and the series
/// left empty.
fn drop_stale(series: &mut Vec<Series>) {
    for s in series.iter_mut() {
        s.samples
            .retain(|&(_, v)| v.to_bits() != STALE_NAN.to_bits());
    }
    series.retain(|s| !s.samples.is_empty());
}

/// The matchers of a parsed selector (its metric name included).
pub fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, Error> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(Error::BadData(
            "\"or\" inside a selector is not supported".into(),
        ));
    }
    let mut matchers = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        matchers.push(
            Matcher::new(MatchOp::Equal, METRIC_NAME, name)
                .map_err(|e| Error::BadData(e.to_string()))?,
        );
    }
    for m in &vs.matchers.matchers {
        let op = match m.op {
            PMatchOp::Equal => MatchOp::Equal,
            PMatchOp::NotEqual => MatchOp::NotEqual,
            PMatchOp::Re(_) => MatchOp::Regex,
            PMatchOp::NotRe(_) => MatchOp::NotRegex,
        };
        matchers
            .push(Matcher::new(op, &m.name, &m.value).map_err(|e| Error::BadData(e.to_string()))?);
    }
    Ok(matchers)
}

pub(crate) fn drop_name(l: &Labels) -> Labels {
    if l.get(METRIC_NAME).is_none() {
        return l.clone();
    }
    let mut b = l.to_builder();
    b.del(METRIC_NAME);
    b.build()
}

/// Formats a float as Go's `strconv.FormatFloat(f, 'f', -1, 64)`, the
/// way Prometheus prints sample values (and `count_values` labels).
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Engine {
    /// An engine with these options.
    pub fn new(opts: Options) -> Self {
        register_functions();
        Self { opts, cancel: None }
    }

    /// This engine, stopping its queries with an error as soon as `flag`
    /// is set (by a timeout or a client that went away).
    pub fn with_cancel(&self, flag: Arc<AtomicBool>) -> Self {
        Self {
            opts: self.opts.clone(),
            cancel: Some(flag),
        }
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Parses a query.
    pub fn parse(query: &str) -> Result<Expr, Error> {
        register_functions();
        parser::parse(query).map_err(Error::BadData)
    }

    /// Evaluates `query` at `t` (ms).
    pub fn instant(&self, store: &dyn Queryable, query: &str, t: i64) -> Result<Value, Error> {
        let expr = Self::parse(query)?;
        let mut ev = Ev {
            store,
            cancel: self.cancel.as_deref(),
            opts: &self.opts,
            ts: vec![t],
            start: t,
            end: t,
            loaded: 0,
        };
        Ok(match ev.eval(&expr)? {
            Val::Scalar(v) => Value::Scalar(t, v[0]),
            Val::Str(s) => Value::String(t, s),
            Val::Vector(vs) => Value::Vector(
                vs.into_iter()
                    .filter_map(|s| {
                        s.v[0].map(|v| Sample {
                            labels: s.labels,
                            t,
                            v,
                        })
                    })
                    .collect(),
            ),
            Val::Matrix(m) => Value::Matrix(
                (0..m.series.len())
                    .filter_map(|s| {
                        let w = m.window(s, 0);
                        (!w.is_empty()).then(|| Series {
                            labels: m.series[s].labels.clone(),
                            samples: w.to_vec(),
                        })
                    })
                    .collect(),
            ),
        })
    }

    /// Evaluates `query` at every `step` from `start` to `end` (ms).
    pub fn range(
        &self,
        store: &dyn Queryable,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Value, Error> {
        if step <= 0 {
            return Err(Error::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end < start {
            return Err(Error::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        let points = (end - start) / step + 1;
        if points as usize > self.opts.max_points_per_series {
            return Err(Error::BadData(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                self.opts.max_points_per_series
            )));
        }
        let expr = Self::parse(query)?;
        match expr.value_type() {
            parser::value::ValueType::Scalar | parser::value::ValueType::Vector => {}
            other => {
                return Err(Error::BadData(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    type_name(other)
                )));
            }
        }
        let ts: Vec<i64> = (0..points).map(|i| start + i * step).collect();
        let mut ev = Ev {
            store,
            cancel: self.cancel.as_deref(),
            opts: &self.opts,
            ts,
            start,
            end,
            loaded: 0,
        };
        let val = ev.eval(&expr)?;
        let to_series = |labels: Labels, v: &[Option<f64>], ts: &[i64]| Series {
            labels,
            samples: ts
                .iter()
                .zip(v)
                .filter_map(|(&t, v)| v.map(|v| (t, v)))
                .collect(),
        };
        Ok(match val {
            Val::Scalar(v) => Value::Matrix(vec![to_series(
                Labels::empty(),
                &v.into_iter().map(Some).collect::<Vec<_>>(),
                &ev.ts,
            )]),
            Val::Vector(vs) => {
                let mut out: Vec<Series> = vs
                    .into_iter()
                    .map(|s| to_series(s.labels, &s.v, &ev.ts))
                    .filter(|s| !s.samples.is_empty())
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                Value::Matrix(out)
            }
            _ => return Err(Error::Execution("unexpected range query result".into())),
        })
    }
}

/// Functions Prometheus 2.x has that the parser knows under a newer name.
fn register_functions() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use promql_parser::parser::value::ValueType as T;
        let hw = promql_parser::parser::Function::new(
            "holt_winters",
            vec![T::Matrix, T::Scalar, T::Scalar],
            0,
            T::Vector,
            false,
        );
        // An error only means the parser has the function built in.
        let _ = promql_parser::parser::register_extra_functions(vec![hw]);
    });
}

fn type_name(t: parser::value::ValueType) -> &'static str {
    match t {
        parser::value::ValueType::Scalar => "scalar",
        parser::value::ValueType::Vector => "vector",
        parser::value::ValueType::Matrix => "range vector",
        parser::value::ValueType::String => "string",
    }
}

impl Ev<'_> {
    fn n(&self) -> usize {
        self.ts.len()
    }

    fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            None => None,
            Some(AtModifier::Start) => Some(self.start),
            Some(AtModifier::End) => Some(self.end),
            Some(AtModifier::At(t)) => Some(system_ms(t)),
        }
    }

    fn charge(&mut self, n: usize) -> Result<(), Error> {
        self.loaded += n;
        if self.loaded > self.opts.max_samples {
            return Err(Error::Limit(format!(
                "query processing would load too many samples into memory in query execution (limit {})",
                self.opts.max_samples
            )));
        }
        Ok(())
    }

    /// An error once the query has been cancelled.
    fn check_cancel(&self) -> Result<(), Error> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Execution(
                "query cancelled: it ran past its timeout".into(),
            ));
        }
        Ok(())
    }

    pub fn eval(&mut self, e: &Expr) -> Result<Val, Error> {
        self.check_cancel()?;
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; self.n()])),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
                Val::Vector(vs) => Ok(Val::Vector(dedup(
                    vs.into_iter()
                        .map(|s| VSeries {
                            labels: drop_name(&s.labels),
                            v: s.v.into_iter().map(|x| x.map(|x| -x)).collect(),
                            ts: None,
                        })
                        .collect(),
                )?)),
                _ => Err(Error::BadData(
                    "unary minus needs a scalar or an instant vector".into(),
                )),
            },
            Expr::VectorSelector(vs) => self.vector_selector(vs),
            Expr::MatrixSelector(ms) => self.matrix_selector(ms).map(Val::Matrix),
            Expr::Subquery(sq) => self.subquery(sq).map(Val::Matrix),
            Expr::Binary(b) => self.binary(b),
            Expr::Aggregate(a) => self.aggregate(a),
            Expr::Call(c) => self.call(c),
            Expr::Extension(_) => Err(Error::BadData(
                "extension expressions are not supported".into(),
            )),
        }
    }

    fn select(&mut self, vs: &VectorSelector, mint: i64, maxt: i64) -> Result<Vec<Series>, Error> {
        let got = self.select_from(vs, |store, m| store.select(m, mint, maxt).map(Some))?;
        Ok(got.unwrap_or_default())
    }

    /// The series `read` gives for `vs`' matchers (`None`: the store has
    /// no such data), under the per-selector limits, samples by time.
    fn select_from(
        &mut self,
        vs: &VectorSelector,
        read: impl FnOnce(&dyn Queryable, &[Matcher]) -> Result<Option<Vec<Series>>, String>,
    ) -> Result<Option<Vec<Series>>, Error> {
        let matchers = selector_matchers(vs)?;
        let Some(mut series) = read(self.store, &matchers).map_err(Error::Storage)? else {
            return Ok(None);
        };
        if series.len() > self.opts.max_series {
            return Err(Error::Limit(format!(
                "selector {vs} matches {} series, over the limit of {} per selector",
                series.len(),
                self.opts.max_series
            )));
        }
        self.take(&mut series)?;
        Ok(Some(series))
    }

    /// Charges `series`' samples to the query's sample limit and puts each
    /// series' samples in time order.
    fn take(&mut self, series: &mut [Series]) -> Result<(), Error> {
        self.charge(series.iter().map(|s| s.samples.len()).sum())?;
        for s in series {
            s.samples.sort_by_key(|&(t, _)| t);
        }
        Ok(())
    }

    /// The time each step reads at: `@` or the step, minus the offset.
    fn read_times(&self, at: &Option<AtModifier>, offset: &Option<Offset>) -> Vec<i64> {
        let off = offset_ms(offset);
        let at = self.at_ms(at);
        self.ts.iter().map(|&t| at.unwrap_or(t) - off).collect()
    }

    fn vector_selector(&mut self, vs: &VectorSelector) -> Result<Val, Error> {
        let reads = self.read_times(&vs.at, &vs.offset);
        let lookback = self.opts.lookback_ms;
        let (Some(&lo), Some(&hi)) = (reads.iter().min(), reads.iter().max()) else {
            return Ok(Val::Vector(Vec::new()));
        };
        let series = self.select(vs, lo - lookback, hi)?;
        let mut out = Vec::with_capacity(series.len());
        for s in series {
            let mut v = Vec::with_capacity(reads.len());
            let mut ts = Vec::with_capacity(reads.len());
            let mut any = false;
            for &rt in &reads {
                let idx = s.samples.partition_point(|&(t, _)| t <= rt);
                let got = idx
                    .checked_sub(1)
                    .map(|i| s.samples[i])
                    .filter(|&(t, x)| t >= rt - lookback && x.to_bits() != STALE_NAN.to_bits());
                any |= got.is_some();
                v.push(got.map(|(_, x)| x));
                ts.push(got.map_or(0, |(t, _)| t));
            }
            if any {
                out.push(VSeries {
                    labels: s.labels,
                    v,
                    ts: Some(ts),
                });
            }
        }
        Ok(Val::Vector(out))
    }

    fn matrix_selector(&mut self, ms: &MatrixSelector) -> Result<Mat, Error> {
        let vs = &ms.vs;
        let range = millis(&ms.range);
        let ends = self.read_times(&vs.at, &vs.offset);
        let (Some(&lo), Some(&hi)) = (ends.iter().min(), ends.iter().max()) else {
            return Ok(Mat {
                series: Vec::new(),
                range,
                ends,
            });
        };
        let mut series = self.select(vs, lo - range, hi)?;
        drop_stale(&mut series);
        Ok(Mat {
            series,
            range,
            ends,
        })
    }

    /// `ms` read in batches of series, each batch handed to `f` as a
    /// matrix of its own (same range and steps), under the same limits as
    /// [`Self::matrix_selector`]: only one batch's samples are held at a
    /// time.
    pub(crate) fn matrix_selector_batches(
        &mut self,
        ms: &MatrixSelector,
        mut f: impl FnMut(Mat),
    ) -> Result<(), Error> {
        /// Series per batch: enough to amortise a read, few enough that a
        /// day of 15 s samples stays in the processor's caches' reach.
        const BATCH: usize = 256;
        let vs = &ms.vs;
        let matchers = selector_matchers(vs)?;
        let range = millis(&ms.range);
        let ends = self.read_times(&vs.at, &vs.offset);
        let (Some(&lo), Some(&hi)) = (ends.iter().min(), ends.iter().max()) else {
            return Ok(());
        };
        let store = self.store;
        let mut seen = 0usize;
        let mut failed: Option<Error> = None;
        let read = store.select_batches(&matchers, lo - range, hi, BATCH, &mut |mut series| {
            seen += series.len();
            if seen > self.opts.max_series {
                failed = Some(Error::Limit(format!(
                    "selector {vs} matches more than {} series, the limit per selector",
                    self.opts.max_series
                )));
                return false;
            }
            if let Err(e) = self.take(&mut series).and_then(|()| self.check_cancel()) {
                failed = Some(e);
                return false;
            }
            drop_stale(&mut series);
            f(Mat {
                series,
                range,
                ends: ends.clone(),
            });
            true
        });
        if let Some(e) = failed {
            return Err(e);
        }
        read.map_err(Error::Storage)
    }

    /// `ms` read as `field` of downsampled windows, when the store keeps
    /// them ([`Queryable::select_windows`]).
    pub(crate) fn matrix_windows(
        &mut self,
        ms: &MatrixSelector,
        field: WindowField,
    ) -> Result<Option<Mat>, Error> {
        let vs = &ms.vs;
        let range = millis(&ms.range);
        let ends = self.read_times(&vs.at, &vs.offset);
        let (Some(&lo), Some(&hi)) = (ends.iter().min(), ends.iter().max()) else {
            return Ok(None);
        };
        let Some(mut series) = self.select_from(vs, |store, m| {
            store.select_windows(m, lo - range, hi, field)
        })?
        else {
            return Ok(None);
        };
        drop_stale(&mut series);
        Ok(Some(Mat {
            series,
            range,
            ends,
        }))
    }

    fn subquery(&mut self, sq: &SubqueryExpr) -> Result<Mat, Error> {
        let range = millis(&sq.range);
        let step = sq
            .step
            .as_ref()
            .map(millis)
            .filter(|&s| s > 0)
            .unwrap_or(self.opts.default_subquery_step_ms);
        let ends = self.read_times(&sq.at, &sq.offset);
        let (Some(&lo), Some(&hi)) = (ends.iter().min(), ends.iter().max()) else {
            return Ok(Mat {
                series: Vec::new(),
                range,
                ends,
            });
        };
        // The first step-aligned time at or after the earliest window start.
        let first = lo - range;
        let mut start = first.div_euclid(step) * step;
        if start < first {
            start += step;
        }
        let steps = if hi >= start {
            (hi - start) / step + 1
        } else {
            0
        };
        if steps as usize > self.opts.max_samples {
            return Err(Error::Limit("subquery has too many steps".into()));
        }
        let ts: Vec<i64> = (0..steps).map(|i| start + i * step).collect();
        let mut inner = Ev {
            store: self.store,
            cancel: self.cancel,
            opts: self.opts,
            ts: ts.clone(),
            start: self.start,
            end: self.end,
            loaded: self.loaded,
        };
        let val = inner.eval(&sq.expr)?;
        self.loaded = inner.loaded;
        let series = match val {
            Val::Vector(vs) => vs
                .into_iter()
                .map(|s| Series {
                    labels: s.labels,
                    samples: ts
                        .iter()
                        .zip(s.v)
                        .filter_map(|(&t, v)| v.map(|v| (t, v)))
                        .collect(),
                })
                .filter(|s| !s.samples.is_empty())
                .collect(),
            Val::Scalar(v) => vec![Series {
                labels: Labels::empty(),
                samples: ts.iter().copied().zip(v).collect(),
            }],
            _ => {
                return Err(Error::BadData(
                    "subquery needs an instant vector or a scalar".into(),
                ));
            }
        };
        let n: usize = series.iter().map(|s: &Series| s.samples.len()).sum();
        self.charge(n)?;
        Ok(Mat {
            series,
            range,
            ends,
        })
    }

    fn call(&mut self, c: &Call) -> Result<Val, Error> {
        functions::call(self, c)
    }

    pub fn eval_scalar(&mut self, e: &Expr) -> Result<Vec<f64>, Error> {
        match self.eval(e)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(Error::BadData(format!("expected a scalar, got {e}"))),
        }
    }

    pub fn eval_vector(&mut self, e: &Expr) -> Result<Vec<VSeries>, Error> {
        match self.eval(e)? {
            Val::Vector(v) => Ok(v),
            _ => Err(Error::BadData(format!(
                "expected an instant vector, got {e}"
            ))),
        }
    }

    pub fn eval_matrix(&mut self, e: &Expr) -> Result<Mat, Error> {
        match self.eval(e)? {
            Val::Matrix(m) => Ok(m),
            _ => Err(Error::BadData(format!("expected a range vector, got {e}"))),
        }
    }

    fn binary(&mut self, b: &BinaryExpr) -> Result<Val, Error> {
        let op = b.op.to_string();
        let return_bool = b.return_bool();
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let mut out = Vec::with_capacity(l.len());
                for (a, c) in l.into_iter().zip(r) {
                    let (v, keep) = scalar_op(&op, a, c)?;
                    out.push(if is_comparison(&op) {
                        if keep { 1.0 } else { 0.0 }
                    } else {
                        v
                    });
                }
                Ok(Val::Scalar(out))
            }
            (Val::Vector(l), Val::Scalar(r)) => self.vector_scalar(&op, l, &r, false, return_bool),
            (Val::Scalar(l), Val::Vector(r)) => self.vector_scalar(&op, r, &l, true, return_bool),
            (Val::Vector(l), Val::Vector(r)) => {
                let card = b
                    .modifier
                    .as_ref()
                    .map(|m| m.card.clone())
                    .unwrap_or(VectorMatchCardinality::OneToOne);
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                match op.as_str() {
                    "and" | "or" | "unless" => {
                        Ok(Val::Vector(set_op(&op, l, r, matching.as_ref(), self.n())))
                    }
                    _ => Ok(Val::Vector(vector_vector(
                        &op,
                        l,
                        r,
                        &card,
                        matching.as_ref(),
                        return_bool,
                        self.n(),
                    )?)),
                }
            }
            _ => Err(Error::BadData(format!(
                "invalid operands for binary operator {op}"
            ))),
        }
    }

    fn vector_scalar(
        &mut self,
        op: &str,
        vs: Vec<VSeries>,
        s: &[f64],
        swap: bool,
        return_bool: bool,
    ) -> Result<Val, Error> {
        let comparison = is_comparison(op);
        let drop = !comparison || return_bool;
        let mut out = Vec::with_capacity(vs.len());
        for series in vs {
            let mut v = Vec::with_capacity(series.v.len());
            let mut any = false;
            for (i, x) in series.v.iter().enumerate() {
                let r = match x {
                    None => None,
                    Some(x) => {
                        let (l, r) = if swap { (s[i], *x) } else { (*x, s[i]) };
                        let (mut value, keep) = scalar_op(op, l, r)?;
                        if comparison && swap {
                            value = r;
                        }
                        if return_bool {
                            Some(if keep { 1.0 } else { 0.0 })
                        } else if keep {
                            Some(value)
                        } else {
                            None
                        }
                    }
                };
                any |= r.is_some();
                v.push(r);
            }
            if any {
                out.push(VSeries {
                    labels: if drop {
                        drop_name(&series.labels)
                    } else {
                        series.labels
                    },
                    v,
                    ts: None,
                });
            }
        }
        Ok(Val::Vector(dedup(out)?))
    }

    fn aggregate(&mut self, a: &AggregateExpr) -> Result<Val, Error> {
        crate::functions::aggregate(self, a)
    }
}

pub(crate) fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// `(value, keep)` of `l op r`: comparisons keep `l` when true.
pub(crate) fn scalar_op(op: &str, l: f64, r: f64) -> Result<(f64, bool), Error> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => {
            return Err(Error::BadData(format!(
                "operator {other} is not allowed here"
            )));
        }
    })
}

/// The matching signature of a series.
fn signature(l: &Labels, matching: Option<&LabelModifier>) -> Vec<(String, String)> {
    match matching {
        Some(LabelModifier::Include(on)) => {
            let mut names: Vec<&String> = on.labels.iter().collect();
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|n| (n.clone(), l.get(n).unwrap_or("").to_owned()))
                .collect()
        }
        Some(LabelModifier::Exclude(ign)) => l
            .iter()
            .filter(|x| &*x.name != METRIC_NAME && !ign.labels.iter().any(|n| **n == *x.name))
            .map(|x| (x.name.to_string(), x.value.to_string()))
            .collect(),
        None => l
            .iter()
            .filter(|x| &*x.name != METRIC_NAME)
            .map(|x| (x.name.to_string(), x.value.to_string()))
            .collect(),
    }
}

fn set_op(
    op: &str,
    l: Vec<VSeries>,
    r: Vec<VSeries>,
    matching: Option<&LabelModifier>,
    n: usize,
) -> Vec<VSeries> {
    let lsig: Vec<_> = l.iter().map(|s| signature(&s.labels, matching)).collect();
    let rsig: Vec<_> = r.iter().map(|s| signature(&s.labels, matching)).collect();
    // Per signature, the steps where the other side has a value.
    fn present<'s>(
        sigs: &'s [Vec<(String, String)>],
        side: &[VSeries],
        n: usize,
    ) -> HashMap<&'s Vec<(String, String)>, Vec<bool>> {
        let mut m: HashMap<&Vec<(String, String)>, Vec<bool>> = HashMap::new();
        for (sig, s) in sigs.iter().zip(side) {
            let e = m.entry(sig).or_insert_with(|| vec![false; n]);
            for (i, v) in s.v.iter().enumerate() {
                e[i] |= v.is_some();
            }
        }
        m
    }
    match op {
        "and" | "unless" => {
            let rp = present(&rsig, &r, n);
            let want = op == "and";
            l.into_iter()
                .zip(&lsig)
                .filter_map(|(mut s, sig)| {
                    let p = rp.get(sig);
                    for (i, v) in s.v.iter_mut().enumerate() {
                        let has = p.is_some_and(|p| p[i]);
                        if has != want {
                            *v = None;
                        }
                    }
                    s.v.iter().any(Option::is_some).then_some(s)
                })
                .collect()
        }
        _ => {
            let lp = present(&lsig, &l, n);
            let mut out: Vec<VSeries> = l.clone();
            for (mut s, sig) in r.into_iter().zip(&rsig) {
                let p = lp.get(sig);
                for (i, v) in s.v.iter_mut().enumerate() {
                    if p.is_some_and(|p| p[i]) {
                        *v = None;
                    }
                }
                if s.v.iter().any(Option::is_some) {
                    out.push(s);
                }
            }
            out
        }
    }
}

fn vector_vector(
    op: &str,
    l: Vec<VSeries>,
    r: Vec<VSeries>,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
    return_bool: bool,
    n: usize,
) -> Result<Vec<VSeries>, Error> {
    let comparison = is_comparison(op);
    // The "one" side is always `one`; `many` drives the result.
    let (many, one, swapped) = match card {
        VectorMatchCardinality::OneToMany(_) => (r, l, true),
        _ => (l, r, false),
    };
    let include: Vec<String> = match card {
        VectorMatchCardinality::ManyToOne(ls) | VectorMatchCardinality::OneToMany(ls) => {
            ls.labels.clone()
        }
        _ => Vec::new(),
    };
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let one_sig: Vec<_> = one.iter().map(|s| signature(&s.labels, matching)).collect();
    let many_sig: Vec<_> = many
        .iter()
        .map(|s| signature(&s.labels, matching))
        .collect();
    let mut by_sig: HashMap<&Vec<(String, String)>, Vec<usize>> = HashMap::new();
    for (i, sig) in one_sig.iter().enumerate() {
        by_sig.entry(sig).or_default().push(i);
    }
    // Result series by labels, built step by step.
    let mut out: Vec<VSeries> = Vec::new();
    let mut out_index: HashMap<Labels, usize> = HashMap::new();
    let mut result_labels: HashMap<(usize, usize), Labels> = HashMap::new();
    for i in 0..n {
        // The "one" side's match per signature at this step.
        let mut one_at: HashMap<&Vec<(String, String)>, usize> = HashMap::new();
        for (sig, idxs) in &by_sig {
            for &k in idxs {
                if one[k].v[i].is_none() {
                    continue;
                }
                if let Some(prev) = one_at.insert(sig, k) {
                    let side = if swapped { "left" } else { "right" };
                    return Err(Error::Execution(format!(
                        "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                        fmt_sig(sig),
                        one[prev].labels,
                        one[k].labels
                    )));
                }
            }
        }
        let mut matched_once: HashMap<&Vec<(String, String)>, usize> = HashMap::new();
        for (mi, m) in many.iter().enumerate() {
            let Some(mv) = m.v[i] else { continue };
            let Some(&oi) = one_at.get(&many_sig[mi]) else {
                continue;
            };
            let Some(ov) = one[oi].v[i] else { continue };
            if one_to_one && matched_once.insert(&many_sig[mi], mi).is_some() {
                return Err(Error::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
            let (lv, rv) = if swapped { (ov, mv) } else { (mv, ov) };
            let (mut value, keep) = scalar_op(op, lv, rv)?;
            if return_bool {
                value = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let labels = result_labels
                .entry((mi, oi))
                .or_insert_with(|| {
                    let mut b = m.labels.to_builder();
                    if !comparison || return_bool {
                        b.del(METRIC_NAME);
                    }
                    if one_to_one {
                        match matching {
                            Some(LabelModifier::Include(on)) => {
                                let keep: Vec<String> = m
                                    .labels
                                    .iter()
                                    .map(|x| x.name.to_string())
                                    .filter(|n| !on.labels.contains(n))
                                    .collect();
                                for k in keep {
                                    b.del(&k);
                                }
                            }
                            Some(LabelModifier::Exclude(ign)) => {
                                for k in &ign.labels {
                                    b.del(k);
                                }
                            }
                            None => {}
                        }
                    }
                    for name in &include {
                        match one[oi].labels.get(name) {
                            Some(v) if !v.is_empty() => {
                                b.set(name.as_str(), v);
                            }
                            _ => {
                                b.del(name);
                            }
                        }
                    }
                    b.build()
                })
                .clone();
            let idx = match out_index.get(&labels) {
                Some(&k) => k,
                None => {
                    out.push(VSeries {
                        labels: labels.clone(),
                        v: vec![None; n],
                        ts: None,
                    });
                    out_index.insert(labels, out.len() - 1);
                    out.len() - 1
                }
            };
            if out[idx].v[i].is_some() {
                return Err(Error::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            out[idx].v[i] = Some(value);
        }
    }
    Ok(out)
}

fn fmt_sig(sig: &[(String, String)]) -> String {
    let parts: Vec<String> = sig.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// Merges series with the same labels; two values at one step are an
/// error, as in Prometheus.
pub(crate) fn dedup(vs: Vec<VSeries>) -> Result<Vec<VSeries>, Error> {
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(vs.len());
    let mut out: Vec<VSeries> = Vec::with_capacity(vs.len());
    for s in vs {
        match index.get(&s.labels) {
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
            Some(&k) => {
                let t = &mut out[k];
                t.ts = None;
                for (a, b) in t.v.iter_mut().zip(s.v) {
                    if let Some(b) = b {
                        if a.is_some() {
                            return Err(Error::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *a = Some(b);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Builds labels from pairs (for functions that create series).
pub(crate) fn labels_with(base: &Labels, set: &[(&str, &str)], del: &[&str]) -> Labels {
    let mut b: LabelsBuilder = base.to_builder();
    for d in del {
        b.del(d);
    }
    for (k, v) in set {
        if v.is_empty() {
            b.del(k);
        } else {
            b.set(*k, *v);
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<Series>);

    impl Queryable for Mem {
        fn select(&self, m: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, String> {
            Ok(self
                .0
                .iter()
                .filter(|s| {
                    m.iter()
                        .all(|m| m.matches(s.labels.get(m.name()).unwrap_or("")))
                })
                .map(|s| Series {
                    labels: s.labels.clone(),
                    samples: s
                        .samples
                        .iter()
                        .copied()
                        .filter(|&(t, _)| t >= mint && t <= maxt)
                        .collect(),
                })
                .collect())
        }
    }

    /// The windows of [`Mem`]'s series: per minute, the field at the
    /// window's last sample, as the global tier keeps them.
    struct Windowed(Mem);

    impl Queryable for Windowed {
        fn select(&self, m: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, String> {
            // Raw reads see only each window's last sample.
            let mut got = self.0.select(m, mint, maxt)?;
            for s in &mut got {
                let mut last: Vec<(i64, f64)> = Vec::new();
                for &(t, v) in &s.samples {
                    match last.last_mut() {
                        Some(l) if l.0 / 60_000 == t / 60_000 => *l = (t, v),
                        _ => last.push((t, v)),
                    }
                }
                s.samples = last;
            }
            Ok(got)
        }

        fn select_windows(
            &self,
            m: &[Matcher],
            mint: i64,
            maxt: i64,
            field: WindowField,
        ) -> Result<Option<Vec<Series>>, String> {
            // All of each window whose last sample is in range.
            let got = self.0.select(m, mint - 60_000, maxt)?;
            Ok(Some(
                got.into_iter()
                    .map(|s| {
                        let mut w: Vec<(i64, Vec<f64>)> = Vec::new();
                        for &(t, v) in &s.samples {
                            match w.last_mut() {
                                Some(l) if l.0 / 60_000 == t / 60_000 => {
                                    l.0 = t;
                                    l.1.push(v);
                                }
                                _ => w.push((t, vec![v])),
                            }
                        }
                        let samples = w
                            .into_iter()
                            .filter(|(t, _)| *t >= mint && *t <= maxt)
                            .map(|(t, vs)| {
                                let v = match field {
                                    WindowField::Min => {
                                        vs.iter().copied().fold(f64::INFINITY, f64::min)
                                    }
                                    WindowField::Max => {
                                        vs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                                    }
                                    WindowField::Sum => vs.iter().sum(),
                                    WindowField::Count => vs.len() as f64,
                                };
                                (t, v)
                            })
                            .collect();
                        Series {
                            labels: s.labels,
                            samples,
                        }
                    })
                    .collect(),
            ))
        }
    }

    #[test]
    fn over_time_functions_read_whole_windows_where_the_store_keeps_them() {
        let e = Engine::default();
        // A wave sampled every 15 s; windows of a minute, ranges aligned
        // with them, so the windows answer exactly what raw data would.
        let raw = || {
            Mem(vec![Series {
                labels: Labels::from_pairs([("__name__", "x"), ("job", "a")]),
                samples: (0..80)
                    .map(|i| (i * 15_000, ((i * 7) % 11) as f64))
                    .collect(),
            }])
        };
        for f in ["min", "max", "sum", "count", "avg"] {
            let q = format!("{f}_over_time(x[5m])");
            let want = e.range(&raw(), &q, 299_999, 1_199_999, 60_000).unwrap();
            let got = e
                .range(&Windowed(raw()), &q, 299_999, 1_199_999, 60_000)
                .unwrap();
            let (Value::Matrix(g), Value::Matrix(w)) = (&got, &want) else {
                panic!("not matrices");
            };
            assert_eq!(g.len(), w.len(), "{q}");
            for (a, b) in g.iter().zip(w) {
                assert_eq!(a.labels, b.labels, "{q}");
                assert_eq!(a.samples.len(), b.samples.len(), "{q}");
                for (x, y) in a.samples.iter().zip(&b.samples) {
                    // avg: Σsum/Σcount rounds differently from Prometheus'
                    // running mean.
                    assert!(
                        x.0 == y.0 && (x.1 - y.1).abs() < 1e-9,
                        "{q}: {x:?} vs {y:?}"
                    );
                }
            }
            // Through the raw reads (each window's last sample only), the
            // answer would differ.
            if f != "avg" {
                let lasts = e
                    .range(
                        &Windowed(raw()),
                        &format!("{f}_over_time(x[5m:1m])"),
                        299_999,
                        1_199_999,
                        60_000,
                    )
                    .unwrap();
                assert_ne!(lasts, want, "{q}");
            }
        }
    }

    fn store() -> Mem {
        let s = |job: &str, k: f64| Series {
            labels: Labels::from_pairs([("__name__", "x"), ("job", job)]),
            samples: (0..20).map(|i| (i * 15_000, k * i as f64)).collect(),
        };
        Mem(vec![s("a", 1.0), s("b", 2.0)])
    }

    #[test]
    fn evaluates_over_a_store() {
        let e = Engine::default();
        let Value::Vector(v) = e.instant(&store(), "sum(rate(x[1m]))", 150_000).unwrap() else {
            panic!("not a vector");
        };
        // 1/15 + 2/15 per second.
        assert!((v[0].v - 0.2).abs() < 1e-12, "{v:?}");
        let Value::Matrix(m) = e
            .range(&store(), "x{job=\"b\"} * 2", 0, 60_000, 15_000)
            .unwrap()
        else {
            panic!("not a matrix");
        };
        assert_eq!(
            m[0].samples,
            vec![
                (0, 0.0),
                (15_000, 4.0),
                (30_000, 8.0),
                (45_000, 12.0),
                (60_000, 16.0)
            ]
        );
        assert!(matches!(
            e.instant(&store(), "sum(", 0),
            Err(Error::BadData(_))
        ));
    }

    /// Counts the batches a store is read in and the largest one.
    struct Batches(Mem, std::sync::Mutex<(usize, usize)>);

    impl Queryable for Batches {
        fn select(&self, m: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, String> {
            self.0.select(m, mint, maxt)
        }

        fn select_batches(
            &self,
            m: &[Matcher],
            mint: i64,
            maxt: i64,
            batch: usize,
            f: &mut dyn FnMut(Vec<Series>) -> bool,
        ) -> Result<(), String> {
            for b in self.0.select(m, mint, maxt)?.chunks(batch) {
                let mut seen = self.1.lock().unwrap();
                seen.0 += 1;
                seen.1 = seen.1.max(b.len());
                drop(seen);
                if !f(b.to_vec()) {
                    break;
                }
            }
            Ok(())
        }
    }

    #[test]
    fn range_functions_over_a_selector_read_it_in_batches_and_miss_nothing() {
        // 600 series, some with a stale marker and one with nothing but.
        let series: Vec<Series> = (0..600)
            .map(|i| Series {
                labels: Labels::from_pairs([("__name__", "x".to_owned()), ("i", i.to_string())]),
                samples: (0..40)
                    .map(|k| {
                        let v = if i == 7 || (i % 50 == 1 && k == 30) {
                            STALE_NAN
                        } else {
                            (k * (i % 13 + 1)) as f64
                        };
                        (k * 15_000, v)
                    })
                    .collect(),
            })
            .collect();
        let store = Batches(Mem(series.clone()), Default::default());
        let e = Engine::default();
        let got = e
            .range(&store, "rate(x[1m])", 60_000, 585_000, 15_000)
            .unwrap();
        let (batches, largest) = *store.1.lock().unwrap();
        assert!(
            batches >= 3 && largest <= 256,
            "{batches} batches, largest {largest}"
        );
        // Each series alone (one batch each) gives the same answer.
        let Value::Matrix(got) = got else {
            panic!("not a matrix")
        };
        assert_eq!(
            got.len(),
            599,
            "the series of stale markers only is left out"
        );
        for g in &got {
            let i = g.labels.get("i").unwrap();
            let Value::Matrix(one) = e
                .range(
                    &Mem(series.clone()),
                    &format!("rate(x{{i=\"{i}\"}}[1m])"),
                    60_000,
                    585_000,
                    15_000,
                )
                .unwrap()
            else {
                panic!("not a matrix")
            };
            assert_eq!(one.len(), 1);
            assert_eq!(one[0].samples, g.samples, "series {i}");
        }
        // Limits hold across batches.
        let e = Engine::new(Options {
            max_series: 300,
            ..Options::default()
        });
        let err = e.instant(&store, "rate(x[1m])", 300_000).unwrap_err();
        assert!(err.to_string().contains("more than 300 series"), "{err}");
        let e = Engine::new(Options {
            max_samples: 5_000,
            ..Options::default()
        });
        let err = e
            .range(&store, "rate(x[1m])", 60_000, 585_000, 15_000)
            .unwrap_err();
        assert!(err.to_string().contains("too many samples"), "{err}");
    }

    #[test]
    fn a_cancelled_query_stops_with_an_error() {
        let flag = Arc::new(AtomicBool::new(true));
        let e = Engine::default().with_cancel(flag);
        let err = e.instant(&store(), "sum(x)", 0).unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
    }

    #[test]
    fn series_limit_names_the_selector() {
        let e = Engine::new(Options {
            max_series: 1,
            ..Options::default()
        });
        let err = e.instant(&store(), "sum(x)", 300_000).unwrap_err();
        assert!(err.to_string().contains("matches 2 series"), "{err}");
    }

    #[test]
    fn sample_limit_names_the_limit() {
        let e = Engine::new(Options {
            max_samples: 10,
            ..Options::default()
        });
        let err = e.instant(&store(), "x", 300_000).unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
        assert!(err.to_string().contains("limit 10"), "{err}");
    }
}
