//! DNS service discovery (`dns_sd_configs`): SRV, A, AAAA, MX or NS records
//! of the listed names, re-resolved every `refresh_interval`, with
//! Prometheus' `__meta_dns_*` labels.
//!
//! The name servers, search domains, `ndots`, `timeout` and `attempts` are
//! those of `/etc/resolv.conf` (read again at each refresh), or of the file
//! named by `TIERMON_RESOLV_CONF` (for a secondary that must ask other
//! servers than its host's). Queries go over UDP, and again over TCP when
//! the answer is truncated; names are tried with the search domains as Go's
//! resolver (and so Prometheus) does. A name that does not exist gives an
//! empty group; any other failure keeps the last good targets.
//!
//! Messages are encoded and decoded by the `simple-dns` crate; the small
//! transport is ours (a full resolver library brought a second RocksDB
//! build through feature unification, for nothing tiermon needs).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Sink, TargetGroup, host_port, run_polling};
use crate::config::PromDuration;
use crate::{Error, Result};

/// `dns_sd_configs` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSdConfig {
    /// The names to look up.
    pub names: Vec<String>,
    /// The record type.
    #[serde(rename = "type")]
    pub kind: DnsType,
    /// The port of every target, for every type but SRV.
    pub port: Option<u16>,
    /// How often the names are resolved again.
    pub refresh_interval: PromDuration,
}

impl Default for DnsSdConfig {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            kind: DnsType::Srv,
            port: None,
            refresh_interval: PromDuration(Duration::from_secs(30)),
        }
    }
}

/// The record types DNS discovery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DnsType {
    /// Service records: each names a host and a port.
    #[serde(rename = "SRV")]
    Srv,
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    #[serde(rename = "AAAA")]
    Aaaa,
    /// Mail exchangers.
    #[serde(rename = "MX")]
    Mx,
    /// Name servers.
    #[serde(rename = "NS")]
    Ns,
}

impl DnsSdConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        if self.names.is_empty() {
            return Err(Error::config(format!("{key}.names"), "no names listed"));
        }
        if self.kind != DnsType::Srv && self.port.is_none_or(|p| p == 0) {
            return Err(Error::config(
                format!("{key}.port"),
                "a port is required for every record type but SRV",
            ));
        }
        Ok(())
    }
}

/// Where the name servers are listed.
fn resolv_conf_path() -> String {
    std::env::var("TIERMON_RESOLV_CONF").unwrap_or_else(|_| "/etc/resolv.conf".into())
}

/// A stub resolver: what resolv.conf says.
#[derive(Debug, Clone)]
pub(crate) struct Resolver {
    servers: Vec<SocketAddr>,
    search: Vec<String>,
    ndots: usize,
    timeout: Duration,
    attempts: u32,
}

/// A record discovery uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Srv { target: String, port: u16 },
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(String),
    Ns(String),
}

impl Resolver {
    /// The resolver `resolv.conf` text describes.
    pub(crate) fn from_resolv_conf(text: &[u8]) -> std::result::Result<Self, String> {
        let c = resolv_conf::Config::parse(text).map_err(|e| e.to_string())?;
        let servers: Vec<SocketAddr> = c
            .nameservers
            .iter()
            .map(|ip| SocketAddr::new(IpAddr::from(ip.clone()), 53))
            .collect();
        if servers.is_empty() {
            return Err("no nameserver listed".into());
        }
        Ok(Resolver {
            servers,
            search: c
                .get_last_search_or_domain()
                .filter(|d| *d != "--")
                .map(|d| d.trim_end_matches('.').to_owned())
                .collect(),
            ndots: c.ndots as usize,
            timeout: Duration::from_secs(u64::from(c.timeout.clamp(1, 30))),
            attempts: c.attempts.clamp(1, 5),
        })
    }

