//! The bench report: text (with rpcx-benchmark's `throughput (TPS)` line and, with
//! `--latency`, wrk2's percentile spectrum), JSON, and an SVG latency-by-percentile plot.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::{BenchConfig, CoreResult, ERROR_KINDS, kind_name};

/// Where and how to show a report.
#[derive(Clone, Debug, Default)]
pub struct OutputOptions {
    /// Print the full percentile spectrum.
    pub latency: bool,
    /// Write the report as JSON here.
    pub json: Option<PathBuf>,
    /// Write the latency-by-percentile plot (SVG) here.
    pub plot: Option<PathBuf>,
}

/// The run's settings, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct ReportConfig {
    /// Servers loaded.
    pub servers: Vec<String>,
    /// `Service.Method`.
    pub call: String,
    /// Codec name.
    pub codec: String,
    /// Calls in flight.
    pub concurrency: usize,
    /// Connections.
    pub connections: usize,
    /// `-n`, if given.
    pub requests: Option<u64>,
    /// `-d` in seconds, if given.
    pub duration_s: Option<f64>,
    /// Calls per second asked for (0: closed loop).
    pub rate: f64,
    /// Warmup in seconds.
    pub warmup_s: f64,
    /// CPUs of the generator's executors (empty: one unpinned).
    pub cores: Vec<usize>,
    /// Executors used.
    pub executors: usize,
    /// Echo payload size.
    pub payload_size: usize,
    /// Per-call timeout in milliseconds (None: none).
    pub timeout_ms: Option<u128>,
    /// Whether replies were checked against the expected answer; false with `--no-verify`,
    /// when `ok` counts every reply that was not an rpcx error reply.
    pub verified: bool,
}

/// Latency statistics in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// 99.99th percentile.
    pub p99_99: f64,
    /// Largest.
    pub max: f64,
}

/// One row of the percentile spectrum.
#[derive(Clone, Debug, Serialize)]
pub struct PercentilePoint {
    /// Percentile, 0..=100.
    pub percentile: f64,
    /// Latency at it, microseconds.
    pub value_us: f64,
    /// Calls at or below it.
    pub count: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The settings.
    pub config: ReportConfig,
    /// Counted calls sent (after the warmup).
    pub sent: u64,
    /// Calls answered correctly.
    pub ok: u64,
    /// Failed calls by kind (`connect`, `connection`, `timeout`, `service`, `bad_reply`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The first error message of each kind.
    pub error_samples: BTreeMap<String, String>,
    /// Measured time in seconds (warmup excluded).
    pub elapsed_s: f64,
    /// OK calls per second.
    pub throughput: f64,
    /// Latency of OK calls.
    pub latency_us: LatencySummary,
    /// Constant rate: how late each counted call started after its scheduled time, the
    /// generator's own share of the latency (pacer tick, busy executor). None in closed loop.
    pub send_lag_us: Option<LatencySummary>,
    /// The percentile spectrum (wrk2 / HdrHistogram style, 5 ticks per half distance).
    pub percentiles: Vec<PercentilePoint>,
    /// Set when the run stopped early because the servers could not be reached.
    pub aborted: Option<String>,
}

