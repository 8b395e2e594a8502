//! Prometheus remote_write v1 requests read in place.
//!
//! Decoding a `WriteRequest` into [`crate::prometheus::WriteRequest`]
//! allocates two strings per label of every series of every request, which
//! is most of an intake's cost when series repeat from request to request
//! (they always do). [`series`] walks the decompressed bytes instead:
//! each [`RawSeries`] lends its label fields as one slice
//! ([`RawSeries::label_bytes`]) that a receiver can hash to find the
//! series it already knows, and decodes labels and samples only when
//! asked.
//!
//! The reader follows protobuf's rules as prost does: unknown fields are
//! skipped, a missing scalar is its default, a repeated scalar field's
//! last value wins. Anything malformed is an [`Error`] naming the
//! problem; nothing panics on input.

/// A malformed request: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

type Result<T> = std::result::Result<T, Error>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

// Field numbers of prometheus.WriteRequest, TimeSeries, Label and Sample.
const REQUEST_TIMESERIES: u32 = 1;
const SERIES_LABELS: u32 = 1;
const SERIES_SAMPLES: u32 = 2;
const SERIES_HISTOGRAMS: u32 = 4;
const LABEL_NAME: u32 = 1;
const LABEL_VALUE: u32 = 2;
const SAMPLE_VALUE: u32 = 1;
const SAMPLE_TIMESTAMP: u32 = 2;

/// One field's value by wire type (LEN fields lend their bytes).
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32,
}

/// The fields of one message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64> {
        // Keys, lengths and most label sizes fit one byte.
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.long_varint(),
        }
    }

    fn long_varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return err("truncated varint");
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return err("varint over 64 bits");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint over 64 bits")
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| Error(format!("field of {n} bytes runs past its message")))?;
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    /// The next field, or `None` at the end of the message.
    #[inline]
    fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = match u32::try_from(key >> 3) {
            Ok(n) if n > 0 && n < 1 << 29 => n,
            _ => return err(format!("invalid field number {}", key >> 3)),
        };
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let n = self.varint()?;
                Value::Len(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            t => return err(format!("field {number} has unsupported wire type {t}")),
        };
        Ok(Some((number, value)))
    }
}

/// The `TimeSeries` of a decompressed `WriteRequest`, in order. Other
/// fields of the request (metadata) are skipped.
pub fn series(request: &[u8]) -> Series<'_> {
    Series {
        fields: Fields::new(request),
        done: false,
    }
}

/// Iterator over a request's series; see [`series`]. It ends after the
/// first error.
pub struct Series<'a> {
    fields: Fields<'a>,
    done: bool,
}

impl std::fmt::Debug for Series<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series")
            .field("at", &self.fields.pos)
            .finish()
    }
}

impl<'a> Iterator for Series<'a> {
    type Item = Result<RawSeries<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = loop {
            match self.fields.next_field() {
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Ok(Some((REQUEST_TIMESERIES, Value::Len(b)))) => break RawSeries::parse(b),
                Ok(Some((REQUEST_TIMESERIES, _))) => {
                    break err("timeseries field is not length-delimited");
                }
                Ok(Some(_)) => {}
                Err(e) => break Err(e),
            }
        };
        self.done = item.is_err();
        Some(item)
    }
}

/// One `TimeSeries`, checked for well-formed fields but not decoded.
#[derive(Debug, Clone, Copy)]
pub struct RawSeries<'a> {
    body: &'a [u8],
    label_bytes: Option<&'a [u8]>,
}

impl<'a> RawSeries<'a> {
    fn parse(body: &'a [u8]) -> Result<Self> {
        let mut fields = Fields::new(body);
        // The label fields' span, and whether another field interrupts it.
        let mut span: Option<(usize, usize)> = None;
        let mut broken = false;
        loop {
            let at = fields.pos;
            let Some((n, v)) = fields.next_field()? else {
                break;
            };
            match (n, v) {
                (SERIES_LABELS, Value::Len(_)) => match &mut span {
                    Some((_, end)) if *end == at => *end = fields.pos,
                    Some(_) => broken = true,
                    None => span = Some((at, fields.pos)),
                },
                (SERIES_SAMPLES, Value::Len(_)) => {}
                (SERIES_LABELS | SERIES_SAMPLES, _) => {
                    return err(format!("series field {n} is not length-delimited"));
                }
                (SERIES_HISTOGRAMS, _) => {
                    return err("carries native histograms, which this server does not store");
                }
                _ => {}
            }
        }
        Ok(Self {
            body,
            label_bytes: span.filter(|_| !broken).map(|(s, e)| &body[s..e]),
        })
    }

