//! The compact batch form (`Compact` in push.proto): columns, and a
//! per-stream dictionary so that a series' labels cross the wire once per
//! stream. The sender names a series by its own storage reference; the
//! receiver maps it to labels (and, once stored, to its own reference).

use std::collections::{HashMap, HashSet};

use prost::encoding::{decode_varint, encode_varint};
use tiermon_model::Labels;
use tiermon_proto::v1;

/// One series of a batch, as the sender has it: named by the sender's
/// storage reference (its labels come from [`crate::Source::labels`], and
/// cross the wire only the first time on a stream).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entry {
    /// The sender's reference of the series.
    pub r: u32,
    /// Raw samples, or empty.
    pub samples: Vec<v1::Sample>,
    /// Aggregates, or empty.
    pub aggregates: Vec<v1::Aggregate>,
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The sender's side of one stream: which references the receiver knows.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    defined: Vec<u64>,
}

impl Encoder {
    fn known(&self, r: u32) -> bool {
        self.defined
            .get(r as usize / 64)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    /// Encodes `entries`, with the labels of references new to the stream
    /// from `labels_of` (a reference without labels is left out); the
    /// references it defines are remembered only by [`Self::commit`], once
    /// the batch is sent.
    pub(crate) fn encode(
        &self,
        entries: &[Entry],
        mut labels_of: impl FnMut(u32) -> Option<Vec<v1::Label>>,
    ) -> (v1::Compact, Vec<u32>) {
        let mut c = v1::Compact {
            base_ms: entries
                .iter()
                .flat_map(|e| {
                    e.samples
                        .iter()
                        .map(|s| s.timestamp_ms)
                        .chain(e.aggregates.iter().map(|a| a.last_timestamp_ms))
                })
                .min()
                .unwrap_or(0),
            aggregates: entries.iter().any(|e| !e.aggregates.is_empty()),
            ..v1::Compact::default()
        };
        // References this batch defines, and those without labels (left out).
        let mut named: HashSet<u32> = HashSet::new();
        let mut unnamed: HashSet<u32> = HashSet::new();
        let mut prev = 0i64;
        for e in entries {
            if unnamed.contains(&e.r) {
                continue;
            }
            if !self.known(e.r) && !named.contains(&e.r) {
                let Some(labels) = labels_of(e.r) else {
                    unnamed.insert(e.r);
                    continue;
                };
                named.insert(e.r);
                c.new_refs.push(e.r);
                c.new_series.push(v1::Series {
                    labels,
                    ..v1::Series::default()
                });
            }
            encode_varint(zigzag(i64::from(e.r) - prev), &mut c.refs);
            prev = i64::from(e.r);
            if c.aggregates {
                encode_varint(e.aggregates.len() as u64, &mut c.counts);
                for a in &e.aggregates {
                    encode_varint(
                        zigzag(a.last_timestamp_ms.wrapping_sub(c.base_ms)),
                        &mut c.timestamps,
                    );
                    c.values.extend_from_slice(&a.last.to_le_bytes());
                    let f = &mut c.aggregate_fields;
                    encode_varint(zigzag(a.start_ms.wrapping_sub(a.last_timestamp_ms)), f);
                    encode_varint(zigzag(a.end_ms.wrapping_sub(a.start_ms)), f);
                    encode_varint(a.count, f);
                    for x in [a.min, a.max, a.sum, a.counter] {
                        f.extend_from_slice(&x.to_le_bytes());
                    }
                }
            } else {
                encode_varint(e.samples.len() as u64, &mut c.counts);
                for s in &e.samples {
                    encode_varint(
                        zigzag(s.timestamp_ms.wrapping_sub(c.base_ms)),
                        &mut c.timestamps,
                    );
                    c.values.extend_from_slice(&s.value.to_le_bytes());
                }
            }
        }
        let new = c.new_refs.clone();
        (c, new)
    }

    /// The receiver now knows `refs`.
    pub(crate) fn commit(&mut self, refs: &[u32]) {
        for &r in refs {
            let w = r as usize / 64;
            if self.defined.len() <= w {
                self.defined.resize(w + 1, 0);
            }
            self.defined[w] |= 1 << (r % 64);
        }
    }
}

/// A decoded series entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    /// The sender's reference.
    pub r: u32,
    /// The points: raw samples, or (for aggregates) each one's last sample.
    pub points: Vec<(i64, f64)>,
    /// The aggregates, when the batch has them.
    pub aggregates: Vec<v1::Aggregate>,
}

/// The receiver's side of one stream: the labels of every reference.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// What is known of each reference.
    labels: HashMap<u32, Slot>,
}

