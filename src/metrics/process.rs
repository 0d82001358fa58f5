//! The standard `process_*` metrics, read from `/proc/self` at each scrape
//! and rendered as text (a float CPU counter, which the recorder's integer
//! counters cannot hold). Read by hand rather than through a crate: five
//! numbers from four files on Linux (where LiteFS, and so litegate, runs)
//! do not need a dependency. Where a file cannot be read the value is 0.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const OPEN_FDS: &str = "process_open_fds";
pub const MAX_FDS: &str = "process_max_fds";
pub const CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const START_TIME_SECONDS: &str = "process_start_time_seconds";

/// `/proc/<pid>/stat` counts CPU time and the start time in clock ticks of
/// `USER_HZ`, which Linux fixes at 100 for user space on every
/// architecture (the kernel converts from its own `HZ`).
const USER_HZ: f64 = 100.0;

/// The `process_*` families in Prometheus text format, read now.
pub fn render() -> String {
    let (cpu_ticks, start_ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| parse_stat(&text))
        .unwrap_or((0, 0));
    let start = boot_time()
        .filter(|_| start_ticks > 0)
        .map_or_else(started_at, |boot| boot + start_ticks as f64 / USER_HZ);
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| resident_kib(&text))
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
    let (max_fds, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    let mut out = String::new();
    let families: [(&str, &str, &str, f64); 5] = [
        (
            CPU_SECONDS_TOTAL,
            "counter",
            "User and system CPU time the litegate process used.",
            cpu_ticks as f64 / USER_HZ,
        ),
        (
            START_TIME_SECONDS,
            "gauge",
            "When the litegate process started, in seconds since the Unix epoch.",
            start,
        ),
        (
            RESIDENT_MEMORY_BYTES,
            "gauge",
            "Resident memory of the litegate process.",
            (rss_kib * 1024) as f64,
        ),
        (
            OPEN_FDS,
            "gauge",
            "File descriptors open in the litegate process.",
            fds as f64,
        ),
        (
            MAX_FDS,
            "gauge",
            "The process's soft RLIMIT_NOFILE, after litegate raised it at start.",
            max_fds as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    out
}

/// (utime + stime, starttime) in clock ticks. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: field N is index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let start: u64 = fields.get(22 - 3)?.parse().ok()?;
    Some((utime + stime, start))
}

fn resident_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The boot time (`btime` in `/proc/stat`), seconds since the epoch.
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse::<u64>().ok().map(|s| s as f64)
}

/// Without `/proc`: the first time this was asked, close to the start.
fn started_at() -> f64 {
    static FIRST: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *FIRST.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (lite gate) x) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 8 0 98765 1000 200";
        assert_eq!(parse_stat(line), Some((150, 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn resident_memory_from_status() {
        let status = "Name:\tlitegate\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\n";
        assert_eq!(resident_kib(status), Some(1234));
    }

    #[test]
    fn renders_this_process() {
        let text = render();
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(rss.is_some_and(|v| v > 0.0), "{text}");
    }
}