    /// The series' label fields exactly as sent, when they come back to
    /// back (every encoder writes them so): equal bytes are an equal label
    /// list, so this is a key for the series a receiver already knows.
    /// `None` when other fields are interleaved.
    pub fn label_bytes(&self) -> Option<&'a [u8]> {
        self.label_bytes
    }

    /// The labels as sent, (name, value) in order, checked to be UTF-8
    /// (and nothing else: names, order and duplicates are the caller's).
    pub fn labels(&self) -> Result<Vec<(&'a str, &'a str)>> {
        let mut out = Vec::new();
        let mut fields = Fields::new(self.body);
        while let Some((n, v)) = fields.next_field()? {
            let (SERIES_LABELS, Value::Len(label)) = (n, v) else {
                continue;
            };
            let (mut name, mut value) = ("", "");
            let mut lf = Fields::new(label);
            while let Some((n, v)) = lf.next_field()? {
                let slot = match n {
                    LABEL_NAME => &mut name,
                    LABEL_VALUE => &mut value,
                    _ => continue,
                };
                let Value::Len(b) = v else {
                    return err(format!("label field {n} is not a string"));
                };
                *slot = std::str::from_utf8(b)
                    .map_err(|e| Error(format!("label {n} is not UTF-8: {e}")))?;
            }
            out.push((name, value));
        }
        Ok(out)
    }

    /// Hands each sample, (timestamp ms, value), to `f` in order. The
    /// value's bits are kept (staleness markers included).
    pub fn samples(&self, mut f: impl FnMut(i64, f64)) -> Result<()> {
        let mut fields = Fields::new(self.body);
        while let Some((n, v)) = fields.next_field()? {
            if let (SERIES_SAMPLES, Value::Len(sample)) = (n, v) {
                let (t, v) = decode_sample(sample)?;
                f(t, v);
            }
        }
        Ok(())
    }
}

