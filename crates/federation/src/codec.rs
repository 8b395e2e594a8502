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

/// What both ends of a stream keep of a series' last aggregate: the
/// prediction of its next one (`AggregateColumns` in push.proto).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Prev {
    last: f64,
    min: f64,
    max: f64,
    sum: f64,
    counter: f64,
    count: u64,
    /// Last timestamp minus window start.
    offset: i64,
    /// `last` minus the previous aggregate's, when both are integers.
    dlast: i64,
    /// Whether it was sent in integer form.
    int: bool,
}

/// `x` as an integer, when it is one that an `f64` holds exactly (and not -0).
fn int_of(x: f64) -> Option<i64> {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    (x.fract() == 0.0 && x.abs() <= LIMIT && !(x == 0.0 && x.is_sign_negative()))
        .then_some(x as i64)
}

/// The integer-form terms of a prediction from `p`: (last, dlast, last -
/// min, max - last, count × last - sum), zeros without an integer `p`.
fn int_terms(p: Option<&Prev>) -> (i64, i64, i64, i64, i64) {
    match p {
        Some(p) if p.int => {
            let (l, mn, mx, s) = (p.last as i64, p.min as i64, p.max as i64, p.sum as i64);
            (
                l,
                p.dlast,
                l.wrapping_sub(mn),
                mx.wrapping_sub(l),
                (p.count as i64).wrapping_mul(l).wrapping_sub(s),
            )
        }
        _ => (0, 0, 0, 0, 0),
    }
}

fn put_zz(v: i64, buf: &mut Vec<u8>) {
    encode_varint(zigzag(v), buf);
}

/// Appends `a`, predicted from `p`, to `cols`; returns what predicts the
/// series' next aggregate.
fn put_aggregate(
    cols: &mut v1::AggregateColumns,
    a: &v1::Aggregate,
    p: Option<&Prev>,
    entry: &mut (i64, i64),
) -> Prev {
    put_zz(a.start_ms.wrapping_sub(entry.0), &mut cols.starts);
    let len = a.end_ms.wrapping_sub(a.start_ms);
    put_zz(len.wrapping_sub(entry.1), &mut cols.lengths);
    *entry = (a.start_ms, len);
    let offset = a.last_timestamp_ms.wrapping_sub(a.start_ms);
    put_zz(
        a.count.wrapping_sub(p.map_or(0, |p| p.count)) as i64,
        &mut cols.counts,
    );
    put_zz(
        offset.wrapping_sub(p.map_or(0, |p| p.offset)),
        &mut cols.offsets,
    );
    let ints = match (
        int_of(a.last),
        int_of(a.min),
        int_of(a.max),
        int_of(a.sum),
        int_of(a.counter),
    ) {
        (Some(l), Some(mn), Some(mx), Some(s), Some(c)) => Some((l, mn, mx, s, c)),
        _ => None,
    };
    let mut next = Prev {
        last: a.last,
        min: a.min,
        max: a.max,
        sum: a.sum,
        counter: a.counter,
        count: a.count,
        offset,
        dlast: 0,
        int: ints.is_some(),
    };
    match ints {
        Some((l, mn, mx, s, c)) => {
            let (pl, pd, plow, phigh, psum) = int_terms(p);
            let same_counter = c == l;
            cols.flags.push(1 | if same_counter { 2 } else { 0 });
            put_zz(l.wrapping_sub(pl.wrapping_add(pd)), &mut cols.last);
            put_zz(l.wrapping_sub(mn).wrapping_sub(plow), &mut cols.low);
            put_zz(mx.wrapping_sub(l).wrapping_sub(phigh), &mut cols.high);
            let resid = (a.count as i64).wrapping_mul(l).wrapping_sub(s);
            put_zz(resid.wrapping_sub(psum), &mut cols.sum);
            if !same_counter {
                put_zz(c.wrapping_sub(l), &mut cols.counter);
            }
            if p.is_some_and(|p| p.int) {
                next.dlast = l.wrapping_sub(pl);
            }
        }
        None => {
            cols.flags.push(0);
            let q = p.copied().unwrap_or_default();
            for (x, y) in [
                (a.last, q.last),
                (a.min, q.min),
                (a.max, q.max),
                (a.sum, q.sum),
                (a.counter, q.counter),
            ] {
                encode_varint(x.to_bits() ^ y.to_bits(), &mut cols.floats);
            }
        }
    }
    next
}

/// The sender's side of one stream: which references the receiver knows,
/// and each series' last aggregate sent.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    defined: Vec<u64>,
    prev: HashMap<u32, Prev>,
}

