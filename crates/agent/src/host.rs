//! Host health from /proc and /sys, with node_exporter's metric names so
//! that existing dashboards and alert rules (node-mixin) work unchanged.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use procfs_core::{ExplicitSystemInfo, FromBufRead, FromBufReadSI, FromRead};

use crate::out::Out;
use crate::{Ctx, Error, Result};

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| Error::io(path, e))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn system_info(ctx: &Ctx) -> ExplicitSystemInfo {
    ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: ctx.ticks,
        page_size: ctx.page_size,
        is_little_endian: cfg!(target_endian = "little"),
    }
}

/// CPU time per cpu and mode, context switches, forks, boot time, running
/// and blocked processes: /proc/stat.
pub(crate) fn stat(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let path = ctx.procfs.join("stat");
    let ks = procfs_core::KernelStats::from_buf_read(open(&path)?, &system_info(ctx))
        .map_err(|e| Error::parse(&path, e))?;
    let t = ctx.ticks as f64;
    for (i, c) in ks.cpu_time.iter().enumerate() {
        let cpu = i.to_string();
        let modes = [
            ("user", Some(c.user)),
            ("nice", Some(c.nice)),
            ("system", Some(c.system)),
            ("idle", Some(c.idle)),
            ("iowait", c.iowait),
            ("irq", c.irq),
            ("softirq", c.softirq),
            ("steal", c.steal),
        ];
        for (mode, v) in modes {
            if let Some(v) = v {
                out.counter(
                    "node_cpu_seconds_total",
                    "Seconds the CPUs spent in each mode.",
                    &[("cpu", &cpu), ("mode", mode)],
                    v as f64 / t,
                );
            }
        }
        for (mode, v) in [("user", c.guest), ("nice", c.guest_nice)] {
            if let Some(v) = v {
                out.counter(
                    "node_cpu_guest_seconds_total",
                    "Seconds the CPUs spent in guests (VMs) for each mode.",
                    &[("cpu", &cpu), ("mode", mode)],
                    v as f64 / t,
                );
            }
        }
    }
    out.counter(
        "node_context_switches_total",
        "Total number of context switches.",
        &[],
        ks.ctxt as f64,
    );
    out.counter(
        "node_forks_total",
        "Total number of forks.",
        &[],
        ks.processes as f64,
    );
    out.gauge(
        "node_boot_time_seconds",
        "Node boot time, in unixtime.",
        &[],
        ks.btime as f64,
    );
    if let Some(r) = ks.procs_running {
        out.gauge(
            "node_procs_running",
            "Number of processes in runnable state.",
            &[],
            f64::from(r),
        );
    }
    if let Some(b) = ks.procs_blocked {
        out.gauge(
            "node_procs_blocked",
            "Number of processes blocked waiting for I/O to complete.",
            &[],
            f64::from(b),
        );
    }
    Ok(())
}

/// Every field of /proc/meminfo, as `node_memory_<field>_bytes` with the
/// field in snake case (`MemTotal` → `node_memory_mem_total_bytes`), or
/// `node_memory_<field>_pages` for page counts (`HugePages_Total`).
///
/// node_exporter keeps the kernel's CamelCase (`node_memory_MemTotal_bytes`),
/// which Prometheus' own linter (`promtool check metrics`) rejects; tiermon
/// follows the linter.
pub(crate) fn meminfo(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let path = ctx.procfs.join("meminfo");
    let text = read(&path)?;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(v) = parts.next().and_then(|v| v.parse::<f64>().ok()) else {
            return Err(Error::Parse {
                path: path.clone(),
                message: format!("no number in line {line:?}"),
            });
        };
        let field = meminfo_field(key);
        match parts.next() {
            Some("kB") => out.gauge(
                &format!("node_memory_{field}_bytes"),
                &format!("Memory information field {key}."),
                &[],
                v * 1024.0,
            ),
            _ => out.gauge(
                &format!("node_memory_{field}_pages"),
                &format!("Memory information field {key}."),
                &[],
                v,
            ),
        }
    }
    Ok(())
}

