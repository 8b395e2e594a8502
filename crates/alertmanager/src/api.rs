//! HTTP: the Alertmanager v2 API (alerts, alert groups, silences, status),
//! so Prometheus, amtool and Grafana talk to tiermon as to Alertmanager,
//! and tiermon's additions: acknowledgements
//! (`/api/tiermon/v1/acks`) and peer replication
//! (`/api/tiermon/v1/peer/state`).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::dispatch::{now_ms, rfc3339};
use crate::matchers::{self, ApiMatcher, Matchers};
use crate::state::{Ack, Shared, Silence};
use crate::{AlertManager, PostableAlert};

const MAX_BODY: usize = 16 << 20;

pub(crate) fn router(am: AlertManager) -> Router {
    Router::new()
        .route("/api/v2/alerts", get(list_alerts).post(post_alerts))
        .route("/api/v2/alerts/groups", get(list_groups))
        .route("/api/v2/silences", get(list_silences).post(post_silence))
        .route(
            "/api/v2/silence/{id}",
            get(get_silence).delete(expire_silence),
        )
        .route("/api/v2/status", get(status))
        .route("/api/v2/receivers", get(receivers))
        .route("/api/tiermon/v1/acks", get(list_acks).post(post_ack))
        .route("/api/tiermon/v1/acks/{fingerprint}", delete(delete_ack))
        .route("/api/tiermon/v1/peer/state", get(peer_get).post(peer_post))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(am)
}

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", msg.into())).into_response()
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(bad(format!("invalid JSON body: {e}"))))
}

async fn post_alerts(State(am): State<AlertManager>, body: Bytes) -> Response {
    let alerts: Vec<PostableAlert> = match parse_json(&body) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match am.receive(alerts) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => bad(e),
    }
}

fn filters(q: &[(String, String)]) -> Result<Matchers, Box<Response>> {
    let mut out = Vec::new();
    for (k, v) in q {
        if k == "filter" || k == "filter[]" {
            out.extend(matchers::parse(v).map_err(|e| Box::new(bad(e)))?);
        }
    }
    Ok(Matchers(out))
}

fn flag(q: &[(String, String)], name: &str) -> bool {
    q.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v != "false")
        .unwrap_or(true)
}

fn alert_json(am: &AlertManager, fp: u64, now: i64) -> Option<Json> {
    let st = am.core.state.lock();
    let a = st.alerts.get(&fp)?;
    let silenced = st.silenced_by(&a.labels, now);
    let inhibited: Vec<String> = st
        .inhibited_by(fp, &a.labels, now)
        .iter()
        .map(|f| format!("{f:016x}"))
        .collect();
    let ack = st.acked(fp, a).cloned();
    let mut receivers = Vec::new();
    st.tree.root.matching(&a.labels, &mut receivers);
    let state = if a.resolved(now) {
        "resolved"
    } else if silenced.is_empty() && inhibited.is_empty() {
        "active"
    } else {
        "suppressed"
    };
    Some(json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.starts_ms),
        "endsAt": rfc3339(a.ends_ms),
        "updatedAt": rfc3339(a.updated_ms),
        "generatorURL": a.generator_url,
        "fingerprint": format!("{fp:016x}"),
        "receivers": receivers.iter().map(|r| json!({"name": r.receiver})).collect::<Vec<_>>(),
        "status": {
            "state": state,
            "silencedBy": silenced,
            "inhibitedBy": inhibited,
            "mutedBy": [],
            "acknowledgedBy": ack.map(|k| json!({"by": k.by, "comment": k.comment, "at": rfc3339(k.at_ms)})),
        },
    }))
}

async fn list_alerts(
    State(am): State<AlertManager>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let m = match filters(&q) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let (active, silenced, inhibited) = (
        flag(&q, "active"),
        flag(&q, "silenced"),
        flag(&q, "inhibited"),
    );
    let now = now_ms();
    let mut fps: Vec<(BTreeMap<String, String>, u64)> = am
        .core
        .state
        .lock()
        .alerts
        .iter()
        .filter(|(_, a)| !a.resolved(now) && m.matches(&a.labels))
        .map(|(fp, a)| (a.labels.clone(), *fp))
        .collect();
    fps.sort();
    let out: Vec<Json> = fps
        .into_iter()
        .filter_map(|(_, fp)| alert_json(&am, fp, now))
        .filter(|j| {
            let s = &j["status"];
            let is_sil = !s["silencedBy"].as_array().is_none_or(|v| v.is_empty());
            let is_inh = !s["inhibitedBy"].as_array().is_none_or(|v| v.is_empty());
            (active || is_sil || is_inh) && (silenced || !is_sil) && (inhibited || !is_inh)
        })
        .collect();
    axum::Json(out).into_response()
}

