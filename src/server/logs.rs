//! Rate-limited warnings: one hostile client must not be able to flood the log.
//!
//! Each core keeps, per kind of line (a close reason, "accept failed", ...), a one-second
//! window: the first [`PER_SECOND`] lines of a kind in a window are logged, the rest are
//! counted, and the next line logged after them says how many were suppressed. The cost is a
//! clock read per warning, never per request.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Lines of one kind logged per second and core before the rest are suppressed.
pub(crate) const PER_SECOND: u32 = 5;

const WINDOW: Duration = Duration::from_secs(1);

/// One core's log windows.
#[derive(Default)]
pub(crate) struct LogLimit {
    kinds: RefCell<Vec<Window>>,
}

struct Window {
    kind: &'static str,
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// Whether a line of `kind` may be logged now: `Some(n)` when it may, `n` lines of that kind
    /// having been suppressed since the last one logged; `None` when this one is suppressed.
    pub(crate) fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut kinds = self.kinds.borrow_mut();
        let w = match kinds.iter().position(|w| w.kind == kind) {
            Some(i) => &mut kinds[i],
            None => {
                kinds.push(Window {
                    kind,
                    started: now,
                    logged: 0,
                    suppressed: 0,
                });
                kinds.last_mut()?
            }
        };
        if now.saturating_duration_since(w.started) >= WINDOW {
            w.started = now;
            w.logged = 0;
        }
        if w.logged >= PER_SECOND {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// `warn!` through a core's [`LogLimit`]: logged with `suppressed = N` after suppressed lines,
/// or counted and dropped.
macro_rules! limited_warn {
    ($limit:expr, $kind:expr, $($rest:tt)+) => {
        if let Some(suppressed) = $limit.allow($kind) {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($rest)+);
            } else {
                tracing::warn!($($rest)+);
            }
        }
    };
}
pub(crate) use limited_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_rate_and_the_next_line_counts_the_rest() {
        let limit = LogLimit::default();
        let allowed = (0..100)
            .filter(|_| limit.allow("bad_magic").is_some())
            .count();
        assert_eq!(allowed, PER_SECOND as usize);
        // Another kind has its own window.
        assert_eq!(limit.allow("timeout"), Some(0));
        std::thread::sleep(WINDOW);
        assert_eq!(limit.allow("bad_magic"), Some(100 - PER_SECOND as u64));
        assert_eq!(limit.allow("bad_magic"), Some(0));
    }
}