/// A meminfo key in snake case, spelling out the kernel's abbreviations
/// that the linter would flag as abbreviated units (`SReclaimable`,
/// `DirectMap2M`).
fn meminfo_field(key: &str) -> String {
    use heck::ToSnakeCase;
    if let Some(size) = key.strip_prefix("DirectMap") {
        return format!("direct_map_{}", size.to_lowercase());
    }
    let key = match key {
        "SReclaimable" => "SlabReclaimable",
        "SUnreclaim" => "SlabUnreclaimable",
        "SecPageTables" => "SecondaryPageTables",
        k => k,
    };
    // Any other one-letter word joins the word before it.
    let snake = key.to_snake_case();
    let mut out = String::with_capacity(snake.len());
    for (i, w) in snake.split('_').enumerate() {
        if i > 0 && w.len() > 1 {
            out.push('_');
        }
        out.push_str(w);
    }
    out
}

/// Load averages: /proc/loadavg.
pub(crate) fn loadavg(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let path = ctx.procfs.join("loadavg");
    let l =
        procfs_core::LoadAverage::from_read(open(&path)?).map_err(|e| Error::parse(&path, e))?;
    out.gauge("node_load1", "1m load average.", &[], f64::from(l.one));
    out.gauge("node_load5", "5m load average.", &[], f64::from(l.five));
    out.gauge(
        "node_load15",
        "15m load average.",
        &[],
        f64::from(l.fifteen),
    );
    Ok(())
}

/// Allocated and maximum file handles: /proc/sys/fs/file-nr.
pub(crate) fn filefd(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let path = ctx.procfs.join("sys/fs/file-nr");
    let text = read(&path)?;
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [allocated, _, max] = f[..] else {
        return Err(Error::Parse {
            path,
            message: format!("expected three numbers, found {text:?}"),
        });
    };
    out.gauge(
        "node_filefd_allocated",
        "File descriptor statistics: allocated.",
        &[],
        allocated,
    );
    out.gauge(
        "node_filefd_maximum",
        "File descriptor statistics: maximum.",
        &[],
        max,
    );
    Ok(())
}

/// Pressure-stall information, where the kernel has it (/proc/pressure).
pub(crate) fn pressure(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let dir = ctx.procfs.join("pressure");
    if !dir.exists() {
        return Ok(());
    }
    let secs = |us: u64| us as f64 / 1e6;
    let p = dir.join("cpu");
    if let Ok(r) = File::open(&p) {
        let c = procfs_core::CpuPressure::from_buf_read(BufReader::new(r))
            .map_err(|e| Error::parse(&p, e))?;
        out.counter(
            "node_pressure_cpu_waiting_seconds_total",
            "Total time in seconds that processes have waited for CPU time.",
            &[],
            secs(c.some.total),
        );
    }
    let p = dir.join("memory");
    if let Ok(r) = File::open(&p) {
        let m = procfs_core::MemoryPressure::from_buf_read(BufReader::new(r))
            .map_err(|e| Error::parse(&p, e))?;
        out.counter(
            "node_pressure_memory_waiting_seconds_total",
            "Total time in seconds that processes have waited for memory.",
            &[],
            secs(m.some.total),
        );
        out.counter(
            "node_pressure_memory_stalled_seconds_total",
            "Total time in seconds no process could make progress due to memory congestion.",
            &[],
            secs(m.full.total),
        );
    }
    let p = dir.join("io");
    if let Ok(r) = File::open(&p) {
        let m = procfs_core::IoPressure::from_buf_read(BufReader::new(r))
            .map_err(|e| Error::parse(&p, e))?;
        out.counter(
            "node_pressure_io_waiting_seconds_total",
            "Total time in seconds that processes have waited due to IO congestion.",
            &[],
            secs(m.some.total),
        );
        out.counter(
            "node_pressure_io_stalled_seconds_total",
            "Total time in seconds no process could make progress due to IO congestion.",
            &[],
            secs(m.full.total),
        );
    }
    Ok(())
}

