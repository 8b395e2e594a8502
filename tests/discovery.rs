//! Service discovery end to end: a `tiermon secondary` finds simulated
//! hosts through a real DNS server (dnsmasq: SRV and A records), a real EC2
//! API (moto's server: DescribeInstances, signed), and servers the test
//! runs that speak Consul's catalog API (blocking queries) and the
//! Kubernetes API (list, then watch) as their documentation describes; it
//! scrapes them, relabels with the `__meta_*` labels, and follows changes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::fleetsim::Fleet;
use crate::util::{Guard, Tiermon, eventually, free_port, peer};

const LONG: Duration = Duration::from_secs(40);

/// service → (node, address, port, tags, check status) per instance.
type Catalog = BTreeMap<String, Vec<(String, String, u16, Vec<String>, String)>>;

/// A Consul agent's catalog, as far as discovery reads it.
#[derive(Clone)]
struct Consul {
    services: Arc<Mutex<Catalog>>,
    /// The Raft index: bumped at every change, watched by blocking queries.
    index: watch::Sender<u64>,
    /// Query strings seen, to check what the client asks for.
    queries: Arc<Mutex<Vec<String>>>,
}

#[derive(serde::Deserialize)]
struct Blocking {
    index: Option<u64>,
    wait: Option<String>,
}

impl Consul {
    fn change(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Vec<(String, String, u16, Vec<String>, String)>>),
    ) {
        f(&mut self.services.lock());
        self.index.send_modify(|i| *i += 1);
    }

    /// Consul's blocking query: answer at once when the index moved past
    /// the client's, else when it does or the wait runs out.
    async fn block(&self, q: &Blocking) -> u64 {
        let mut rx = self.index.subscribe();
        if let Some(seen) = q.index {
            let wait = q
                .wait
                .as_deref()
                .and_then(|w| w.strip_suffix("ms"))
                .and_then(|w| w.parse().ok())
                .map_or(Duration::from_secs(300), Duration::from_millis);
            let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > seen)).await;
        }
        *rx.borrow()
    }
}

async fn consul_self() -> axum::Json<Value> {
    axum::Json(json!({"Config": {"Datacenter": "dc-sim", "NodeName": "agent"}}))
}

async fn consul_services(
    State(c): State<Consul>,
    Query(q): Query<Blocking>,
    raw: axum::extract::RawQuery,
) -> impl IntoResponse {
    c.queries.lock().push(raw.0.unwrap_or_default());
    let index = c.block(&q).await;
    let body: BTreeMap<String, Vec<String>> = c
        .services
        .lock()
        .iter()
        .map(|(name, inst)| {
            let tags = inst.first().map(|i| i.3.clone()).unwrap_or_default();
            (name.clone(), tags)
        })
        .collect();
    ([("X-Consul-Index", index.to_string())], axum::Json(body))
}

async fn consul_health(
    State(c): State<Consul>,
    Path(name): Path<String>,
    Query(q): Query<Blocking>,
) -> impl IntoResponse {
    let index = c.block(&q).await;
    let body: Vec<Value> = c
        .services
        .lock()
        .get(&name)
        .into_iter()
        .flatten()
        .map(|(node, addr, port, tags, status)| {
            json!({
                "Node": {"Node": node, "Address": addr, "Datacenter": "dc-sim",
                         "TaggedAddresses": {"lan": addr}, "Meta": {"rack": "r7"}},
                "Service": {"ID": format!("{name}-{node}"), "Service": name, "Tags": tags,
                            "Address": "", "Port": port, "Meta": {"version": "1.2"}},
                "Checks": [{"CheckID": "serfHealth", "Status": status}]
            })
        })
        .collect();
    ([("X-Consul-Index", index.to_string())], axum::Json(body))
}

/// A Kubernetes API server's pods in one namespace: a list and a watch.
#[derive(Clone)]
struct Kube {
    pods: Arc<Mutex<BTreeMap<String, Value>>>,
    version: Arc<Mutex<u64>>,
    events: broadcast::Sender<String>,
    queries: Arc<Mutex<Vec<String>>>,
}

impl Kube {
    fn apply(&self, ty: &str, mut pod: Value) {
        let mut v = self.version.lock();
        *v += 1;
        pod["metadata"]["resourceVersion"] = json!(v.to_string());
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        if ty == "DELETED" {
            self.pods.lock().remove(&name);
        } else {
            self.pods.lock().insert(name, pod.clone());
        }
        let _ = self
            .events
            .send(json!({"type": ty, "object": pod}).to_string() + "\n");
    }
}

