//! The measured server's CPU time and memory, read from /proc (Linux).
//! CPU is utime + stime in clock ticks (USER_HZ, 100 per second on Linux).

use std::fs;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
}

/// The server processes measured together (`--server-pid`, repeatable:
/// the nodes of a cluster); their CPU and RSS are summed. Set once at
/// start-up and kept for the run.
#[derive(Clone, Copy, Debug)]
pub struct Servers(&'static [u32]);

impl Servers {
    /// The processes `pids` (`None` if there are none).
    pub fn new(pids: Vec<u32>) -> Option<Servers> {
        (!pids.is_empty()).then(|| Servers(Box::leak(pids.into_boxed_slice())))
    }

    /// Their process ids.
    pub fn pids(&self) -> &[u32] {
        self.0
    }
}

/// Reads the servers: CPU and RSS summed; `None` if one is gone.
pub fn sample(servers: Servers) -> Option<Sample> {
    servers.0.iter().try_fold(Sample::default(), |sum, pid| {
        let one = sample_one(*pid)?;
        Some(Sample {
            cpu_s: sum.cpu_s + one.cpu_s,
            rss_kib: sum.rss_kib + one.rss_kib,
        })
    })
}

/// True if the process `pid` can be measured.
pub fn readable(pid: u32) -> bool {
    sample_one(pid).is_some()
}

/// Reads the process `pid`; `None` if it is gone or unreadable.
fn sample_one(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // state is field 3 overall, index 0 here; utime is 14 -> 11, stime 15 -> 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())?;
    Some(Sample {
        cpu_s: (utime + stime) / TICKS_PER_SECOND,
        rss_kib,
    })
}

/// CPU and peak memory of a server over a measured window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pid: Servers,
    start: Sample,
    /// Highest RSS seen in the window.
    pub peak_rss_kib: u64,
    /// CPU seconds used in the window (set by `finish`).
    pub cpu_s: f64,
    /// RSS at the end of the window.
    pub rss_end_kib: u64,
}

impl Window {
    /// Starts measuring `pid`.
    pub fn start(pid: Servers) -> Option<Window> {
        let start = sample(pid)?;
        Some(Window {
            pid,
            start,
            peak_rss_kib: start.rss_kib,
            cpu_s: 0.0,
            rss_end_kib: start.rss_kib,
        })
    }

    /// Takes an intermediate reading (for the peak RSS).
    pub fn tick(&mut self) {
        if let Some(now) = sample(self.pid) {
            self.peak_rss_kib = self.peak_rss_kib.max(now.rss_kib);
            self.rss_end_kib = now.rss_kib;
            self.cpu_s = now.cpu_s - self.start.cpu_s;
        }
    }

    /// Ends the window.
    pub fn finish(&mut self) {
        self.tick();
    }
}

/// Reads this process's open-files limit (soft, hard) from /proc.
pub fn open_files_limit() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    Some((*numbers.first()?, *numbers.get(1)?))
}
