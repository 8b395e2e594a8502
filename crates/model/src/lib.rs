//! tiermon's data model, shared by every tier and free of I/O.
//!
//! A time series is identified by its [`Labels`]: a sorted set of
//! name/value pairs, one of which (`__name__`) is the metric name. Label
//! strings are reference counted so that a set shared by many samples, or a
//! string repeated across many sets (through an [`Interner`]), is stored once.
//! [`SeriesId`] is a stable 64-bit hash of a label set, equal on every tier
//! and every run, used to address series on the wire and in storage.
//!
//! A [`Sample`] is a millisecond timestamp and a float value; the special NaN
//! [`STALE_NAN`] marks a series as stale, exactly as Prometheus does.
//!
//! [`Matcher`] selects series by one label (`=`, `!=`, `=~`, `!~`) with
//! Prometheus' semantics: regular expressions are fully anchored and a
//! missing label matches like an empty value.

mod labels;
mod matcher;
mod sample;

pub use labels::{Interner, Label, Labels, LabelsBuilder, METRIC_NAME, SeriesId};
pub use matcher::{MatchOp, Matcher, MatcherError};
pub use sample::{STALE_NAN, STALE_NAN_BITS, Sample, is_stale_nan};

/// Whether `name` is a valid legacy Prometheus metric name:
/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` is a valid legacy Prometheus label name:
/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_and_label_names() {
        for ok in ["a", "_a", ":a", "node_cpu_seconds_total", "job:rate5m"] {
            assert!(is_valid_metric_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a.b", "a-b", "é"] {
            assert!(!is_valid_metric_name(bad), "{bad}");
        }
        assert!(is_valid_label_name("le"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name("0"));
    }
}