async fn kube_pods(
    State(k): State<Kube>,
    Query(q): Query<BTreeMap<String, String>>,
    raw: axum::extract::RawQuery,
) -> axum::response::Response {
    k.queries.lock().push(raw.0.unwrap_or_default());
    if q.get("watch").map(String::as_str) == Some("1") {
        // A chunked stream of JSON events, one per line, until the client
        // goes away.
        let rx = k.events.subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(line) => return Some((Ok::<_, std::io::Error>(line), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        return axum::response::Response::builder()
            .header("Content-Type", "application/json")
            .body(axum::body::Body::from_stream(stream))
            .unwrap();
    }
    let items: Vec<Value> = k.pods.lock().values().cloned().collect();
    let version = k.version.lock().to_string();
    axum::Json(json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": version},
        "items": items
    }))
    .into_response()
}

fn pod(name: &str, ip: Ipv4Addr, port: u16) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"),
                     "labels": {"app": "node"}},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "exporter", "image": "node-exporter:1",
             "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"},
                       {"name": "debug", "containerPort": 6060, "protocol": "TCP"}]}
        ]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "hostIP": "192.0.2.1",
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

async fn serve(app: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// The secondary's active targets: (job, address, health, discovered).
fn targets(base: &str) -> Vec<(String, String, String, Value)> {
    let Some(body) = crate::util::get(&format!("{base}/api/v1/targets")) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["labels"]["job"].as_str().unwrap_or("").to_owned(),
                t["labels"]["instance"].as_str().unwrap_or("").to_owned(),
                t["health"].as_str().unwrap_or("").to_owned(),
                t["discoveredLabels"].clone(),
            )
        })
        .collect()
}

