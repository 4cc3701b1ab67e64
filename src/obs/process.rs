//! The usual `process_*` metrics of a Prometheus exporter (the names client libraries use), read from
//! `/proc/self` at every scrape. On a system without `/proc` the families are left out rather than reported
//! as zero.
//!
//! `/proc` reports CPU time and start time in clock ticks of `USER_HZ`, which is 100 on every Linux
//! architecture this program is built for (it is part of the kernel's user-space ABI, independent of the
//! kernel's internal `HZ`).

use std::fmt::Write as _;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: f64,
    threads: u64,
    virtual_bytes: u64,
    resident_bytes: u64,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

/// The fields of `/proc/self/stat` after the command name (which may contain spaces and parentheses, so the
/// line is split after its last `)`): field 3 (state) is index 0.
fn parse_stat(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

impl Process {
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let uptime_boot = std::fs::read_to_string("/proc/stat").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        Process::parse(&stat, &status, uptime_boot.as_deref(), limits.as_deref(), open_fds)
    }

    fn parse(
        stat: &str,
        status: &str,
        proc_stat: Option<&str>,
        limits: Option<&str>,
        open_fds: Option<u64>,
    ) -> Option<Process> {
        let f = parse_stat(stat)?;
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let (utime, stime) = (field(14)?, field(15)?);
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|k| k * 1024)
        };
        let boot = proc_stat
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let max_fds = limits
            .and_then(|l| l.lines().find(|l| l.starts_with("Max open files")))
            .and_then(|l| l["Max open files".len()..].split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok());
        Some(Process {
            cpu_seconds: (utime + stime) as f64 / USER_HZ,
            threads: field(20)?,
            virtual_bytes: field(23)?,
            resident_bytes: kib("VmRSS:").unwrap_or(0),
            start_time_seconds: boot.zip(field(22)).map(|(b, start)| b as f64 + start as f64 / USER_HZ),
            open_fds,
            max_fds,
        })
    }
}

/// Appends the `process_*` families (Prometheus text format) to `out`.
pub(crate) fn render(out: &mut String) {
    if let Some(p) = Process::read() {
        p.render(out);
    }
}

impl Process {
    fn render(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", {
            format!("{}", self.cpu_seconds)
        });
        family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", {
            self.resident_bytes.to_string()
        });
        family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", {
            self.virtual_bytes.to_string()
        });
        family("process_threads", "gauge", "Number of OS threads in the process.", self.threads.to_string());
        if let Some(t) = self.start_time_seconds {
            family(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                format!("{t}"),
            );
        }
        if let Some(n) = self.open_fds {
            family("process_open_fds", "gauge", "Number of open file descriptors.", n.to_string());
        }
        if let Some(n) = self.max_fds {
            family("process_max_fds", "gauge", "Maximum number of open file descriptors.", n.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (dmutex (node) x) S 1 4242 4242 0 -1 4194560 1227 0 0 0 250 50 0 0 20 0 7 0 \
                        12345 104857600 2048 18446744073709551615 1 1 0 0 0 0 0 4096 17638 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn proc_files_are_parsed_including_a_command_name_with_spaces_and_parentheses() {
        let status = "Name:\tdmutex\nVmSize:\t  102400 kB\nVmRSS:\t    8192 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let p = Process::parse(STAT, status, Some("cpu 1 2 3\nbtime 1700000000\n"), Some(limits), Some(12))
            .expect("parsed");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 8192 * 1024);
        assert_eq!(p.start_time_seconds, Some(1_700_000_000.0 + 123.45));
        assert_eq!((p.open_fds, p.max_fds), (Some(12), Some(1024)));
    }

    #[test]
    fn garbage_is_no_process_and_no_panic() {
        for stat in ["", "no parenthesis", "1 (x) S 1 2", "1 (x) S a b c d e f g h i j k l m n o p q r s t"] {
            assert_eq!(Process::parse(stat, "", None, None, None), None, "{stat:?}");
        }
    }

    #[test]
    fn this_process_is_rendered_in_the_text_format() {
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "),
            "{out}"
        );
        assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
        assert!(out.contains("\nprocess_open_fds "), "{out}");
    }
}