/// One `Sample` message: (timestamp, value).
#[inline]
fn decode_sample(b: &[u8]) -> Result<(i64, f64)> {
    // What every encoder writes for a non-zero value and timestamp: the
    // value's key (0x09) and 8 bytes, the timestamp's key (0x10), a
    // varint.
    if b.len() > 10 && b[0] == 0x09 && b[9] == 0x10 {
        let mut bits = [0u8; 8];
        bits.copy_from_slice(&b[1..9]);
        let mut rest = Fields { buf: b, pos: 10 };
        if let Ok(t) = rest.varint()
            && rest.pos == b.len()
        {
            // int64 on the wire: two's complement in 64 bits.
            return Ok((t as i64, f64::from_bits(u64::from_le_bytes(bits))));
        }
    }
    let (mut t, mut value) = (0i64, 0f64);
    let mut fields = Fields::new(b);
    while let Some((n, v)) = fields.next_field()? {
        match (n, v) {
            (SAMPLE_VALUE, Value::Fixed64(bits)) => value = f64::from_bits(bits),
            (SAMPLE_TIMESTAMP, Value::Varint(x)) => t = x as i64,
            (SAMPLE_VALUE | SAMPLE_TIMESTAMP, _) => {
                return err(format!("sample field {n} has the wrong wire type"));
            }
            _ => {}
        }
    }
    Ok((t, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prometheus::{Label, Sample, TimeSeries, WriteRequest};
    use proptest::prelude::*;
    use prost::Message;

    type Decoded = (Vec<(String, String)>, Vec<(i64, u64)>);

    /// Everything the reader sees in `raw`.
    fn read(raw: &[u8]) -> Result<Vec<Decoded>> {
        series(raw)
            .map(|s| {
                let s = s?;
                let labels = s
                    .labels()?
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                let mut samples = Vec::new();
                s.samples(|t, v| samples.push((t, v.to_bits())))?;
                Ok((labels, samples))
            })
            .collect()
    }

    fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(t, v)| Sample {
                    value: v,
                    timestamp: t,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn reads_what_prost_writes() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let req = WriteRequest {
            timeseries: vec![
                ts(
                    &[("__name__", "up"), ("job", "a")],
                    &[(-5, 1.0), (2, stale)],
                ),
                ts(&[("__name__", "x")], &[]),
            ],
            ..Default::default()
        };
        let got = read(&req.encode_to_vec()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0[1], ("job".to_owned(), "a".to_owned()));
        assert_eq!(got[0].1, vec![(-5, 1f64.to_bits()), (2, stale.to_bits())]);
        assert!(got[1].1.is_empty());
    }

    #[test]
    fn label_bytes_are_the_label_fields() {
        let a = ts(&[("__name__", "up"), ("job", "a")], &[(1, 1.0)]);
        let b = ts(&[("__name__", "up"), ("job", "a")], &[(2, 5.0), (3, 6.0)]);
        let c = ts(&[("__name__", "up"), ("job", "b")], &[(1, 1.0)]);
        let key = |t: &TimeSeries| {
            let body = t.encode_to_vec();
            RawSeries::parse(&body)
                .unwrap()
                .label_bytes()
                .unwrap()
                .to_vec()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        // A sample between two labels: no key, labels still read.
        let mut body = Vec::new();
        for (field, msg) in [
            (1u8, a.labels[0].encode_to_vec()),
            (2, a.samples[0].encode_to_vec()),
            (1, a.labels[1].encode_to_vec()),
        ] {
            body.push(field << 3 | 2);
            body.push(msg.len() as u8);
            body.extend_from_slice(&msg);
        }
        let s = RawSeries::parse(&body).unwrap();
        assert!(s.label_bytes().is_none());
        assert_eq!(s.labels().unwrap(), vec![("__name__", "up"), ("job", "a")]);
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        let e = |raw: &[u8]| read(raw).unwrap_err().to_string();
        assert!(e(&[0x0a, 0x05, 0x0a]).contains("runs past"));
        assert!(e(&[0x0a]).contains("truncated varint"));
        assert!(e(&[0x0b]).contains("wire type 3"));
        assert!(e(&[0x08, 0x01]).contains("not length-delimited"));
        assert!(e(&[0x0a, 0x02, 0x0a, 0x02]).contains("runs past"));
        assert!(
            e(&[
                0x0a, 0x0b, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
            ])
            .contains("over 64 bits")
        );
        let mut bad_utf8 = ts(&[("__name__", "x")], &[]).encode_to_vec();
        let at = bad_utf8.len() - 1;
        bad_utf8[at] = 0xff;
        let mut req = vec![0x0a, bad_utf8.len() as u8];
        req.extend_from_slice(&bad_utf8);
        assert!(e(&req).contains("not UTF-8"));
        let hist = WriteRequest {
            timeseries: vec![TimeSeries {
                histograms: vec![Vec::new()],
                ..ts(&[("__name__", "h")], &[])
            }],
            ..Default::default()
        };
        assert!(e(&hist.encode_to_vec()).contains("native histograms"));
    }

    fn decoded(req: &WriteRequest) -> Vec<Decoded> {
        req.timeseries
            .iter()
            .map(|t| {
                (
                    t.labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect(),
                    t.samples
                        .iter()
                        .map(|s| (s.timestamp, s.value.to_bits()))
                        .collect(),
                )
            })
            .collect()
    }

    fn arb_series() -> impl Strategy<Value = TimeSeries> {
        (
            proptest::collection::vec(("[a-z_]{0,6}", "\\PC{0,6}"), 0..5),
            proptest::collection::vec((any::<i64>(), any::<u64>()), 0..5),
        )
            .prop_map(|(labels, samples)| TimeSeries {
                labels: labels
                    .into_iter()
                    .map(|(name, value)| Label { name, value })
                    .collect(),
                samples: samples
                    .into_iter()
                    .map(|(timestamp, bits)| Sample {
                        value: f64::from_bits(bits),
                        timestamp,
                    })
                    .collect(),
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn agrees_with_prost(series in proptest::collection::vec(arb_series(), 0..6)) {
            let req = WriteRequest { timeseries: series, ..Default::default() };
            prop_assert_eq!(read(&req.encode_to_vec()).unwrap(), decoded(&req));
        }

        #[test]
        fn garbage_never_panics_and_what_both_read_agrees(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Where they differ in accepting, it is over fields the reader
            // does not look at (exemplars, groups).
            if let (Ok(ours), Ok(req)) = (read(&raw), WriteRequest::decode(raw.as_slice())) {
                prop_assert_eq!(ours, decoded(&req));
            }
        }
    }
}
