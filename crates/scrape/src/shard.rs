//! Sharding of a datacenter's targets across secondaries by rendezvous
//! (highest random weight) hashing: each target goes to the shard whose
//! hash with it is highest, so adding or removing a shard moves only the
//! targets that shard gains or held. Both members of an HA pair are
//! configured with the same shard name and so scrape the same targets.

/// This scraper's place among the shards.
#[derive(Debug, Clone, Default)]
pub struct Shard {
    name: String,
    shards: Vec<String>,
    member: String,
}

impl Shard {
    /// Scrape every target (no sharding).
    pub fn all() -> Self {
        Self::default()
    }

    /// Scrape the share of shard `name` among `shards` (which must contain
    /// it); `member` tells the members of one shard (the HA pair) apart, to
    /// spread their scrapes in time.
    pub fn new(name: &str, shards: &[String], member: &str) -> Result<Self, String> {
        if shards.is_empty() {
            return Ok(Self {
                member: member.to_owned(),
                ..Self::default()
            });
        }
        if !shards.iter().any(|s| s == name) {
            return Err(format!(
                "shard {name:?} is not one of the shards {shards:?}"
            ));
        }
        let mut sorted = shards.to_vec();
        sorted.sort();
        sorted.dedup();
        Ok(Self {
            name: name.to_owned(),
            shards: sorted,
            member: member.to_owned(),
        })
    }

    /// The member name (for offsets).
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Which shard scrapes the target with this key.
    pub fn owner(&self, key: u64) -> Option<&str> {
        self.shards
            .iter()
            .max_by_key(|s| weight(s, key))
            .map(String::as_str)
    }

    /// Whether this scraper scrapes the target with this key.
    pub fn owns(&self, key: u64) -> bool {
        self.shards.is_empty() || self.owner(key) == Some(self.name.as_str())
    }
}

fn weight(shard: &str, key: u64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(shard.as_bytes());
    h.update(&key.to_le_bytes());
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn shares_are_even_and_adding_a_shard_moves_only_its_share() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|k| xxhash_rust::xxh3::xxh3_64(&k.to_le_bytes()))
            .collect();
        let four = Shard::new("s0", &names(4), "a").unwrap();
        let five = Shard::new("s0", &names(5), "a").unwrap();
        let mut per = std::collections::HashMap::new();
        let mut moved = 0;
        for &k in &keys {
            let before = four.owner(k).unwrap().to_owned();
            let after = five.owner(k).unwrap().to_owned();
            *per.entry(before.clone()).or_insert(0) += 1;
            if before != after {
                // Only ever to the new shard.
                assert_eq!(after, "s4");
                moved += 1;
            }
        }
        for (_, n) in per {
            assert!((2200..2800).contains(&n), "{n}");
        }
        assert!((1700..2300).contains(&moved), "{moved}");
        // Every key has exactly one owner among the shards' own views.
        for &k in keys.iter().take(500) {
            let owners = names(5)
                .iter()
                .filter(|n| Shard::new(n, &names(5), "x").unwrap().owns(k))
                .count();
            assert_eq!(owners, 1);
        }
    }

    #[test]
    fn a_shard_must_be_listed() {
        assert!(Shard::new("s9", &names(3), "a").is_err());
        assert!(Shard::new("", &[], "a").unwrap().owns(1));
    }
}