async fn list_groups(State(am): State<AlertManager>) -> Response {
    let now = now_ms();
    // Each group names its own route's receiver (an alert routed to two
    // groups with `continue` belongs to two receivers).
    let groups: Vec<_> = {
        let st = am.core.state.lock();
        st.groups
            .values()
            .map(|g| {
                (
                    g.labels.clone(),
                    g.key.clone(),
                    g.route.receiver.clone(),
                    g.alerts.iter().copied().collect::<Vec<u64>>(),
                )
            })
            .collect()
    };
    let out: Vec<Json> = groups
        .into_iter()
        .map(|(labels, key, receiver, fps)| {
            json!({
                "labels": labels,
                "receiver": {"name": receiver},
                "groupKey": key,
                "alerts": fps.into_iter().filter_map(|fp| alert_json(&am, fp, now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(out).into_response()
}

fn silence_json(s: &Silence, now: i64) -> Json {
    json!({
        "id": s.id,
        "matchers": s.matchers,
        "startsAt": rfc3339(s.starts_ms),
        "endsAt": rfc3339(s.ends_ms),
        "updatedAt": rfc3339(s.updated_ms),
        "createdBy": s.created_by,
        "comment": s.comment,
        "status": {"state": s.state(now)},
    })
}

async fn list_silences(State(am): State<AlertManager>) -> Response {
    let now = now_ms();
    let st = am.core.state.lock();
    let out: Vec<Json> = st
        .shared
        .silences
        .values()
        .map(|s| silence_json(s, now))
        .collect();
    axum::Json(out).into_response()
}

async fn get_silence(State(am): State<AlertManager>, Path(id): Path<String>) -> Response {
    let st = am.core.state.lock();
    match st.shared.silences.get(&id) {
        Some(s) => axum::Json(silence_json(s, now_ms())).into_response(),
        None => (StatusCode::NOT_FOUND, format!("silence {id} not found\n")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PostableSilence {
    #[serde(default)]
    id: Option<String>,
    matchers: Vec<ApiMatcher>,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
}

fn change(am: &AlertManager, f: impl FnOnce(&mut Shared)) {
    let shared = {
        let mut st = am.core.state.lock();
        f(&mut st.shared);
        st.shared.clone()
    };
    am.core.persist(shared);
    am.core.wake.notify_one();
}

async fn post_silence(State(am): State<AlertManager>, body: Bytes) -> Response {
    let p: PostableSilence = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if p.matchers.is_empty() {
        return bad("a silence needs at least one matcher");
    }
    for (i, m) in p.matchers.iter().enumerate() {
        if let Err(e) = m.to_matcher() {
            return bad(format!("matchers[{i}]: {e}"));
        }
    }
    let now = now_ms();
    let (starts, ends) = match (
        crate::parse_time("startsAt", &p.starts_at),
        crate::parse_time("endsAt", &p.ends_at),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    if ends <= starts {
        return bad("endsAt must be after startsAt");
    }
    if ends <= now {
        return bad("endsAt is in the past");
    }
    let id = match &p.id {
        Some(id) if !id.is_empty() => {
            if !am.core.state.lock().shared.silences.contains_key(id) {
                return (StatusCode::NOT_FOUND, format!("silence {id} not found\n"))
                    .into_response();
            }
            id.clone()
        }
        _ => format!("{:032x}", rand::random::<u128>()),
    };
    let s = Silence {
        id: id.clone(),
        matchers: p.matchers,
        starts_ms: starts,
        ends_ms: ends,
        created_by: p.created_by,
        comment: p.comment,
        updated_ms: now,
    };
    change(&am, |sh| {
        sh.silences.insert(id.clone(), s);
    });
    axum::Json(json!({"silenceID": id})).into_response()
}

async fn expire_silence(State(am): State<AlertManager>, Path(id): Path<String>) -> Response {
    let now = now_ms();
    let mut found = true;
    change(&am, |sh| match sh.silences.get_mut(&id) {
        Some(s) => {
            if s.ends_ms > now {
                s.ends_ms = now;
                s.starts_ms = s.starts_ms.min(now);
            }
            s.updated_ms = now;
        }
        None => found = false,
    });
    if found {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::NOT_FOUND, format!("silence {id} not found\n")).into_response()
    }
}

async fn status(State(am): State<AlertManager>) -> Response {
    let peers: Vec<Json> = am
        .peers
        .iter()
        .map(|p| json!({"name": p, "address": p}))
        .collect();
    axum::Json(json!({
        "cluster": {"status": if am.peers.is_empty() { "disabled" } else { "ready" }, "peers": peers, "position": am.core.opts.position},
        "versionInfo": {"version": env!("CARGO_PKG_VERSION"), "revision": "", "branch": "", "buildUser": "", "buildDate": "", "goVersion": ""},
        "config": {"original": ""},
        "uptime": "",
    }))
    .into_response()
}

async fn receivers(State(am): State<AlertManager>) -> Response {
    let st = am.core.state.lock();
    let out: Vec<Json> = st
        .tree
        .config
        .receivers
        .iter()
        .map(|r| json!({"name": r.name}))
        .collect();
    axum::Json(out).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostableAck {
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    matchers: Vec<ApiMatcher>,
    by: String,
    #[serde(default)]
    comment: String,
}

async fn post_ack(State(am): State<AlertManager>, body: Bytes) -> Response {
    let p: PostableAck = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if p.by.trim().is_empty() {
        return bad("`by` names who acknowledges");
    }
    let m = match p
        .matchers
        .iter()
        .map(ApiMatcher::to_matcher)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(m) => Matchers(m),
        Err(e) => return bad(e),
    };
    let want_fp = match p.fingerprint.as_deref().map(|f| u64::from_str_radix(f, 16)) {
        Some(Ok(f)) => Some(f),
        Some(Err(_)) => return bad("fingerprint is 16 hex digits"),
        None if m.0.is_empty() => return bad("give a fingerprint or matchers"),
        None => None,
    };
    let now = now_ms();
    let targets: Vec<(u64, i64)> = {
        let st = am.core.state.lock();
        st.alerts
            .iter()
            .filter(|(fp, a)| {
                !a.resolved(now) && want_fp.is_none_or(|w| w == **fp) && m.matches(&a.labels)
            })
            .map(|(fp, a)| (*fp, a.starts_ms))
            .collect()
    };
    if targets.is_empty() {
        return (StatusCode::NOT_FOUND, "no firing alert matches\n").into_response();
    }
    change(&am, |sh| {
        for (fp, starts) in &targets {
            sh.acks.insert(
                format!("{fp:016x}"),
                Ack {
                    fingerprint: *fp,
                    starts_ms: *starts,
                    by: p.by.clone(),
                    comment: p.comment.clone(),
                    at_ms: now,
                },
            );
        }
    });
    axum::Json(json!({"acknowledged": targets.iter().map(|(f, _)| format!("{f:016x}")).collect::<Vec<_>>()})).into_response()
}

async fn list_acks(State(am): State<AlertManager>) -> Response {
    let st = am.core.state.lock();
    let out: Vec<Json> = st
        .shared
        .acks
        .values()
        .filter(|k| st.alerts.get(&k.fingerprint).is_some_and(|a| a.starts_ms == k.starts_ms))
        .map(|k| json!({"fingerprint": format!("{:016x}", k.fingerprint), "by": k.by, "comment": k.comment, "at": rfc3339(k.at_ms)}))
        .collect();
    axum::Json(out).into_response()
}

async fn delete_ack(State(am): State<AlertManager>, Path(fp): Path<String>) -> Response {
    let mut found = false;
    let now = now_ms();
    change(&am, |sh| {
        if let Some(a) = sh.acks.get_mut(&fp) {
            // A newer, impossible start: the acknowledgement no longer
            // applies, and the change replicates like any other.
            a.starts_ms = i64::MIN;
            a.at_ms = now;
            found = true;
        }
    });
    if found {
        StatusCode::OK.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            format!("no acknowledgement for {fp}\n"),
        )
            .into_response()
    }
}

async fn peer_get(State(am): State<AlertManager>) -> Response {
    axum::Json(am.core.state.lock().shared.clone()).into_response()
}

async fn peer_post(State(am): State<AlertManager>, body: Bytes) -> Response {
    let s: Shared = match parse_json(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let merged = {
        let mut st = am.core.state.lock();
        st.shared.merge(s).then(|| st.shared.clone())
    };
    if let Some(m) = merged
        && let Err(e) = am.core.store.save(&m)
    {
        tracing::warn!(error = %e, "cannot save the alert manager's state");
    }
    StatusCode::OK.into_response()
}