    /// A resolver asking exactly these servers, with no search domains.
    #[cfg(test)]
    pub(crate) fn with_servers(servers: Vec<SocketAddr>) -> Self {
        Resolver {
            servers,
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }

    fn system() -> std::result::Result<Self, String> {
        let path = resolv_conf_path();
        let text = std::fs::read(&path).map_err(|e| format!("reading {path}: {e}"))?;
        Self::from_resolv_conf(&text).map_err(|e| format!("{path}: {e}"))
    }

    /// The names to try for `name`, in order (Go's `nameList`).
    fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(abs) = name.strip_suffix('.') {
            return vec![abs.to_owned()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_owned()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_owned())).collect()
        }
    }

    /// The records of type `ty` for `name`; empty when the name (with every
    /// search domain) does not exist or has none.
    pub(crate) async fn lookup(
        &self,
        name: &str,
        ty: TYPE,
    ) -> std::result::Result<Vec<Record>, String> {
        let mut failure = None;
        for candidate in self.candidates(name) {
            match self.query(&candidate, ty).await {
                Ok(Some(records)) if !records.is_empty() => return Ok(records),
                Ok(_) => {}
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Vec::new()),
        }
    }

    /// One name at every server in turn; `None` when it does not exist.
    async fn query(
        &self,
        name: &str,
        ty: TYPE,
    ) -> std::result::Result<Option<Vec<Record>>, String> {
        let id: u16 = rand::random();
        let mut q = Packet::new_query(id);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        let qname = Name::new(name).map_err(|e| format!("{name:?}: {e}"))?;
        q.questions.push(Question::new(
            qname,
            QTYPE::TYPE(ty),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let wire = q.build_bytes_vec().map_err(|e| format!("{name:?}: {e}"))?;
        let mut last = String::new();
        for _ in 0..self.attempts {
            for &server in &self.servers {
                let answer = match exchange(server, &wire, id, self.timeout).await {
                    Ok(a) => a,
                    Err(e) => {
                        last = format!("{server}: {e}");
                        continue;
                    }
                };
                let p = match Packet::parse(&answer) {
                    Ok(p) => p,
                    Err(e) => {
                        last = format!("{server}: bad answer: {e}");
                        continue;
                    }
                };
                match p.rcode() {
                    RCODE::NoError => return Ok(Some(records(&p, ty))),
                    RCODE::NameError => return Ok(None),
                    other => last = format!("{server}: {other:?} for {name}"),
                }
            }
        }
        Err(last)
    }
}

/// One query and its answer: UDP, then TCP when the answer is truncated.
async fn exchange(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    timeout: Duration,
) -> std::result::Result<Vec<u8>, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(wire).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_535];
    let answer = tokio::time::timeout(timeout, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            // Not ours (a late answer to an earlier query): keep waiting.
            if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Ok::<_, std::io::Error>(buf[..n].to_vec());
            }
        }
    })
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))?
    .map_err(|e| e.to_string())?;
    let truncated = answer.get(2).is_some_and(|b| b & 0x02 != 0);
    if !truncated {
        return Ok(answer);
    }
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        let len = u16::try_from(wire.len()).unwrap_or(u16::MAX);
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(wire).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut out = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|_| format!("no answer over TCP within {timeout:?}"))?
    .map_err(|e| format!("over TCP: {e}"))
}

/// The answers of the asked type (CNAMEs on the way are skipped).
fn records(p: &Packet<'_>, ty: TYPE) -> Vec<Record> {
    let name = |n: &Name<'_>| format!("{n}.");
    p.answers
        .iter()
        .filter_map(|rr| match (&rr.rdata, ty) {
            (RData::SRV(s), TYPE::SRV) => Some(Record::Srv {
                target: name(&s.target),
                port: s.port,
            }),
            (RData::A(a), TYPE::A) => Some(Record::A(Ipv4Addr::from(a.address))),
            (RData::AAAA(a), TYPE::AAAA) => Some(Record::Aaaa(Ipv6Addr::from(a.address))),
            (RData::MX(m), TYPE::MX) => Some(Record::Mx(name(&m.exchange))),
            (RData::NS(n), TYPE::NS) => Some(Record::Ns(name(&n.0))),
            _ => None,
        })
        .collect()
}

/// Host names of targets, resolved with the same servers as discovery
/// when `TIERMON_RESOLV_CONF` names them, then by the C library's resolver
/// for names DNS does not know (`localhost`, `/etc/hosts`). Without
/// `TIERMON_RESOLV_CONF`, only the C library's resolver is used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostResolver;

impl HostResolver {
    /// Set when `TIERMON_RESOLV_CONF` is.
    pub(crate) fn configured() -> Option<Self> {
        std::env::var_os("TIERMON_RESOLV_CONF").map(|_| HostResolver)
    }

    /// The addresses of `host`.
    pub(crate) async fn resolve(host: &str) -> std::result::Result<Vec<IpAddr>, String> {
        let r = Resolver::system()?;
        let mut addrs = Vec::new();
        for ty in [TYPE::A, TYPE::AAAA] {
            for rec in r.lookup(host, ty).await.unwrap_or_default() {
                match rec {
                    Record::A(a) => addrs.push(a.into()),
                    Record::Aaaa(a) => addrs.push(a.into()),
                    _ => {}
                }
            }
            if !addrs.is_empty() {
                return Ok(addrs);
            }
        }
        // Not in DNS: `/etc/hosts` and the rest of the C library's
        // sources (so `localhost` still works).
        Ok(tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("no address for {host}: {e}"))?
            .map(|a| a.ip())
            .collect())
    }
}

