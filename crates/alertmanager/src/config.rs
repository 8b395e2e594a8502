//! The alert manager's configuration: Alertmanager's own `alertmanager.yml`
//! (`global`, `route`, `receivers`, `inhibit_rules`), for the parts tiermon
//! supports, so an existing file loads unchanged. A key Alertmanager knows
//! and tiermon does not support is refused with its path and that reason.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::matchers::{self, Matchers};

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted path of the key (with the file).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// The file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Defaults.
    pub global: Global,
    /// The routing tree's root.
    pub route: RouteSpec,
    /// Where notifications go.
    pub receivers: Vec<Receiver>,
    /// Which alerts mute which.
    pub inhibit_rules: Vec<InhibitRule>,
}

/// `global`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Global {
    /// How long an alert without `endsAt` stays firing without news.
    pub resolve_timeout: Dur,
    /// Default SMTP server (`host:port`).
    pub smtp_smarthost: String,
    /// Default sender.
    pub smtp_from: String,
    /// Default HELO name.
    pub smtp_hello: String,
    /// Default SMTP user.
    pub smtp_auth_username: String,
    /// Default SMTP password.
    pub smtp_auth_password: String,
    /// Default: STARTTLS required.
    pub smtp_require_tls: bool,
    /// Default Slack webhook URL.
    pub slack_api_url: String,
}

impl Default for Global {
    fn default() -> Self {
        Self {
            resolve_timeout: Dur(Duration::from_secs(300)),
            smtp_smarthost: String::new(),
            smtp_from: String::new(),
            smtp_hello: "localhost".into(),
            smtp_auth_username: String::new(),
            smtp_auth_password: String::new(),
            smtp_require_tls: true,
            slack_api_url: String::new(),
        }
    }
}

pub use tiermon_config::PromDuration as Dur;

/// A node of the routing tree, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteSpec {
    /// Receiver (inherited when empty).
    pub receiver: String,
    /// Labels that group alerts; `...` groups by all labels.
    pub group_by: Option<Vec<String>>,
    /// Wait before the first notification of a group.
    pub group_wait: Option<Dur>,
    /// Wait between notifications of a group that changed.
    pub group_interval: Option<Dur>,
    /// Wait before repeating an unchanged notification.
    pub repeat_interval: Option<Dur>,
    /// Matchers in Alertmanager syntax.
    pub matchers: Vec<String>,
    /// Legacy equality matchers.
    #[serde(rename = "match")]
    pub match_: BTreeMap<String, String>,
    /// Legacy regex matchers.
    pub match_re: BTreeMap<String, String>,
    /// Whether matching goes on to the next sibling.
    #[serde(rename = "continue")]
    pub continue_: bool,
    /// Children.
    pub routes: Vec<RouteSpec>,
}

/// A receiver and its integrations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Receiver {
    /// Name, referred to by routes.
    pub name: String,
    /// Webhooks.
    pub webhook_configs: Vec<WebhookConfig>,
    /// Slack incoming webhooks.
    pub slack_configs: Vec<SlackConfig>,
    /// Email.
    pub email_configs: Vec<EmailConfig>,
}

/// A webhook (the Alertmanager webhook payload, version 4).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// Whether resolved alerts are sent.
    pub send_resolved: bool,
    /// Most alerts per payload (0: all); the rest is counted in
    /// `truncatedAlerts`.
    pub max_alerts: usize,
    /// Time limit of one attempt.
    pub timeout: Option<Dur>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            send_resolved: true,
            max_alerts: 0,
            timeout: None,
        }
    }
}

/// A Slack incoming webhook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// The webhook URL (`global.slack_api_url` when empty).
    pub api_url: String,
    /// Channel.
    pub channel: String,
    /// User name shown.
    pub username: String,
    /// Title template.
    pub title: String,
    /// Text template.
    pub text: String,
    /// Whether resolved alerts are sent.
    pub send_resolved: bool,
}

/// Email over SMTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// Recipients (comma-separated).
    pub to: String,
    /// Sender (`global.smtp_from` when empty).
    pub from: String,
    /// Server `host:port` (`global.smtp_smarthost` when empty).
    pub smarthost: String,
    /// HELO name.
    pub hello: String,
    /// User.
    pub auth_username: String,
    /// Password.
    pub auth_password: String,
    /// STARTTLS required (`global.smtp_require_tls` when unset).
    pub require_tls: Option<bool>,
    /// Headers; `Subject` is a template.
    pub headers: BTreeMap<String, String>,
    /// Plain-text body template.
    pub text: String,
    /// Whether resolved alerts are sent.
    pub send_resolved: bool,
}

