//! Notifications and the integrations that deliver them: webhooks (the
//! Alertmanager webhook payload, version 4, so existing automation works
//! unchanged), Slack incoming webhooks, and email over SMTP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gotmpl::{Template, Value};
use serde::Serialize;

use crate::config::{EmailConfig, Global, SlackConfig, WebhookConfig};

/// One alert in a notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifiedAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339 (`0001-01-01T00:00:00Z` when unknown).
    pub ends_at: String,
    /// Link to the source.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    /// Hex fingerprint of the labels.
    pub fingerprint: String,
}

/// A notification of one group to one receiver: the webhook payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Always "4".
    pub version: String,
    /// The group's key.
    pub group_key: String,
    /// Alerts left out by `max_alerts`.
    pub truncated_alerts: usize,
    /// `firing` if any alert fires, else `resolved`.
    pub status: String,
    /// The receiver's name.
    pub receiver: String,
    /// The group's labels.
    pub group_labels: BTreeMap<String, String>,
    /// Labels all alerts share.
    pub common_labels: BTreeMap<String, String>,
    /// Annotations all alerts share.
    pub common_annotations: BTreeMap<String, String>,
    /// The alert manager's URL.
    #[serde(rename = "externalURL")]
    pub external_url: String,
    /// The alerts.
    pub alerts: Vec<NotifiedAlert>,
}

impl Notification {
    /// Builds a notification; common labels and annotations are computed.
    pub fn new(
        group_key: String,
        receiver: String,
        group_labels: BTreeMap<String, String>,
        external_url: String,
        alerts: Vec<NotifiedAlert>,
    ) -> Self {
        let common = |f: fn(&NotifiedAlert) -> &BTreeMap<String, String>| {
            let mut it = alerts.iter();
            let mut c = it.next().map(|a| f(a).clone()).unwrap_or_default();
            for a in it {
                c.retain(|k, v| f(a).get(k) == Some(v));
            }
            c
        };
        let common_labels = common(|a| &a.labels);
        let common_annotations = common(|a| &a.annotations);
        let status = if alerts.iter().any(|a| a.status == "firing") {
            "firing"
        } else {
            "resolved"
        };
        Self {
            version: "4".into(),
            group_key,
            truncated_alerts: 0,
            status: status.into(),
            receiver,
            group_labels,
            common_labels,
            common_annotations,
            external_url,
            alerts,
        }
    }

    fn firing(&self) -> usize {
        self.alerts.iter().filter(|a| a.status == "firing").count()
    }

    /// `[FIRING:2] HostDown dc1`, Alertmanager's default title.
    pub fn title(&self) -> String {
        let mut t = format!("[{}", self.status.to_uppercase());
        if self.status == "firing" {
            t.push_str(&format!(":{}", self.firing()));
        }
        t.push(']');
        for v in self.group_labels.values() {
            t.push(' ');
            t.push_str(v);
        }
        let extra: Vec<&str> = self
            .common_labels
            .iter()
            .filter(|(k, _)| !self.group_labels.contains_key(*k))
            .map(|(_, v)| v.as_str())
            .collect();
        if !extra.is_empty() {
            t.push_str(&format!(" ({})", extra.join(" ")));
        }
        t
    }

    /// A plain-text body listing every alert.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (what, status) in [("Firing", "firing"), ("Resolved", "resolved")] {
            let list: Vec<&NotifiedAlert> =
                self.alerts.iter().filter(|a| a.status == status).collect();
            if list.is_empty() {
                continue;
            }
            out.push_str(&format!("{what} alerts:\n"));
            for a in list {
                let summary = a
                    .annotations
                    .get("summary")
                    .or(a.annotations.get("description"))
                    .cloned()
                    .unwrap_or_default();
                let labels: Vec<String> =
                    a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!(
                    "- {summary}\n  labels: {}\n  since: {}\n",
                    labels.join(" "),
                    a.starts_at
                ));
                if !a.generator_url.is_empty() {
                    out.push_str(&format!("  source: {}\n", a.generator_url));
                }
            }
        }
        out
    }

    fn template_data(&self) -> Value {
        let map = |m: &BTreeMap<String, String>| {
            Value::Map(Arc::new(
                m.iter()
                    .map(|(k, v)| {
                        (
                            Arc::<str>::from(k.as_str()),
                            Value::String(v.as_str().into()),
                        )
                    })
                    .collect(),
            ))
        };
        let alerts: Vec<Value> = self
            .alerts
            .iter()
            .map(|a| {
                let mut m = BTreeMap::new();
                m.insert(
                    Arc::<str>::from("Status"),
                    Value::String(a.status.as_str().into()),
                );
                m.insert("Labels".into(), map(&a.labels));
                m.insert("Annotations".into(), map(&a.annotations));
                m.insert(
                    "StartsAt".into(),
                    Value::String(a.starts_at.as_str().into()),
                );
                m.insert("EndsAt".into(), Value::String(a.ends_at.as_str().into()));
                m.insert(
                    "GeneratorURL".into(),
                    Value::String(a.generator_url.as_str().into()),
                );
                m.insert(
                    "Fingerprint".into(),
                    Value::String(a.fingerprint.as_str().into()),
                );
                Value::Map(Arc::new(m))
            })
            .collect();
        let mut m = BTreeMap::new();
        m.insert(
            Arc::<str>::from("Receiver"),
            Value::String(self.receiver.as_str().into()),
        );
        m.insert("Status".into(), Value::String(self.status.as_str().into()));
        m.insert(
            "GroupKey".into(),
            Value::String(self.group_key.as_str().into()),
        );
        m.insert("Alerts".into(), Value::List(alerts.into()));
        m.insert("GroupLabels".into(), map(&self.group_labels));
        m.insert("CommonLabels".into(), map(&self.common_labels));
        m.insert("CommonAnnotations".into(), map(&self.common_annotations));
        m.insert(
            "ExternalURL".into(),
            Value::String(self.external_url.as_str().into()),
        );
        m.insert("Title".into(), Value::String(self.title().into()));
        m.insert("Text".into(), Value::String(self.text().into()));
        Value::Map(Arc::new(m))
    }

    /// Expands a notification template (`{{ .Status }}`, `{{ .Alerts }}`,
    /// `{{ .CommonLabels.instance }}`, `{{ .Title }}`, `{{ .Text }}`…);
    /// `default` when empty.
    pub fn expand(
        &self,
        template: &str,
        default: impl FnOnce() -> String,
    ) -> Result<String, String> {
        if template.is_empty() {
            return Ok(default());
        }
        parse(template)?
            .execute_to_string(&self.template_data())
            .map_err(|e| format!("template: {e}"))
    }
}

