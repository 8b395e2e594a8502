//! The Prometheus text exposition format 0.0.4 and OpenMetrics 1.0: parsing
//! and encoding.
//!
//! Two layers, for two jobs:
//!
//! - [`Parser`] is a streaming, zero-copy parser for the scrape hot path. It
//!   yields an [`Entry`] per line; a sample's raw series text
//!   ([`SampleRef::series`]) is the key of a [`SeriesCache`], so once a
//!   target's series are known a scrape allocates nothing per sample and
//!   decodes labels only for new series (as Prometheus' scrape cache does).
//! - [`parse_families`] reads a whole document into [`MetricFamily`]s and
//!   checks every rule of the format, including those that span lines
//!   (grouping, histogram structure, metadata placement). `tiermon check
//!   metrics` runs it.
//!
//! [`encode`] writes families back in either format; [`Format::negotiate`]
//! picks the format for an HTTP `Accept` header.
//!
//! Errors ([`ParseError`]) carry the 1-based line and column and say what
//! was expected. Nothing in this crate panics on any input.

mod cache;
mod encode;
mod error;
mod families;
mod number;
mod parser;

pub use cache::SeriesCache;
pub use encode::{encode, format_value};
pub use error::ParseError;
pub use families::{Exemplar, FamilySample, MetricFamily, parse_families};
pub use parser::{Entry, ExemplarRef, LabelIter, Parser, SampleRef};

use std::fmt;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The HTTP Content-Type of a document in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format of a response with this Content-Type: OpenMetrics for
    /// `application/openmetrics-text`, otherwise the Prometheus format (as
    /// Prometheus itself falls back).
    pub fn from_content_type(ct: &str) -> Self {
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The format to serve for an `Accept` header: OpenMetrics when the
    /// client ranks it at least as high as the text format, otherwise
    /// Prometheus text.
    pub fn negotiate(accept: &str) -> Self {
        let mut om = -1.0f32;
        let mut text = -1.0f32;
        for part in accept.split(',') {
            let mut it = part.split(';');
            let media = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            for p in it {
                if let Some(v) = p.trim().strip_prefix("q=") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// Parses `prometheus` or `openmetrics`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "prometheus" | "text" => Some(Format::Prometheus),
            "openmetrics" => Some(Format::OpenMetrics),
            _ => None,
        }
    }
}

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MetricType {
    /// A monotonically increasing total.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets with `_sum` and `_count`.
    Histogram,
    /// Histogram of a current distribution (OpenMetrics).
    GaugeHistogram,
    /// Quantiles with `_sum` and `_count`.
    Summary,
    /// Constant labels describing a target (OpenMetrics).
    Info,
    /// A set of boolean states (OpenMetrics).
    StateSet,
    /// Untyped.
    #[default]
    Unknown,
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => "unknown",
        })
    }
}

#[cfg(test)]
mod tests;
