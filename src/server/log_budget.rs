//! Log lines under abuse (PROTOCOL.md section 8.5): a budget of lines per
//! second for the events a flood of bad connections produces, shared by all
//! of them. A line over the budget is not written at its level but counted
//! by its code (and still written at debug level, so a debugging operator
//! sees everything); the counts are summed up in one line at most every
//! summary interval, written from a timer so the last burst is reported
//! too. Plain data: the caller passes the time and does the logging.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Lines per second, in all, that the budget lets through.
pub const LINES_PER_SECOND: u32 = 20;
/// How often the suppressed lines are summed up.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// The budget and what it held back.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    second_start: Option<Instant>,
    used: u32,
    suppressed: BTreeMap<&'static str, u64>,
}

impl LogBudget {
    /// A budget of `per_second` lines a second.
    pub fn new(per_second: u32) -> LogBudget {
        LogBudget {
            per_second,
            second_start: None,
            used: 0,
            suppressed: BTreeMap::new(),
        }
    }

    /// True if a line about `code` may be written at its level now;
    /// otherwise it is counted for the next summary.
    pub fn allow(&mut self, now: Instant, code: &'static str) -> bool {
        let new_second = self
            .second_start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1));
        if new_second {
            self.second_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            return true;
        }
        *self.suppressed.entry(code).or_insert(0) += 1;
        false
    }

    /// The summary of the lines held back since the last one (`None` if
    /// there were none), e.g. `"bad_user_id 4211, malformed 12"`.
    pub fn take_summary(&mut self) -> Option<(u64, String)> {
        if self.suppressed.is_empty() {
            return None;
        }
        let total = self.suppressed.values().sum();
        let by_code = std::mem::take(&mut self.suppressed)
            .into_iter()
            .map(|(code, count)| format!("{code} {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        Some((total, by_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_second_and_counts_what_it_holds_back() {
        let start = Instant::now();
        let mut budget = LogBudget::new(3);
        let allowed = (0..10)
            .filter(|i| budget.allow(start, if i % 2 == 0 { "malformed" } else { "refused" }))
            .count();
        assert_eq!(allowed, 3);
        assert_eq!(
            budget.take_summary(),
            Some((7, "malformed 3, refused 4".to_owned()))
        );
        assert_eq!(budget.take_summary(), None);
        assert!(!budget.allow(start + Duration::from_millis(999), "x"));
        assert!(budget.allow(start + Duration::from_secs(1), "x"));
    }
}