fn parse(t: &str) -> Result<Template, String> {
    Template::new("notification")
        .func("toUpper", |a| {
            Ok(Value::String(
                a.first()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
                    .to_uppercase()
                    .into(),
            ))
        })
        .func("toLower", |a| {
            Ok(Value::String(
                a.first()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
                    .to_lowercase()
                    .into(),
            ))
        })
        .func("join", |a| {
            let sep = a.first().map(|v| v.to_string()).unwrap_or_default();
            let items: Vec<String> = match a.get(1) {
                Some(Value::List(l)) => l.iter().map(|v| v.to_string()).collect(),
                Some(Value::Map(m)) => m.values().map(|v| v.to_string()).collect(),
                _ => Vec::new(),
            };
            Ok(Value::String(items.join(&sep).into()))
        })
        .parse(t)
        .map_err(|e| format!("template: {e}"))
}

/// Whether a notification template parses.
pub fn check_template(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Ok(());
    }
    parse(t).map(drop)
}

/// Why a delivery failed; `retry` says whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// What happened.
    pub message: String,
    /// Whether a retry may succeed.
    pub retry: bool,
}

/// One way of delivering notifications.
#[derive(Debug, Clone)]
pub enum Integration {
    /// A webhook.
    Webhook(WebhookConfig),
    /// Slack.
    Slack(SlackConfig, String),
    /// Email.
    Email(Box<(EmailConfig, Global)>),
}

impl Integration {
    /// The integration's kind: `webhook`, `slack`, `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            Integration::Webhook(_) => "webhook",
            Integration::Slack(..) => "slack",
            Integration::Email(_) => "email",
        }
    }

    /// Whether resolved alerts are sent.
    pub fn send_resolved(&self) -> bool {
        match self {
            Integration::Webhook(w) => w.send_resolved,
            Integration::Slack(s, _) => s.send_resolved,
            Integration::Email(b) => b.0.send_resolved,
        }
    }

    /// Delivers `n` once.
    pub async fn send(&self, http: &reqwest::Client, n: &Notification) -> Result<(), SendError> {
        match self {
            Integration::Webhook(w) => {
                let mut n = n.clone();
                if w.max_alerts > 0 && n.alerts.len() > w.max_alerts {
                    n.truncated_alerts = n.alerts.len() - w.max_alerts;
                    n.alerts.truncate(w.max_alerts);
                }
                let body = serde_json::to_vec(&n).map_err(|e| SendError {
                    message: e.to_string(),
                    retry: false,
                })?;
                let timeout = w.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(10));
                post(http, &w.url, body, timeout).await
            }
            Integration::Slack(s, url) => {
                let title = n.expand(&s.title, || n.title()).map_err(permanent)?;
                let text = n.expand(&s.text, || n.text()).map_err(permanent)?;
                let color = if n.status == "firing" {
                    "danger"
                } else {
                    "good"
                };
                let mut body = serde_json::json!({
                    "attachments": [{"title": title, "text": text, "fallback": title, "color": color, "mrkdwn_in": ["fallback", "pretext", "text"]}],
                });
                if !s.channel.is_empty() {
                    body["channel"] = s.channel.clone().into();
                }
                if !s.username.is_empty() {
                    body["username"] = s.username.clone().into();
                }
                post(
                    http,
                    url,
                    body.to_string().into_bytes(),
                    Duration::from_secs(10),
                )
                .await
            }
            Integration::Email(b) => email(&b.0, &b.1, n).await,
        }
    }
}