/// What a batch teaches the receiver, applied to the [`Encoder`] once the
/// batch is sent.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    refs: Vec<u32>,
    prev: HashMap<u32, Prev>,
}

impl Encoder {
    fn known(&self, r: u32) -> bool {
        self.defined
            .get(r as usize / 64)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    /// Encodes `entries`, with the labels of references new to the stream
    /// from `labels_of` (a reference without labels is left out); what the
    /// batch teaches the receiver is remembered only by [`Self::commit`],
    /// once the batch is sent.
    pub(crate) fn encode(
        &self,
        entries: &[Entry],
        mut labels_of: impl FnMut(u32) -> Option<Vec<v1::Label>>,
    ) -> (v1::Compact, Pending) {
        let mut c = v1::Compact {
            base_ms: entries
                .iter()
                .flat_map(|e| {
                    e.samples
                        .iter()
                        .map(|s| s.timestamp_ms)
                        .chain(e.aggregates.iter().map(|a| a.start_ms))
                })
                .min()
                .unwrap_or(0),
            aggregates: entries.iter().any(|e| !e.aggregates.is_empty()),
            ..v1::Compact::default()
        };
        let mut cols = v1::AggregateColumns::default();
        let mut entry = (c.base_ms, 0i64);
        let mut pending = Pending::default();
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
                    let p = pending.prev.get(&e.r).or_else(|| self.prev.get(&e.r));
                    let next = put_aggregate(&mut cols, a, p, &mut entry);
                    pending.prev.insert(e.r, next);
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
        if c.aggregates {
            c.aggregate_columns = Some(cols);
        }
        pending.refs = c.new_refs.clone();
        (c, pending)
    }

    /// The receiver now knows what `p` taught it.
    pub(crate) fn commit(&mut self, p: Pending) {
        for &r in &p.refs {
            let w = r as usize / 64;
            if self.defined.len() <= w {
                self.defined.resize(w + 1, 0);
            }
            self.defined[w] |= 1 << (r % 64);
        }
        self.prev.extend(p.prev);
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
    /// Each series' last aggregate on the stream.
    prev: HashMap<u32, Prev>,
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

/// Readers of the columns of [`v1::AggregateColumns`].
struct AggReaders<'a> {
    starts: Reader<'a>,
    lengths: Reader<'a>,
    flags: Reader<'a>,
    counts: Reader<'a>,
    offsets: Reader<'a>,
    last: Reader<'a>,
    low: Reader<'a>,
    high: Reader<'a>,
    sum: Reader<'a>,
    counter: Reader<'a>,
    floats: Reader<'a>,
}

impl<'a> AggReaders<'a> {
    fn new(c: &'a v1::AggregateColumns) -> Self {
        let r = |buf: &'a [u8], what| Reader { buf, what };
        AggReaders {
            starts: r(&c.starts, "aggregate starts"),
            lengths: r(&c.lengths, "aggregate lengths"),
            flags: r(&c.flags, "aggregate flags"),
            counts: r(&c.counts, "aggregate counts"),
            offsets: r(&c.offsets, "aggregate offsets"),
            last: r(&c.last, "aggregate last values"),
            low: r(&c.low, "aggregate minimums"),
            high: r(&c.high, "aggregate maximums"),
            sum: r(&c.sum, "aggregate sums"),
            counter: r(&c.counter, "aggregate counters"),
            floats: r(&c.floats, "aggregate floats"),
        }
    }

    /// The next aggregate, predicted from `p` (the inverse of
    /// [`put_aggregate`]).
    fn aggregate(
        &mut self,
        p: Option<&Prev>,
        entry: &mut (i64, i64),
    ) -> Result<(v1::Aggregate, Prev), String> {
        let start = entry.0.wrapping_add(unzigzag(self.starts.varint()?));
        let len = entry.1.wrapping_add(unzigzag(self.lengths.varint()?));
        *entry = (start, len);
        let count = p
            .map_or(0, |p| p.count)
            .wrapping_add(unzigzag(self.counts.varint()?) as u64);
        let offset = p
            .map_or(0, |p| p.offset)
            .wrapping_add(unzigzag(self.offsets.varint()?));
        let (&flags, rest) = self
            .flags
            .buf
            .split_first()
            .ok_or("compact batch: aggregate flags truncated")?;
        self.flags.buf = rest;
        let mut next = Prev {
            count,
            offset,
            int: flags & 1 != 0,
            ..Prev::default()
        };
        if next.int {
            let (pl, pd, plow, phigh, psum) = int_terms(p);
            let l = pl
                .wrapping_add(pd)
                .wrapping_add(unzigzag(self.last.varint()?));
            let mn = l.wrapping_sub(plow.wrapping_add(unzigzag(self.low.varint()?)));
            let mx = l.wrapping_add(phigh.wrapping_add(unzigzag(self.high.varint()?)));
            let resid = psum.wrapping_add(unzigzag(self.sum.varint()?));
            let s = (count as i64).wrapping_mul(l).wrapping_sub(resid);
            let c = if flags & 2 != 0 {
                l
            } else {
                l.wrapping_add(unzigzag(self.counter.varint()?))
            };
            (next.last, next.min, next.max, next.sum, next.counter) =
                (l as f64, mn as f64, mx as f64, s as f64, c as f64);
            if p.is_some_and(|p| p.int) {
                next.dlast = l.wrapping_sub(pl);
            }
        } else {
            let q = p.copied().unwrap_or_default();
            let mut f = |y: f64| -> Result<f64, String> {
                Ok(f64::from_bits(self.floats.varint()? ^ y.to_bits()))
            };
            next.last = f(q.last)?;
            next.min = f(q.min)?;
            next.max = f(q.max)?;
            next.sum = f(q.sum)?;
            next.counter = f(q.counter)?;
        }
        let a = v1::Aggregate {
            start_ms: start,
            end_ms: start.wrapping_add(len),
            min: next.min,
            max: next.max,
            sum: next.sum,
            count,
            last: next.last,
            last_timestamp_ms: start.wrapping_add(offset),
            counter: next.counter,
        };
        Ok((a, next))
    }

    fn done(&self) -> Result<(), String> {
        for r in [
            &self.starts,
            &self.lengths,
            &self.flags,
            &self.counts,
            &self.offsets,
            &self.last,
            &self.low,
            &self.high,
            &self.sum,
            &self.counter,
            &self.floats,
        ] {
            r.done()?;
        }
        Ok(())
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
        let mut cols = c.aggregate_columns.as_ref().map(AggReaders::new);
        let mut entry = (c.base_ms, 0i64);
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
            let room = match (&cols, c.aggregates) {
                (Some(a), true) => a.flags.buf.len(),
                _ => vs.buf.len() / 8,
            };
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= room)
                .ok_or_else(|| format!("compact batch: {n} samples for series {r}"))?;
            let mut d = Decoded {
                r,
                points: Vec::with_capacity(n),
                aggregates: Vec::new(),
            };
            for _ in 0..n {
                if c.aggregates
                    && let Some(cols) = &mut cols
                {
                    let (a, next) = cols.aggregate(self.prev.get(&r), &mut entry)?;
                    self.prev.insert(r, next);
                    d.points.push((a.last_timestamp_ms, a.last));
                    d.aggregates.push(a);
                    continue;
                }
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
        if let Some(cols) = cols {
            cols.done()?;
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
                enc.commit(new);
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

        #[test]
        fn garbage_in_aggregate_columns_is_an_error_not_a_panic(
            refs in prop::collection::vec(0u8..16, 0..20),
            counts in prop::collection::vec(0u8..4, 0..20),
            cols in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 11),
        ) {
            let mut dec = Decoder::default();
            let define = v1::Compact {
                new_refs: (0..8).collect(),
                new_series: (0..8).map(|r| v1::Series { labels: label(r), ..Default::default() }).collect(),
                ..Default::default()
            };
            dec.decode(&define, labels_of).unwrap();
            let mut it = cols.into_iter();
            let mut col = || it.next().unwrap_or_default();
            let c = v1::Compact {
                refs, counts, aggregates: true,
                aggregate_columns: Some(v1::AggregateColumns {
                    starts: col(), lengths: col(), flags: col(), counts: col(), offsets: col(),
                    last: col(), low: col(), high: col(), sum: col(), counter: col(), floats: col(),
                }),
                ..Default::default()
            };
            // Twice: the second decode predicts from what the first left.
            let _ = dec.decode(&c, labels_of);
            let _ = dec.decode(&c, labels_of);
        }

        /// Integer-like series (counters, rounded gauges, mixed with
        /// fractions, NaN, infinities and -0) round-trip bit for bit over
        /// many windows of one stream.
        #[test]
        fn aggregates_round_trip_over_a_stream(
            series in prop::collection::vec(
                (prop::sample::select(vec![0.0, 1.0, 2.5, -3.0, 1e6, 1e15, 1e17]), 0i64..5000, 0u8..6),
                1..12,
            ),
            windows in 1usize..8,
        ) {
            let (mut enc, mut dec) = (Encoder::default(), Decoder::default());
            for w in 0..windows as i64 {
                let entries: Vec<Entry> = series
                    .iter()
                    .enumerate()
                    .map(|(i, &(rate, jitter, kind))| {
                        let base = rate * (w as f64 * 4.0) + jitter as f64;
                        let odd = match (kind, w % 3) {
                            (1, 1) => f64::NAN,
                            (2, 2) => f64::INFINITY,
                            (3, _) => -0.0,
                            (4, 1) => base + 0.25,
                            _ => base,
                        };
                        Entry {
                            r: i as u32 * 3,
                            samples: Vec::new(),
                            aggregates: vec![v1::Aggregate {
                                start_ms: w * 60_000,
                                end_ms: (w + 1) * 60_000,
                                min: base - rate * 3.0,
                                max: odd,
                                sum: base * 4.0 - rate * 6.0,
                                count: 4 + (jitter % 2) as u64,
                                last: odd,
                                last_timestamp_ms: w * 60_000 + 45_000 + jitter % 7,
                                counter: if kind == 5 { base + 7.0 } else { odd },
                            }],
                        }
                    })
                    .collect();
                let (c, p) = enc.encode(&entries, |r| Some(label(r)));
                enc.commit(p);
                let got = dec.decode(&c, labels_of).unwrap();
                prop_assert_eq!(got.len(), entries.len());
                for (e, d) in entries.iter().zip(&got) {
                    let (a, b) = (&e.aggregates[0], &d.aggregates[0]);
                    prop_assert_eq!((a.start_ms, a.end_ms, a.count, a.last_timestamp_ms), (b.start_ms, b.end_ms, b.count, b.last_timestamp_ms));
                    for (x, y) in [(a.min, b.min), (a.max, b.max), (a.sum, b.sum), (a.counter, b.counter), (a.last, b.last)] {
                        prop_assert_eq!(x.to_bits(), y.to_bits());
                    }
                    prop_assert_eq!(d.points.len(), 1);
                    prop_assert_eq!((d.points[0].0, d.points[0].1.to_bits()), (a.last_timestamp_ms, a.last.to_bits()));
                }
            }
        }
    }

    /// A window of steady series costs a few bytes per series before the
    /// stream's compression (which takes runs of zeros to almost nothing).
    #[test]
    fn steady_series_cost_almost_nothing_after_their_first_window() {
        let mut enc = Encoder::default();
        let mk = |w: i64| -> Vec<Entry> {
            (0..1000u32)
                .map(|r| {
                    // A counter at a steady rate, and a constant gauge.
                    let v = if r % 2 == 0 {
                        (w * 60 + r as i64) as f64
                    } else {
                        42.0
                    };
                    let d = if r % 2 == 0 { 15.0 } else { 0.0 };
                    Entry {
                        r,
                        samples: Vec::new(),
                        aggregates: vec![v1::Aggregate {
                            start_ms: w * 60_000,
                            end_ms: (w + 1) * 60_000,
                            min: v - 3.0 * d,
                            max: v,
                            sum: 4.0 * v - 6.0 * d,
                            count: 4,
                            last: v,
                            last_timestamp_ms: w * 60_000 + 45_000,
                            counter: v,
                        }],
                    }
                })
                .collect()
        };
        let size = |c: &v1::Compact| {
            let c = c.aggregate_columns.as_ref().unwrap();
            [
                &c.starts, &c.lengths, &c.flags, &c.counts, &c.offsets, &c.last, &c.low, &c.high,
                &c.sum, &c.counter, &c.floats,
            ]
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
        };
        let (c0, p) = enc.encode(&mk(0), |r| Some(label(r)));
        enc.commit(p);
        let (c1, p) = enc.encode(&mk(1), |r| Some(label(r)));
        enc.commit(p);
        let (c2, _) = enc.encode(&mk(2), |r| Some(label(r)));
        assert!(c1.new_series.is_empty() && c2.new_series.is_empty());
        // Every residual is 0 by the third window: one byte per column.
        assert!(size(&c0) > size(&c2));
        assert_eq!(size(&c2), 1000 * 9 + 2, "{} bytes", size(&c2));
        let zeros = c2.aggregate_columns.unwrap();
        assert!(
            zeros
                .last
                .iter()
                .chain(&zeros.low)
                .chain(&zeros.sum)
                .all(|&b| b == 0)
        );
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
