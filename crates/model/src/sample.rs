//! Samples and Prometheus' staleness marker.

/// The bit pattern Prometheus writes to mark a series stale: a NaN that no
/// arithmetic produces, so it survives storage bit-exactly.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as a float. Compare with [`is_stale_nan`], never `==`.
pub const STALE_NAN: f64 = f64::from_bits(STALE_NAN_BITS);

/// Whether `v` is the staleness marker (and not just any NaN).
#[inline]
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// One point of a series: milliseconds since the Unix epoch and a value.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub t: i64,
    /// The value; [`STALE_NAN`] marks the end of the series.
    pub v: f64,
}

impl Sample {
    /// A sample at `t` milliseconds with value `v`.
    pub fn new(t: i64, v: f64) -> Self {
        Self { t, v }
    }

    /// A staleness marker at `t`.
    pub fn stale(t: i64) -> Self {
        Self { t, v: STALE_NAN }
    }

    /// Whether this sample is a staleness marker.
    pub fn is_stale(&self) -> bool {
        is_stale_nan(self.v)
    }
}

/// Samples are equal when their timestamps are equal and their values are
/// bit-identical, so NaNs (and the staleness marker) compare as stored.
impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        self.t == other.t && self.v.to_bits() == other.v.to_bits()
    }
}

impl Eq for Sample {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_marker_is_a_distinct_nan() {
        assert!(STALE_NAN.is_nan());
        assert!(is_stale_nan(STALE_NAN));
        assert!(!is_stale_nan(f64::NAN));
        assert!(Sample::stale(5).is_stale());
        assert!(!Sample::new(5, f64::NAN).is_stale());
        assert_eq!(Sample::new(1, f64::NAN), Sample::new(1, f64::NAN));
        assert_ne!(Sample::new(1, f64::NAN), Sample::stale(1));
    }
}
