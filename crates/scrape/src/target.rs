//! From a discovered target to what is scraped, as Prometheus' target
//! population does: defaults for `job`, `__scheme__`, `__metrics_path__`,
//! `__scrape_interval__`, `__scrape_timeout__` and `__param_*`; the job's
//! `relabel_configs`; a default port; `instance` from `__address__`; and
//! every `__`-prefixed label removed from what is stored.

use std::collections::BTreeMap;
use std::time::Duration;

use tiermon_model::{Labels, LabelsBuilder};

use crate::config::{Job, PromDuration};
use crate::discovery::TargetGroup;
use crate::relabel;

/// A target to scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The labels its series get.
    pub labels: Labels,
    /// The labels discovery gave it, before relabelling.
    pub discovered: Labels,
    /// The URL scraped.
    pub url: url::Url,
    /// Scrape interval (a relabelled `__scrape_interval__` overrides the job's).
    pub interval: Duration,
    /// Scrape timeout (likewise).
    pub timeout: Duration,
    /// Identity: the labels and the URL.
    pub key: u64,
}

/// What became of a discovered target.
#[derive(Debug)]
pub enum Outcome {
    /// To be scraped.
    Active(Target),
    /// Dropped by relabelling; kept for the targets view.
    Dropped(Labels),
    /// Not scrapable; the reason names the problem.
    Invalid(Labels, String),
}

/// Builds every target of `groups` for `job`.
pub fn build_all(job: &Job, groups: &[TargetGroup]) -> Vec<Outcome> {
    groups
        .iter()
        .flat_map(|g| g.targets.iter().map(move |t| build(job, &g.labels, t)))
        .collect()
}

/// Builds one target from its group's labels and its own.
pub fn build(
    job: &Job,
    group: &BTreeMap<String, String>,
    own: &BTreeMap<String, String>,
) -> Outcome {
    let mut lb = LabelsBuilder::with_capacity(group.len() + own.len() + 6);
    for (n, v) in group.iter().chain(own.iter()) {
        lb.set(n.as_str(), v.as_str());
    }
    let defaults = [
        ("job", job.config.job_name.clone()),
        ("__scheme__", job.scheme.clone()),
        ("__metrics_path__", job.metrics_path.clone()),
        (
            "__scrape_interval__",
            PromDuration(job.interval).to_string(),
        ),
        ("__scrape_timeout__", PromDuration(job.timeout).to_string()),
    ];
    for (n, v) in defaults {
        if lb.get(n).is_none() {
            lb.set(n, v);
        }
    }
    for (name, values) in &job.config.params {
        let key = format!("__param_{name}");
        if lb.get(&key).is_none()
            && let Some(first) = values.first()
        {
            lb.set(key, first.as_str());
        }
    }
    let discovered = lb.build();
    if !relabel::relabel(&job.config.relabel_configs, &mut lb) {
        return Outcome::Dropped(discovered);
    }
    let Some(address) = lb.get("__address__").map(str::to_owned) else {
        return Outcome::Invalid(discovered, "no __address__ label".into());
    };
    if address.contains('/') {
        return Outcome::Invalid(
            discovered,
            format!("__address__ {address:?} is not a host:port address"),
        );
    }
    let scheme = lb.get("__scheme__").unwrap_or("http").to_owned();
    if scheme != "http" && scheme != "https" {
        return Outcome::Invalid(
            discovered,
            format!("__scheme__ {scheme:?} is not http or https"),
        );
    }
    // Prometheus 2.x adds the scheme's default port when there is none.
    let address = if has_port(&address) {
        address
    } else if scheme == "https" {
        format!("{address}:443")
    } else {
        format!("{address}:80")
    };
    lb.set("__address__", address.as_str());
    let dur = |name: &str| -> Result<Duration, String> {
        let v = lb.get(name).unwrap_or("");
        PromDuration::parse(v)
            .map(|d| d.0)
            .map_err(|e| format!("{name}: {e}"))
    };
    let (interval, timeout) = match (dur("__scrape_interval__"), dur("__scrape_timeout__")) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => return Outcome::Invalid(discovered, e),
    };
    if interval.is_zero() || timeout.is_zero() {
        return Outcome::Invalid(
            discovered,
            "scrape interval and timeout must be above 0".into(),
        );
    }
    if timeout > interval {
        return Outcome::Invalid(
            discovered,
            format!(
                "scrape timeout {} is longer than the interval {}",
                PromDuration(timeout),
                PromDuration(interval)
            ),
        );
    }
    let path = lb.get("__metrics_path__").unwrap_or("/metrics").to_owned();
    let mut url = match url::Url::parse(&format!("{scheme}://{address}{path}")) {
        Ok(u) => u,
        Err(e) => return Outcome::Invalid(discovered, format!("bad scrape URL: {e}")),
    };
    // Parameters: the job's, with relabelled __param_ labels overriding.
    let mut params: BTreeMap<String, Vec<String>> = job.config.params.clone();
    for (n, v) in lb.iter() {
        if let Some(p) = n.strip_prefix("__param_") {
            match params.get_mut(p) {
                Some(vals) if !vals.is_empty() => vals[0] = v.to_owned(),
                _ => {
                    params.insert(p.to_owned(), vec![v.to_owned()]);
                }
            }
        }
    }
    if !params.is_empty() {
        let mut q = url.query_pairs_mut();
        for (n, vals) in &params {
            for v in vals {
                q.append_pair(n, v);
            }
        }
    }
    if lb.get("instance").is_none() {
        lb.set("instance", address.as_str());
    }
    lb.retain(|n, _| !n.starts_with("__"));
    for (n, _) in lb.iter() {
        if !tiermon_model::is_valid_label_name(n) {
            return Outcome::Invalid(discovered, format!("{n:?} is not a valid label name"));
        }
    }
    let labels = lb.build();
    let key = {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&labels.series_id().0.to_le_bytes());
        h.update(url.as_str().as_bytes());
        h.digest()
    };
    Outcome::Active(Target {
        labels,
        discovered,
        url,
        interval,
        timeout,
        key,
    })
}