/// A series of the stream, at the receiver.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Its labels, or why they are invalid.
    pub labels: Result<Labels, String>,
    /// `labels.series_id()`, computed once.
    pub id: u64,
    /// The receiver's own storage reference, once it stored the series.
    pub local: Option<u32>,
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        decode_varint(&mut self.buf).map_err(|_| format!("compact batch: {} truncated", self.what))
    }

    fn f64(&mut self) -> Result<f64, String> {
        let (b, rest) = self
            .buf
            .split_first_chunk::<8>()
            .ok_or_else(|| format!("compact batch: {} truncated", self.what))?;
        self.buf = rest;
        Ok(f64::from_le_bytes(*b))
    }

    fn done(&self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "compact batch: {} bytes left over in {}",
                self.buf.len(),
                self.what
            ))
        }
    }
}

impl Decoder {
    /// The labels of the sender's reference `r` (an error: why they are
    /// invalid).
    #[cfg(test)]
    pub(crate) fn labels(&self, r: u32) -> Option<&Result<Labels, String>> {
        self.labels.get(&r).map(|s| &s.labels)
    }

    /// What is known of the sender's reference `r`.
    pub(crate) fn slot_mut(&mut self, r: u32) -> Option<&mut Slot> {
        self.labels.get_mut(&r)
    }

    /// Decodes `c`, learning the series it defines (`make` checks and
    /// builds their labels; a series it refuses is remembered as invalid).
    /// An error is a malformed batch, after which the stream's dictionary
    /// is unknown: the receiver ends the stream.
    pub(crate) fn decode(
        &mut self,
        c: &v1::Compact,
        make: impl Fn(&v1::Series) -> Result<Labels, String>,
    ) -> Result<Vec<Decoded>, String> {
        if c.new_refs.len() != c.new_series.len() {
            return Err(format!(
                "compact batch: {} new references for {} new series",
                c.new_refs.len(),
                c.new_series.len()
            ));
        }
        for (r, s) in c.new_refs.iter().zip(&c.new_series) {
            let labels = make(s);
            let id = labels.as_ref().map_or(0, |l| l.series_id().0);
            self.labels.insert(
                *r,
                Slot {
                    labels,
                    id,
                    local: None,
                },
            );
        }
        let mut refs = Reader {
            buf: &c.refs,
            what: "refs",
        };
        let mut counts = Reader {
            buf: &c.counts,
            what: "counts",
        };
        let mut ts = Reader {
            buf: &c.timestamps,
            what: "timestamps",
        };
        let mut vs = Reader {
            buf: &c.values,
            what: "values",
        };
        let mut agg = Reader {
            buf: &c.aggregate_fields,
            what: "aggregate_fields",
        };
        let mut out = Vec::new();
        let mut prev = 0i64;
        while !refs.buf.is_empty() {
            let r = prev + unzigzag(refs.varint()?);
            let r = u32::try_from(r).map_err(|_| format!("compact batch: reference {r}"))?;
            prev = i64::from(r);
            if !self.labels.contains_key(&r) {
                return Err(format!(
                    "compact batch: reference {r} was never defined on this stream"
                ));
            }
            let n = counts.varint()?;
            // Bounded by what the columns can hold, not by the count given.
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= vs.buf.len() / 8)
                .ok_or_else(|| format!("compact batch: {n} samples for series {r}"))?;
            let mut d = Decoded {
                r,
                points: Vec::with_capacity(n),
                aggregates: Vec::new(),
            };
            for _ in 0..n {
                let t = c.base_ms.wrapping_add(unzigzag(ts.varint()?));
                let v = vs.f64()?;
                d.points.push((t, v));
                if c.aggregates {
                    let start = t.wrapping_add(unzigzag(agg.varint()?));
                    let len = unzigzag(agg.varint()?);
                    let count = agg.varint()?;
                    let (min, max, sum, counter) = (agg.f64()?, agg.f64()?, agg.f64()?, agg.f64()?);
                    d.aggregates.push(v1::Aggregate {
                        start_ms: start,
                        end_ms: start.wrapping_add(len),
                        min,
                        max,
                        sum,
                        count,
                        last: v,
                        last_timestamp_ms: t,
                        counter,
                    });
                }
            }
            out.push(d);
        }
        counts.done()?;
        ts.done()?;
        vs.done()?;
        agg.done()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels_of(s: &v1::Series) -> Result<Labels, String> {
        Ok(Labels::from_pairs(
            s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
        ))
    }

    fn label(r: u32) -> Vec<v1::Label> {
        vec![v1::Label {
            name: "__name__".into(),
            value: format!("m{r}"),
        }]
    }