/// An inhibition rule, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InhibitRule {
    /// Alerts that mute.
    pub source_matchers: Vec<String>,
    /// Alerts that are muted.
    pub target_matchers: Vec<String>,
    /// Legacy forms.
    pub source_match: BTreeMap<String, String>,
    /// Legacy forms.
    pub source_match_re: BTreeMap<String, String>,
    /// Legacy forms.
    pub target_match: BTreeMap<String, String>,
    /// Legacy forms.
    pub target_match_re: BTreeMap<String, String>,
    /// Labels that must be equal in source and target.
    pub equal: Vec<String>,
}

/// Keys Alertmanager has and tiermon does not support.
const UNSUPPORTED: &[&str] = &[
    "templates",
    "time_intervals",
    "mute_time_intervals",
    "active_time_intervals",
    "http_config",
    "opsgenie_configs",
    "pagerduty_configs",
    "pushover_configs",
    "victorops_configs",
    "wechat_configs",
    "sns_configs",
    "telegram_configs",
    "webex_configs",
    "discord_configs",
    "msteams_configs",
    "msteamsv2_configs",
    "jira_configs",
    "rocketchat_configs",
    "incidentio_configs",
    "url_file",
    "api_url_file",
    "auth_password_file",
    "tls_config",
    "html",
    "smtp_auth_identity",
    "smtp_auth_secret",
];

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(path.display().to_string(), e.to_string()))?;
        Self::parse(&text).map_err(|e| bad(format!("{}: {}", path.display(), e.key), e.message))
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| bad("<file>", e.to_string()))?;
        let c: Config = tiermon_config::deserialize(raw).map_err(|e| match e {
            tiermon_config::Error::Invalid { key, message } => {
                if let Some(rest) = message.strip_prefix("unknown field `")
                    && let Some((field, _)) = rest.split_once('`')
                {
                    let full = if key == "<root>" {
                        field.to_owned()
                    } else if key == field || key.ends_with(&format!(".{field}")) {
                        key.clone()
                    } else {
                        format!("{key}.{field}")
                    };
                    let why = if UNSUPPORTED.contains(&field) {
                        "is an Alertmanager setting that tiermon does not support"
                    } else {
                        "unknown key"
                    };
                    bad(full, why)
                } else {
                    bad(key, message)
                }
            }
            other => bad("<file>", other.to_string()),
        })?;
        c.build().map(drop)?;
        Ok(c)
    }

    /// The routing tree and inhibition rules, compiled.
    pub fn build(&self) -> Result<(Route, Vec<Inhibit>), ConfigError> {
        let mut names = BTreeMap::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let at = format!("receivers[{i}]");
            if r.name.is_empty() {
                return Err(bad(format!("{at}.name"), "a receiver needs a name"));
            }
            if names.insert(r.name.clone(), i).is_some() {
                return Err(bad(
                    format!("{at}.name"),
                    format!("receiver {:?} is defined twice", r.name),
                ));
            }
            for (j, w) in r.webhook_configs.iter().enumerate() {
                if reqwest::Url::parse(&w.url).is_err() {
                    return Err(bad(
                        format!("{at}.webhook_configs[{j}].url"),
                        format!("{:?} is not a URL", w.url),
                    ));
                }
            }
            for (j, s) in r.slack_configs.iter().enumerate() {
                let url = if s.api_url.is_empty() {
                    &self.global.slack_api_url
                } else {
                    &s.api_url
                };
                if reqwest::Url::parse(url).is_err() {
                    return Err(bad(
                        format!("{at}.slack_configs[{j}].api_url"),
                        "needs a webhook URL (or global.slack_api_url)",
                    ));
                }
                for (k, t) in [("title", &s.title), ("text", &s.text)] {
                    crate::notify::check_template(t)
                        .map_err(|e| bad(format!("{at}.slack_configs[{j}].{k}"), e))?;
                }
            }
            for (j, e) in r.email_configs.iter().enumerate() {
                let k = format!("{at}.email_configs[{j}]");
                if e.to.trim().is_empty() {
                    return Err(bad(format!("{k}.to"), "needs a recipient"));
                }
                if e.smarthost.is_empty() && self.global.smtp_smarthost.is_empty() {
                    return Err(bad(
                        format!("{k}.smarthost"),
                        "needs an SMTP server (or global.smtp_smarthost)",
                    ));
                }
                if e.from.is_empty() && self.global.smtp_from.is_empty() {
                    return Err(bad(
                        format!("{k}.from"),
                        "needs a sender (or global.smtp_from)",
                    ));
                }
                for (h, t) in e.headers.iter().chain([(&"text".to_string(), &e.text)]) {
                    crate::notify::check_template(t).map_err(|m| bad(format!("{k}.{h}"), m))?;
                }
            }
        }
        if self.route.receiver.is_empty() {
            return Err(bad("route.receiver", "the root route needs a receiver"));
        }
        let defaults = Route {
            receiver: String::new(),
            group_by: GroupBy::Labels(Vec::new()),
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
            matchers: Matchers::default(),
            continue_: false,
            routes: Vec::new(),
            key: String::new(),
            id: String::new(),
        };
        let root = build_route(&self.route, &defaults, "route", "{}", "", &names)?;
        let mut inhibits = Vec::new();
        for (i, r) in self.inhibit_rules.iter().enumerate() {
            let at = format!("inhibit_rules[{i}]");
            inhibits.push(Inhibit {
                source: collect(
                    &r.source_matchers,
                    &r.source_match,
                    &r.source_match_re,
                    &format!("{at}.source_matchers"),
                )?,
                target: collect(
                    &r.target_matchers,
                    &r.target_match,
                    &r.target_match_re,
                    &format!("{at}.target_matchers"),
                )?,
                equal: r.equal.clone(),
            });
        }
        Ok((root, inhibits))
    }
}

