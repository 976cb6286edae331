//! Resource use of a process (the gateway, given by `--gateway-pid`, and the simulator itself), sampled
//! once a second from `/proc` (via the procfs crate): resident memory and CPU time.
//!
//! CPU is reported in percent of one core (200 % is both cores of a 2-core machine), averaged over
//! the measured phase, and as the busiest one-second sample.

use std::time::Instant;

use procfs::process::Process;

use crate::fleet::round3;

/// What was measured of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// The process id.
    pub pid: i32,
    /// Largest resident memory seen in a sample, MiB.
    pub rss_mb_peak: f64,
    /// Resident memory at the end of the measured phase, MiB.
    pub rss_mb_end: f64,
    /// The kernel's high-water mark of resident memory (`VmHWM`), MiB; it includes startup.
    pub rss_mb_hwm: f64,
    /// Mean CPU over the measured phase, percent of one core.
    pub cpu_pct_mean: f64,
    /// Busiest one-second sample, percent of one core.
    pub cpu_pct_peak: f64,
}

/// Samples one process.
pub struct Probe {
    process: Process,
    ticks_per_s: f64,
    first: (Instant, u64),
    last: (Instant, u64),
    usage: Usage,
}

impl Probe {
    /// Starts measuring `pid`.
    pub fn new(pid: i32) -> procfs::ProcResult<Self> {
        let process = Process::new(pid)?;
        let now = (Instant::now(), cpu_ticks(&process)?);
        let mut probe = Self {
            process,
            ticks_per_s: procfs::ticks_per_second() as f64,
            first: now,
            last: now,
            usage: Usage {
                pid,
                ..Usage::default()
            },
        };
        probe.sample()?;
        Ok(probe)
    }

    /// Measures the simulator's own process.
    pub fn myself() -> procfs::ProcResult<Self> {
        Self::new(Process::myself()?.pid)
    }

    /// Takes one sample; call it about once a second.
    pub fn sample(&mut self) -> procfs::ProcResult<()> {
        let status = self.process.status()?;
        let mib = |kb: Option<u64>| round3(kb.unwrap_or(0) as f64 / 1024.0);
        let rss = mib(status.vmrss);
        self.usage.rss_mb_end = rss;
        self.usage.rss_mb_peak = self.usage.rss_mb_peak.max(rss);
        self.usage.rss_mb_hwm = mib(status.vmhwm);
        let now = (Instant::now(), cpu_ticks(&self.process)?);
        let percent = |from: (Instant, u64), to: (Instant, u64)| {
            let seconds = to.0.duration_since(from.0).as_secs_f64();
            if seconds <= 0.0 {
                return 0.0;
            }
            round3(to.1.saturating_sub(from.1) as f64 / self.ticks_per_s / seconds * 100.0)
        };
        if now.0.duration_since(self.last.0).as_millis() >= 500 {
            self.usage.cpu_pct_peak = self.usage.cpu_pct_peak.max(percent(self.last, now));
            self.last = now;
        }
        self.usage.cpu_pct_mean = percent(self.first, now);
        Ok(())
    }

    /// What was measured so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }
}

fn cpu_ticks(process: &Process) -> procfs::ProcResult<u64> {
    let stat = process.stat()?;
    Ok(stat.utime + stat.stime)
}
