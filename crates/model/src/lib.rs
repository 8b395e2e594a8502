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
mod time;

pub use labels::{Interner, Label, Labels, LabelsBuilder, METRIC_NAME, SeriesId, series_id_of};
pub use matcher::{MatchOp, Matcher, MatcherError};
pub use sample::{STALE_NAN, STALE_NAN_BITS, Sample, is_stale_nan};
pub use time::{now_ms, rfc3339};

/// The fingerprint of a label set given as a map (alerts, silences): its
/// series id, stable across runs and peers.
pub fn fingerprint(labels: &std::collections::BTreeMap<String, String>) -> u64 {
    Labels::from_pairs(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .series_id()
        .0
}

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

/// Parses a Prometheus duration: `1y2w3d4h5m6s7ms`, each unit at most
/// once and in that order (`y` is 365 days), or `0`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3600 * 1000),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("m", 60 * 1000),
        ("s", 1000),
        ("ms", 1),
    ];
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = s;
    let mut total: u64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err("expected a number".into());
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_owned())?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let Some(pos) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!("unknown unit {unit:?}"));
        };
        if pos < next_unit {
            return Err("units out of order".into());
        }
        next_unit = pos + 1;
        total = n
            .checked_mul(UNITS[pos].1)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| "duration too large".to_owned())?;
    }
    Ok(std::time::Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_prometheus() {
        use std::time::Duration;
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("1m1h").is_err());
        assert!(parse_duration("1m1m").is_err());
    }

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
