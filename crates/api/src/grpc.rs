//! The gRPC query service (`tiermon.v1.Query`), served on the same port as
//! the HTTP API (HTTP/2 with prior knowledge). Range results and series
//! stream in messages of at most [`CHUNK_SERIES`] series.

use tiermon_model::{Labels, MatchOp, Matcher};
use tiermon_promql::Value;
use tiermon_proto::v1;
use tonic::codegen::tokio_stream;
use tonic::{Request, Response, Status};

use crate::{Api, ApiError};

/// Series per streamed message.
pub const CHUNK_SERIES: usize = 500;

/// The service over an [`Api`]'s store and limits.
#[derive(Debug, Clone)]
pub struct QueryService {
    api: Api,
}

impl QueryService {
    /// The service.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

fn status(e: ApiError) -> Status {
    let msg = format!("{}: {}", e.kind, e.message);
    match e.kind {
        "bad_data" => Status::invalid_argument(msg),
        "unavailable" => Status::resource_exhausted(msg),
        "timeout" => Status::deadline_exceeded(msg),
        "execution" => Status::failed_precondition(msg),
        _ => Status::internal(msg),
    }
}

/// Labels as the proto carries them.
pub fn labels_pb(l: &Labels) -> Vec<v1::Label> {
    l.iter()
        .map(|x| v1::Label {
            name: x.name.to_string(),
            value: x.value.to_string(),
        })
        .collect()
}

fn series_pb(l: &Labels, samples: &[(i64, f64)]) -> v1::Series {
    v1::Series {
        labels: labels_pb(l),
        series_id: l.series_id().0,
        samples: samples
            .iter()
            .map(|&(t, v)| v1::Sample {
                timestamp_ms: t,
                value: v,
            })
            .collect(),
        ..Default::default()
    }
}

fn matchers(sets: &[v1::SelectorSet]) -> Result<Vec<Vec<Matcher>>, Status> {
    sets.iter()
        .map(|s| {
            s.matchers
                .iter()
                .map(|m| {
                    let op = match v1::label_matcher::Type::try_from(m.r#type) {
                        Ok(v1::label_matcher::Type::Eq) => MatchOp::Equal,
                        Ok(v1::label_matcher::Type::Neq) => MatchOp::NotEqual,
                        Ok(v1::label_matcher::Type::Re) => MatchOp::Regex,
                        Ok(v1::label_matcher::Type::Nre) => MatchOp::NotRegex,
                        Err(_) => {
                            return Err(Status::invalid_argument(format!(
                                "unknown matcher type {}",
                                m.r#type
                            )));
                        }
                    };
                    Matcher::new(op, &m.name, &m.value)
                        .map_err(|e| Status::invalid_argument(format!("matcher {}: {e}", m.name)))
                })
                .collect()
        })
        .collect()
}

/// The warnings of a fanned-out query as the proto's partial failures.
fn partial(warnings: Vec<(String, String)>) -> Vec<v1::PartialFailure> {
    warnings
        .into_iter()
        .map(|(source, error)| v1::PartialFailure { source, error })
        .collect()
}

fn bounds(start: i64, end: i64) -> (i64, i64) {
    (
        if start == 0 { i64::MIN / 2 } else { start },
        if end == 0 { i64::MAX / 2 } else { end },
    )
}

/// A request's result limit; 0 means none.
fn limit(n: u64) -> usize {
    if n == 0 { usize::MAX } else { n as usize }
}

fn timeout(ms: i64) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms as u64))
}

fn response(v: Value) -> Vec<v1::QueryResponse> {
    use v1::query_response::ResultType;
    match v {
        Value::Scalar(t, x) => vec![v1::QueryResponse {
            result_type: ResultType::Scalar as i32,
            scalar: Some(v1::Sample {
                timestamp_ms: t,
                value: x,
            }),
            ..Default::default()
        }],
        Value::String(t, s) => vec![v1::QueryResponse {
            result_type: ResultType::String as i32,
            scalar: Some(v1::Sample {
                timestamp_ms: t,
                value: 0.0,
            }),
            string_value: s,
            ..Default::default()
        }],
        Value::Vector(samples) => vec![v1::QueryResponse {
            result_type: ResultType::Vector as i32,
            series: samples
                .iter()
                .map(|s| series_pb(&s.labels, &[(s.t, s.v)]))
                .collect(),
            ..Default::default()
        }],
        Value::Matrix(series) => {
            let mut out: Vec<v1::QueryResponse> = series
                .chunks(CHUNK_SERIES)
                .map(|c| v1::QueryResponse {
                    result_type: ResultType::Matrix as i32,
                    series: c.iter().map(|s| series_pb(&s.labels, &s.samples)).collect(),
                    ..Default::default()
                })
                .collect();
            if out.is_empty() {
                out.push(v1::QueryResponse {
                    result_type: ResultType::Matrix as i32,
                    ..Default::default()
                });
            }
            out
        }
    }
}

type Stream<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;

#[tonic::async_trait]
impl v1::query_server::Query for QueryService {
    async fn instant(
        &self,
        request: Request<v1::InstantQueryRequest>,
    ) -> Result<Response<v1::QueryResponse>, Status> {
        let r = request.into_inner();
        let api = self.api.clone();
        let (store, warnings) = api.store(r.full_resolution);
        let t = if r.time_ms == 0 {
            crate::now_ms()
        } else {
            r.time_ms
        };
        let v = crate::run_query(&self.api, timeout(r.timeout_ms), move |c| {
            api.inner
                .engine
                .with_cancel(c)
                .instant(&*store, &r.query, t)
        })
        .await
        .map_err(status)?
        .map_err(|e| status(ApiError::from_promql(e)))?;
        let mut resp = response(v).into_iter().next().unwrap_or_default();
        resp.partial = partial(warnings.take());
        Ok(Response::new(resp))
    }

