//! EC2 discovery (`ec2_sd_configs`): the instances DescribeInstances lists
//! (with the configured filters), every `refresh_interval`, with
//! Prometheus' `__meta_ec2_*` labels. Requests are signed with AWS
//! Signature Version 4 (the signer of the `object_store` crate, which
//! tiermon already uses for S3).
//!
//! Credentials: `access_key`/`secret_key`, else the standard environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), else the instance's role through the instance
//! metadata service (IMDSv2; `AWS_EC2_METADATA_SERVICE_ENDPOINT` moves it),
//! kept until shortly before they expire. The region: `region`, else
//! `AWS_REGION` or `AWS_DEFAULT_REGION`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use serde::Deserialize;

use super::{Sink, TargetGroup, host_port, run_polling, sanitize};
use crate::config::PromDuration;
use crate::{Error, Result};

/// `ec2_sd_configs` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ec2SdConfig {
    /// AWS region; from the environment when unset.
    pub region: Option<String>,
    /// The EC2 API endpoint; `https://ec2.<region>.amazonaws.com` when unset.
    pub endpoint: Option<String>,
    /// Access key ID; from the environment when unset.
    pub access_key: Option<String>,
    /// Secret access key.
    pub secret_key: Option<String>,
    /// Named profiles are not supported (refused at load).
    pub profile: Option<String>,
    /// Role assumption is not supported (refused at load).
    pub role_arn: Option<String>,
    /// How often the instances are listed.
    pub refresh_interval: PromDuration,
    /// The port of every target (the private IP's).
    pub port: u16,
    /// DescribeInstances filters.
    pub filters: Vec<Ec2Filter>,
}

impl Default for Ec2SdConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            access_key: None,
            secret_key: None,
            profile: None,
            role_arn: None,
            refresh_interval: PromDuration(Duration::from_secs(60)),
            port: 80,
            filters: Vec::new(),
        }
    }
}

/// A DescribeInstances filter: `name` is one of its filter names
/// (`tag:Role`, `instance-state-name`, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Filter {
    /// The filter name.
    pub name: String,
    /// Values of which one must match.
    pub values: Vec<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Ec2SdConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        for (k, v) in [("profile", &self.profile), ("role_arn", &self.role_arn)] {
            if v.is_some() {
                return Err(Error::config(
                    format!("{key}.{k}"),
                    "is not supported by tiermon: give access_key and secret_key, the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables, or run on an instance with a role",
                ));
            }
        }
        if self.region().is_none() {
            return Err(Error::config(
                format!("{key}.region"),
                "not set, and neither AWS_REGION nor AWS_DEFAULT_REGION is in the environment",
            ));
        }
        if self.access_key.is_some() != self.secret_key.is_some() {
            return Err(Error::config(
                format!("{key}.secret_key"),
                "access_key and secret_key go together",
            ));
        }
        if let Some(e) = &self.endpoint {
            match url::Url::parse(e) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => {
                    return Err(Error::config(
                        format!("{key}.endpoint"),
                        format!("{e:?} is not an http(s) URL"),
                    ));
                }
            }
        }
        if self.port == 0 {
            return Err(Error::config(format!("{key}.port"), "must be more than 0"));
        }
        for (i, f) in self.filters.iter().enumerate() {
            if f.name.is_empty() || f.values.is_empty() {
                return Err(Error::config(
                    format!("{key}.filters[{i}]"),
                    "a filter needs a name and at least one value",
                ));
            }
        }
        Ok(())
    }

    fn region(&self) -> Option<String> {
        self.region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
    }

    /// Credentials from the configuration or the environment, if any.
    fn static_credential(&self) -> Option<AwsCredential> {
        match (&self.access_key, &self.secret_key) {
            (Some(k), Some(s)) => Some(AwsCredential {
                key_id: k.clone(),
                secret_key: s.clone(),
                token: None,
            }),
            _ => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(k), Some(s)) => Some(AwsCredential {
                    key_id: k,
                    secret_key: s,
                    token: env("AWS_SESSION_TOKEN"),
                }),
                _ => None,
            },
        }
    }
}

