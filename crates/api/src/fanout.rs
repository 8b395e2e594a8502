//! Drill-down at the global tier: a query asked at full resolution
//! (`resolution=raw` over HTTP, `full_resolution` over gRPC) reads each
//! datacenter's raw samples from its primary instead of the one-minute
//! aggregates held here. Each selector goes to the primaries whose
//! `datacenter` it can match, as a range selector over the query's window;
//! the answers get their `datacenter` label. A primary that cannot answer
//! is named in the response's warnings, and that datacenter is answered
//! from the aggregates held here — never silently left out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tiermon_model::{Labels, LabelsBuilder, MatchOp, Matcher};
use tiermon_promql::{Queryable, Series};
use tiermon_proto::v1;
use tonic::transport::{Channel, Endpoint};

use crate::DbQueryable;

/// The label that names a datacenter at the global tier.
pub const DATACENTER: &str = "datacenter";

/// The primaries a global tier can drill down to, by datacenter.
#[derive(Debug, Clone, Default)]
pub struct Primaries {
    by_dc: Arc<BTreeMap<String, (String, Channel)>>,
    timeout: Duration,
}

impl Primaries {
    /// Primaries by datacenter name → gRPC address (`http://host:port`).
    /// Connections are made when first used.
    pub fn new(primaries: &BTreeMap<String, String>, timeout: Duration) -> Result<Self, String> {
        let mut by_dc = BTreeMap::new();
        for (dc, url) in primaries {
            let ch = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("primary of {dc} `{url}`: {e}"))?
                .connect_timeout(Duration::from_secs(3))
                .timeout(timeout)
                .connect_lazy();
            by_dc.insert(dc.clone(), (url.clone(), ch));
        }
        Ok(Self {
            by_dc: Arc::new(by_dc),
            timeout,
        })
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.by_dc.is_empty()
    }
}

/// A [`Queryable`] over the primaries, with the local store for
/// datacenters that have no primary configured or did not answer.
pub(crate) struct FanOut {
    pub(crate) local: DbQueryable,
    pub(crate) primaries: Primaries,
    pub(crate) warnings: Arc<Mutex<Vec<(String, String)>>>,
    pub(crate) handle: tokio::runtime::Handle,
}

/// PromQL text of one matcher.
fn matcher_text(m: &Matcher) -> String {
    let op = match m.op() {
        MatchOp::Equal => "=",
        MatchOp::NotEqual => "!=",
        MatchOp::Regex => "=~",
        MatchOp::NotRegex => "!~",
    };
    let v = m
        .value()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{}{op}\"{v}\"", m.name())
}

impl FanOut {
    async fn ask(
        &self,
        ch: Channel,
        selector: String,
        maxt: i64,
    ) -> Result<Vec<v1::Series>, String> {
        let mut c = v1::query_client::QueryClient::new(ch)
            .max_decoding_message_size(256 << 20)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
        let resp = c
            .instant(v1::InstantQueryRequest {
                query: selector,
                time_ms: maxt,
                timeout_ms: self.primaries.timeout.as_millis() as i64,
                full_resolution: false,
            })
            .await
            .map_err(|e| e.message().to_owned())?;
        Ok(resp.into_inner().series)
    }
}

impl Queryable for FanOut {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, String> {
        let (dc_matchers, rest): (Vec<&Matcher>, Vec<&Matcher>) =
            matchers.iter().partition(|m| m.name() == DATACENTER);
        let wanted: Vec<(&String, &(String, Channel))> = self
            .primaries
            .by_dc
            .iter()
            .filter(|(dc, _)| dc_matchers.iter().all(|m| m.matches(dc)))
            .collect();
        // A range selector over [mint, maxt] evaluated at maxt returns the
        // raw samples of that window.
        let range_ms = (maxt - mint).max(1);
        let selector = format!(
            "{{{}}}[{range_ms}ms]",
            rest.iter()
                .map(|m| matcher_text(m))
                .collect::<Vec<_>>()
                .join(",")
        );
        let asks = wanted.iter().map(|(dc, (url, ch))| {
            let (dc, url, ch, selector) =
                ((*dc).clone(), url.clone(), ch.clone(), selector.clone());
            async move { (dc, url, self.ask(ch, selector, maxt).await) }
        });
        let answers = self.handle.block_on(futures_util::future::join_all(asks));
        let mut out = Vec::new();
        let mut from_local: Vec<String> = Vec::new();
        for (dc, url, r) in answers {
            match r {
                Ok(series) => {
                    for s in series {
                        let mut b = LabelsBuilder::with_capacity(s.labels.len() + 1);
                        for l in &s.labels {
                            b.set(l.name.as_str(), l.value.as_str());
                        }
                        b.set(DATACENTER, dc.as_str());
                        let labels: Labels = b.build();
                        if !matchers
                            .iter()
                            .all(|m| m.matches(labels.get(m.name()).unwrap_or("")))
                        {
                            continue;
                        }
                        out.push(Series {
                            labels,
                            samples: s
                                .samples
                                .iter()
                                .filter(|x| x.timestamp_ms >= mint)
                                .map(|x| (x.timestamp_ms, x.value))
                                .collect(),
                        });
                    }
                }
                Err(e) => {
                    self.warnings.lock().push((
                        format!("datacenter={dc} primary={url}"),
                        format!(
                            "partial result: the primary of datacenter {dc} ({url}) did not answer ({e}); {dc} is shown from the global tier's 1-minute aggregates"
                        ),
                    ));
                    from_local.push(dc);
                }
            }
        }
        // Datacenters without a primary here, or whose primary failed:
        // what the global tier holds.
        let answered: Vec<&str> = wanted
            .iter()
            .map(|(dc, _)| dc.as_str())
            .filter(|dc| !from_local.iter().any(|f| f == dc))
            .collect();
        let mut local_matchers = matchers.to_vec();
        if !answered.is_empty() {
            let alt = answered
                .iter()
                .map(|d| regex_escape(d))
                .collect::<Vec<_>>()
                .join("|");
            local_matchers
                .push(Matcher::new(MatchOp::NotRegex, DATACENTER, alt).map_err(|e| e.to_string())?);
        }
        out.extend(self.local.select(&local_matchers, mint, maxt)?);
        Ok(out)
    }
}

fn regex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_print_as_promql() {
        let m = Matcher::new(MatchOp::Regex, "job", "a\"b|c\\d").unwrap();
        assert_eq!(matcher_text(&m), r#"job=~"a\"b|c\\d""#);
        let m = Matcher::new(MatchOp::NotEqual, "__name__", "up").unwrap();
        assert_eq!(matcher_text(&m), r#"__name__!="up""#);
        assert_eq!(regex_escape("dc.1"), "dc\\.1");
    }
}