    type RangeStream = Stream<v1::QueryResponse>;

    async fn range(
        &self,
        request: Request<v1::RangeQueryRequest>,
    ) -> Result<Response<Self::RangeStream>, Status> {
        let r = request.into_inner();
        let api = self.api.clone();
        let (store, warnings) = api.store(r.full_resolution);
        let v = crate::run_query(&self.api, timeout(r.timeout_ms), move |c| {
            api.inner
                .engine
                .with_cancel(c)
                .range(&*store, &r.query, r.start_ms, r.end_ms, r.step_ms)
        })
        .await
        .map_err(status)?
        .map_err(|e| status(ApiError::from_promql(e)))?;
        let mut out = response(v);
        if let Some(first) = out.first_mut() {
            first.partial = partial(warnings.take());
        }
        let items: Vec<Result<v1::QueryResponse, Status>> = out.into_iter().map(Ok).collect();
        Ok(Response::new(tokio_stream::iter(items)))
    }

    type SeriesStream = Stream<v1::SeriesResponse>;

    async fn series(
        &self,
        request: Request<v1::SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        let r = request.into_inner();
        let sets = matchers(&r.selectors)?;
        if sets.is_empty() {
            return Err(Status::invalid_argument("no selectors given"));
        }
        let (start, end) = bounds(r.start_ms, r.end_ms);
        let db = self.api.db().clone();
        let limit = limit(r.limit);
        let all = crate::run_query(&self.api, None, move |_| {
            let mut all = crate::union(&sets, |m| db.series(m, start, end))?;
            all.truncate(limit);
            Ok::<_, tiermon_tsdb::Error>(all)
        })
        .await
        .map_err(status)?
        .map_err(|e| status(crate::ApiError::storage(e)))?;
        let items: Vec<Result<v1::SeriesResponse, Status>> = all
            .chunks(CHUNK_SERIES)
            .map(|c| {
                Ok(v1::SeriesResponse {
                    series: c.iter().map(|l| series_pb(l, &[])).collect(),
                    partial: Vec::new(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(items)))
    }

    async fn label_names(
        &self,
        request: Request<v1::LabelNamesRequest>,
    ) -> Result<Response<v1::LabelNamesResponse>, Status> {
        let r = request.into_inner();
        let sets = matchers(&r.selectors)?;
        let (start, end) = bounds(r.start_ms, r.end_ms);
        let db = self.api.db().clone();
        let limit = limit(r.limit);
        let names = crate::run_query(&self.api, None, move |_| {
            let mut names = crate::union(&sets, |m| db.label_names(m, start, end))?;
            names.truncate(limit);
            Ok::<_, tiermon_tsdb::Error>(names)
        })
        .await
        .map_err(status)?
        .map_err(|e| status(crate::ApiError::storage(e)))?;
        Ok(Response::new(v1::LabelNamesResponse {
            names,
            partial: Vec::new(),
        }))
    }

    async fn label_values(
        &self,
        request: Request<v1::LabelValuesRequest>,
    ) -> Result<Response<v1::LabelValuesResponse>, Status> {
        let r = request.into_inner();
        let sets = matchers(&r.selectors)?;
        let (start, end) = bounds(r.start_ms, r.end_ms);
        let db = self.api.db().clone();
        let limit = limit(r.limit);
        let values = crate::run_query(&self.api, None, move |_| {
            let mut values = crate::union(&sets, |m| db.label_values(&r.name, m, start, end))?;
            values.truncate(limit);
            Ok::<_, tiermon_tsdb::Error>(values)
        })
        .await
        .map_err(status)?
        .map_err(|e| status(crate::ApiError::storage(e)))?;
        Ok(Response::new(v1::LabelValuesResponse {
            values,
            partial: Vec::new(),
        }))
    }

    async fn alerts(
        &self,
        r: Request<v1::AlertsRequest>,
    ) -> Result<Response<v1::AlertsResponse>, Status> {
        let r = r.into_inner();
        let set = matchers(&[v1::SelectorSet {
            matchers: r.matchers,
        }])?
        .pop()
        .unwrap_or_default();
        let Some(f) = self.api.inner.providers.alerts.get() else {
            return Err(Status::unimplemented("this tier evaluates no rules"));
        };
        let alerts = f()
            .into_iter()
            .filter(|a| {
                set.iter().all(|m| {
                    let v = a
                        .labels
                        .iter()
                        .find(|l| l.name == m.name())
                        .map_or("", |l| l.value.as_str());
                    m.matches(v)
                })
            })
            .collect();
        Ok(Response::new(v1::AlertsResponse {
            alerts,
            partial: Vec::new(),
        }))
    }

    async fn targets(
        &self,
        r: Request<v1::TargetsRequest>,
    ) -> Result<Response<v1::TargetsResponse>, Status> {
        let state = r.into_inner().state;
        let (want_active, want_dropped) = match state.as_str() {
            "" | "any" => (true, true),
            "active" => (true, false),
            "dropped" => (false, true),
            other => {
                return Err(Status::invalid_argument(format!(
                    "state {other:?}: use active, dropped or nothing"
                )));
            }
        };
        let Some(f) = self.api.inner.providers.targets.get() else {
            return Err(Status::unimplemented(
                "this tier scrapes no targets (secondaries do)",
            ));
        };
        let (active, dropped) = f();
        Ok(Response::new(v1::TargetsResponse {
            active: if want_active { active } else { Vec::new() },
            dropped: if want_dropped { dropped } else { Vec::new() },
        }))
    }
}