/// Where credentials come from, with the instance role's cached.
#[derive(Debug)]
struct Credentials {
    imds: String,
    cached: parking_lot::Mutex<Option<(std::sync::Arc<AwsCredential>, i64)>>,
}

/// The role's credentials as IMDS answers them.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

impl Credentials {
    fn new(imds: String) -> Self {
        Credentials {
            imds: imds.trim_end_matches('/').to_owned(),
            cached: parking_lot::Mutex::new(None),
        }
    }

    async fn get(
        &self,
        cfg: &Ec2SdConfig,
        http: &reqwest::Client,
    ) -> std::result::Result<std::sync::Arc<AwsCredential>, String> {
        if let Some(c) = cfg.static_credential() {
            return Ok(std::sync::Arc::new(c));
        }
        let now = tiermon_model::now_ms();
        if let Some((c, until)) = self.cached.lock().as_ref()
            && now < *until
        {
            return Ok(c.clone());
        }
        let (c, expires) = self.fetch_role(http).await.map_err(|e| {
            format!("no credentials: none in the configuration or the environment, and the instance metadata service gave none ({e})")
        })?;
        // Renewed five minutes before they expire (AWS rotates them well
        // before that).
        let c = std::sync::Arc::new(c);
        *self.cached.lock() = Some((c.clone(), expires - 300_000));
        Ok(c)
    }

    /// IMDSv2: a session token, the role's name, its credentials.
    async fn fetch_role(
        &self,
        http: &reqwest::Client,
    ) -> std::result::Result<(AwsCredential, i64), String> {
        let t = Duration::from_secs(2);
        let token = http
            .put(format!("{}/latest/api/token", self.imds))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .timeout(t)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !token.status().is_success() {
            return Err(format!("token: HTTP status {}", token.status()));
        }
        let token = token.text().await.map_err(|e| e.to_string())?;
        let get = |path: String| {
            let req = http
                .get(format!("{}{path}", self.imds))
                .header("X-aws-ec2-metadata-token", token.trim())
                .timeout(t);
            async move {
                let r = req.send().await.map_err(|e| e.to_string())?;
                let status = r.status();
                let body = r.text().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{path}: HTTP status {status}"));
                }
                Ok::<_, String>(body)
            }
        };
        let base = "/latest/meta-data/iam/security-credentials/";
        let roles = get(base.to_owned()).await?;
        let role = roles
            .lines()
            .next()
            .filter(|r| !r.trim().is_empty())
            .ok_or("the instance has no role")?
            .trim()
            .to_owned();
        let body = get(format!("{base}{role}")).await?;
        let c: RoleCredentials =
            serde_json::from_str(&body).map_err(|e| format!("role {role}: {e}"))?;
        let expires = chrono::DateTime::parse_from_rfc3339(&c.expiration)
            .map_err(|e| format!("role {role}: expiration {:?}: {e}", c.expiration))?
            .timestamp_millis();
        Ok((
            AwsCredential {
                key_id: c.access_key_id,
                secret_key: c.secret_access_key,
                token: Some(c.token),
            },
            expires,
        ))
    }
}

pub(crate) async fn run(cfg: Ec2SdConfig, sink: Sink) {
    let http = match crate::client::discovery(None) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(job = %sink.job, error = %e, "ec2_sd: cannot build an HTTP client");
            sink.send(Vec::new());
            return;
        }
    };
    let what = format!("ec2_sd {}", cfg.region().unwrap_or_default());
    let every = cfg.refresh_interval.0;
    let creds = Credentials::new(
        env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into()),
    );
    run_polling(what, every, sink, || async {
        let credential = creds.get(&cfg, &http).await?;
        describe(&cfg, &http, &credential).await
    })
    .await
}

