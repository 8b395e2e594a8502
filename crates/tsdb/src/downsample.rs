//! Downsampling: per-window aggregates that keep what queries over long
//! ranges need — min, max, sum, count, last, and a counter value adjusted
//! for resets, so that rate() and increase() over aggregates stay correct
//! when a counter restarts (as Thanos' aggregate chunks do).

use crate::{Error, Result};

/// Data resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// Samples as appended.
    Raw,
    /// One aggregate per minute.
    OneMinute,
    /// One aggregate per hour.
    OneHour,
}

impl Resolution {
    /// Key prefix byte.
    pub(crate) fn id(self) -> u8 {
        match self {
            Resolution::Raw => 0,
            Resolution::OneMinute => 1,
            Resolution::OneHour => 2,
        }
    }

    /// Window width in milliseconds (0 for raw).
    pub fn window_ms(self) -> i64 {
        match self {
            Resolution::Raw => 0,
            Resolution::OneMinute => 60_000,
            Resolution::OneHour => 3_600_000,
        }
    }
}

/// One window of a downsampled series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    /// Window start (inclusive), milliseconds.
    pub start: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Number of samples.
    pub count: u64,
    /// Last value.
    pub last: f64,
    /// Timestamp of the last value.
    pub last_t: i64,
    /// The counter at the last sample with every earlier reset added back:
    /// monotonic as long as the series is a counter.
    pub counter: f64,
}

/// Aggregates sorted samples into windows of `window` ms. `carry` is the
/// reset adjustment so far and the previous raw value (from an earlier
/// run of the same series), updated in place. Stale markers are skipped.
pub(crate) fn aggregate(
    samples: &[(i64, f64)],
    window: i64,
    carry: &mut (f64, Option<f64>),
) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = Vec::new();
    for &(t, v) in samples {
        if tiermon_model::is_stale_nan(v) {
            continue;
        }
        if let Some(prev) = carry.1
            && v < prev
        {
            // Counter reset: everything before continues to count.
            carry.0 += prev;
        }
        carry.1 = Some(v);
        let start = t.div_euclid(window) * window;
        match out.last_mut() {
            Some(a) if a.start == start => {
                a.min = a.min.min(v);
                a.max = a.max.max(v);
                a.sum += v;
                a.count += 1;
                a.last = v;
                a.last_t = t;
                a.counter = v + carry.0;
            }
            _ => out.push(Aggregate {
                start,
                min: v,
                max: v,
                sum: v,
                count: 1,
                last: v,
                last_t: t,
                counter: v + carry.0,
            }),
        }
    }
    out
}

/// Aggregates finer aggregates into coarser windows.
pub(crate) fn rollup(aggs: &[Aggregate], window: i64) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = Vec::new();
    for a in aggs {
        let start = a.start.div_euclid(window) * window;
        match out.last_mut() {
            Some(o) if o.start == start => {
                o.min = o.min.min(a.min);
                o.max = o.max.max(a.max);
                o.sum += a.sum;
                o.count += a.count;
                o.last = a.last;
                o.last_t = a.last_t;
                o.counter = a.counter;
            }
            _ => out.push(Aggregate { start, ..*a }),
        }
    }
    out
}

/// Marks the per-column layout. The first layout began with the window
/// count as a varint, followed by a length varint of at least 1, so it can
/// never begin with these two bytes.
const COLUMNS: [u8; 2] = [0x00, 0x02];

type Column = fn(&Aggregate) -> f64;
/// Stored after `last`, each as itself, as `last` again, or as its
/// difference from `last`.
const FLOAT_COLUMNS: [Column; 4] = [|a| a.min, |a| a.max, |a| a.sum, |a| a.counter];

/// A float column stored whole.
const WHOLE: u8 = 0;
/// A float column bit for bit equal to `last` (a counter's max, and its
/// reset-adjusted value until it first resets).
const AS_LAST: u8 = 1;
/// A float column stored as its difference from `last`, where adding it
/// back gives every value's bits.
const FROM_LAST: u8 = 2;

