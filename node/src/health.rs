//! What `shoal doctor` asks a node: temperature and throttling, load, uptime, clock, and the
//! GPU's self-test. Temperatures come from the kernel's thermal zones under `/sys/class/thermal`
//! (the Pi's `cpu-thermal` zone among them), the CPU frequency from cpufreq, and on Raspberry Pi
//! OS the firmware's throttling flags from `vcgencmd get_throttled`. `SHOAL_SYSFS` names another
//! sysfs root (a container that mounts the host's `/sys` elsewhere).

use shoal_common::wire::{self, GpuHealth, Thermal};
use std::path::{Path, PathBuf};

/// The sysfs root: `SHOAL_SYSFS`, or `/sys`.
pub fn sysfs_root() -> PathBuf {
    std::env::var_os("SHOAL_SYSFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys"))
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_num<T: std::str::FromStr>(p: &Path) -> Option<T> {
    read_trim(p)?.parse().ok()
}

/// Entries of `dir` whose names start with `prefix`, in name order.
fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Temperature, trip point, cooling and frequency under the sysfs root `sys`; `throttled` from
/// the firmware, where there is one.
pub fn thermal(sys: &Path, throttled: Option<u32>) -> Thermal {
    let mut t = Thermal {
        throttled,
        ..Thermal::default()
    };
    // The hottest zone that reads; a zone whose sensor is asleep fails to read and is skipped.
    for zone in entries(&sys.join("class/thermal"), "thermal_zone") {
        let Some(mc) = read_num::<i32>(&zone.join("temp")) else {
            continue;
        };
        if t.temperature_mc.is_some_and(|h| h >= mc) {
            continue;
        }
        t.temperature_mc = Some(mc);
        t.zone = wire::text(&read_trim(&zone.join("type")).unwrap_or_default());
        t.passive_trip_mc = (0..32)
            .map_while(|i| {
                let kind = read_trim(&zone.join(format!("trip_point_{i}_type")))?;
                Some((
                    kind,
                    read_num::<i32>(&zone.join(format!("trip_point_{i}_temp"))),
                ))
            })
            .filter(|(kind, _)| kind == "passive")
            .filter_map(|(_, mc)| mc)
            .min();
    }
    // A cpufreq cooling device above state 0 means the thermal governor has capped the CPU.
    t.cooling = entries(&sys.join("class/thermal"), "cooling_device")
        .iter()
        .filter(|d| {
            read_trim(&d.join("type")).is_some_and(|k| k.starts_with("cpufreq") || k == "Processor")
        })
        .any(|d| read_num::<u64>(&d.join("cur_state")).is_some_and(|s| s > 0));
    let cpu0 = sys.join("devices/system/cpu/cpu0/cpufreq");
    t.freq_khz = read_num(&cpu0.join("scaling_cur_freq"));
    t.max_freq_khz = read_num(&cpu0.join("cpuinfo_max_freq"));
    t
}

/// The bits of `vcgencmd get_throttled`'s answer (`throttled=0x50005`).
pub fn parse_throttled(s: &str) -> Option<u32> {
    let v = s.trim().strip_prefix("throttled=")?;
    let v = v.strip_prefix("0x").unwrap_or(v);
    u32::from_str_radix(v, 16).ok()
}