impl reqwest::dns::Resolve for HostResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = HostResolver::resolve(&host)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub(crate) async fn run(cfg: DnsSdConfig, sink: Sink) {
    let what = format!("dns_sd {:?}", cfg.names);
    let every = cfg.refresh_interval.0;
    run_polling(what, every, sink, || async {
        let r = Resolver::system()?;
        resolve(&r, &cfg).await
    })
    .await
}

/// One group per name, as Prometheus makes them.
pub(crate) async fn resolve(
    r: &Resolver,
    cfg: &DnsSdConfig,
) -> std::result::Result<Vec<TargetGroup>, String> {
    let ty = match cfg.kind {
        DnsType::Srv => TYPE::SRV,
        DnsType::A => TYPE::A,
        DnsType::Aaaa => TYPE::AAAA,
        DnsType::Mx => TYPE::MX,
        DnsType::Ns => TYPE::NS,
    };
    let port = cfg.port.unwrap_or(0);
    let mut out = Vec::with_capacity(cfg.names.len());
    for name in &cfg.names {
        let records = r
            .lookup(name, ty)
            .await
            .map_err(|e| format!("looking up {ty:?} {name}: {e}"))?;
        let mut targets = Vec::with_capacity(records.len());
        for rec in records {
            let mut t = BTreeMap::from([("__meta_dns_name".to_owned(), name.clone())]);
            let addr = match rec {
                Record::Srv { target, port } => {
                    let addr = host_port(target.trim_end_matches('.'), port);
                    t.insert("__meta_dns_srv_record_target".into(), target);
                    t.insert("__meta_dns_srv_record_port".into(), port.to_string());
                    addr
                }
                Record::A(a) => host_port(&a.to_string(), port),
                Record::Aaaa(a) => host_port(&a.to_string(), port),
                Record::Mx(target) => {
                    let addr = host_port(target.trim_end_matches('.'), port);
                    t.insert("__meta_dns_mx_record_target".into(), target);
                    addr
                }
                Record::Ns(target) => {
                    let addr = host_port(target.trim_end_matches('.'), port);
                    t.insert("__meta_dns_ns_record_target".into(), target);
                    addr
                }
            };
            t.insert("__address__".into(), addr);
            targets.push(t);
        }
        out.push(TargetGroup {
            source: name.clone(),
            targets,
            labels: BTreeMap::new(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_needed_but_for_srv() {
        let mut c = DnsSdConfig {
            names: vec!["x.example".into()],
            ..DnsSdConfig::default()
        };
        c.validate("k").unwrap();
        c.kind = DnsType::A;
        let e = c.validate("k").unwrap_err().to_string();
        assert!(e.contains("k.port"), "{e}");
        c.port = Some(9100);
        c.validate("k").unwrap();
        c.names.clear();
        assert!(c.validate("k").unwrap_err().to_string().contains("k.names"));
    }

    #[test]
    fn resolv_conf_and_the_search_path() {
        let r = Resolver::from_resolv_conf(
            b"# x\nnameserver 127.0.0.53\nsearch dc1.example example\noptions ndots:2 timeout:3 attempts:4\n",
        )
        .unwrap();
        assert_eq!(r.servers, ["127.0.0.53:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert_eq!(r.attempts, 4);
        // Fewer dots than ndots: the search domains first.
        assert_eq!(
            r.candidates("web"),
            ["web.dc1.example", "web.example", "web"]
        );
        assert_eq!(
            r.candidates("a.b.c"),
            ["a.b.c", "a.b.c.dc1.example", "a.b.c.example"]
        );
        assert_eq!(r.candidates("abs.example."), ["abs.example"]);
        assert!(Resolver::from_resolv_conf(b"search x\n").is_err());
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_an_error_not_an_empty_set() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut r = Resolver::with_servers(vec![silent.local_addr().unwrap()]);
        r.timeout = Duration::from_millis(200);
        r.attempts = 1;
        let cfg = DnsSdConfig {
            names: vec!["x.example.".into()],
            ..DnsSdConfig::default()
        };
        let e = resolve(&r, &cfg).await.unwrap_err();
        assert!(e.contains("no answer"), "{e}");
    }
}
