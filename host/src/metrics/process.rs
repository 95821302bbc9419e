//! The process's own resources, read from `/proc` at each scrape.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// The process's own resources, under the names Prometheus clients use
/// (`process_*`), read from `/proc` at each scrape.
pub(super) struct ProcessMetrics {
    resident_memory: Gauge,
    open_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    /// The CPU time already counted, to add only what is new.
    cpu_counted: Mutex<f64>,
}

impl ProcessMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = ProcessMetrics {
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            cpu_seconds: Counter::default(),
            cpu_counted: Mutex::new(0.0),
        };
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            metrics.resident_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            metrics.open_fds.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            metrics.cpu_seconds.clone(),
        );
        metrics
    }

    /// Reads `/proc/self`; where there is none, the values stay at 0.
    pub(super) fn update(&self) {
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.resident_memory.set(pages * page_size());
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(cpu) = cpu_seconds() {
            let mut counted = self
                .cpu_counted
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if cpu > *counted {
                self.cpu_seconds.inc_by(cpu - *counted);
                *counted = cpu;
            }
        }
    }
}

fn page_size() -> i64 {
    #[cfg(unix)]
    {
        rustix::param::page_size() as i64
    }
    #[cfg(not(unix))]
    {
        4096
    }
}

/// User plus system CPU time, from `/proc/self/stat` (fields 14 and 15,
/// in clock ticks).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    #[cfg(unix)]
    let per_second = rustix::param::clock_ticks_per_second() as f64;
    #[cfg(not(unix))]
    let per_second = 100.0;
    Some(ticks / per_second)
}
