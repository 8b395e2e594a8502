//! The scrape manager: runs discovery for every job, turns its groups into
//! targets, keeps one loop per target of this scraper's shard, and applies
//! new configurations without stopping the loops of unchanged targets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use tiermon_model::Labels;
use tiermon_tsdb::Db;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Job, PromDuration, ScrapeConfig, ScrapeFile};
use crate::discovery::{self, TargetGroup, Update};
use crate::scrape::{self, Cmd, JobRuntime, Status};
use crate::shard::Shard;
use crate::target::{self, Outcome, Target};
use crate::{Error, Result};

/// How long a job waits for all of its providers' first answers before it
/// starts with what it has.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);

/// Runs the scrape loops of one scraper.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    shard: Shard,
    seed: Mutex<u64>,
    tx: mpsc::UnboundedSender<Update>,
    pools: Mutex<BTreeMap<String, Pool>>,
    generation: Mutex<u64>,
}

#[derive(Debug)]
struct Pool {
    job: Arc<Job>,
    runtime: watch::Sender<Arc<JobRuntime>>,
    generation: u64,
    providers: Vec<JoinHandle<()>>,
    /// Latest groups per provider; `None` until it first reports.
    groups: Vec<Option<Vec<TargetGroup>>>,
    loops: HashMap<u64, Loop>,
    dropped: Vec<Labels>,
    /// Targets refused (bad relabelling result) with the reason.
    invalid: Vec<(Labels, String)>,
    /// Set when the job is over its target_limit.
    limit_error: Option<String>,
    /// Targets discovered that another shard scrapes.
    other_shards: usize,
    synced: bool,
}

#[derive(Debug)]
struct Loop {
    target: Arc<Target>,
    status: Arc<Mutex<Status>>,
    cmd: watch::Sender<Cmd>,
    task: JoinHandle<()>,
}

