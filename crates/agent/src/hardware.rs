//! Hardware faults: EDAC memory errors, hwmon sensors, power supplies and
//! SMART disk health. Hardware that is absent yields no series, never an
//! error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tiermon_config::SmartConfig;

use crate::out::Out;
use crate::{Ctx, Result};

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn read_f64(p: &Path) -> Option<f64> {
    read_trim(p)?.parse().ok()
}

/// Sorted entries of `dir` whose names start with `prefix`; none when the
/// directory does not exist.
fn entries(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_str()?.to_owned();
            name.starts_with(prefix).then(|| (name, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Memory errors per controller and chip-select row, from
/// /sys/devices/system/edac (node_exporter's names).
pub(crate) fn edac(ctx: &Ctx, out: &mut Out) -> Result<()> {
    for (mc, path) in entries(&ctx.sysfs.join("devices/system/edac/mc"), "mc") {
        let controller = mc.trim_start_matches("mc");
        let l = [("controller", controller)];
        if let Some(v) = read_f64(&path.join("ce_count")) {
            out.counter(
                "node_edac_correctable_errors_total",
                "Total correctable memory errors.",
                &l,
                v,
            );
        }
        if let Some(v) = read_f64(&path.join("ue_count")) {
            out.counter(
                "node_edac_uncorrectable_errors_total",
                "Total uncorrectable memory errors.",
                &l,
                v,
            );
        }
        for (row, rpath) in entries(&path, "csrow") {
            let csrow = row.trim_start_matches("csrow");
            let l = [("controller", controller), ("csrow", csrow)];
            if let Some(v) = read_f64(&rpath.join("ce_count")) {
                out.counter(
                    "node_edac_csrow_correctable_errors_total",
                    "Total correctable memory errors for this csrow.",
                    &l,
                    v,
                );
            }
            if let Some(v) = read_f64(&rpath.join("ue_count")) {
                out.counter(
                    "node_edac_csrow_uncorrectable_errors_total",
                    "Total uncorrectable memory errors for this csrow.",
                    &l,
                    v,
                );
            }
        }
    }
    Ok(())
}

/// Temperatures, fans and voltages from /sys/class/hwmon.
pub(crate) fn hwmon(ctx: &Ctx, out: &mut Out) -> Result<()> {
    for (hw, path) in entries(&ctx.sysfs.join("class/hwmon"), "hwmon") {
        let chip = read_trim(&path.join("name")).unwrap_or(hw);
        for (file, fpath) in entries(&path, "") {
            let Some(base) = file.strip_suffix("_input") else {
                continue;
            };
            let Some(raw) = read_f64(&fpath) else {
                continue;
            };
            let sensor =
                read_trim(&path.join(format!("{base}_label"))).unwrap_or_else(|| base.to_owned());
            let l = [("chip", chip.as_str()), ("sensor", sensor.as_str())];
            if base.starts_with("temp") {
                out.gauge(
                    "node_hwmon_temp_celsius",
                    "Hardware monitor for temperature (input).",
                    &l,
                    raw / 1000.0,
                );
                if let Some(crit) = read_f64(&path.join(format!("{base}_crit"))) {
                    out.gauge(
                        "node_hwmon_temp_crit_celsius",
                        "Hardware monitor for temperature (crit).",
                        &l,
                        crit / 1000.0,
                    );
                }
            } else if base.starts_with("fan") {
                out.gauge(
                    "node_hwmon_fan_rpm",
                    "Hardware monitor for fan revolutions per minute (input).",
                    &l,
                    raw,
                );
            } else if base.starts_with("in") {
                out.gauge(
                    "node_hwmon_in_volts",
                    "Hardware monitor for voltage (input).",
                    &l,
                    raw / 1000.0,
                );
            }
        }
    }
    Ok(())
}

/// Power supplies and batteries from /sys/class/power_supply.
pub(crate) fn power_supply(ctx: &Ctx, out: &mut Out) -> Result<()> {
    for (name, path) in entries(&ctx.sysfs.join("class/power_supply"), "") {
        let l = [("power_supply", name.as_str())];
        if let Some(v) = read_f64(&path.join("online")) {
            out.gauge(
                "node_power_supply_online",
                "Whether the power supply is online.",
                &l,
                v,
            );
        }
        if let Some(v) = read_f64(&path.join("present")) {
            out.gauge(
                "node_power_supply_present",
                "Whether the power supply is present.",
                &l,
                v,
            );
        }
        if let Some(v) = read_f64(&path.join("capacity")) {
            out.gauge(
                "node_power_supply_capacity",
                "Charge of the battery in percent.",
                &l,
                v,
            );
        }
        if let Some(h) = read_trim(&path.join("health")) {
            let good = matches!(h.as_str(), "Good" | "Unknown");
            out.gauge(
                "tiermon_power_supply_healthy",
                "Whether the power supply reports good health.",
                &[("power_supply", &name), ("health", &h)],
                if good { 1.0 } else { 0.0 },
            );
        }
    }
    Ok(())
}

/// SMART health, polled in the background because smartctl is slow and
/// wakes sleeping disks.
#[derive(Debug)]
pub(crate) struct Smart {
    cfg: SmartConfig,
    last: Mutex<Vec<DiskHealth>>,
}

/// What one `smartctl --json -a DEVICE` said.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct DiskHealth {
    device: String,
    model: String,
    serial: String,
    passed: Option<bool>,
    reallocated: Option<f64>,
    pending: Option<f64>,
    media_errors: Option<f64>,
    temperature: Option<f64>,
}

impl Smart {
    pub(crate) fn new(cfg: SmartConfig) -> Self {
        Self {
            cfg,
            last: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn collect(&self, out: &mut Out) {
        for d in self.last.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let l = [("device", d.device.as_str())];
            out.gauge(
                "tiermon_smart_info",
                "Disk identity reported by SMART.",
                &[
                    ("device", &d.device),
                    ("model", &d.model),
                    ("serial", &d.serial),
                ],
                1.0,
            );
            if let Some(p) = d.passed {
                out.gauge(
                    "tiermon_smart_health_passed",
                    "Whether the disk's SMART overall health self-assessment passed.",
                    &l,
                    if p { 1.0 } else { 0.0 },
                );
            }
            if let Some(v) = d.reallocated {
                out.gauge(
                    "tiermon_smart_reallocated_sectors",
                    "Reallocated sector count (SMART attribute 5).",
                    &l,
                    v,
                );
            }
            if let Some(v) = d.pending {
                out.gauge(
                    "tiermon_smart_pending_sectors",
                    "Current pending sector count (SMART attribute 197).",
                    &l,
                    v,
                );
            }
            if let Some(v) = d.media_errors {
                out.counter(
                    "tiermon_smart_media_errors_total",
                    "NVMe media and data integrity errors.",
                    &l,
                    v,
                );
            }
            if let Some(v) = d.temperature {
                out.gauge(
                    "tiermon_smart_temperature_celsius",
                    "Current disk temperature.",
                    &l,
                    v,
                );
            }
        }
    }

    async fn poll_once(&self) -> std::result::Result<Vec<DiskHealth>, String> {
        let devices = if self.cfg.devices.is_empty() {
            let scan = run_json(&self.cfg.smartctl, &["--scan", "--json"]).await?;
            scan["devices"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            self.cfg.devices.clone()
        };
        let mut out = Vec::new();
        for dev in devices {
            match run_json(&self.cfg.smartctl, &["--json", "-a", &dev]).await {
                Ok(v) => out.push(parse_smart(&dev, &v)),
                Err(e) => tracing::warn!(device = %dev, error = %e, "smartctl failed"),
            }
        }
        Ok(out)
    }
}

/// Polls SMART every `interval` until aborted. When smartctl is not
/// installed, logs that once and yields no series.
pub(crate) async fn poll_smart(smart: std::sync::Arc<Smart>) {
    let mut warned = false;
    loop {
        match smart.poll_once().await {
            Ok(v) => *smart.last.lock().unwrap_or_else(|e| e.into_inner()) = v,
            Err(e) if !warned => {
                tracing::info!(smartctl = %smart.cfg.smartctl.display(), error = %e, "no SMART data");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(smart.cfg.interval).await;
    }
}

async fn run_json(bin: &Path, args: &[&str]) -> std::result::Result<serde_json::Value, String> {
    let child = tokio::process::Command::new(bin)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .map_err(|_| format!("{} {} timed out", bin.display(), args.join(" ")))?
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    // smartctl's exit status is a bit mask of findings; the JSON is what
    // counts.
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} {} printed no JSON: {e}", bin.display(), args.join(" ")))
}

pub(crate) fn parse_smart(device: &str, v: &serde_json::Value) -> DiskHealth {
    let attr = |id: u64| {
        v["ata_smart_attributes"]["table"]
            .as_array()?
            .iter()
            .find(|a| a["id"].as_u64() == Some(id))?["raw"]["value"]
            .as_f64()
    };
    DiskHealth {
        device: device.to_owned(),
        model: v["model_name"].as_str().unwrap_or("").to_owned(),
        serial: v["serial_number"].as_str().unwrap_or("").to_owned(),
        passed: v["smart_status"]["passed"].as_bool(),
        reallocated: attr(5),
        pending: attr(197),
        media_errors: v["nvme_smart_health_information_log"]["media_errors"].as_f64(),
        temperature: v["temperature"]["current"].as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, p: &str, v: &str) {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, v).unwrap();
    }

    type Flat = Vec<(String, Vec<(String, String)>, f64)>;

    fn values(out: Out) -> Flat {
        out.into_families()
            .into_iter()
            .flat_map(|f| f.samples)
            .map(|s| (s.name, s.labels, s.value))
            .collect()
    }

    fn ctx(root: &Path) -> Ctx {
        Ctx::new(&tiermon_config::AgentConfig {
            sysfs: root.to_owned(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn absent_hardware_yields_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let mut o = Out::default();
        edac(&c, &mut o).unwrap();
        hwmon(&c, &mut o).unwrap();
        power_supply(&c, &mut o).unwrap();
        assert!(values(o).is_empty());
    }

    #[test]
    fn edac_hwmon_power_from_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "devices/system/edac/mc/mc0/ce_count", "3\n");
        write(r, "devices/system/edac/mc/mc0/ue_count", "1\n");
        write(r, "devices/system/edac/mc/mc0/csrow0/ce_count", "2\n");
        write(r, "class/hwmon/hwmon0/name", "coretemp\n");
        write(r, "class/hwmon/hwmon0/temp1_input", "45000\n");
        write(r, "class/hwmon/hwmon0/temp1_label", "Package id 0\n");
        write(r, "class/hwmon/hwmon0/fan1_input", "1200\n");
        write(r, "class/hwmon/hwmon0/in0_input", "1200\n");
        write(r, "class/power_supply/PSU1/online", "0\n");
        write(r, "class/power_supply/PSU1/health", "Overheat\n");
        let c = ctx(r);
        let mut o = Out::default();
        edac(&c, &mut o).unwrap();
        hwmon(&c, &mut o).unwrap();
        power_supply(&c, &mut o).unwrap();
        let v = values(o);
        let get = |name: &str, lv: &str| {
            v.iter()
                .find(|(n, l, _)| n == name && l.iter().any(|(_, x)| x == lv))
                .map(|s| s.2)
        };
        assert_eq!(get("node_edac_correctable_errors_total", "0"), Some(3.0));
        assert_eq!(get("node_edac_uncorrectable_errors_total", "0"), Some(1.0));
        assert_eq!(
            get("node_edac_csrow_correctable_errors_total", "0"),
            Some(2.0)
        );
        assert_eq!(get("node_hwmon_temp_celsius", "Package id 0"), Some(45.0));
        assert_eq!(get("node_hwmon_fan_rpm", "fan1"), Some(1200.0));
        assert_eq!(get("node_hwmon_in_volts", "in0"), Some(1.2));
        assert_eq!(get("node_power_supply_online", "PSU1"), Some(0.0));
        assert_eq!(get("tiermon_power_supply_healthy", "Overheat"), Some(0.0));
    }

    #[test]
    fn smartctl_json_ata_and_nvme() {
        let ata: serde_json::Value = serde_json::from_str(
            r#"{"model_name":"WDC WD40","serial_number":"WX1","smart_status":{"passed":false},
                "ata_smart_attributes":{"table":[{"id":5,"raw":{"value":12}},{"id":197,"raw":{"value":3}}]},
                "temperature":{"current":41}}"#,
        )
        .unwrap();
        let h = parse_smart("/dev/sda", &ata);
        assert_eq!(
            (h.passed, h.reallocated, h.pending, h.temperature),
            (Some(false), Some(12.0), Some(3.0), Some(41.0))
        );
        let nvme: serde_json::Value =
            serde_json::from_str(r#"{"smart_status":{"passed":true},"nvme_smart_health_information_log":{"media_errors":2}}"#).unwrap();
        let h = parse_smart("/dev/nvme0", &nvme);
        assert_eq!(
            (h.passed, h.media_errors, h.reallocated),
            (Some(true), Some(2.0), None)
        );
    }

    #[tokio::test]
    async fn smartctl_absent_is_not_an_error_series() {
        let s = Smart::new(SmartConfig {
            smartctl: PathBuf::from("/nonexistent/smartctl"),
            ..Default::default()
        });
        assert!(s.poll_once().await.is_err());
        let mut o = Out::default();
        s.collect(&mut o);
        assert!(values(o).is_empty());
    }

    #[tokio::test]
    async fn smartctl_is_run_and_parsed() {
        // A stand-in that speaks smartctl's JSON contract.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("smartctl");
        std::fs::write(
            &bin,
            "#!/bin/sh\ncase \"$1\" in\n--scan) echo '{\"devices\":[{\"name\":\"/dev/sdz\"}]}';;\n*) echo '{\"smart_status\":{\"passed\":true},\"temperature\":{\"current\":30}}'; exit 4;;\nesac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Smart::new(SmartConfig {
            smartctl: bin,
            ..Default::default()
        });
        let v = s.poll_once().await.unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].device.as_str(), v[0].passed, v[0].temperature),
            ("/dev/sdz", Some(true), Some(30.0))
        );
    }
}
