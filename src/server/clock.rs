//! The connections' clock: one thread per server that ticks every core at a fixed period, so
//! each core's sweeper ([`super::conn::sweep`]) looks at its connections' timeouts (idle,
//! frame, buffers to give back) once per tick.
//!
//! Why not a glommio timer per connection: glommio arms a kernel timeout on its ring around
//! every sleep of a core that has any timer pending, and cancels it when the core wakes. A
//! per-connection watchdog timer (even one armed once per timeout) made each of those sleeps
//! cost ~900 user-space instructions more: 6% of a call at one call in flight
//! (benches/instructions.sh). The tick wakes a core from outside (a foreign wake through its
//! eventfd), so a core with no timer of its own sleeps with none armed.
//!
//! The price is precision: a timeout is noticed at the first tick after it passes, so the
//! period is a fraction of the shortest timeout it serves ([`period`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::Limits;

/// A core's end of the clock: its sweeper waits on it.
#[derive(Default)]
pub(crate) struct Tick(event_listener::Event);

impl Tick {
    /// Ready at the next tick.
    pub(crate) async fn next(&self) {
        self.0.listen().await;
    }
}

/// Whether connections have timeouts to watch (`idle_timeout` or `frame_timeout` set): without,
/// no clock runs and a connection registers with no sweeper.
pub(crate) fn needed(limits: &Limits) -> bool {
    !limits.idle_timeout.is_zero() || !limits.frame_timeout.is_zero()
}

/// How often the cores' sweepers look at their connections: a quarter of `idle_timeout`, half
/// of `frame_timeout` and of [`super::conn::TRIM_AFTER`], whichever is shortest (not under
/// 5 ms). With the defaults (no idle timeout, a 30 s frame timeout): twice a second. A core
/// with no connection to watch is not woken.
pub(crate) fn period(limits: &Limits) -> Duration {
    let mut period = super::conn::TRIM_AFTER / 2;
    if !limits.frame_timeout.is_zero() {
        period = period.min(limits.frame_timeout / 2);
    }
    if !limits.idle_timeout.is_zero() {
        period = period.min(limits.idle_timeout / 4);
    }
    period.max(Duration::from_millis(5))
}

/// Starts the clock thread for `cores` cores: one [`Tick`] each, notified every `period`. The
/// thread ends at the first tick after every core has dropped its `Tick`.
pub(crate) fn start(cores: usize, period: Duration) -> std::io::Result<Vec<Arc<Tick>>> {
    let ticks: Vec<Arc<Tick>> = (0..cores).map(|_| Arc::new(Tick::default())).collect();
    let weak: Vec<Weak<Tick>> = ticks.iter().map(Arc::downgrade).collect();
    std::thread::Builder::new()
        .name("percore-clock".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let mut alive = false;
                for tick in weak.iter().filter_map(Weak::upgrade) {
                    alive = true;
                    // Wakes only a sweeper that waits: one with connections to watch.
                    tick.0.notify(usize::MAX);
                }
                if !alive {
                    return;
                }
            }
        })?;
    Ok(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_serves_the_shortest_timeout() {
        let mut limits = Limits {
            idle_timeout: Duration::ZERO,
            frame_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        assert_eq!(period(&limits), Duration::from_millis(500));
        limits.idle_timeout = Duration::from_millis(200);
        assert_eq!(period(&limits), Duration::from_millis(50));
        limits.frame_timeout = Duration::from_millis(60);
        assert_eq!(period(&limits), Duration::from_millis(30));
        limits.idle_timeout = Duration::from_millis(1);
        assert_eq!(period(&limits), Duration::from_millis(5));
    }

    #[test]
    fn every_core_is_ticked() {
        let ticks = start(2, Duration::from_millis(5)).unwrap();
        for tick in &ticks {
            futures_lite::future::block_on(tick.next());
        }
    }
}