/// Merges the executors' results into a report.
pub(super) fn build(
    config: &BenchConfig,
    executors: usize,
    results: Vec<CoreResult>,
    aborted: Option<String>,
) -> Report {
    let mut hist = super::histogram();
    let (mut sent, mut ok) = (0, 0);
    let mut errors = [0u64; ERROR_KINDS];
    let mut error_samples = BTreeMap::new();
    for r in &results {
        // Same bounds on both sides: adding cannot fail.
        let _ = hist.add(&r.hist);
        sent += r.sent;
        ok += r.ok;
        for (total, n) in errors.iter_mut().zip(r.errors) {
            *total += n;
        }
        for (kind, text) in &r.samples {
            error_samples
                .entry(kind_name(*kind).to_owned())
                .or_insert_with(|| text.clone());
        }
    }
    // From the end of the warmup to the last executor's end.
    let elapsed = results
        .iter()
        .map(|r| r.measured.as_secs_f64())
        .fold(0.0, f64::max);
    let errors: BTreeMap<String, u64> = errors
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (kind_name(k).to_owned(), *n))
        .collect();
    let us = |ns: u64| ns as f64 / 1000.0;
    let latency_us = summary(&hist);
    let send_lag_us = (config.rate > 0.0).then(|| {
        let mut lag = super::histogram();
        for r in &results {
            if let Some(h) = &r.lag {
                let _ = lag.add(h);
            }
        }
        summary(&lag)
    });
    let percentiles = if hist.is_empty() {
        Vec::new()
    } else {
        hist.iter_quantiles(5)
            .map(|v| PercentilePoint {
                percentile: v.quantile_iterated_to() * 100.0,
                value_us: us(v.value_iterated_to()),
                count: v.count_since_last_iteration(),
            })
            .scan(0u64, |total, mut p| {
                *total += p.count;
                p.count = *total;
                Some(p)
            })
            .collect()
    };
    Report {
        config: ReportConfig {
            servers: config.servers.clone(),
            call: config.call.name().to_owned(),
            codec: config.codec.name().to_owned(),
            concurrency: config.concurrency,
            connections: config.connections,
            requests: config.requests,
            duration_s: config.duration.map(|d| d.as_secs_f64()),
            rate: config.rate,
            warmup_s: config.warmup.as_secs_f64(),
            cores: config.cores.clone(),
            executors,
            payload_size: config.payload_size,
            timeout_ms: config.timeout.map(|t| t.as_millis()),
            verified: config.verify,
        },
        sent,
        ok,
        errors,
        error_samples,
        elapsed_s: elapsed,
        throughput: if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        latency_us,
        send_lag_us,
        percentiles,
        aborted,
    }
}