/// Column-wise encoding of aggregates: `0x00 0x02 | count (varint)`, then
/// each column on its own (length-prefixed) so that each gets the delta
/// order and scale that suit it: window starts, last timestamps (from the
/// window start) and counts as integers; `last` through the sealed-chunk
/// float codec, bit-exact; then min, max, sum and the counter, each with
/// a tag byte saying how it relates to `last`.
pub(crate) fn encode(aggs: &[Aggregate]) -> Vec<u8> {
    use tiermon_chunkenc::sealed::{encode_floats, encode_ints};
    let mut out = COLUMNS.to_vec();
    crate::wal::put_uvarint(&mut out, aggs.len() as u64);
    let ints: [fn(&Aggregate) -> i64; 3] = [
        |a| a.start,
        |a| a.last_t.wrapping_sub(a.start),
        |a| a.count as i64,
    ];
    for f in ints {
        let col: Vec<i64> = aggs.iter().map(f).collect();
        crate::wal::put_bytes(&mut out, &encode_ints(&col));
    }
    let last: Vec<f64> = aggs.iter().map(|a| a.last).collect();
    crate::wal::put_bytes(&mut out, &encode_floats(&last));
    for f in FLOAT_COLUMNS {
        let col: Vec<f64> = aggs.iter().map(f).collect();
        let best = if col
            .iter()
            .zip(&last)
            .all(|(c, l)| c.to_bits() == l.to_bits())
        {
            vec![AS_LAST]
        } else {
            let mut whole = vec![WHOLE];
            whole.extend_from_slice(&encode_floats(&col));
            let diff: Vec<f64> = col.iter().zip(&last).map(|(c, l)| c - l).collect();
            let exact = diff
                .iter()
                .zip(&last)
                .zip(&col)
                .all(|((d, l), c)| (l + d).to_bits() == c.to_bits());
            let from = exact.then(|| {
                let mut from = vec![FROM_LAST];
                from.extend_from_slice(&encode_floats(&diff));
                from
            });
            match from {
                Some(from) if from.len() < whole.len() => from,
                _ => whole,
            }
        };
        crate::wal::put_bytes(&mut out, &best);
    }
    out
}

pub(crate) fn decode(b: &[u8]) -> Result<Vec<Aggregate>> {
    use tiermon_chunkenc::sealed::{decode_floats, decode_ints};
    let corrupt = || Error::Corrupt {
        what: "aggregate chunk".into(),
    };
    let Some(mut b) = b.strip_prefix(&COLUMNS[..]) else {
        return decode_v1(b);
    };
    let n = crate::wal::get_uvarint(&mut b).ok_or_else(corrupt)? as usize;
    let mut ints = Vec::with_capacity(3);
    for _ in 0..3 {
        let col = crate::wal::get_bytes(&mut b).ok_or_else(corrupt)?;
        let col = decode_ints(col).map_err(|_| corrupt())?;
        if col.len() != n {
            return Err(corrupt());
        }
        ints.push(col);
    }
    let col = crate::wal::get_bytes(&mut b).ok_or_else(corrupt)?;
    let last = decode_floats(col, n).map_err(|_| corrupt())?;
    let mut floats = Vec::with_capacity(FLOAT_COLUMNS.len());
    for _ in FLOAT_COLUMNS {
        let col = crate::wal::get_bytes(&mut b).ok_or_else(corrupt)?;
        let (&tag, rest) = col.split_first().ok_or_else(corrupt)?;
        floats.push(match tag {
            WHOLE => decode_floats(rest, n).map_err(|_| corrupt())?,
            AS_LAST if rest.is_empty() => last.clone(),
            FROM_LAST => decode_floats(rest, n)
                .map_err(|_| corrupt())?
                .iter()
                .zip(&last)
                .map(|(d, l)| l + d)
                .collect(),
            _ => return Err(corrupt()),
        });
    }
    if !b.is_empty() {
        return Err(corrupt());
    }
    Ok((0..n)
        .map(|i| Aggregate {
            start: ints[0][i],
            last_t: ints[0][i].wrapping_add(ints[1][i]),
            count: ints[2][i] as u64,
            min: floats[0][i],
            max: floats[1][i],
            sum: floats[2][i],
            last: last[i],
            counter: floats[3][i],
        })
        .collect())
}

