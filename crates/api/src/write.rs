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
use prost::Message;
use tiermon_model::Labels;
use tiermon_proto::prometheus::WriteRequest;

use crate::{Api, ApiError};

/// One series of a request and its (timestamp ms, value) samples.
pub(crate) type Decoded = (Labels, Vec<(i64, f64)>);

/// Decodes a remote_write body into (labels, samples) per series.
pub(crate) fn decode(body: &[u8], max_decoded: usize) -> Result<Vec<Decoded>, String> {
    let len = snap::raw::decompress_len(body).map_err(|e| format!("snappy: {e}"))?;
    if len > max_decoded {
        return Err(format!(
            "decompressed body of {len} bytes is over the limit of {max_decoded}"
        ));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let req = WriteRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    let mut out = Vec::with_capacity(req.timeseries.len());
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        if !ts.histograms.is_empty() {
            return Err(format!(
                "series {i} carries native histograms, which this server does not store"
            ));
        }
        let mut names = std::collections::HashSet::new();
        for l in &ts.labels {
            if !tiermon_model::is_valid_label_name(&l.name) {
                return Err(format!("series {i}: invalid label name {:?}", l.name));
            }
            if !names.insert(l.name.as_str()) {
                return Err(format!("series {i}: duplicate label name {:?}", l.name));
            }
        }
        let labels = Labels::from_pairs(
            ts.labels
                .into_iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| (l.name, l.value)),
        );
        if labels.metric_name().is_none() {
            return Err(format!("series {i} ({labels}) has no metric name"));
        }
        let samples = ts
            .samples
            .into_iter()
            .map(|s| (s.timestamp, s.value))
            .collect();
        out.push((labels, samples));
    }
    Ok(out)
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
    let result =
        tokio::task::spawn_blocking(move || -> Result<Vec<String>, (StatusCode, String)> {
            let series = decode(&body, max).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
            let mut app = db.appender();
            for (labels, samples) in &series {
                let r = db
                    .series_ref(labels)
                    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
                for &(t, v) in samples {
                    app.append_ref(r, t, v);
                }
            }
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
    use tiermon_proto::prometheus::{Label, Sample, TimeSeries};

    fn body(req: &WriteRequest) -> Vec<u8> {
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

    #[test]
    fn decodes_series_and_keeps_stale_bits() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let req = WriteRequest {
            timeseries: vec![series(
                &[("__name__", "up"), ("job", "a")],
                &[(1, 1.0), (2, stale)],
            )],
            ..Default::default()
        };
        let got = decode(&body(&req), 1 << 20).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.to_string(), r#"up{job="a"}"#);
        assert_eq!(got[0].1[1].1.to_bits(), stale.to_bits());
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        assert!(
            decode(b"not snappy at all", 1 << 20)
                .unwrap_err()
                .contains("snappy")
        );
        let junk = snap::raw::Encoder::new()
            .compress_vec(&[0xff, 0xff, 0xff])
            .unwrap();
        assert!(decode(&junk, 1 << 20).unwrap_err().contains("protobuf"));
        let req = WriteRequest {
            timeseries: vec![series(&[("job", "a")], &[(1, 1.0)])],
            ..Default::default()
        };
        assert!(
            decode(&body(&req), 1 << 20)
                .unwrap_err()
                .contains("no metric name")
        );
        let req = WriteRequest {
            timeseries: vec![series(&[("__name__", "x"), ("1bad", "a")], &[(1, 1.0)])],
            ..Default::default()
        };
        assert!(
            decode(&body(&req), 1 << 20)
                .unwrap_err()
                .contains("invalid label name")
        );
        let big = WriteRequest {
            timeseries: vec![series(&[("__name__", "x")], &[(1, 1.0); 1000])],
            ..Default::default()
        };
        assert!(
            decode(&body(&big), 100)
                .unwrap_err()
                .contains("over the limit")
        );
    }
}