fn collect(
    list: &[String],
    eq: &BTreeMap<String, String>,
    re: &BTreeMap<String, String>,
    at: &str,
) -> Result<Matchers, ConfigError> {
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        out.extend(matchers::parse(m).map_err(|e| bad(format!("{at}[{i}]"), e))?);
    }
    for (k, v) in eq {
        out.push(
            tiermon_model::Matcher::new(tiermon_model::MatchOp::Equal, k.clone(), v.clone())
                .map_err(|e| bad(format!("{at}.{k}"), e.to_string()))?,
        );
    }
    for (k, v) in re {
        out.push(
            tiermon_model::Matcher::new(tiermon_model::MatchOp::Regex, k.clone(), v.clone())
                .map_err(|e| bad(format!("{at}.{k}"), e.to_string()))?,
        );
    }
    Ok(Matchers(out))
}

/// How a route groups.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupBy {
    /// By these labels.
    Labels(Vec<String>),
    /// By every label (`...`).
    All,
}

/// A compiled node of the routing tree.
#[derive(Debug, Clone)]
pub struct Route {
    /// Receiver.
    pub receiver: String,
    /// Grouping.
    pub group_by: GroupBy,
    /// Timings.
    pub group_wait: Duration,
    /// Timings.
    pub group_interval: Duration,
    /// Timings.
    pub repeat_interval: Duration,
    /// Matchers.
    pub matchers: Matchers,
    /// Continue to siblings after matching.
    pub continue_: bool,
    /// Children.
    pub routes: Vec<Route>,
    /// Alertmanager's route key: the matchers along the path
    /// (`{}/{severity="critical"}`), the first part of group keys.
    pub key: String,
    /// Unique id of the node (its position), for group identity.
    pub id: String,
}

fn build_route(
    s: &RouteSpec,
    parent: &Route,
    at: &str,
    parent_key: &str,
    id: &str,
    receivers: &BTreeMap<String, usize>,
) -> Result<Route, ConfigError> {
    let receiver = if s.receiver.is_empty() {
        parent.receiver.clone()
    } else {
        s.receiver.clone()
    };
    if !receivers.contains_key(&receiver) {
        return Err(bad(
            format!("{at}.receiver"),
            format!("undefined receiver {receiver:?}"),
        ));
    }
    let group_by = match &s.group_by {
        None => parent.group_by.clone(),
        Some(v) if v.iter().any(|l| l == "...") => {
            if v.len() > 1 {
                return Err(bad(format!("{at}.group_by"), "'...' must be alone"));
            }
            GroupBy::All
        }
        Some(v) => {
            for l in v {
                if !tiermon_model::is_valid_label_name(l) {
                    return Err(bad(
                        format!("{at}.group_by"),
                        format!("{l:?} is not a label name"),
                    ));
                }
            }
            GroupBy::Labels(v.clone())
        }
    };
    let d = |v: Option<Dur>, p: Duration, k: &str| -> Result<Duration, ConfigError> {
        match v {
            Some(Dur(d)) if d.is_zero() && k != "group_wait" => {
                Err(bad(format!("{at}.{k}"), "must be more than 0s"))
            }
            Some(Dur(d)) => Ok(d),
            None => Ok(p),
        }
    };
    let matchers = collect(
        &s.matchers,
        &s.match_,
        &s.match_re,
        &format!("{at}.matchers"),
    )?;
    let key = if id.is_empty() {
        "{}".to_owned()
    } else {
        format!("{parent_key}/{}", matchers.to_text())
    };
    let mut r = Route {
        receiver,
        group_by,
        group_wait: d(s.group_wait, parent.group_wait, "group_wait")?,
        group_interval: d(s.group_interval, parent.group_interval, "group_interval")?,
        repeat_interval: d(s.repeat_interval, parent.repeat_interval, "repeat_interval")?,
        matchers,
        continue_: s.continue_,
        routes: Vec::new(),
        key: key.clone(),
        id: id.to_owned(),
    };
    for (i, c) in s.routes.iter().enumerate() {
        let child = build_route(
            c,
            &r,
            &format!("{at}.routes[{i}]"),
            &key,
            &format!("{id}/{i}"),
            receivers,
        )?;
        r.routes.push(child);
    }
    Ok(r)
}