impl Manager {
    /// A manager storing into `db`, scraping the share of targets `shard`
    /// assigns to this scraper. Call [`Manager::apply`] with a configuration.
    pub fn start(db: Db, shard: Shard) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let m = Manager {
            inner: Arc::new(Inner {
                db,
                shard,
                seed: Mutex::new(0),
                tx,
                pools: Mutex::new(BTreeMap::new()),
                generation: Mutex::new(0),
            }),
        };
        tokio::spawn(updates(Arc::downgrade(&m.inner), rx));
        m
    }

    /// Applies a configuration: new jobs start, removed jobs stop (their
    /// series go stale), changed jobs take their new settings; targets that
    /// are still there keep scraping throughout.
    pub fn apply(&self, file: &ScrapeFile) -> Result<()> {
        let mut jobs = Vec::with_capacity(file.scrape_configs.len());
        for i in 0..file.scrape_configs.len() {
            let job = file.job(i)?;
            let client = http_client(&job).map_err(|e| Error::Config {
                key: format!("scrape_configs[{i}].tls_config"),
                message: e,
            })?;
            jobs.push((job, client));
        }
        *self.inner.seed.lock() = {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for (k, v) in &file.global.external_labels {
                h.update(k.as_bytes());
                h.update(&[0xff]);
                h.update(v.as_bytes());
                h.update(&[0xfe]);
            }
            h.update(self.inner.shard.member().as_bytes());
            h.digest()
        };
        let mut pools = self.inner.pools.lock();
        let names: Vec<String> = jobs
            .iter()
            .map(|(j, _)| j.config.job_name.clone())
            .collect();
        let removed: Vec<String> = pools
            .keys()
            .filter(|k| !names.contains(k))
            .cloned()
            .collect();
        for name in removed {
            if let Some(pool) = pools.remove(&name) {
                pool.stop(Cmd::Gone);
            }
        }
        for (job, client) in jobs {
            let name = job.config.job_name.clone();
            let job = Arc::new(job);
            let runtime = Arc::new(JobRuntime {
                job: (*job).clone(),
                client: client.clone(),
            });
            match pools.get_mut(&name) {
                Some(pool) if *pool.job == *job => {}
                Some(pool) => {
                    let same_discovery = discovery_equal(&pool.job.config, &job.config);
                    pool.job = job.clone();
                    pool.runtime.send_replace(runtime);
                    if !same_discovery {
                        for p in pool.providers.drain(..) {
                            p.abort();
                        }
                        let generation = self.next_generation();
                        pool.generation = generation;
                        pool.groups = vec![None; provider_count(&job.config)];
                        pool.synced = false;
                        pool.providers = self.spawn_providers(&job, client, generation);
                        self.first_sync_timer(&name, generation);
                    } else {
                        // Relabelling or scrape settings changed: rebuild
                        // the targets from the groups already known.
                        self.sync(pool);
                    }
                }
                None => {
                    let generation = self.next_generation();
                    let providers = self.spawn_providers(&job, client, generation);
                    let (tx, _) = watch::channel(runtime);
                    pools.insert(
                        name.clone(),
                        Pool {
                            groups: vec![None; provider_count(&job.config)],
                            job,
                            runtime: tx,
                            generation,
                            providers,
                            loops: HashMap::new(),
                            dropped: Vec::new(),
                            invalid: Vec::new(),
                            limit_error: None,
                            other_shards: 0,
                            synced: false,
                        },
                    );
                    self.first_sync_timer(&name, generation);
                }
            }
        }
        Ok(())
    }

    /// Stops every loop without staleness markers (a restart continues the
    /// series) and waits for them to finish.
    pub async fn shutdown(&self) {
        let pools = std::mem::take(&mut *self.inner.pools.lock());
        let mut tasks = Vec::new();
        for (_, pool) in pools {
            tasks.extend(pool.stop(Cmd::Shutdown));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn next_generation(&self) -> u64 {
        let mut g = self.inner.generation.lock();
        *g += 1;
        *g
    }

    fn spawn_providers(
        &self,
        job: &Job,
        client: reqwest::Client,
        generation: u64,
    ) -> Vec<JoinHandle<()>> {
        let c = &job.config;
        let mut idx = 0;
        let mut sink = || {
            idx += 1;
            discovery::Sink {
                tx: self.inner.tx.clone(),
                job: c.job_name.clone(),
                generation,
                provider: idx - 1,
            }
        };
        // Static groups are known at once.
        sink().send(discovery::static_groups(c));
        let mut out = Vec::new();
        for f in &c.file_sd_configs {
            out.push(tokio::spawn(discovery::run_file(f.clone(), sink())));
        }
        for h in &c.http_sd_configs {
            out.push(tokio::spawn(discovery::run_http(
                h.clone(),
                client.clone(),
                sink(),
            )));
        }
        for d in &c.dns_sd_configs {
            out.push(tokio::spawn(discovery::dns::run(d.clone(), sink())));
        }
        for d in &c.consul_sd_configs {
            out.push(tokio::spawn(discovery::consul::run(d.clone(), sink())));
        }
        for d in &c.ec2_sd_configs {
            out.push(tokio::spawn(discovery::ec2::run(d.clone(), sink())));
        }
        for d in &c.kubernetes_sd_configs {
            out.push(tokio::spawn(discovery::kubernetes::run(d.clone(), sink())));
        }
        out
    }

    fn first_sync_timer(&self, job: &str, generation: u64) {
        let inner = Arc::downgrade(&self.inner);
        let job = job.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(FIRST_SYNC_WAIT).await;
            let Some(inner) = inner.upgrade() else { return };
            let m = Manager { inner };
            let mut pools = m.inner.pools.lock();
            if let Some(pool) = pools.get_mut(&job)
                && pool.generation == generation
                && !pool.synced
            {
                m.sync(pool);
            }
        });
    }

    /// Reconciles a pool's loops with its current groups.
    fn sync(&self, pool: &mut Pool) {
        pool.synced = true;
        let groups: Vec<TargetGroup> = pool.groups.iter().flatten().flatten().cloned().collect();
        let mut active: HashMap<u64, Target> = HashMap::new();
        pool.dropped.clear();
        pool.invalid.clear();
        pool.other_shards = 0;
        for o in target::build_all(&pool.job, &groups) {
            match o {
                Outcome::Active(t) => {
                    if self.inner.shard.owns(t.key) {
                        active.insert(t.key, t);
                    } else {
                        pool.other_shards += 1;
                    }
                }
                Outcome::Dropped(l) => pool.dropped.push(l),
                Outcome::Invalid(l, e) => {
                    tracing::warn!(job = %pool.job.config.job_name, labels = %l, error = %e, "target refused");
                    pool.invalid.push((l, e));
                }
            }
        }
        let limit = pool.job.target_limit;
        if limit > 0 && active.len() as u64 > limit {
            let msg = format!(
                "target_limit exceeded: {} targets, the limit is {limit}; the job is not scraped",
                active.len()
            );
            tracing::error!(job = %pool.job.config.job_name, "{msg}");
            pool.limit_error = Some(msg);
            for (_, l) in pool.loops.drain() {
                let _ = l.cmd.send(Cmd::Gone);
            }
            return;
        }
        pool.limit_error = None;
        // Same labels and URL is the same target; only a new interval or
        // timeout restarts its loop.
        let gone: Vec<u64> = pool
            .loops
            .iter()
            .filter(|(k, l)| {
                active.get(k).is_none_or(|t| {
                    (t.interval, t.timeout) != (l.target.interval, l.target.timeout)
                })
            })
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(l) = pool.loops.remove(&k) {
                let _ = l.cmd.send(Cmd::Gone);
            }
        }
        let seed = *self.inner.seed.lock();
        for (k, t) in active {
            if let Some(l) = pool.loops.get_mut(&k) {
                // Discovered labels may differ; the view shows the latest.
                if l.target.discovered != t.discovered {
                    l.target = Arc::new(t);
                }
                continue;
            }
            let target = Arc::new(t);
            let status = Arc::new(Mutex::new(Status::default()));
            let (cmd, cmd_rx) = watch::channel(Cmd::Run);
            let task = tokio::spawn(scrape::run(
                target.clone(),
                pool.runtime.subscribe(),
                self.inner.db.clone(),
                status.clone(),
                cmd_rx,
                seed,
            ));
            pool.loops.insert(
                k,
                Loop {
                    target,
                    status,
                    cmd,
                    task,
                },
            );
        }
    }

    /// The targets in Prometheus' `/api/v1/targets` shape (`data` only).
    /// `state` is `active`, `dropped` or `any` (default); `pool` limits to
    /// one job.
    /// What the targets say about their metric families, by family name:
    /// each distinct description once (`/api/v1/metadata`).
    pub fn metadata(&self) -> BTreeMap<String, Vec<crate::MetricMeta>> {
        let mut out: BTreeMap<String, Vec<crate::MetricMeta>> = BTreeMap::new();
        let pools = self.inner.pools.lock();
        for p in pools.values() {
            for l in p.loops.values() {
                let m = l.status.lock().metadata.clone();
                for (name, meta) in m.iter() {
                    let list = out.entry(name.clone()).or_default();
                    if !list.contains(meta) {
                        list.push(meta.clone());
                    }
                }
            }
        }
        out
    }

    /// Every target of every job: (active, dropped), each sorted by URL.
    pub fn targets(&self) -> (Vec<TargetView>, Vec<TargetView>) {
        let pools = self.inner.pools.lock();
        let mut active = Vec::new();
        let mut dropped = Vec::new();
        for (name, p) in pools.iter() {
            let mut loops: Vec<&Loop> = p.loops.values().collect();
            loops.sort_by(|a, b| a.target.url.as_str().cmp(b.target.url.as_str()));
            for l in loops {
                active.push(TargetView {
                    pool: name.clone(),
                    discovered: l.target.discovered.clone(),
                    labels: l.target.labels.clone(),
                    url: l.target.url.to_string(),
                    interval: l.target.interval,
                    timeout: l.target.timeout,
                    status: Some(l.status.lock().clone()),
                    error: String::new(),
                });
            }
            let refused = p.invalid.iter().map(|(l, e)| (l, e.clone()));
            for (l, error) in p.dropped.iter().map(|l| (l, String::new())).chain(refused) {
                dropped.push(TargetView {
                    pool: name.clone(),
                    discovered: l.clone(),
                    labels: Labels::default(),
                    url: String::new(),
                    interval: Duration::ZERO,
                    timeout: Duration::ZERO,
                    status: None,
                    error,
                });
            }
        }
        (active, dropped)
    }

    /// `/api/v1/targets` data, in Prometheus' shape.
    pub fn targets_json(&self, state: Option<&str>, pool: Option<&str>) -> Json {
        let want_active = matches!(state, None | Some("any" | "active" | ""));
        let want_dropped = matches!(state, None | Some("any" | "dropped" | ""));
        let (all_active, all_dropped) = self.targets();
        let ours = |t: &TargetView| pool.is_none_or(|x| x == t.pool);
        let active: Vec<Json> = all_active
            .iter()
            .filter(|t| want_active && ours(t))
            .map(|t| {
                let s = t.status.clone().unwrap_or_default();
                json!({
                    "discoveredLabels": labels_json(&t.discovered),
                    "labels": labels_json(&t.labels),
                    "scrapePool": t.pool,
                    "scrapeUrl": t.url,
                    "globalUrl": t.url,
                    "lastError": s.last_error,
                    "lastScrape": rfc3339(s.last_scrape_ms),
                    "lastScrapeDuration": s.last_duration.as_secs_f64(),
                    "health": s.health.as_str(),
                    "scrapeInterval": PromDuration(t.interval).to_string(),
                    "scrapeTimeout": PromDuration(t.timeout).to_string(),
                })
            })
            .collect();
        let dropped: Vec<Json> = all_dropped
            .iter()
            .filter(|t| want_dropped && ours(t))
            .map(|t| {
                if t.error.is_empty() {
                    json!({ "discoveredLabels": labels_json(&t.discovered) })
                } else {
                    json!({ "discoveredLabels": labels_json(&t.discovered), "error": t.error })
                }
            })
            .collect();
        let mut data = serde_json::Map::new();
        if want_active {
            data.insert("activeTargets".into(), Json::Array(active));
        }
        if want_dropped {
            data.insert("droppedTargets".into(), Json::Array(dropped));
        }
        Json::Object(data)
    }

    /// Per-job counts and errors, for the targets page and self-metrics.
    pub fn pools(&self) -> Vec<PoolSummary> {
        self.inner
            .pools
            .lock()
            .iter()
            .map(|(name, p)| {
                let mut up = 0;
                let mut down = 0;
                for l in p.loops.values() {
                    match l.status.lock().health {
                        scrape::Health::Up => up += 1,
                        scrape::Health::Down => down += 1,
                        scrape::Health::Unknown => {}
                    }
                }
                PoolSummary {
                    job: name.clone(),
                    active: p.loops.len(),
                    up,
                    down,
                    dropped: p.dropped.len() + p.invalid.len(),
                    other_shards: p.other_shards,
                    error: p.limit_error.clone(),
                }
            })
            .collect()
    }
}