/// The first layout: one integer block (starts, last timestamps, counts)
/// and one sealed chunk of the five float columns one after another.
fn decode_v1(mut b: &[u8]) -> Result<Vec<Aggregate>> {
    let corrupt = || Error::Corrupt {
        what: "aggregate chunk".into(),
    };
    let n = crate::wal::get_uvarint(&mut b).ok_or_else(corrupt)? as usize;
    let ib = crate::wal::get_bytes(&mut b).ok_or_else(corrupt)?;
    let ints = tiermon_chunkenc::sealed::decode_ints(ib).map_err(|_| corrupt())?;
    let (_, floats) = tiermon_chunkenc::sealed::decode(b).map_err(|_| corrupt())?;
    if ints.len() != 3 * n || floats.len() != 5 * n {
        return Err(corrupt());
    }
    Ok((0..n)
        .map(|i| Aggregate {
            start: ints[i],
            last_t: ints[n + i],
            count: ints[2 * n + i] as u64,
            min: floats[i],
            max: floats[n + i],
            sum: floats[2 * n + i],
            last: floats[3 * n + i],
            counter: floats[4 * n + i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_resets_are_carried() {
        // 0,10,20 then reset to 5, 15: increase is 20 + 15 = 35.
        let s = [
            (0, 0.0),
            (20_000, 10.0),
            (40_000, 20.0),
            (60_000, 5.0),
            (80_000, 15.0),
        ];
        let mut carry = (0.0, None);
        let a = aggregate(&s, 60_000, &mut carry);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (
                a[0].min,
                a[0].max,
                a[0].sum,
                a[0].count,
                a[0].last,
                a[0].counter
            ),
            (0.0, 20.0, 30.0, 3, 20.0, 20.0)
        );
        assert_eq!((a[1].count, a[1].last, a[1].counter), (2, 15.0, 35.0));
        assert_eq!(a[1].counter - 0.0, 35.0, "increase over both windows");
        let h = rollup(&a, 3_600_000);
        assert_eq!(
            (
                h.len(),
                h[0].count,
                h[0].sum,
                h[0].counter,
                h[0].min,
                h[0].max
            ),
            (1, 5, 50.0, 35.0, 0.0, 20.0)
        );
    }

    #[test]
    fn stale_markers_are_skipped_and_encoding_round_trips() {
        let s = [
            (1000, 1.5),
            (2000, f64::from_bits(tiermon_model::STALE_NAN_BITS)),
            (61_000, f64::NAN),
            (62_000, -3.25),
        ];
        let a = aggregate(&s, 60_000, &mut (0.0, None));
        assert_eq!(a[0].count, 1);
        let back = decode(&encode(&a)).unwrap();
        assert_eq!(back.len(), a.len());
        for (x, y) in back.iter().zip(&a) {
            assert_eq!(
                (x.start, x.count, x.last_t, x.sum.to_bits()),
                (y.start, y.count, y.last_t, y.sum.to_bits())
            );
        }
        assert!(decode(&[1, 2, 3]).is_err());
    }

    fn bits(a: &[Aggregate]) -> Vec<(i64, i64, u64, [u64; 5])> {
        a.iter()
            .map(|a| {
                let f = [a.min, a.max, a.sum, a.last, a.counter].map(f64::to_bits);
                (a.start, a.last_t, a.count, f)
            })
            .collect()
    }

    fn windows() -> Vec<Aggregate> {
        let s: Vec<(i64, f64)> = (0..2000)
            .map(|i| (i * 15_000, (f64::from(i as i32 * 37 % 1000)) / 100.0))
            .collect();
        let mut a = aggregate(&s, 60_000, &mut (0.0, None));
        a[3].max = f64::NAN;
        a[4].min = -0.0;
        a
    }

    #[test]
    fn columns_round_trip_bit_exactly_and_damage_is_an_error() {
        let a = windows();
        let b = encode(&a);
        assert_eq!(bits(&decode(&b).unwrap()), bits(&a));
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// The tag bytes of the min, max, sum and counter columns.
    fn tags(b: &[u8]) -> Vec<u8> {
        let mut b = &b[2..];
        crate::wal::get_uvarint(&mut b).unwrap();
        for _ in 0..4 {
            crate::wal::get_bytes(&mut b).unwrap();
        }
        (0..4)
            .map(|_| crate::wal::get_bytes(&mut b).unwrap()[0])
            .collect()
    }

    #[test]
    fn a_counter_stores_little_more_than_its_last_values() {
        // Two hours of a CPU-seconds counter at 15 s, one reset.
        let mut v = 0.0;
        let s: Vec<(i64, f64)> = (0..480)
            .map(|i| {
                v = if i == 300 {
                    0.25
                } else {
                    v + (i % 7) as f64 / 4.0
                };
                (i * 15_000, v)
            })
            .collect();
        let mut carry = (0.0, None);
        let a = aggregate(&s[..250], 60_000, &mut carry);
        let b = encode(&a);
        assert_eq!(bits(&decode(&b).unwrap()), bits(&a));
        // Max and the counter are last again; start, count and last_t are
        // progressions.
        assert_eq!(tags(&b), [WHOLE, AS_LAST, WHOLE, AS_LAST]);
        // After the reset the counter is last plus what came before.
        let a2 = aggregate(&s[250..], 60_000, &mut carry);
        let b2 = encode(&a2);
        assert_eq!(bits(&decode(&b2).unwrap()), bits(&a2));
        assert_eq!(tags(&b2)[3], FROM_LAST);
        let whole = |a: &[Aggregate]| {
            let cols: [Column; 5] = [|a| a.min, |a| a.max, |a| a.sum, |a| a.last, |a| a.counter];
            cols.iter()
                .map(|f| {
                    tiermon_chunkenc::sealed::encode_floats(&a.iter().map(f).collect::<Vec<_>>())
                        .len()
                })
                .sum::<usize>()
        };
        assert!(
            b.len() < whole(&a) && b2.len() < whole(&a2),
            "{} and {} bytes, against {} and {} for the float columns alone",
            b.len(),
            b2.len(),
            whole(&a),
            whole(&a2)
        );
    }

    #[test]
    fn the_first_layout_still_decodes() {
        // What aggregates were written as before the per-column layout.
        let a = windows();
        let ints: Vec<i64> = a
            .iter()
            .map(|a| a.start)
            .chain(a.iter().map(|a| a.last_t))
            .chain(a.iter().map(|a| a.count as i64))
            .collect();
        let v1_columns: [Column; 5] = [|a| a.min, |a| a.max, |a| a.sum, |a| a.last, |a| a.counter];
        let floats: Vec<f64> = v1_columns.iter().flat_map(|f| a.iter().map(f)).collect();
        let positions: Vec<i64> = (0..floats.len() as i64).collect();
        let mut v1 = Vec::new();
        crate::wal::put_uvarint(&mut v1, a.len() as u64);
        crate::wal::put_bytes(&mut v1, &tiermon_chunkenc::sealed::encode_ints(&ints));
        v1.extend_from_slice(&tiermon_chunkenc::sealed::encode(&positions, &floats));
        assert_eq!(bits(&decode(&v1).unwrap()), bits(&a));
        assert!(encode(&a).len() < v1.len());
    }
}