/// The EC2 Query API: one signed POST.
async fn call(
    cfg: &Ec2SdConfig,
    http: &reqwest::Client,
    credential: &AwsCredential,
    params: &[(String, String)],
) -> std::result::Result<Bytes, String> {
    let region = cfg.region().ok_or("no region")?;
    let endpoint = cfg
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com/"));
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(&endpoint)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(object_store::client::HttpRequestBody::from(Bytes::from(
            body.clone(),
        )))
        .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    AwsAuthorizer::new(credential, "ec2", &region)
        .try_authorize(&mut req, None)
        .map_err(|e| format!("signing: {e}"))?;
    let mut r = http
        .post(&endpoint)
        .timeout(Duration::from_secs(30))
        .body(body);
    for (k, v) in req.headers() {
        r = r.header(k, v);
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(api_error(status, &text));
    }
    Ok(text)
}

/// The error EC2 answers, as `Code: Message`.
fn api_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Response {
        #[serde(rename = "Errors")]
        errors: Errors,
    }
    #[derive(Deserialize)]
    struct Errors {
        #[serde(rename = "Error", default)]
        error: Vec<ApiError>,
    }
    #[derive(Deserialize)]
    struct ApiError {
        #[serde(rename = "Code", default)]
        code: String,
        #[serde(rename = "Message", default)]
        message: String,
    }
    let text = String::from_utf8_lossy(body);
    match quick_xml::de::from_str::<Response>(&text) {
        Ok(r) if !r.errors.error.is_empty() => {
            let e = &r.errors.error[0];
            format!("HTTP status {status}: {}: {}", e.code, e.message)
        }
        _ => format!("HTTP status {status}: {}", text.trim()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeInstances {
    #[serde(default)]
    reservation_set: Items<Reservation>,
    #[serde(default)]
    next_token: Option<String>,
}

/// An EC2 list: `<item>` elements.
#[derive(Debug, Deserialize)]
struct Items<T> {
    #[serde(rename = "item", default = "Vec::new")]
    item: Vec<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items { item: Vec::new() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    #[serde(default)]
    owner_id: String,
    #[serde(default)]
    instances_set: Items<Instance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instance {
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    image_id: String,
    #[serde(default)]
    instance_state: State,
    #[serde(default)]
    private_dns_name: Option<String>,
    #[serde(default)]
    dns_name: Option<String>,
    #[serde(default)]
    instance_type: String,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    subnet_id: Option<String>,
    #[serde(default)]
    vpc_id: Option<String>,
    #[serde(default)]
    private_ip_address: Option<String>,
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    instance_lifecycle: Option<String>,
    #[serde(default)]
    network_interface_set: Items<Interface>,
    #[serde(default)]
    tag_set: Items<Tag>,
}

#[derive(Debug, Default, Deserialize)]
struct State {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Placement {
    #[serde(default)]
    availability_zone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Interface {
    #[serde(default)]
    subnet_id: Option<String>,
    #[serde(default)]
    attachment: Option<Attachment>,
    #[serde(default)]
    ipv6_addresses_set: Items<Ipv6>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    #[serde(default)]
    device_index: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ipv6 {
    #[serde(default)]
    ipv6_address: String,
    #[serde(default)]
    is_primary_ipv6: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct Tag {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeZones {
    #[serde(default)]
    availability_zone_info: Items<Zone>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Zone {
    #[serde(default)]
    zone_name: String,
    #[serde(default)]
    zone_id: String,
}

fn base_params(action: &str) -> Vec<(String, String)> {
    vec![
        ("Action".into(), action.into()),
        ("Version".into(), "2016-11-15".into()),
    ]
}

/// Lists every page of instances; one group for the region.
async fn describe(
    cfg: &Ec2SdConfig,
    http: &reqwest::Client,
    credential: &AwsCredential,
) -> std::result::Result<Vec<TargetGroup>, String> {
    let region = cfg.region().ok_or("no region")?;
    let zones = call(
        cfg,
        http,
        credential,
        &base_params("DescribeAvailabilityZones"),
    )
    .await?;
    let zones: DescribeZones = quick_xml::de::from_reader(&zones[..])
        .map_err(|e| format!("DescribeAvailabilityZones: bad answer: {e}"))?;
    let zone_ids: BTreeMap<String, String> = zones
        .availability_zone_info
        .item
        .into_iter()
        .map(|z| (z.zone_name, z.zone_id))
        .collect();
    let mut targets = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = base_params("DescribeInstances");
        for (i, f) in cfg.filters.iter().enumerate() {
            params.push((format!("Filter.{}.Name", i + 1), f.name.clone()));
            for (j, v) in f.values.iter().enumerate() {
                params.push((format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone()));
            }
        }
        if let Some(t) = &token {
            params.push(("NextToken".into(), t.clone()));
        }
        let body = call(cfg, http, credential, &params).await?;
        let page: DescribeInstances = quick_xml::de::from_reader(&body[..])
            .map_err(|e| format!("DescribeInstances: bad answer: {e}"))?;
        for r in page.reservation_set.item {
            for i in r.instances_set.item {
                if let Some(t) = target(cfg, &region, &r.owner_id, &zone_ids, i) {
                    targets.push(t);
                }
            }
        }
        match page.next_token.filter(|t| !t.is_empty()) {
            Some(t) if Some(&t) != token.as_ref() => token = Some(t),
            _ => break,
        }
    }
    Ok(vec![TargetGroup {
        source: region.clone(),
        targets,
        labels: BTreeMap::from([("__meta_ec2_region".to_owned(), region)]),
    }])
}

/// An instance's target; none without a private IP (it cannot be reached).
fn target(
    cfg: &Ec2SdConfig,
    region: &str,
    owner: &str,
    zone_ids: &BTreeMap<String, String>,
    i: Instance,
) -> Option<BTreeMap<String, String>> {
    let ip = i.private_ip_address.filter(|ip| !ip.is_empty())?;
    let zone = i.placement.availability_zone;
    let mut t = BTreeMap::from([
        ("__address__".to_owned(), host_port(&ip, cfg.port)),
        ("__meta_ec2_instance_id".into(), i.instance_id),
        ("__meta_ec2_instance_state".into(), i.instance_state.name),
        ("__meta_ec2_instance_type".into(), i.instance_type),
        ("__meta_ec2_owner_id".into(), owner.to_owned()),
        ("__meta_ec2_ami".into(), i.image_id),
        ("__meta_ec2_private_ip".into(), ip),
        ("__meta_ec2_region".into(), region.to_owned()),
        (
            "__meta_ec2_availability_zone_id".into(),
            zone_ids.get(&zone).cloned().unwrap_or_default(),
        ),
        ("__meta_ec2_availability_zone".into(), zone),
    ]);
    let optional = [
        ("__meta_ec2_private_dns_name", i.private_dns_name),
        ("__meta_ec2_public_dns_name", i.dns_name),
        ("__meta_ec2_public_ip", i.ip_address),
        ("__meta_ec2_platform", i.platform),
        ("__meta_ec2_architecture", i.architecture),
        ("__meta_ec2_instance_lifecycle", i.instance_lifecycle),
    ];
    for (k, v) in optional {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            t.insert(k.into(), v);
        }
    }
    if let Some(vpc) = i.vpc_id.filter(|v| !v.is_empty()) {
        t.insert("__meta_ec2_vpc_id".into(), vpc);
        if let Some(s) = i.subnet_id.filter(|v| !v.is_empty()) {
            t.insert("__meta_ec2_primary_subnet_id".into(), s);
        }
        // Every interface's subnet and IPv6 addresses, as ",a,b,"; the
        // primary IPv6 addresses in the order of the interfaces.
        let mut ifaces = i.network_interface_set.item;
        ifaces.sort_by_key(|n| n.attachment.as_ref().map_or(0, |a| a.device_index));
        let mut subnets: Vec<String> = Vec::new();
        let mut v6 = Vec::new();
        let mut primary_v6 = Vec::new();
        for n in ifaces {
            if let Some(s) = n.subnet_id.filter(|s| !s.is_empty())
                && !subnets.contains(&s)
            {
                subnets.push(s);
            }
            let mut primary = String::new();
            for a in n.ipv6_addresses_set.item {
                if a.is_primary_ipv6 == Some(true) {
                    primary = a.ipv6_address.clone();
                }
                v6.push(a.ipv6_address);
            }
            primary_v6.push(primary);
        }
        let list = |v: &[String]| format!(",{},", v.join(","));
        if !subnets.is_empty() {
            t.insert("__meta_ec2_subnet_id".into(), list(&subnets));
        }
        if !v6.is_empty() {
            t.insert("__meta_ec2_ipv6_addresses".into(), list(&v6));
        }
        if primary_v6.iter().any(|p| !p.is_empty()) {
            t.insert(
                "__meta_ec2_primary_ipv6_addresses".into(),
                list(&primary_v6),
            );
        }
    }
    for tag in i.tag_set.item {
        if !tag.key.is_empty() {
            t.insert(format!("__meta_ec2_tag_{}", sanitize(&tag.key)), tag.value);
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// An answer in the shape of EC2's documentation example.
    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-496f-496e-8fe3-example</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1234567890abcdef0</reservationId>
      <ownerId>123456789012</ownerId>
      <groupSet/>
      <instancesSet>
        <item>
          <instanceId>i-1234567890abcdef0</instanceId>
          <imageId>ami-bff32ccc</imageId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <privateDnsName>ip-192-168-1-88.eu-west-1.compute.internal</privateDnsName>
          <dnsName>ec2-54-194-252-215.eu-west-1.compute.amazonaws.com</dnsName>
          <instanceType>t2.micro</instanceType>
          <placement><availabilityZone>eu-west-1c</availabilityZone><tenancy>default</tenancy></placement>
          <subnetId>subnet-56f5f633</subnetId>
          <vpcId>vpc-11112222</vpcId>
          <privateIpAddress>192.168.1.88</privateIpAddress>
          <ipAddress>54.194.252.215</ipAddress>
          <architecture>x86_64</architecture>
          <networkInterfaceSet>
            <item>
              <subnetId>subnet-56f5f633</subnetId>
              <attachment><deviceIndex>0</deviceIndex></attachment>
              <ipv6AddressesSet><item><ipv6Address>2001:db8::1</ipv6Address><isPrimaryIpv6>true</isPrimaryIpv6></item></ipv6AddressesSet>
            </item>
          </networkInterfaceSet>
          <tagSet>
            <item><key>Name</key><value>web-1</value></item>
            <item><key>team:owner</key><value>sre</value></item>
          </tagSet>
        </item>
        <item>
          <instanceId>i-0000000000000000f</instanceId>
          <instanceState><code>48</code><name>terminated</name></instanceState>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken/>
</DescribeInstancesResponse>"#;

    #[test]
    fn an_answer_becomes_targets_with_prometheus_labels() {
        let page: DescribeInstances = quick_xml::de::from_str(PAGE).unwrap();
        assert_eq!(page.reservation_set.item.len(), 1);
        let r = page.reservation_set.item.into_iter().next().unwrap();
        let cfg = Ec2SdConfig {
            port: 9100,
            ..Ec2SdConfig::default()
        };
        let zones = BTreeMap::from([("eu-west-1c".to_owned(), "euw1-az3".to_owned())]);
        let t: Vec<_> = r
            .instances_set
            .item
            .into_iter()
            .filter_map(|i| target(&cfg, "eu-west-1", &r.owner_id, &zones, i))
            .collect();
        // The terminated instance has no private IP: no target.
        assert_eq!(t.len(), 1);
        let t = &t[0];
        assert_eq!(t["__address__"], "192.168.1.88:9100");
        assert_eq!(t["__meta_ec2_instance_state"], "running");
        assert_eq!(t["__meta_ec2_owner_id"], "123456789012");
        assert_eq!(t["__meta_ec2_availability_zone_id"], "euw1-az3");
        assert_eq!(t["__meta_ec2_tag_Name"], "web-1");
        assert_eq!(t["__meta_ec2_tag_team_owner"], "sre");
        assert_eq!(t["__meta_ec2_subnet_id"], ",subnet-56f5f633,");
        assert_eq!(t["__meta_ec2_primary_ipv6_addresses"], ",2001:db8::1,");
        assert_eq!(t["__meta_ec2_public_ip"], "54.194.252.215");
    }

    /// IMDSv2 as the EC2 documentation describes it: a PUT for a session
    /// token, which every GET must carry; the role's name; its credentials.
    #[tokio::test]
    async fn the_instance_role_credentials_come_from_imds_and_are_cached() {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, put};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let fetched = Arc::new(AtomicUsize::new(0));
        let authorized = |h: &HeaderMap| {
            h.get("x-aws-ec2-metadata-token")
                .is_some_and(|v| v == "tok-1")
        };
        let f = fetched.clone();
        let app = axum::Router::new()
            .route(
                "/latest/api/token",
                put(|h: HeaderMap| async move {
                    if h.get("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                        return (StatusCode::BAD_REQUEST, String::new());
                    }
                    (StatusCode::OK, "tok-1".to_owned())
                }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(move |h: HeaderMap| async move {
                    if authorized(&h) { (StatusCode::OK, "scraper-role\n") } else { (StatusCode::UNAUTHORIZED, "") }
                }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/scraper-role",
                get(move |h: HeaderMap| async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    if !authorized(&h) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    let json = r#"{"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "secret", "Token": "session", "Expiration": "2099-01-01T00:00:00Z"}"#;
                    (StatusCode::OK, json.to_owned())
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let http = reqwest::Client::new();
        let creds = Credentials::new(url);
        let cfg = Ec2SdConfig {
            region: Some("eu-west-1".into()),
            ..Ec2SdConfig::default()
        };
        // (The environment must not hold credentials for this test.)
        if cfg.static_credential().is_some() {
            return;
        }
        let c = creds.get(&cfg, &http).await.unwrap();
        assert_eq!(c.key_id, "ASIAEXAMPLE");
        assert_eq!(c.token.as_deref(), Some("session"));
        creds.get(&cfg, &http).await.unwrap();
        assert_eq!(
            fetched.load(Ordering::SeqCst),
            1,
            "cached until they expire"
        );
        // Configured keys win over the role.
        let with_keys = Ec2SdConfig {
            access_key: Some("AKIA".into()),
            secret_key: Some("s".into()),
            ..cfg.clone()
        };
        assert_eq!(creds.get(&with_keys, &http).await.unwrap().key_id, "AKIA");
        // No metadata service: the error says where credentials may come from.
        let none = Credentials::new("http://127.0.0.1:1".into());
        let e = none.get(&cfg, &http).await.unwrap_err();
        assert!(e.contains("instance metadata service"), "{e}");
    }

    #[test]
    fn ec2_errors_are_quoted() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        let e = api_error(reqwest::StatusCode::UNAUTHORIZED, body);
        assert!(e.contains("AuthFailure: AWS was not able"), "{e}");
    }

    #[test]
    fn unsupported_credentials_are_refused_by_key() {
        let c = Ec2SdConfig {
            region: Some("eu-west-1".into()),
            role_arn: Some("arn:aws:iam::1:role/x".into()),
            ..Ec2SdConfig::default()
        };
        let e = c.validate("j").unwrap_err().to_string();
        assert!(e.contains("j.role_arn"), "{e}");
        let c = Ec2SdConfig {
            region: Some("eu-west-1".into()),
            access_key: Some("AKIA".into()),
            ..Ec2SdConfig::default()
        };
        assert!(
            c.validate("j")
                .unwrap_err()
                .to_string()
                .contains("secret_key")
        );
    }
}
