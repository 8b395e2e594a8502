//! Prometheus remote_write v1 intake: snappy-compressed protobuf at
//! `POST /api/v1/write`. A request is acknowledged (204) only after its
//! samples are in the WAL; a malformed or oversized one gets 400 with the
//! reason and stores nothing; samples the store refuses (too old) are
//! reported in a 400 after the rest are stored, so that the sender does not
//! retry what was accepted.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hashbrown::HashMap;
use parking_lot::RwLock;
use tiermon_model::Labels;
use tiermon_proto::remote_write;
use tiermon_tsdb::{Appender, Db, SeriesRef};

use crate::{Api, ApiError};

/// Raw label bytes of a request's series → the store's reference, so that
/// a series already seen is found by hashing its bytes once, with no
/// decoding, allocation or validation (what the scrape cache does for
/// exposition text). Keyed by the bytes' 128-bit xxh3: 32 bytes an entry.
/// The same label set spelt differently by two senders (label order,
/// empty values) takes two entries leading to one reference.
///
/// References are never reused by the store, so an entry cannot go
/// stale; a cache that outgrows twice the store's `max_series` is
/// cleared, which bounds its memory when series churn.
pub(crate) struct SeriesCache {
    map: RwLock<Map>,
    max_len: usize,
}

type Map = HashMap<u128, SeriesRef, foldhash::fast::FixedState>;

impl std::fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesCache")
            .field("len", &self.len())
            .finish()
    }
}

impl SeriesCache {
    pub(crate) fn new(max_series: usize) -> Self {
        Self {
            map: RwLock::new(Map::with_hasher(foldhash::fast::FixedState::with_seed(7))),
            max_len: max_series.saturating_mul(2).max(1 << 16),
        }
    }

    /// Looks every key up under one read lock, so that the lookups are
    /// plain loads the processor overlaps (the table is far bigger than
    /// its caches; one lock per lookup would serialise the misses).
    fn get_all(&self, keys: &[Option<u128>], out: &mut Vec<Option<SeriesRef>>) {
        let map = self.map.read();
        out.extend(keys.iter().map(|k| k.and_then(|k| map.get(&k).copied())));
    }

    fn insert_all(&self, entries: &[(u128, SeriesRef)]) {
        if entries.is_empty() {
            return;
        }
        let mut map = self.map.write();
        if map.len() + entries.len() > self.max_len {
            map.clear();
        }
        map.extend(entries.iter().copied());
    }

    fn len(&self) -> usize {
        self.map.read().len()
    }
}

/// The label set of a series as the store keeps it: names valid and
/// unique, empty values dropped, a metric name present.
fn to_labels(pairs: &[(&str, &str)]) -> Result<Labels, String> {
    for (k, (name, _)) in pairs.iter().enumerate() {
        if !tiermon_model::is_valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        if pairs[..k].iter().any(|(n, _)| n == name) {
            return Err(format!("duplicate label name {name:?}"));
        }
    }
    let labels = Labels::from_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()).copied());
    if labels.metric_name().is_none() {
        return Err(format!("{labels} has no metric name"));
    }
    Ok(labels)
}

/// Decompresses a remote_write body, refusing one that would decompress
/// to more than `max_decoded` bytes.
fn decompress(body: &[u8], max_decoded: usize) -> Result<Vec<u8>, String> {
    let len = snap::raw::decompress_len(body).map_err(|e| format!("snappy: {e}"))?;
    if len > max_decoded {
        return Err(format!(
            "decompressed body of {len} bytes is over the limit of {max_decoded}"
        ));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))
}

/// Walks a decompressed WriteRequest, resolving each series to its
/// reference (creating new series) and adding its samples to `app`. On
/// an error nothing is committed; series already created stay, empty.
/// Malformed input is an error naming the series and the problem (400); a
/// failure of storage is a 500, which senders retry.
fn append_request(
    raw: &[u8],
    db: &Db,
    cache: &SeriesCache,
    app: &mut Appender<'_>,
) -> Result<(), (StatusCode, String)> {
    let bad = |e: String| (StatusCode::BAD_REQUEST, e);
    let mut series = Vec::new();
    let mut keys = Vec::new();
    for (i, s) in remote_write::series(raw).enumerate() {
        let s = s.map_err(|e| bad(format!("series {i}: {e}")))?;
        keys.push(s.label_bytes().map(xxhash_rust::xxh3::xxh3_128));
        series.push(s);
    }
    let mut refs = Vec::with_capacity(series.len());
    cache.get_all(&keys, &mut refs);
    // Series not in the cache, resolved (and created) together.
    let mut unknown = Vec::new();
    let mut labels = Vec::new();
    for (i, s) in series.iter().enumerate() {
        if refs[i].is_none() {
            let l = s
                .labels()
                .map_err(|e| e.to_string())
                .and_then(|pairs| to_labels(&pairs))
                .map_err(|e| bad(format!("series {i}: {e}")))?;
            unknown.push(i);
            labels.push(l);
        }
    }
    let mut learnt = Vec::new();
    if !unknown.is_empty() {
        let found = db
            .series_refs(&labels)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        for (&i, r) in unknown.iter().zip(found) {
            let r = r.map_err(|e| bad(format!("series {i}: {e}")))?;
            refs[i] = Some(r);
            if let Some(k) = keys[i] {
                learnt.push((k, r));
            }
        }
    }
    for (i, s) in series.iter().enumerate() {
        let r = refs[i].expect("every series resolved");
        s.samples(|t, v| app.append_ref(r, t, v))
            .map_err(|e| bad(format!("series {i}: {e}")))?;
    }
    cache.insert_all(&learnt);
    Ok(())
}

