//! Strict number grammar shared by both formats.
//!
//! Values accept what Prometheus accepts (decimal floats with optional sign
//! and exponent, `Inf`/`Infinity`/`NaN` in any case) and reject what it
//! rejects: hex floats, `_` separators, surrounding whitespace.

/// Parses a sample value. `None` when `s` is not a number.
#[inline]
pub(crate) fn parse_value(s: &[u8]) -> Option<f64> {
    // fast-float parses decimal and inf/nan forms only; anything left over
    // (hex digits, `_`, `p` exponents) makes the token invalid.
    match fast_float2::parse_partial::<f64, _>(s) {
        Ok((v, n)) if n == s.len() && !s.is_empty() => Some(v),
        _ => None,
    }
}

/// Parses a Prometheus text timestamp: an integer number of milliseconds.
#[inline]
pub(crate) fn parse_millis(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// Parses an OpenMetrics timestamp (seconds, possibly fractional) into
/// milliseconds, truncating below a millisecond and saturating at the ends
/// of the `i64` range. NaN and infinities are rejected.
pub(crate) fn parse_seconds_as_millis(s: &[u8]) -> Option<i64> {
    // Exact path for `[-+]?digits[.digits]`, the common case.
    let (neg, body) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match memchr::memchr(b'.', body) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let all_digits = |d: &[u8]| d.iter().all(u8::is_ascii_digit);
    if !int.is_empty() && all_digits(int) && frac.is_none_or(|f| !f.is_empty() && all_digits(f)) {
        let mut ms: i128 = 0;
        for &b in int {
            ms = (ms * 10 + i128::from(b - b'0')).min(i128::from(i64::MAX) * 10);
        }
        ms *= 1000;
        if let Some(f) = frac {
            let mut scale = 100;
            for &b in f.iter().take(3) {
                ms += i128::from(b - b'0') * scale;
                scale /= 10;
            }
        }
        let ms = if neg { -ms } else { ms };
        return Some(ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64);
    }
    let v = parse_value(s)?;
    if !v.is_finite() {
        return None;
    }
    // `as` saturates.
    Some((v * 1000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        for (s, v) in [
            ("1", 1.0),
            ("-1.5", -1.5),
            ("+2", 2.0),
            ("1e3", 1000.0),
            ("1.5E-3", 0.0015),
            (".5", 0.5),
            ("0000001", 1.0),
            ("9223372036854775808", 9223372036854775808.0),
        ] {
            assert_eq!(parse_value(s.as_bytes()), Some(v), "{s}");
        }
        for s in ["Inf", "+Inf", "inf", "+Infinity"] {
            assert_eq!(parse_value(s.as_bytes()), Some(f64::INFINITY), "{s}");
        }
        assert_eq!(parse_value(b"-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_value(b"NaN").unwrap().is_nan());
        for s in [
            "", "0x1p-3", "0X1", "0o1", "1_2", " 1", "1 ", "1z", "--1", "e3",
        ] {
            assert_eq!(parse_value(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn millis() {
        assert_eq!(parse_millis(b"1395066363000"), Some(1395066363000));
        assert_eq!(parse_millis(b"-5"), Some(-5));
        for s in ["", "-", "1.5", "1e3", "99999999999999999999"] {
            assert_eq!(parse_millis(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds_as_millis(b"1.1"), Some(1100));
        assert_eq!(parse_seconds_as_millis(b"000"), Some(0));
        assert_eq!(parse_seconds_as_millis(b"0.0"), Some(0));
        assert_eq!(parse_seconds_as_millis(b"1.5e3"), Some(1_500_000));
        assert_eq!(parse_seconds_as_millis(b"-1.0019"), Some(-1001));
        assert_eq!(
            parse_seconds_as_millis(b"12345678901234567890.1234567890"),
            Some(i64::MAX)
        );
        for s in ["NaN", "Inf", "-Inf", "0x1p-3", "1.1.1", "1z", "."] {
            assert_eq!(parse_seconds_as_millis(s.as_bytes()), None, "{s:?}");
        }
    }
}