impl Route {
    /// The routes an alert with `labels` goes to (depth first, `continue`
    /// honoured; the root when no child matches).
    pub fn matching<'a>(&'a self, labels: &BTreeMap<String, String>, out: &mut Vec<&'a Route>) {
        let before = out.len();
        for c in &self.routes {
            if c.matchers.matches(labels) {
                c.matching(labels, out);
                if !c.continue_ {
                    break;
                }
            }
        }
        if out.len() == before {
            out.push(self);
        }
    }
}

/// A compiled inhibition rule.
#[derive(Debug, Clone)]
pub struct Inhibit {
    /// Alerts that mute.
    pub source: Matchers,
    /// Alerts muted.
    pub target: Matchers,
    /// Labels equal in both.
    pub equal: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r##"
global:
  resolve_timeout: 1m
  smtp_smarthost: localhost:25
  smtp_from: tiermon@example.org
route:
  receiver: default
  group_by: [alertname, datacenter]
  group_wait: 10s
  routes:
    - matchers: ['severity="critical"']
      receiver: oncall
      group_wait: 1s
      continue: true
      routes:
        - match: {team: db}
          receiver: db
    - match_re: {severity: "warn.*"}
      receiver: chat
      group_by: ['...']
receivers:
  - name: default
    webhook_configs: [{url: "http://127.0.0.1:1/hook"}]
  - name: oncall
    email_configs: [{to: "oncall@example.org"}]
  - name: db
    webhook_configs: [{url: "http://127.0.0.1:1/db", send_resolved: false, max_alerts: 5}]
  - name: chat
    slack_configs: [{api_url: "http://127.0.0.1:1/slack", channel: "#alerts", title: "{{ .Status }}"}]
inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [instance]
"##;

    fn l(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn an_alertmanager_file_loads_and_routes() {
        let c = Config::parse(FILE).unwrap();
        let (root, inhibits) = c.build().unwrap();
        assert_eq!(inhibits.len(), 1);
        let names = |labels: &[(&str, &str)]| {
            let mut out = Vec::new();
            root.matching(&l(labels), &mut out);
            out.iter().map(|r| r.receiver.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&[("severity", "critical")]), ["oncall"]);
        assert_eq!(names(&[("severity", "critical"), ("team", "db")]), ["db"]);
        assert_eq!(names(&[("severity", "warning")]), ["chat"]);
        assert_eq!(names(&[("severity", "info")]), ["default"]);
        let mut out = Vec::new();
        root.matching(&l(&[("severity", "critical"), ("team", "db")]), &mut out);
        let db = out[0];
        assert_eq!(
            db.group_wait,
            Duration::from_secs(1),
            "inherited from its parent"
        );
        assert_eq!(db.group_interval, Duration::from_secs(300), "the default");
        assert_eq!(
            db.group_by,
            GroupBy::Labels(vec!["alertname".into(), "datacenter".into()])
        );
        assert_eq!(db.key, r#"{}/{severity="critical"}/{team="db"}"#);
        assert_eq!(c.global.resolve_timeout.0, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "route:\n  receiver: nope\nreceivers: [{name: a}]\n",
                "route.receiver: undefined receiver \"nope\"",
            ),
            (
                "route:\n  receiver: a\n  routes: [{matchers: ['a=~\"(\"']}]\nreceivers: [{name: a}]\n",
                "route.routes[0].matchers[0]",
            ),
            (
                "route:\n  receiver: a\nreceivers: [{name: a, webhook_configs: [{url: 'not a url'}]}]\n",
                "receivers[0].webhook_configs[0].url",
            ),
            (
                "route:\n  receiver: a\nreceivers: [{name: a, pagerduty_configs: []}]\n",
                "receivers[0].pagerduty_configs: is an Alertmanager setting that tiermon does not support",
            ),
            (
                "route:\n  receiver: a\n  group_wiat: 1s\nreceivers: [{name: a}]\n",
                "route.group_wiat: unknown key",
            ),
            (
                "route:\n  receiver: a\n  group_interval: 0s\nreceivers: [{name: a}]\n",
                "route.group_interval: must be more than 0s",
            ),
            (
                "route:\n  receiver: a\nreceivers: [{name: a, email_configs: [{to: x@y}]}]\n",
                "receivers[0].email_configs[0].smarthost",
            ),
            (
                "route:\n  receiver: a\nreceivers: [{name: a, slack_configs: [{api_url: 'http://x/', text: '{{ .Foo '}]}]\n",
                "receivers[0].slack_configs[0].text",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