/// Bytes, packets, errors and drops per interface: /proc/net/dev.
pub(crate) fn netdev(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let path = ctx.procfs.join("net/dev");
    let st = procfs_core::net::InterfaceDeviceStatus::from_buf_read(open(&path)?)
        .map_err(|e| Error::parse(&path, e))?;
    let mut devs: Vec<_> = st.0.values().collect();
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    for d in devs {
        if ctx
            .net_exclude
            .as_ref()
            .is_some_and(|re| re.is_match(&d.name))
        {
            continue;
        }
        let l = [("device", d.name.as_str())];
        for (name, v) in [
            ("node_network_receive_bytes_total", d.recv_bytes),
            ("node_network_receive_packets_total", d.recv_packets),
            ("node_network_receive_errs_total", d.recv_errs),
            ("node_network_receive_drop_total", d.recv_drop),
            ("node_network_transmit_bytes_total", d.sent_bytes),
            ("node_network_transmit_packets_total", d.sent_packets),
            ("node_network_transmit_errs_total", d.sent_errs),
            ("node_network_transmit_drop_total", d.sent_drop),
        ] {
            out.counter(
                name,
                "Network device statistic from /proc/net/dev.",
                &l,
                v as f64,
            );
        }
    }
    Ok(())
}

/// Disk I/O per block device: /proc/diskstats. Times are converted to
/// seconds; sectors are 512 bytes whatever the device's sector size.
pub(crate) fn diskstats(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let path = ctx.procfs.join("diskstats");
    let st =
        procfs_core::DiskStats::from_buf_read(open(&path)?).map_err(|e| Error::parse(&path, e))?;
    for d in &st.0 {
        if ctx
            .disk_exclude
            .as_ref()
            .is_some_and(|re| re.is_match(&d.name))
        {
            continue;
        }
        let l = [("device", d.name.as_str())];
        let ms = |v: u64| v as f64 / 1000.0;
        out.counter(
            "node_disk_reads_completed_total",
            "The total number of reads completed successfully.",
            &l,
            d.reads as f64,
        );
        out.counter(
            "node_disk_reads_merged_total",
            "The total number of reads merged.",
            &l,
            d.merged as f64,
        );
        out.counter(
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
            &l,
            d.sectors_read as f64 * 512.0,
        );
        out.counter(
            "node_disk_read_time_seconds_total",
            "The total number of seconds spent by all reads.",
            &l,
            ms(d.time_reading),
        );
        out.counter(
            "node_disk_writes_completed_total",
            "The total number of writes completed successfully.",
            &l,
            d.writes as f64,
        );
        out.counter(
            "node_disk_writes_merged_total",
            "The number of writes merged.",
            &l,
            d.writes_merged as f64,
        );
        out.counter(
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
            &l,
            d.sectors_written as f64 * 512.0,
        );
        out.counter(
            "node_disk_write_time_seconds_total",
            "This is the total number of seconds spent by all writes.",
            &l,
            ms(d.time_writing),
        );
        out.gauge(
            "node_disk_io_now",
            "The number of I/Os currently in progress.",
            &l,
            d.in_progress as f64,
        );
        out.counter(
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
            &l,
            ms(d.time_in_progress),
        );
        out.counter(
            "node_disk_io_time_weighted_seconds_total",
            "The weighted number of seconds spent doing I/Os.",
            &l,
            ms(d.weighted_time_in_progress),
        );
        if let Some(v) = d.discards {
            out.counter(
                "node_disk_discards_completed_total",
                "The total number of discards completed successfully.",
                &l,
                v as f64,
            );
        }
        if let Some(v) = d.flushes {
            out.counter(
                "node_disk_flush_requests_total",
                "The total number of flush requests completed successfully.",
                &l,
                v as f64,
            );
        }
    }
    Ok(())
}

