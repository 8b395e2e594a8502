//! Watched critical processes: up, instances, restarts, CPU, memory, file
//! descriptors and threads, by process name, command-line pattern or
//! pidfile.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use procfs_core::FromRead;
use regex::Regex;
use tiermon_config::ProcessWatch;

use crate::out::Out;
use crate::{Ctx, Error, Result};

/// Tracks the configured processes between scrapes (to count restarts).
#[derive(Debug)]
pub(crate) struct Watcher {
    watches: Vec<Watch>,
    state: Mutex<HashMap<String, State>>,
}

#[derive(Debug)]
struct Watch {
    name: String,
    sel: Selector,
}

#[derive(Debug)]
enum Selector {
    Comm(String),
    Cmdline(Regex),
    Pidfile(PathBuf),
}

#[derive(Debug, Default)]
struct State {
    /// (pid, start time in ticks) of the instances seen last time.
    known: HashSet<(i32, u64)>,
    restarts: u64,
}

#[derive(Default)]
struct Totals {
    instances: u64,
    user: f64,
    system: f64,
    rss: f64,
    fds: f64,
    threads: f64,
    newest_start: f64,
    ids: HashSet<(i32, u64)>,
}

impl Watcher {
    pub(crate) fn new(watches: &[ProcessWatch]) -> Result<Self> {
        let mut out = Vec::new();
        for (i, w) in watches.iter().enumerate() {
            let sel = if let Some(c) = &w.comm {
                // The kernel keeps 15 bytes of the name.
                Selector::Comm(c.chars().take(15).collect())
            } else if let Some(re) = &w.cmdline {
                Selector::Cmdline(Regex::new(re).map_err(|e| Error::Regex {
                    key: format!("agent.processes[{i}].cmdline"),
                    source: Box::new(e),
                })?)
            } else if let Some(p) = &w.pidfile {
                Selector::Pidfile(p.clone())
            } else {
                return Err(Error::Parse {
                    path: PathBuf::from("<config>"),
                    message: format!("agent.processes[{i}] selects no process"),
                });
            };
            out.push(Watch {
                name: w.name.clone(),
                sel,
            });
        }
        Ok(Self {
            watches: out,
            state: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn collect(&self, ctx: &Ctx, out: &mut Out) -> Result<()> {
        if self.watches.is_empty() {
            return Ok(());
        }
        let boot = boot_time(ctx)?;
        let pids = list_pids(&ctx.procfs)?;
        let mut comms: HashMap<i32, Option<String>> = HashMap::new();
        let mut cmdlines: HashMap<i32, Option<String>> = HashMap::new();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for w in &self.watches {
            let matched: Vec<i32> = match &w.sel {
                Selector::Comm(c) => pids
                    .iter()
                    .copied()
                    .filter(|&pid| {
                        comms
                            .entry(pid)
                            .or_insert_with(|| {
                                std::fs::read_to_string(ctx.procfs.join(format!("{pid}/comm")))
                                    .ok()
                                    .map(|s| s.trim_end().to_owned())
                            })
                            .as_deref()
                            == Some(c.as_str())
                    })
                    .collect(),
                Selector::Cmdline(re) => pids
                    .iter()
                    .copied()
                    .filter(|&pid| {
                        cmdlines
                            .entry(pid)
                            .or_insert_with(|| read_cmdline(&ctx.procfs, pid))
                            .as_deref()
                            .is_some_and(|cl| re.is_match(cl))
                    })
                    .collect(),
                Selector::Pidfile(p) => std::fs::read_to_string(p)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .filter(|pid| ctx.procfs.join(pid.to_string()).is_dir())
                    .into_iter()
                    .collect(),
            };
            let mut t = Totals::default();
            for pid in matched {
                // A process may exit between listing and reading: skip it.
                let Ok(f) = std::fs::File::open(ctx.procfs.join(format!("{pid}/stat"))) else {
                    continue;
                };
                let Ok(st) = procfs_core::process::Stat::from_read(f) else {
                    continue;
                };
                let tick = ctx.ticks as f64;
                t.instances += 1;
                t.user += st.utime as f64 / tick;
                t.system += st.stime as f64 / tick;
                t.rss += st.rss as f64 * ctx.page_size as f64;
                t.threads += st.num_threads as f64;
                t.newest_start = t.newest_start.max(boot + st.starttime as f64 / tick);
                t.fds += std::fs::read_dir(ctx.procfs.join(format!("{pid}/fd")))
                    .map(|d| d.count() as f64)
                    .unwrap_or(0.0);
                t.ids.insert((pid, st.starttime));
            }
            let s = state.entry(w.name.clone()).or_insert_with(|| State {
                known: t.ids.clone(),
                restarts: 0,
            });
            // A new (pid, start time) is an instance that (re)started since
            // the last scrape; the first scrape only learns what runs.
            s.restarts += t.ids.difference(&s.known).count() as u64;
            s.known = t.ids.clone();
            let l = [("name", w.name.as_str())];
            out.gauge(
                "tiermon_process_up",
                "Whether at least one instance of the watched process runs.",
                &l,
                if t.instances > 0 { 1.0 } else { 0.0 },
            );
            out.gauge(
                "tiermon_process_instances",
                "Number of running instances of the watched process.",
                &l,
                t.instances as f64,
            );
            out.counter(
                "tiermon_process_restarts_total",
                "Instances of the watched process that started since the agent first saw it.",
                &l,
                s.restarts as f64,
            );
            for (mode, v) in [("user", t.user), ("system", t.system)] {
                out.counter(
                    "tiermon_process_cpu_seconds_total",
                    "CPU time of the watched process's instances.",
                    &[("name", &w.name), ("mode", mode)],
                    v,
                );
            }
            out.gauge(
                "tiermon_process_resident_memory_bytes",
                "Resident memory of the watched process's instances.",
                &l,
                t.rss,
            );
            out.gauge(
                "tiermon_process_open_fds",
                "Open file descriptors of the watched process's instances.",
                &l,
                t.fds,
            );
            out.gauge(
                "tiermon_process_threads",
                "Threads of the watched process's instances.",
                &l,
                t.threads,
            );
            if t.instances > 0 {
                out.gauge(
                    "tiermon_process_start_time_seconds",
                    "Start time of the newest instance, in unixtime.",
                    &l,
                    t.newest_start,
                );
            }
        }
        Ok(())
    }
}

fn list_pids(procfs: &Path) -> Result<Vec<i32>> {
    let rd = std::fs::read_dir(procfs).map_err(|e| Error::io(procfs, e))?;
    Ok(rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

fn read_cmdline(procfs: &Path, pid: i32) -> Option<String> {
    let raw = std::fs::read(procfs.join(format!("{pid}/cmdline"))).ok()?;
    let s = String::from_utf8_lossy(&raw);
    Some(s.trim_end_matches('\0').replace('\0', " "))
}

fn boot_time(ctx: &Ctx) -> Result<f64> {
    let path = ctx.procfs.join("stat");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::Parse {
            path,
            message: "no btime line".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(
        name: &str,
        comm: Option<&str>,
        cmdline: Option<&str>,
        pidfile: Option<PathBuf>,
    ) -> ProcessWatch {
        ProcessWatch {
            name: name.into(),
            comm: comm.map(Into::into),
            cmdline: cmdline.map(Into::into),
            pidfile,
        }
    }

    fn proc_dir(dir: &Path, pid: i32, comm: &str, cmdline: &str, start: u64) {
        let p = dir.join(pid.to_string());
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(p.join("cmdline"), cmdline.replace(' ', "\0") + "\0").unwrap();
        for i in 0..3 {
            std::fs::write(p.join("fd").join(i.to_string()), "").unwrap();
        }
        std::fs::write(
            p.join("stat"),
            format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 200 100 0 0 20 0 4 0 {start} 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"),
        )
        .unwrap();
    }

    fn sample(out: Out, name: &str, watch: &str) -> Option<f64> {
        out.into_families()
            .iter()
            .flat_map(|f| f.samples.clone())
            .find(|s| s.name == name && s.labels.iter().any(|(n, v)| n == "name" && v == watch))
            .map(|s| s.value)
    }

    #[test]
    fn up_instances_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), "cpu 1 1 1 1\nbtime 1000\n").unwrap();
        proc_dir(dir.path(), 10, "nginx", "nginx: master process", 500);
        proc_dir(dir.path(), 11, "nginx", "nginx: worker process", 600);
        proc_dir(
            dir.path(),
            20,
            "python3",
            "python3 /srv/api_server.py --port 80",
            700,
        );
        std::fs::write(dir.path().join("api.pid"), "20\n").unwrap();
        let cfg = tiermon_config::AgentConfig {
            procfs: dir.path().to_owned(),
            ..Default::default()
        };
        let ctx = Ctx::new(&cfg).unwrap();
        let w = Watcher::new(&[
            watch("web", Some("nginx"), None, None),
            watch("api", None, Some("api_server\\.py"), None),
            watch("api-pid", None, None, Some(dir.path().join("api.pid"))),
            watch("absent", Some("postgres"), None, None),
        ])
        .unwrap();
        let run = || {
            let mut o = Out::default();
            w.collect(&ctx, &mut o).unwrap();
            o
        };
        assert_eq!(sample(run(), "tiermon_process_instances", "web"), Some(2.0));
        assert_eq!(sample(run(), "tiermon_process_up", "api"), Some(1.0));
        assert_eq!(
            sample(run(), "tiermon_process_open_fds", "api-pid"),
            Some(3.0)
        );
        assert_eq!(sample(run(), "tiermon_process_up", "absent"), Some(0.0));
        let t = ctx.ticks as f64;
        assert_eq!(
            sample(run(), "tiermon_process_start_time_seconds", "api"),
            Some(1000.0 + 700.0 / t)
        );
        assert_eq!(
            sample(run(), "tiermon_process_restarts_total", "api"),
            Some(0.0)
        );

        // The API crashes: down, no restart yet.
        std::fs::remove_dir_all(dir.path().join("20")).unwrap();
        assert_eq!(sample(run(), "tiermon_process_up", "api"), Some(0.0));
        assert_eq!(sample(run(), "tiermon_process_up", "api-pid"), Some(0.0));
        // It comes back with a new pid and start time: one restart.
        proc_dir(
            dir.path(),
            21,
            "python3",
            "python3 /srv/api_server.py --port 80",
            900,
        );
        assert_eq!(
            sample(run(), "tiermon_process_restarts_total", "api"),
            Some(1.0)
        );
        assert_eq!(
            sample(run(), "tiermon_process_restarts_total", "api"),
            Some(1.0),
            "counted once"
        );
        // Same pid reused with a different start time is a restart too.
        proc_dir(
            dir.path(),
            21,
            "python3",
            "python3 /srv/api_server.py --port 80",
            950,
        );
        assert_eq!(
            sample(run(), "tiermon_process_restarts_total", "api"),
            Some(2.0)
        );
    }
}
