//! Wall-clock time as the tiers exchange it: milliseconds since the Unix
//! epoch, and RFC 3339 with milliseconds (as Prometheus and Alertmanager
//! write alert times).

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `ms` as RFC 3339 in UTC with milliseconds: `2026-12-02T01:22:11.000Z`
/// (empty for a time chrono cannot represent).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_milliseconds_and_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_638_531_042), "2025-12-02T01:22:11.042Z");
        assert!(now_ms() > 1_700_000_000_000);
    }
}