fn permanent(message: String) -> SendError {
    SendError {
        message,
        retry: false,
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), SendError> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("tiermon/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .body(body)
        .send()
        .await
        .map_err(|e| SendError {
            message: format!("POST {url}: {e}"),
            retry: true,
        })?;
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    let text = r.text().await.unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    Err(SendError {
        message: format!("POST {url}: {status}: {text}"),
        // Alertmanager's rule: 5xx and 429 may pass later, other 4xx never.
        retry: status.is_server_error() || status.as_u16() == 429,
    })
}

async fn email(e: &EmailConfig, g: &Global, n: &Notification) -> Result<(), SendError> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let smarthost = if e.smarthost.is_empty() {
        &g.smtp_smarthost
    } else {
        &e.smarthost
    };
    let (host, port) = smarthost
        .rsplit_once(':')
        .and_then(|(h, p)| {
            p.parse::<u16>()
                .ok()
                .map(|p| (h.trim_matches(['[', ']']), p))
        })
        .ok_or_else(|| permanent(format!("smarthost {smarthost:?} is not host:port")))?;
    let from = if e.from.is_empty() {
        &g.smtp_from
    } else {
        &e.from
    };
    let subject_t = e.headers.get("Subject").map(String::as_str).unwrap_or("");
    let subject = n.expand(subject_t, || n.title()).map_err(permanent)?;
    let body = n.expand(&e.text, || n.text()).map_err(permanent)?;
    let mut m = Message::builder()
        .from(
            from.parse()
                .map_err(|x| permanent(format!("from {from:?}: {x}")))?,
        )
        .subject(subject);
    for to in e.to.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        m = m.to(to
            .parse()
            .map_err(|x| permanent(format!("to {to:?}: {x}")))?);
    }
    let msg = m
        .body(body)
        .map_err(|x| permanent(format!("building the message: {x}")))?;
    let require_tls = e.require_tls.unwrap_or(g.smtp_require_tls);
    let mut b = if require_tls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|x| permanent(format!("smtp {smarthost}: {x}")))?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
    }
    .port(port)
    .timeout(Some(Duration::from_secs(10)));
    let hello = if e.hello.is_empty() {
        &g.smtp_hello
    } else {
        &e.hello
    };
    b = b.hello_name(lettre::transport::smtp::extension::ClientId::Domain(
        hello.clone(),
    ));
    let user = if e.auth_username.is_empty() {
        &g.smtp_auth_username
    } else {
        &e.auth_username
    };
    if !user.is_empty() {
        let pass = if e.auth_password.is_empty() {
            &g.smtp_auth_password
        } else {
            &e.auth_password
        };
        b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            pass.clone(),
        ));
    }
    b.build().send(msg).await.map(drop).map_err(|x| SendError {
        message: format!("smtp {smarthost}: {x}"),
        retry: !x.is_permanent(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(status: &str, inst: &str) -> NotifiedAlert {
        NotifiedAlert {
            status: status.into(),
            labels: [
                ("alertname", "HostDown"),
                ("instance", inst),
                ("severity", "critical"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            annotations: [("summary".to_string(), format!("{inst} is down"))].into(),
            starts_at: "2026-12-01T00:00:00.000Z".into(),
            ends_at: "0001-01-01T00:00:00Z".into(),
            generator_url: String::new(),
            fingerprint: "0000000000000001".into(),
        }
    }

    #[test]
    fn the_webhook_payload_has_alertmanagers_shape() {
        let n = Notification::new(
            r#"{}:{alertname="HostDown"}"#.into(),
            "ops".into(),
            [("alertname".to_string(), "HostDown".to_string())].into(),
            "http://am".into(),
            vec![alert("firing", "a"), alert("resolved", "b")],
        );
        let j: serde_json::Value = serde_json::to_value(&n).unwrap();
        assert_eq!(j["version"], "4");
        assert_eq!(j["status"], "firing");
        assert_eq!(j["groupKey"], r#"{}:{alertname="HostDown"}"#);
        assert_eq!(j["commonLabels"]["severity"], "critical");
        assert!(j["commonLabels"].get("instance").is_none());
        assert!(j["commonAnnotations"].as_object().unwrap().is_empty());
        assert_eq!(j["externalURL"], "http://am");
        assert_eq!(j["truncatedAlerts"], 0);
        let a = &j["alerts"][0];
        for k in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
        ] {
            assert!(a.get(k).is_some(), "{k}");
        }
        assert_eq!(n.title(), "[FIRING:1] HostDown (critical)");
        assert!(n.text().contains("a is down"));
        assert_eq!(
            n.expand(
                "{{ .Status | toUpper }} {{ len .Alerts }} {{ .CommonLabels.severity }}",
                String::new
            )
            .unwrap(),
            "FIRING 2 critical"
        );
    }
}
