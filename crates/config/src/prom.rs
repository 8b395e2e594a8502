//! Durations in the files tiermon shares with Prometheus and Alertmanager
//! (scrape configuration, rule files, Alertmanager's configuration).

/// A duration written as Prometheus writes it: `1h30m`, `15s`, `500ms`,
/// `2d`, `1w`, `1y` (365 days), units in decreasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct PromDuration(pub std::time::Duration);

impl PromDuration {
    /// Parses a Prometheus duration.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        tiermon_model::parse_duration(s)
            .map(PromDuration)
            .map_err(|e| {
                format!("{s:?} is not a duration ({e}; write it like 15s, 1m30s or 500ms)")
            })
    }
}

impl std::fmt::Display for PromDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("w", 7 * 24 * 3600 * 1000u64),
            ("d", 24 * 3600 * 1000),
            ("h", 3600 * 1000),
            ("m", 60 * 1000),
            ("s", 1000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for PromDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        PromDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for PromDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
