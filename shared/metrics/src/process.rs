//! The standard process metrics, read from `/proc/self` at each scrape, with the names and
//! meanings of Prometheus' client libraries (client_golang's process collector): an operator's
//! dashboards and alerts for any exporter work on crisp's services unchanged.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Adds the process collector to `registry` (its names carry no prefix).
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

/// See the module documentation. A value `/proc` cannot give (a kernel without it) is left out
/// of the scrape rather than failing it.
#[derive(Debug)]
pub struct ProcessCollector;

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?;
            cpu.encode(metric)?;
            let rss = stat.rss.saturating_mul(procfs::page_size());
            gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory size in bytes.", rss as f64)?;
            gauge(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size in bytes.", stat.vsize as f64)?;
            gauge(&mut encoder, "process_threads", "Number of OS threads in the process.", stat.num_threads as f64)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = boot as f64 + stat.starttime as f64 / ticks;
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    start,
                )?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            gauge(&mut encoder, "process_open_fds", "Number of open file descriptors.", fds as f64)?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors.", max as f64)?;
        }
        Ok(())
    }
}
