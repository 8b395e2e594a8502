//! PromQL evaluation with Prometheus' semantics (as of 2.42: inclusive
//! lookback and range windows, a 5 m lookback delta, extrapolated rates),
//! over any store that implements [`Queryable`].
//!
//! Parsing is `promql-parser`'s; this crate evaluates the tree. Every node
//! is evaluated once for all the steps of a query (an instant query is a
//! range query of one step), the way Prometheus' engine does, so a range
//! query reads each series once.

mod eval;
mod functions;

pub use eval::{Engine, format_float, selector_matchers};

use tiermon_model::{Labels, Matcher};

/// A series with its samples, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: Labels,
    /// (timestamp ms, value).
    pub samples: Vec<(i64, f64)>,
}

/// What the evaluator needs from a store.
pub trait Queryable: Send + Sync {
    /// Series matching all `matchers` with their samples in `[mint, maxt]`
    /// (ms, inclusive), staleness markers included.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, String>;

    /// [`Self::select`] handed to `f` in batches of at most `batch`
    /// series, so that an evaluation reducing each series to one value
    /// per step (`rate()` over a range selector) need not hold every
    /// series' samples at once; `f` returning `false` stops the read. The
    /// default reads everything with [`Self::select`], then hands it over.
    fn select_batches(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        batch: usize,
        f: &mut dyn FnMut(Vec<Series>) -> bool,
    ) -> Result<(), String> {
        let mut all = self.select(matchers, mint, maxt)?.into_iter().peekable();
        while all.peek().is_some() {
            if !f(all.by_ref().take(batch.max(1)).collect()) {
                break;
            }
        }
        Ok(())
    }

    /// For stores that hold downsampled windows (the global tier): series
    /// matching `matchers` with, per window whose last sample is in
    /// `[mint, maxt]`, `field` of the window at that sample's time; a
    /// series without windows there gives its raw samples, each a window
    /// of one. `min_over_time`, `max_over_time`, `sum_over_time`,
    /// `count_over_time` and `avg_over_time` over a plain range selector
    /// read through this, so that they see every raw sample a window
    /// summarises, not only its last. `None` (the default): the store
    /// holds raw samples, read with [`Self::select`].
    fn select_windows(
        &self,
        _matchers: &[Matcher],
        _mint: i64,
        _maxt: i64,
        _field: WindowField,
    ) -> Result<Option<Vec<Series>>, String> {
        Ok(None)
    }
}

/// A summary a downsampled window keeps of its raw samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowField {
    /// The smallest sample.
    Min,
    /// The largest sample.
    Max,
    /// The sum of the samples.
    Sum,
    /// How many samples.
    Count,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The labels.
    pub labels: Labels,
    /// Timestamp (ms).
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// A query result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar at a time.
    Scalar(i64, f64),
    /// A string at a time.
    String(i64, String),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector (or a range query's result).
    Matrix(Vec<Series>),
}

/// Limits and defaults of query evaluation.
#[derive(Debug, Clone)]
pub struct Options {
    /// How far back an instant selector looks for a sample (ms).
    pub lookback_ms: i64,
    /// Step of subqueries without one (ms).
    pub default_subquery_step_ms: i64,
    /// Most samples a query may hold in memory at once.
    pub max_samples: usize,
    /// Most series one selector may select.
    pub max_series: usize,
    /// Most points a range query may return per series.
    pub max_points_per_series: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lookback_ms: 5 * 60_000,
            default_subquery_step_ms: 60_000,
            max_samples: 50_000_000,
            max_series: 1_000_000,
            max_points_per_series: 11_000,
        }
    }
}

/// Why a query failed; [`Error::kind`] maps to the Prometheus API's
/// `errorType`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The query does not parse or is not valid.
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed.
    #[error("{0}")]
    Execution(String),
    /// A limit was reached.
    #[error("{0}")]
    Limit(String),
    /// The store failed.
    #[error("reading storage: {0}")]
    Storage(String),
}

impl Error {
    /// The Prometheus API `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadData(_) => "bad_data",
            Error::Execution(_) | Error::Limit(_) => "execution",
            Error::Storage(_) => "internal",
        }
    }
}