    proptest! {
        #[test]
        fn batches_round_trip_and_labels_cross_once(
            batches in prop::collection::vec(
                prop::collection::vec(
                    (0u32..50, prop::collection::vec((any::<i64>(), any::<f64>()), 0..5)),
                    0..20,
                ),
                1..6,
            ),
            aggregates in any::<bool>(),
        ) {
            let (mut enc, mut dec) = (Encoder::default(), Decoder::default());
            let mut sent_labels = 0usize;
            let mut seen = std::collections::HashSet::new();
            for b in batches {
                let entries: Vec<Entry> = b
                    .iter()
                    .map(|(r, pts)| Entry {
                        r: *r,
                        samples: if aggregates { Vec::new() } else {
                            pts.iter().map(|&(t, v)| v1::Sample { timestamp_ms: t >> 2, value: v }).collect()
                        },
                        aggregates: if aggregates {
                            pts.iter().map(|&(t, v)| v1::Aggregate {
                                start_ms: (t >> 2) - 60_000, end_ms: t >> 2, min: v, max: -v, sum: v * 2.0,
                                count: t.unsigned_abs() % 100, last: v, last_timestamp_ms: t >> 2, counter: v.abs(),
                            }).collect()
                        } else { Vec::new() },
                    })
                    .collect();
                let (c, new) = enc.encode(&entries, |r| Some(label(r)));
                sent_labels += c.new_series.len();
                enc.commit(&new);
                let got = dec.decode(&c, labels_of).unwrap();
                prop_assert_eq!(got.len(), entries.len());
                for (e, d) in entries.iter().zip(&got) {
                    prop_assert_eq!(e.r, d.r);
                    prop_assert_eq!(dec.labels(d.r).unwrap(), &labels_of(&v1::Series { labels: label(e.r), ..Default::default() }));
                    if aggregates {
                        prop_assert_eq!(d.aggregates.len(), e.aggregates.len());
                        for (a, b) in e.aggregates.iter().zip(&d.aggregates) {
                            prop_assert_eq!(a.start_ms, b.start_ms);
                            prop_assert_eq!(a.end_ms, b.end_ms);
                            prop_assert_eq!(a.count, b.count);
                            prop_assert_eq!(a.last_timestamp_ms, b.last_timestamp_ms);
                            for (x, y) in [(a.min, b.min), (a.max, b.max), (a.sum, b.sum), (a.counter, b.counter), (a.last, b.last)] {
                                prop_assert_eq!(x.to_bits(), y.to_bits());
                            }
                        }
                    } else {
                        let want: Vec<(i64, u64)> = e.samples.iter().map(|s| (s.timestamp_ms, s.value.to_bits())).collect();
                        let have: Vec<(i64, u64)> = d.points.iter().map(|&(t, v)| (t, v.to_bits())).collect();
                        prop_assert_eq!(want, have);
                    }
                }
                seen.extend(b.iter().map(|(r, _)| *r));
            }
            prop_assert_eq!(sent_labels, seen.len(), "each series' labels cross once per stream");
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(
            refs in prop::collection::vec(any::<u8>(), 0..40),
            counts in prop::collection::vec(any::<u8>(), 0..40),
            ts in prop::collection::vec(any::<u8>(), 0..40),
            vs in prop::collection::vec(any::<u8>(), 0..80),
            agg in prop::collection::vec(any::<u8>(), 0..80),
            aggregates in any::<bool>(),
        ) {
            let mut dec = Decoder::default();
            let define = v1::Compact {
                new_refs: (0..8).collect(),
                new_series: (0..8).map(|r| v1::Series { labels: label(r), ..Default::default() }).collect(),
                ..Default::default()
            };
            dec.decode(&define, labels_of).unwrap();
            let c = v1::Compact {
                refs, counts, timestamps: ts, values: vs, aggregate_fields: agg, aggregates,
                ..Default::default()
            };
            let _ = dec.decode(&c, labels_of);
        }
    }

    #[test]
    fn an_unknown_reference_is_named() {
        let mut dec = Decoder::default();
        let (c, _) = Encoder::default().encode(
            &[Entry {
                r: 7,
                samples: vec![v1::Sample {
                    timestamp_ms: 1,
                    value: 1.0,
                }],
                aggregates: Vec::new(),
            }],
            |r| Some(label(r)),
        );
        let without = v1::Compact {
            new_refs: Vec::new(),
            new_series: Vec::new(),
            ..c
        };
        let e = dec.decode(&without, labels_of).unwrap_err();
        assert!(e.contains("reference 7"), "{e}");
    }
}