fn job_targets(base: &str, job: &str) -> Vec<(String, String, Value)> {
    let mut t: Vec<_> = targets(base)
        .into_iter()
        .filter(|t| t.0 == job)
        .map(|t| (t.1, t.2, t.3))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Waits until `job` has exactly `want` targets, all scraped and up.
fn wait_up(base: &str, job: &str, want: &[String]) -> Vec<(String, String, Value)> {
    let start = std::time::Instant::now();
    loop {
        let t = job_targets(base, job);
        let addrs: Vec<&String> = t.iter().map(|t| &t.0).collect();
        let ok = addrs.len() == want.len()
            && want.iter().all(|w| addrs.contains(&w))
            && t.iter().all(|t| t.1 == "up");
        if ok {
            return t;
        }
        assert!(
            start.elapsed() < LONG,
            "timed out waiting for {job} targets {want:?} up; have {t:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates EC2 instances in moto with boto3 (from moto's own virtualenv).
fn ec2_instances(python: &std::path::Path, endpoint: &str, tags: &[(&str, &str)]) {
    let mut script = format!(
        "import boto3\nec2 = boto3.client('ec2', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n"
    );
    for (role, addr) in tags {
        script.push_str(&format!(
            "ec2.run_instances(ImageId='ami-12c6146b', MinCount=1, MaxCount=1, InstanceType='t3.micro', TagSpecifications=[{{'ResourceType': 'instance', 'Tags': [{{'Key': 'role', 'Value': '{role}'}}, {{'Key': 'scrape_addr', 'Value': '{addr}'}}]}}])\n"
        ));
    }
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_provider_finds_scrapes_and_follows_its_targets() {
    let (Some(dnsmasq), Some(moto)) = (peer("dnsmasq"), peer("moto_server")) else {
        return;
    };
    let python = moto.with_file_name("python3");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = free_port();
    let fleet = rt.block_on(Fleet::start(12, 10, port)).unwrap();
    let host = |i: usize| fleet.hosts[i].addr.to_string();
    let ip = |i: usize| match fleet.hosts[i].addr.ip() {
        std::net::IpAddr::V4(v4) => v4,
        _ => unreachable!(),
    };
    let dir = tempfile::tempdir().unwrap();

    // DNS: dnsmasq on port 53 of an address of its own.
    let dns_ip = Ipv4Addr::new(
        127,
        53,
        rand::random_range(1..250),
        rand::random_range(1..250),
    );
    let _dns = Guard(
        Command::new(&dnsmasq)
            .args([
                "-k",
                "--conf-file=/dev/null",
                "--bind-interfaces",
                "--port=53",
            ])
            .arg(format!("--listen-address={dns_ip}"))
            .args(["--no-resolv", "--no-hosts", "--user=root", "--pid-file="])
            // Authoritative for the zone: unknown names are NXDOMAIN.
            .arg("--local=/fleet.test/")
            .arg(format!("--host-record=h0.fleet.test,{}", ip(0)))
            .arg(format!("--host-record=h1.fleet.test,{}", ip(1)))
            .arg(format!(
                "--srv-host=_node._tcp.fleet.test,h0.fleet.test,{port}"
            ))
            .arg(format!(
                "--srv-host=_node._tcp.fleet.test,h1.fleet.test,{port}"
            ))
            .arg(format!("--host-record=web.fleet.test,{}", ip(2)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {dns_ip}\noptions timeout:1 attempts:2\n"),
    )
    .unwrap();

    // Consul: two instances of `node` tagged prod, one of `other`.
    let consul = Consul {
        services: Arc::default(),
        index: watch::channel(1).0,
        queries: Arc::default(),
    };
    consul.change(|s| {
        s.insert(
            "node".into(),
            vec![
                (
                    "c3".into(),
                    ip(3).to_string(),
                    port,
                    vec!["prod".into()],
                    "passing".into(),
                ),
                (
                    "c4".into(),
                    ip(4).to_string(),
                    port,
                    vec!["prod".into()],
                    "warning".into(),
                ),
            ],
        );
        s.insert(
            "other".into(),
            vec![(
                "c9".into(),
                ip(9).to_string(),
                port,
                vec!["dev".into()],
                "passing".into(),
            )],
        );
    });
    let consul_addr = rt.block_on(serve(
        axum::Router::new()
            .route("/v1/agent/self", get(consul_self))
            .route("/v1/catalog/services", get(consul_services))
            .route("/v1/health/service/{name}", get(consul_health))
            .with_state(consul.clone()),
    ));

    // Kubernetes: one pod at first.
    let kube = Kube {
        pods: Arc::default(),
        version: Arc::new(Mutex::new(100)),
        events: broadcast::channel(64).0,
        queries: Arc::default(),
    };
    kube.apply("ADDED", pod("node-a", ip(7), port));
    let kube_addr = rt.block_on(serve(
        axum::Router::new()
            .route("/api/v1/namespaces/prod/pods", get(kube_pods))
            .with_state(kube.clone()),
    ));

    // EC2: moto, with two instances of role node and one of role db.
    let moto_port = free_port();
    let _moto = Guard(
        Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    eventually("moto to listen", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", moto_port)).ok()
    });
    ec2_instances(
        &python,
        &endpoint,
        &[("node", &host(5)), ("node", &host(6)), ("db", &host(11))],
    );

    let scrape = dir.path().join("scrape.yml");
    std::fs::write(
        &scrape,
        format!(
            r#"
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: dns-srv
    dns_sd_configs:
      - names: [_node._tcp.fleet.test]
        refresh_interval: 1s
  - job_name: dns-a
    dns_sd_configs:
      - names: [web.fleet.test, missing.fleet.test]
        type: A
        port: {port}
        refresh_interval: 1s
  - job_name: consul
    consul_sd_configs:
      - server: '{consul_addr}'
        services: [node, other]
        tags: [prod]
        refresh_interval: 20s
    relabel_configs:
      - source_labels: [__meta_consul_health]
        target_label: health
      - source_labels: [__meta_consul_service_metadata_version]
        target_label: version
  - job_name: ec2
    ec2_sd_configs:
      - region: us-east-1
        endpoint: '{endpoint}'
        access_key: test
        secret_key: test
        refresh_interval: 2s
        filters:
          - name: tag:role
            values: [node]
    relabel_configs:
      - source_labels: [__meta_ec2_tag_scrape_addr]
        target_label: __address__
      - source_labels: [__meta_ec2_instance_id]
        target_label: instance_id
  - job_name: k8s
    kubernetes_sd_configs:
      - role: pod
        api_server: 'http://{kube_addr}'
        namespaces:
          names: [prod]
        selectors:
          - role: pod
            label: app=node
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_container_port_name]
        regex: metrics
        action: keep
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
"#
        ),
    )
    .unwrap();
    let config = format!("[secondary]\nscrape_config = \"{}\"\n", scrape.display());
    let ours = Tiermon::start_env(
        "secondary",
        "127.0.0.1:0",
        Some(&config),
        &["--data", dir.path().join("db").to_str().unwrap()],
        &[("TIERMON_RESOLV_CONF", resolv.to_str().unwrap())],
    );
    let base = format!("http://{}", ours.addr);

    // DNS SRV: both hosts, with the record's labels.
    // The SRV records name hosts, which the scrapes resolve through the
    // same DNS server.
    let srv = wait_up(
        &base,
        "dns-srv",
        &[
            format!("h0.fleet.test:{port}"),
            format!("h1.fleet.test:{port}"),
        ],
    );
    let d = &srv[0].2;
    assert_eq!(d["__meta_dns_name"], "_node._tcp.fleet.test", "{d}");
    assert_eq!(d["__meta_dns_srv_record_target"], "h0.fleet.test.", "{d}");
    assert_eq!(d["__meta_dns_srv_record_port"], port.to_string(), "{d}");
    // DNS A: the address with the configured port; a missing name is empty.
    let a = wait_up(&base, "dns-a", &[host(2)]);
    assert_eq!(a[0].2["__meta_dns_name"], "web.fleet.test");

    // Consul: the prod instances of `node`, not `other` (tag dev).
    let c = wait_up(&base, "consul", &[host(3), host(4)]);
    let d = &c[1].2;
    assert_eq!(d["__meta_consul_service"], "node", "{d}");
    assert_eq!(d["__meta_consul_dc"], "dc-sim", "{d}");
    assert_eq!(d["__meta_consul_health"], "warning", "{d}");
    assert_eq!(d["__meta_consul_tags"], ",prod,", "{d}");
    assert_eq!(d["__meta_consul_metadata_rack"], "r7", "{d}");
    assert_eq!(d["__meta_consul_node"], "c4", "{d}");
    let q = consul.queries.lock().clone();
    assert!(q.iter().any(|q| q.contains("dc=dc-sim")), "{q:?}");
    assert!(
        q.iter()
            .any(|q| q.contains("index=") && q.contains("wait=")),
        "{q:?}"
    );

    // EC2: the two node instances, reached at their tag's address.
    let e = wait_up(&base, "ec2", &[host(5), host(6)]);
    let d = &e[0].2;
    assert_eq!(d["__meta_ec2_instance_state"], "running", "{d}");
    assert_eq!(d["__meta_ec2_region"], "us-east-1", "{d}");
    assert_eq!(d["__meta_ec2_tag_role"], "node", "{d}");
    assert_eq!(d["__meta_ec2_instance_type"], "t3.micro", "{d}");
    assert!(
        d["__meta_ec2_instance_id"]
            .as_str()
            .unwrap()
            .starts_with("i-"),
        "{d}"
    );
    assert!(
        d["__meta_ec2_private_ip"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{d}"
    );

    // Kubernetes: the pod's metrics port only (debug dropped by relabelling).
    let k = wait_up(&base, "k8s", &[host(7)]);
    let d = &k[0].2;
    assert_eq!(d["__meta_kubernetes_namespace"], "prod", "{d}");
    assert_eq!(d["__meta_kubernetes_pod_name"], "node-a", "{d}");
    assert_eq!(d["__meta_kubernetes_pod_ready"], "true", "{d}");
    assert_eq!(d["__meta_kubernetes_pod_label_app"], "node", "{d}");
    let q = kube.queries.lock().clone();
    assert!(
        q.iter().all(|q| q.contains("labelSelector=app%3Dnode")),
        "{q:?}"
    );
    // The scraped series carry the relabelled target labels.
    let up = crate::util::get(&format!(
        "{base}/api/v1/query?query=up%7Bjob%3D%22k8s%22%2Cpod%3D%22node-a%22%7D"
    ))
    .unwrap();
    assert!(up.contains("\"1\""), "{up}");

    // Changes are followed: a pod added and one deleted through the watch,
    // an instance registered in Consul (a blocking query returns at once:
    // long before the 20 s refresh interval).
    kube.apply("ADDED", pod("node-b", ip(8), port));
    wait_up(&base, "k8s", &[host(7), host(8)]);
    kube.apply("DELETED", pod("node-a", ip(7), port));
    wait_up(&base, "k8s", &[host(8)]);
    consul.change(|s| {
        s.get_mut("node").unwrap().push((
            "c10".into(),
            ip(10).to_string(),
            port,
            vec!["prod".into()],
            "passing".into(),
        ))
    });
    let t0 = std::time::Instant::now();
    wait_up(&base, "consul", &[host(3), host(4), host(10)]);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the blocking query should have returned at the change"
    );
    // A Consul that goes away keeps the last good targets.
    drop(rt);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(job_targets(&base, "consul").len(), 3);
    drop(fleet);
}