/// Asks the Pi firmware for its throttling flags; `None` where `vcgencmd` is missing or fails.
pub fn firmware_throttled() -> Option<u32> {
    let out = std::process::Command::new("vcgencmd")
        .arg("get_throttled")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_throttled(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

/// The firmware's throttling flags in words: now (bits 0-3) and since boot (bits 16-19).
pub fn throttle_words(bits: u32) -> (Vec<&'static str>, Vec<&'static str>) {
    const NAMES: [&str; 4] = [
        "under-voltage",
        "frequency capped",
        "throttled",
        "soft temperature limit",
    ];
    let pick = |shift: u32| {
        (0..4)
            .filter(|i| bits >> (shift + i) & 1 == 1)
            .map(|i| NAMES[i as usize])
            .collect()
    };
    (pick(0), pick(16))
}

/// This process's peak resident memory (`VmHWM` in `/proc/self/status`), KiB; 0 where there is
/// no such file.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Resident memory now (`VmRSS`), KiB; 0 where `/proc/self/status` does not say.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now and at its peak, for log lines: "RSS 80 MiB (peak 340 MiB)".
pub fn rss_words() -> String {
    format!(
        "RSS {:.0} MiB (peak {:.0} MiB)",
        rss_kib() as f64 / 1024.0,
        peak_rss_kib() as f64 / 1024.0
    )
}

/// Hands freed heap pages back to the system (glibc keeps them otherwise), so that building the
/// mesh and receiving field slices, which free as much as they keep, do not add to what the
/// next large allocation costs. A no-op elsewhere.
pub fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Seconds since boot, from `/proc/uptime`.
pub fn uptime_s() -> u64 {
    read_trim(Path::new("/proc/uptime"))
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| s as u64)
        .unwrap_or(0)
}

/// The one-minute load average, from `/proc/loadavg`.
pub fn load() -> f32 {
    read_trim(Path::new("/proc/loadavg"))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The wall clock, nanoseconds since the Unix epoch (negative before it: a Pi without its
/// network time can be far off).
pub fn clock_unix_ns() -> i64 {
    let now = std::time::SystemTime::now();
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

/// The GPU adapter and its self-test, run once per process (the first full checkup waits).
pub fn gpu() -> GpuHealth {
    #[cfg(not(feature = "gpu"))]
    {
        GpuHealth::NotBuilt
    }
    #[cfg(feature = "gpu")]
    {
        match crate::gpu_probe() {
            Err(e) => GpuHealth::Absent {
                why: wire::text(&e),
            },
            Ok((adapter, st)) if st.passed() => GpuHealth::Passed {
                adapter: wire::text(&adapter),
                max_distance_mm: (st.max_distance_m * 1000.0) as f32,
            },
            Ok((adapter, st)) => GpuHealth::Failed {
                adapter: wire::text(&adapter),
                why: wire::text(&format!(
                    "CPU-GPU distance {:.3} m over {} particles",
                    st.max_distance_m, st.particles
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, s: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{s}\n")).unwrap();
    }

    /// A Pi 4's sysfs as Raspberry Pi OS lays it out: one `cpu-thermal` zone with a passive
    /// trip and a critical one, cpufreq cooling, and a second sensor that reads cooler.
    #[test]
    fn reads_the_hottest_zone_its_passive_trip_and_cooling() {
        let root = std::env::temp_dir().join(format!("shoal-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        write(&root, "class/thermal/thermal_zone0/type", "cpu-thermal");
        write(&root, "class/thermal/thermal_zone0/temp", "81252");
        write(
            &root,
            "class/thermal/thermal_zone0/trip_point_0_type",
            "critical",
        );
        write(
            &root,
            "class/thermal/thermal_zone0/trip_point_0_temp",
            "110000",
        );
        write(
            &root,
            "class/thermal/thermal_zone0/trip_point_1_type",
            "passive",
        );
        write(
            &root,
            "class/thermal/thermal_zone0/trip_point_1_temp",
            "80000",
        );
        write(&root, "class/thermal/thermal_zone1/type", "pmic");
        write(&root, "class/thermal/thermal_zone1/temp", "45000");
        write(&root, "class/thermal/cooling_device0/type", "cpufreq-cpu0");
        write(&root, "class/thermal/cooling_device0/cur_state", "0");
        let cpu = "devices/system/cpu/cpu0/cpufreq";
        write(&root, &format!("{cpu}/scaling_cur_freq"), "1500000");
        write(&root, &format!("{cpu}/cpuinfo_max_freq"), "1800000");
        let t = thermal(&root, Some(0x50005));
        assert_eq!(t.temperature_mc, Some(81_252));
        assert_eq!(t.zone.as_str(), "cpu-thermal");
        assert_eq!(t.passive_trip_mc, Some(80_000));
        assert!(!t.cooling);
        assert_eq!(
            (t.freq_khz, t.max_freq_khz),
            (Some(1_500_000), Some(1_800_000))
        );
        write(&root, "class/thermal/cooling_device0/cur_state", "2");
        assert!(thermal(&root, None).cooling);
        // No thermal zones at all (a VM): nothing is invented.
        let empty = thermal(&root.join("nothing"), None);
        assert_eq!(empty, Thermal::default());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn firmware_flags_parse_and_read_as_words() {
        assert_eq!(parse_throttled("throttled=0x50005\n"), Some(0x50005));
        assert_eq!(parse_throttled("throttled=0x0"), Some(0));
        assert_eq!(
            parse_throttled("error=1 error_msg=\"Command not registered\""),
            None
        );
        let (now, since) = throttle_words(0x50005);
        assert_eq!(now, ["under-voltage", "throttled"]);
        assert_eq!(since, ["under-voltage", "throttled"]);
        assert_eq!(throttle_words(0x80000).1, ["soft temperature limit"]);
        assert!(throttle_words(0).0.is_empty());
    }

    #[test]
    fn clock_uptime_and_load_read_here() {
        let a = clock_unix_ns();
        assert!(a > 1_700_000_000_000_000_000, "{a}");
        assert!(load() >= 0.0);
        let _ = uptime_s();
    }
}