fn has_port(addr: &str) -> bool {
    if let Some(rest) = addr.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(_, p)| p.starts_with(':'));
    }
    // A bare IPv6 address has several colons and no port.
    addr.matches(':').count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScrapeFile;

    fn job(yaml: &str) -> Job {
        ScrapeFile::parse(yaml).unwrap().job(0).unwrap()
    }

    fn addr(a: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("__address__".to_owned(), a.to_owned())])
    }

    #[test]
    fn a_plain_target_gets_job_and_instance() {
        let j = job("scrape_configs: [{job_name: node, scrape_interval: 15s}]");
        let group = BTreeMap::from([("rack".to_owned(), "r1".to_owned())]);
        let Outcome::Active(t) = build(&j, &group, &addr("10.0.0.1:9100")) else {
            panic!()
        };
        assert_eq!(
            t.labels,
            Labels::from_pairs([
                ("instance", "10.0.0.1:9100"),
                ("job", "node"),
                ("rack", "r1")
            ])
        );
        assert_eq!(t.url.as_str(), "http://10.0.0.1:9100/metrics");
        assert_eq!(t.interval, Duration::from_secs(15));
        assert_eq!(t.discovered.get("__scrape_interval__"), Some("15s"));
        assert_eq!(t.discovered.get("__address__"), Some("10.0.0.1:9100"));
    }

    #[test]
    fn relabelling_can_rewrite_address_path_params_and_interval() {
        // The blackbox-exporter pattern.
        let j = job(r#"
scrape_configs:
  - job_name: blackbox
    metrics_path: /probe
    params: {module: [http_2xx]}
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:9115
      - target_label: __scrape_interval__
        replacement: 30s
"#);
        let Outcome::Active(t) = build(&j, &BTreeMap::new(), &addr("example.org")) else {
            panic!()
        };
        assert_eq!(
            t.url.as_str(),
            "http://127.0.0.1:9115/probe?module=http_2xx&target=example.org"
        );
        assert_eq!(t.labels.get("instance"), Some("example.org"));
        assert_eq!(t.interval, Duration::from_secs(30));
        assert!(t.labels.iter().all(|l| !l.name.starts_with("__")));
    }

    #[test]
    fn dropped_and_invalid_targets_say_so() {
        let j = job(
            "scrape_configs: [{job_name: a, relabel_configs: [{source_labels: [__address__], regex: 'skip.*', action: drop}]}]",
        );
        assert!(matches!(
            build(&j, &BTreeMap::new(), &addr("skip:1")),
            Outcome::Dropped(_)
        ));
        let j = job(
            "scrape_configs: [{job_name: a, relabel_configs: [{target_label: __scrape_timeout__, replacement: 2m}]}]",
        );
        match build(&j, &BTreeMap::new(), &addr("a:1")) {
            Outcome::Invalid(_, e) => assert!(e.contains("longer than"), "{e}"),
            other => panic!("{other:?}"),
        }
        let j = job("scrape_configs: [{job_name: a}]");
        match build(&j, &BTreeMap::new(), &BTreeMap::new()) {
            Outcome::Invalid(_, e) => assert!(e.contains("__address__"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_ports_follow_the_scheme() {
        let j = job("scrape_configs: [{job_name: a, scheme: https}]");
        let Outcome::Active(t) = build(&j, &BTreeMap::new(), &addr("host")) else {
            panic!()
        };
        assert_eq!(t.labels.get("instance"), Some("host:443"));
        assert!(has_port("[::1]:9100"));
        assert!(!has_port("::1"));
    }
}
