//! CPU and memory figures from `/proc`, for the generator itself and for the server under
//! test, and latency percentiles.
//!
//! The generator reads its own user+system CPU from `/proc/self/stat`: the same counters
//! `getrusage(RUSAGE_SELF)` returns, summed over all threads, without `unsafe`.

use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc/*/stat` (USER_HZ, 100 on every Linux target).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of process `pid` (all its threads).
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds of this process.
pub fn self_cpu_secs() -> f64 {
    stat_cpu("/proc/self/stat").unwrap_or(0.0)
}

fn stat_cpu(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_ascii_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident memory of process `pid`, in KiB (`VmRSS`).
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Peak resident memory of this process, in KiB (`VmHWM`).
pub fn self_peak_rss_kib() -> u64 {
    status_field("/proc/self/status", "VmHWM:").unwrap_or(0)
}

fn status_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Busy CPU seconds of the whole machine (all cores), from the first line of `/proc/stat`.
fn machine_busy_secs() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_ascii_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return 0.0;
    }
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    (v[..8].iter().sum::<f64>() - v[3] - v[4]) / TICKS_PER_SEC
}

/// Sum of the RSS of `pids`, in KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| proc_rss_kib(p)).sum()
}

fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| proc_cpu_secs(p)).sum()
}

/// CPU use over one phase: the generator's, the server's and everything else on the
/// machine. Each is a percentage of one core, so 200 means both cores of this machine.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// The generator's own CPU (user + system, all threads).
    pub generator_cpu_pct: f64,
    /// The server's CPU (the pids given), or `None` when no pid was given.
    pub server_cpu_pct: Option<f64>,
    /// Everything else on the machine; above ~10 % another workload shared the cores.
    pub other_cpu_pct: Option<f64>,
}

/// Starts measuring a phase.
pub struct Meter {
    pids: Vec<u32>,
    t0: Instant,
    server0: f64,
    self0: f64,
    machine0: f64,
}

impl Meter {
    pub fn start(pids: &[u32]) -> Meter {
        Meter {
            pids: pids.to_vec(),
            t0: Instant::now(),
            server0: cpu_secs(pids),
            self0: self_cpu_secs(),
            machine0: machine_busy_secs(),
        }
    }

    pub fn finish(&self) -> Usage {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let gen_cpu = self_cpu_secs() - self.self0;
        let pct = |x: f64| round1(100.0 * x / wall);
        let (server, other) = if self.pids.is_empty() {
            (None, None)
        } else {
            let srv = cpu_secs(&self.pids) - self.server0;
            let machine = machine_busy_secs() - self.machine0;
            (
                Some(pct(srv)),
                Some(pct((machine - srv - gen_cpu).max(0.0))),
            )
        };
        Usage {
            wall_s: round3(wall),
            generator_cpu_pct: pct(gen_cpu),
            server_cpu_pct: server,
            other_cpu_pct: other,
        }
    }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// Nearest-rank percentiles of `ns` (sorted in place).
pub fn percentiles(ns: &mut [u64]) -> Percentiles {
    ns.sort_unstable();
    let at = |p: f64| -> Option<f64> {
        if ns.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * ns.len() as f64 - 1e-9).ceil() as usize;
        let v = ns[rank.clamp(1, ns.len()) - 1];
        Some(round3(v as f64 / 1e6))
    };
    Percentiles {
        samples: ns.len(),
        p50_ms: at(50.0),
        p90_ms: at(90.0),
        p99_ms: at(99.0),
        p999_ms: at(99.9),
        max_ms: at(100.0),
    }
}

/// The median of a few runs' figures.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=1000).map(|x| x * 1_000_000).collect();
        let p = percentiles(&mut v);
        assert_eq!(p.p50_ms, Some(500.0));
        assert_eq!(p.p99_ms, Some(990.0));
        assert_eq!(p.p999_ms, Some(999.0));
        assert_eq!(p.max_ms, Some(1000.0));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    }

    #[test]
    fn reads_own_process() {
        assert!(self_cpu_secs() >= 0.0);
        assert!(proc_rss_kib(std::process::id()).unwrap() > 0);
    }
}