/// Latency statistics of a histogram of nanoseconds, in microseconds.
fn summary(hist: &Histogram<u64>) -> LatencySummary {
    if hist.is_empty() {
        return LatencySummary::default();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    LatencySummary {
        min: us(hist.min()),
        mean: hist.mean() / 1000.0,
        stdev: hist.stdev() / 1000.0,
        p50: us(hist.value_at_quantile(0.5)),
        p90: us(hist.value_at_quantile(0.9)),
        p99: us(hist.value_at_quantile(0.99)),
        p99_9: us(hist.value_at_quantile(0.999)),
        p99_99: us(hist.value_at_quantile(0.9999)),
        max: us(hist.max()),
    }
}

impl Report {
    /// Whether the run counts as a success: it was not aborted and some call succeeded.
    pub fn succeeded(&self) -> bool {
        self.aborted.is_none() && self.ok > 0
    }

    /// The report as text.
    pub fn text(&self, latency: bool) -> String {
        let c = &self.config;
        let mut out = String::new();
        let mode = if c.rate > 0.0 {
            format!("constant rate {} calls/s", c.rate)
        } else {
            "closed loop".into()
        };
        let length = match (c.requests, c.duration_s) {
            (Some(n), Some(d)) => format!("{n} calls or {d}s"),
            (Some(n), None) => format!("{n} calls"),
            (None, Some(d)) => format!("{d}s"),
            (None, None) => String::new(),
        };
        let cores = if c.cores.is_empty() {
            "unpinned".into()
        } else {
            format!("CPUs {:?}", c.cores)
        };
        let _ = writeln!(
            out,
            "percore bench: {} ({}) -> {}",
            c.call,
            c.codec,
            c.servers.join(", ")
        );
        let _ = writeln!(
            out,
            "  {} connections, {} calls in flight, {mode}, {length} after {}s warmup, {} executor(s) {cores}",
            c.connections, c.concurrency, c.warmup_s, c.executors
        );
        if c.call == "Echo.Echo" {
            let _ = writeln!(out, "  payload {} bytes", c.payload_size);
        }
        if !c.verified {
            let _ = writeln!(
                out,
                "  replies NOT verified (--no-verify): ok counts every reply that is not an rpcx error"
            );
        }
        let failed: u64 = self.errors.values().sum();
        let _ = writeln!(out, "sent {}  ok {}  errors {}", self.sent, self.ok, failed);
        for (kind, n) in &self.errors {
            let sample = self
                .error_samples
                .get(kind)
                .map(String::as_str)
                .unwrap_or("");
            let _ = writeln!(out, "  {kind:<11} {n:>10}  e.g. {sample}");
        }
        if let Some(reason) = &self.aborted {
            let _ = writeln!(out, "aborted: {reason}");
        }
        let _ = writeln!(
            out,
            "took {:.3}s, throughput {:.1} calls/s",
            self.elapsed_s, self.throughput
        );
        let _ = writeln!(out, "throughput (TPS): {}", self.throughput.round() as u64);
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "latency (us): min {:.1}  mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}",
            l.min, l.mean, l.p50, l.p90, l.p99, l.p99_9, l.p99_99, l.max
        );
        if let Some(l) = &self.send_lag_us {
            let _ = writeln!(
                out,
                "send lag (us): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (from each call's scheduled time to its start: the generator's own share)",
                l.p50, l.p90, l.p99, l.p99_9, l.max
            );
        }
        if latency {
            out.push_str(&self.spectrum());
        }
        out
    }

    /// wrk2's "Detailed Percentile spectrum", values in milliseconds.
    pub fn spectrum(&self) -> String {
        let mut out = String::from("  Detailed Percentile spectrum:\n");
        out.push_str("       Value   Percentile   TotalCount 1/(1-Percentile)\n\n");
        for p in &self.percentiles {
            let q = p.percentile / 100.0;
            let inverse = if q < 1.0 {
                format!("{:>12.2}", 1.0 / (1.0 - q))
            } else {
                format!("{:>12}", "inf")
            };
            let _ = writeln!(
                out,
                "{:>12.3} {:>12.6} {:>12} {inverse}",
                p.value_us / 1000.0,
                q,
                p.count
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            l.mean / 1000.0,
            l.stdev / 1000.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            l.max / 1000.0,
            self.ok
        );
        out
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        // Plain numbers, strings, maps and lists: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Latency by percentile as an SVG line chart: x is the percentile on HdrHistogram's log
    /// scale of 1/(1-p) (0, 90, 99, 99.9, 99.99, 99.999 %), y the latency in milliseconds.
    pub fn svg(&self) -> String {
        const W: f64 = 720.0;
        const H: f64 = 420.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 20.0;
        const TOP: f64 = 40.0;
        const BOTTOM: f64 = 50.0;
        const DECADES: f64 = 5.0; // up to 99.999 %
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let x_of = |q: f64| {
            let d = if q >= 1.0 {
                DECADES
            } else {
                (1.0 / (1.0 - q)).log10().min(DECADES)
            };
            LEFT + pw * d / DECADES
        };
        let max_ms = self
            .percentiles
            .iter()
            .map(|p| p.value_us / 1000.0)
            .fold(0.0, f64::max)
            .max(0.001);
        let top_ms = nice_ceiling(max_ms * 1.05);
        let y_of = |ms: f64| TOP + ph * (1.0 - ms / top_ms);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let title = format!(
            "{} {} · {} connections, {} in flight · {:.0} calls/s{}",
            self.config.call,
            self.config.codec,
            self.config.connections,
            self.config.concurrency,
            self.throughput,
            if self.config.verified {
                ""
            } else {
                " · replies not verified"
            }
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="22" font-size="14">Latency by percentile: {}</text>"#,
            escape(&title)
        );
        for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
            .iter()
            .enumerate()
        {
            let x = LEFT + pw * i as f64 / DECADES;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                TOP + ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                TOP + ph + 18.0
            );
        }
        for i in 0..=4 {
            let ms = top_ms * i as f64 / 4.0;
            let y = y_of(ms);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                fmt_ms(ms)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
            LEFT + pw / 2.0,
            H - 10.0
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (ms)</text>"#,
            TOP + ph / 2.0,
            TOP + ph / 2.0
        );
        let points: Vec<String> = self
            .percentiles
            .iter()
            .map(|p| {
                format!(
                    "{:.1},{:.1}",
                    x_of(p.percentile / 100.0),
                    y_of(p.value_us / 1000.0)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            points.join(" ")
        );
        s.push_str("</svg>\n");
        s
    }

    /// Prints the text report and writes the JSON and SVG files asked for.
    pub fn emit(&self, options: &OutputOptions) -> std::io::Result<()> {
        print!("{}", self.text(options.latency));
        if let Some(path) = &options.json {
            std::fs::write(path, self.json()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
            })?;
        }
        if let Some(path) = &options.plot {
            std::fs::write(path, self.svg()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
            })?;
        }
        Ok(())
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * base)
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