/// A target as the targets views show it.
#[derive(Debug, Clone)]
pub struct TargetView {
    /// The job.
    pub pool: String,
    /// Labels before relabelling (with the `__meta_*` ones).
    pub discovered: Labels,
    /// Labels after relabelling; empty for a dropped target.
    pub labels: Labels,
    /// The scrape URL; empty for a dropped target.
    pub url: String,
    /// Scrape interval and timeout (zero for a dropped target).
    pub interval: Duration,
    /// Scrape timeout.
    pub timeout: Duration,
    /// The last scrape; `None` for a dropped target.
    pub status: Option<Status>,
    /// Why a dropped target was refused (empty: dropped by relabelling).
    pub error: String,
}

/// A job's targets at a glance.
#[derive(Debug, Clone)]
pub struct PoolSummary {
    /// Job name.
    pub job: String,
    /// Targets scraped here.
    pub active: usize,
    /// Of which up.
    pub up: usize,
    /// Of which down.
    pub down: usize,
    /// Dropped by relabelling or refused.
    pub dropped: usize,
    /// Discovered but scraped by another shard.
    pub other_shards: usize,
    /// Why the job is not scraped, if it is not.
    pub error: Option<String>,
}

impl Pool {
    fn stop(self, how: Cmd) -> Vec<JoinHandle<()>> {
        for p in self.providers {
            p.abort();
        }
        self.loops
            .into_values()
            .map(|l| {
                let _ = l.cmd.send(how);
                l.task
            })
            .collect()
    }
}