/// Size, free and available bytes and inodes per mounted filesystem.
pub(crate) fn filesystems(ctx: &Ctx, out: &mut Out) -> Result<()> {
    let path = ctx.procfs.join("self/mountinfo");
    let mounts = procfs_core::process::MountInfos::from_buf_read(open(&path)?)
        .map_err(|e| Error::parse(&path, e))?;
    let mut seen = std::collections::HashSet::new();
    for m in mounts.0 {
        let mp = m.mount_point.to_string_lossy().into_owned();
        if ctx
            .fs_mount_exclude
            .as_ref()
            .is_some_and(|re| re.is_match(&mp))
            || ctx
                .fs_type_exclude
                .as_ref()
                .is_some_and(|re| re.is_match(&m.fs_type))
        {
            continue;
        }
        let device = m.mount_source.clone().unwrap_or_else(|| "none".to_owned());
        if !seen.insert((device.clone(), mp.clone())) {
            continue;
        }
        // statvfs on a path that went away (or a dead network mount that
        // answers with an error) costs this mount only.
        let st = match rustix::fs::statvfs(&m.mount_point) {
            Ok(st) => st,
            Err(e) => {
                out.gauge(
                    "node_filesystem_device_error",
                    "Whether an error occurred while getting statistics for the given device.",
                    &[
                        ("device", &device),
                        ("fstype", &m.fs_type),
                        ("mountpoint", &mp),
                    ],
                    1.0,
                );
                tracing::debug!(mountpoint = %mp, error = %e, "statvfs failed");
                continue;
            }
        };
        let l = [
            ("device", device.as_str()),
            ("fstype", m.fs_type.as_str()),
            ("mountpoint", mp.as_str()),
        ];
        let bs = st.f_frsize as f64;
        out.gauge(
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            &l,
            st.f_blocks as f64 * bs,
        );
        out.gauge(
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            &l,
            st.f_bfree as f64 * bs,
        );
        out.gauge(
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            &l,
            st.f_bavail as f64 * bs,
        );
        out.gauge(
            "node_filesystem_files",
            "Filesystem total file nodes.",
            &l,
            st.f_files as f64,
        );
        out.gauge(
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            &l,
            st.f_ffree as f64,
        );
        let ro = st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY);
        out.gauge(
            "node_filesystem_readonly",
            "Filesystem read-only status.",
            &l,
            if ro { 1.0 } else { 0.0 },
        );
        out.gauge(
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
            &l,
            0.0,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiermon_exposition::MetricFamily;

    fn fixture(files: &[(&str, &str)]) -> (tempfile::TempDir, Ctx) {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let cfg = tiermon_config::AgentConfig {
            procfs: dir.path().to_owned(),
            sysfs: dir.path().join("sys"),
            ..Default::default()
        };
        let ctx = Ctx::new(&cfg).unwrap();
        (dir, ctx)
    }

    fn value(fams: &[MetricFamily], sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
        fams.iter()
            .flat_map(|f| &f.samples)
            .find(|s| {
                s.name == sample
                    && labels
                        .iter()
                        .all(|(n, v)| s.labels.iter().any(|(ln, lv)| ln == n && lv == v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn stat_meminfo_loadavg_from_fixtures() {
        let (_d, ctx) = fixture(&[
            (
                "stat",
                "cpu  10 0 20 100 5 0 1 0 0 0\ncpu0 10 0 20 100 5 0 1 0 0 0\nintr 1 2\nctxt 12345\nbtime 1700000000\nprocesses 999\nprocs_running 3\nprocs_blocked 1\n",
            ),
            (
                "meminfo",
                "MemTotal:       16384 kB\nMemFree:         1024 kB\nHugePages_Total:       0\nActive(anon):     10 kB\n",
            ),
            ("loadavg", "0.50 0.25 0.10 1/200 12345\n"),
            ("sys/fs/file-nr", "1024\t0\t9223372036854775807\n"),
        ]);
        let mut out = Out::default();
        stat(&ctx, &mut out).unwrap();
        meminfo(&ctx, &mut out).unwrap();
        loadavg(&ctx, &mut out).unwrap();
        filefd(&ctx, &mut out).unwrap();
        let f = out.into_families();
        let t = ctx.ticks as f64;
        assert_eq!(
            value(
                &f,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "idle")]
            ),
            Some(100.0 / t)
        );
        assert_eq!(value(&f, "node_context_switches_total", &[]), Some(12345.0));
        assert_eq!(value(&f, "node_boot_time_seconds", &[]), Some(1.7e9));
        assert_eq!(
            value(&f, "node_memory_mem_total_bytes", &[]),
            Some(16384.0 * 1024.0)
        );
        assert_eq!(
            value(&f, "node_memory_huge_pages_total_pages", &[]),
            Some(0.0)
        );
        assert_eq!(
            value(&f, "node_memory_active_anon_bytes", &[]),
            Some(10240.0)
        );
        for (k, v) in [
            ("MemAvailable", "mem_available"),
            ("SReclaimable", "slab_reclaimable"),
            ("SUnreclaim", "slab_unreclaimable"),
            ("DirectMap2M", "direct_map_2m"),
            ("NFS_Unstable", "nfs_unstable"),
            ("Inactive(file)", "inactive_file"),
            ("HugePages_Rsvd", "huge_pages_rsvd"),
            ("VmallocTotal", "vmalloc_total"),
        ] {
            assert_eq!(meminfo_field(k), v);
        }
        assert_eq!(value(&f, "node_load5", &[]), Some(0.25));
        assert_eq!(value(&f, "node_filefd_allocated", &[]), Some(1024.0));
    }

    #[test]
    fn netdev_and_diskstats_from_fixtures() {
        let (_d, ctx) = fixture(&[
            (
                "net/dev",
                "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n",
            ),
            (
                "diskstats",
                "   8       0 sda 100 5 800 50 200 6 1600 70 0 120 130 0 0 0 0 0 0\n   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
            ),
        ]);
        let mut out = Out::default();
        netdev(&ctx, &mut out).unwrap();
        diskstats(&ctx, &mut out).unwrap();
        let f = out.into_families();
        assert_eq!(
            value(
                &f,
                "node_network_receive_bytes_total",
                &[("device", "eth0")]
            ),
            Some(1000.0)
        );
        assert_eq!(
            value(
                &f,
                "node_network_transmit_drop_total",
                &[("device", "eth0")]
            ),
            Some(4.0)
        );
        assert_eq!(
            value(&f, "node_disk_read_bytes_total", &[("device", "sda")]),
            Some(800.0 * 512.0)
        );
        assert_eq!(
            value(&f, "node_disk_io_time_seconds_total", &[("device", "sda")]),
            Some(0.12)
        );
        assert_eq!(
            value(
                &f,
                "node_disk_reads_completed_total",
                &[("device", "loop0")]
            ),
            None,
            "loop devices are excluded by default"
        );
    }

    #[test]
    fn missing_files_are_errors_that_name_the_path() {
        let (_d, ctx) = fixture(&[]);
        let err = loadavg(&ctx, &mut Out::default()).unwrap_err().to_string();
        assert!(err.contains("loadavg"), "{err}");
        // Pressure is optional: no directory, no series, no error.
        pressure(&ctx, &mut Out::default()).unwrap();
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let (_d, ctx) = fixture(&[
            ("stat", "garbage\n"),
            ("loadavg", "x y z\n"),
            ("sys/fs/file-nr", "1\n"),
            ("meminfo", "MemTotal: lots\n"),
        ]);
        assert!(stat(&ctx, &mut Out::default()).is_err());
        assert!(loadavg(&ctx, &mut Out::default()).is_err());
        assert!(filefd(&ctx, &mut Out::default()).is_err());
        assert!(meminfo(&ctx, &mut Out::default()).is_err());
    }
}