pub(crate) async fn handle(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(enc) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        && !enc.eq_ignore_ascii_case("snappy")
    {
        return ApiError::bad_data(format!(
            "unsupported Content-Encoding {enc:?}; remote_write uses snappy"
        ))
        .into_response();
    }
    let max = api.limits().max_write_decoded_bytes;
    let db = api.db().clone();
    let cache = api.write_cache();
    let result =
        tokio::task::spawn_blocking(move || -> Result<Vec<String>, (StatusCode, String)> {
            let raw = decompress(&body, max).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
            let mut app = db.appender();
            append_request(&raw, &db, &cache, &mut app)?;
            let res = app
                .commit()
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(res
                .rejected
                .into_iter()
                .map(|(_, e)| e.to_string())
                .collect())
        })
        .await;
    match result {
        Ok(Ok(rejected)) if rejected.is_empty() => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(rejected)) => {
            let n = rejected.len();
            let first: Vec<String> = rejected.into_iter().take(3).collect();
            tracing::debug!(rejected = n, "remote_write samples rejected");
            (
                StatusCode::BAD_REQUEST,
                format!(
                    "{n} samples rejected, the rest stored: {}\n",
                    first.join("; ")
                ),
            )
                .into_response()
        }
        Ok(Err((status, msg))) => {
            tracing::debug!(%msg, "remote_write request refused");
            (status, format!("{msg}\n")).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("write failed: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tiermon_model::{MatchOp, Matcher};
    use tiermon_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

    fn body(series: Vec<TimeSeries>) -> Vec<u8> {
        let req = WriteRequest {
            timeseries: series,
            ..Default::default()
        };
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap()
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
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

    struct Store {
        db: Db,
        cache: SeriesCache,
        _dir: tempfile::TempDir,
    }

    impl Store {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), Default::default()).unwrap();
            Self {
                cache: SeriesCache::new(db.options().max_series),
                db,
                _dir: dir,
            }
        }

        /// What a request does: decompress, walk, commit.
        fn write(&self, body: &[u8], max: usize) -> Result<(), String> {
            let raw = decompress(body, max)?;
            let mut app = self.db.appender();
            append_request(&raw, &self.db, &self.cache, &mut app).map_err(|(_, e)| e)?;
            app.commit().map_err(|e| e.to_string())?;
            Ok(())
        }

        /// Every stored series as text, with its samples' (t, value bits).
        fn dump(&self) -> Vec<(String, Vec<(i64, u64)>)> {
            let all = Matcher::new(MatchOp::Regex, "__name__", ".+").unwrap();
            self.db
                .select(&[all], i64::MIN, i64::MAX)
                .unwrap()
                .into_iter()
                .map(|s| {
                    let samples = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
                    (s.labels.to_string(), samples)
                })
                .collect()
        }
    }

    #[test]
    fn stores_series_and_keeps_stale_bits() {
        let st = Store::new();
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        st.write(
            &body(vec![series(
                &[("__name__", "up"), ("job", "a"), ("empty", "")],
                &[(1, 1.0), (2, stale)],
            )]),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            st.dump(),
            vec![(
                r#"up{job="a"}"#.to_owned(),
                vec![(1, 1f64.to_bits()), (2, stale.to_bits())]
            )]
        );
    }

    #[test]
    fn a_known_series_is_found_by_its_bytes() {
        let st = Store::new();
        let labels = [("__name__", "up"), ("job", "a")];
        st.write(&body(vec![series(&labels, &[(1, 1.0)])]), 1 << 20)
            .unwrap();
        st.write(&body(vec![series(&labels, &[(2, 2.0)])]), 1 << 20)
            .unwrap();
        assert_eq!(st.cache.len(), 1);
        // The same set spelt otherwise is a second entry for one series.
        let swapped = [("job", "a"), ("__name__", "up")];
        st.write(&body(vec![series(&swapped, &[(3, 3.0)])]), 1 << 20)
            .unwrap();
        assert_eq!(st.cache.len(), 2);
        let got = st.dump();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 3);
    }

    #[test]
    fn a_full_cache_starts_over_and_still_resolves() {
        let c = SeriesCache::new(0);
        for k in 0..100_000u128 {
            c.insert_all(&[(k, k as SeriesRef)]);
        }
        assert!(c.len() <= 1 << 16);
        let mut got = Vec::new();
        c.get_all(&[Some(99_999), None], &mut got);
        assert_eq!(got, vec![Some(99_999), None]);
    }

    #[test]
    fn bad_bodies_name_the_problem_and_store_nothing() {
        let st = Store::new();
        let err = |b: &[u8]| st.write(b, 1 << 20).unwrap_err();
        assert!(err(b"not snappy at all").contains("snappy"));
        let junk = snap::raw::Encoder::new()
            .compress_vec(&[0x0a, 0xff, 0xff, 0xff])
            .unwrap();
        assert!(err(&junk).contains("series 0"), "{}", err(&junk));
        let good = series(&[("__name__", "ok")], &[(1, 1.0)]);
        for (bad, why) in [
            (series(&[("job", "a")], &[(1, 1.0)]), "no metric name"),
            (
                series(&[("__name__", "x"), ("1bad", "a")], &[(1, 1.0)]),
                "invalid label name",
            ),
            (
                series(&[("__name__", "x"), ("a", "1"), ("a", "2")], &[(1, 1.0)]),
                "duplicate label name",
            ),
        ] {
            // The good series first: the request is refused whole.
            let e = err(&body(vec![good.clone(), bad]));
            assert!(e.starts_with("series 1: ") && e.contains(why), "{e}");
        }
        let big = body(vec![series(&[("__name__", "x")], &[(1, 1.0); 1000])]);
        assert!(st.write(&big, 100).unwrap_err().contains("over the limit"));
        assert!(st.dump().iter().all(|(_, samples)| samples.is_empty()));
    }
}