async fn updates(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Update>) {
    while let Some(u) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let m = Manager { inner };
        let mut pools = m.inner.pools.lock();
        let Some(pool) = pools.get_mut(&u.job) else {
            continue;
        };
        if pool.generation != u.generation || u.provider >= pool.groups.len() {
            continue;
        }
        pool.groups[u.provider] = Some(u.groups);
        if pool.synced || pool.groups.iter().all(Option::is_some) {
            m.sync(pool);
        }
    }
}

fn provider_count(c: &ScrapeConfig) -> usize {
    1 + c.file_sd_configs.len()
        + c.http_sd_configs.len()
        + c.dns_sd_configs.len()
        + c.consul_sd_configs.len()
        + c.ec2_sd_configs.len()
        + c.kubernetes_sd_configs.len()
}

fn discovery_equal(a: &ScrapeConfig, b: &ScrapeConfig) -> bool {
    a.static_configs == b.static_configs
        && a.file_sd_configs == b.file_sd_configs
        && a.http_sd_configs == b.http_sd_configs
        && a.dns_sd_configs == b.dns_sd_configs
        && a.consul_sd_configs == b.consul_sd_configs
        && a.ec2_sd_configs == b.ec2_sd_configs
        && a.kubernetes_sd_configs == b.kubernetes_sd_configs
}

fn http_client(job: &Job) -> std::result::Result<reqwest::Client, String> {
    let mut b = crate::client::builder(job.config.tls_config.as_ref())?
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(job.interval.saturating_mul(2).max(Duration::from_secs(90)))
        .connect_timeout(job.timeout);
    if !job.compression {
        b = b.no_gzip();
    }
    if job.config.follow_redirects == Some(false) {
        b = b.redirect(reqwest::redirect::Policy::none());
    }
    b.build().map_err(|e| e.to_string())
}

fn labels_json(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|l| (l.name.to_string(), Json::String(l.value.to_string())))
            .collect(),
    )
}

/// Prometheus' time of a target never scraped, else RFC 3339.
fn rfc3339(ms: i64) -> String {
    if ms == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    tiermon_model::rfc3339(ms)
}
