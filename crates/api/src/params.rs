//! Request parameters: the query string and, for POST, a form body; times
//! and durations in the forms Prometheus accepts.

use std::time::Duration;

use axum::http::{HeaderMap, Method, header};
use tiermon_model::Matcher;

use crate::ApiError;

/// All parameters of a request, in order.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Self, ApiError> {
        let mut v: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if method == Method::POST && !body.is_empty() {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/x-www-form-urlencoded") {
                return Err(ApiError::bad_data(format!(
                    "POST body must be application/x-www-form-urlencoded, not {ct:?}"
                )));
            }
            v.extend(form_urlencoded::parse(body).into_owned());
        }
        Ok(Self(v))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::bad_data(format!("invalid parameter \"{name}\": missing")))
    }
}

/// Unix seconds (with fractions) or RFC 3339, to milliseconds.
pub(crate) fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Ok((f * 1000.0).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_data(format!(
                "invalid time {s:?}: cannot parse as a Unix timestamp or RFC 3339"
            ))
        })
}

/// Seconds (with fractions) or a Prometheus duration (`5m`, `1h30m`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, ApiError> {
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() && f >= 0.0 {
            return Ok(Duration::from_secs_f64(f));
        }
        return Err(ApiError::bad_data(format!("invalid duration {s:?}")));
    }
    tiermon_model::parse_duration(s)
        .map_err(|e| ApiError::bad_data(format!("invalid duration {s:?}: {e}")))
}

/// A series selector (`name{a="b"}`) to matchers.
pub(crate) fn parse_selector(s: &str) -> Result<Vec<Matcher>, ApiError> {
    let expr = promql_parser::parser::parse(s)
        .map_err(|e| ApiError::bad_data(format!("invalid match[] {s:?}: {e}")))?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        return Err(ApiError::bad_data(format!(
            "invalid match[] {s:?}: not a series selector"
        )));
    };
    tiermon_promql::selector_matchers(&vs).map_err(|e| ApiError::bad_data(e.to_string()))
}
