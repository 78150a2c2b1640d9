//! Deadlines: firing due timers (liveness, linger, stall (the pipe judges
//! it), accept retry,
//! stats, metrics, the relay's ring timers), compacting stale ones, and the
//! idle check.

use super::*;

impl Server {
    pub(super) fn fire_timers(&mut self) {
        while let Some(key) = self.timers.pop_expired(self.now) {
            match key {
                TimerKey::Liveness(id) => match self.conn(id).map(|c| c.life) {
                    Some(Life::AwaitingRegistration) => {
                        let detail = "no registration within the registration timeout".to_owned();
                        self.begin_close(id, CloseReason::Error(ErrorCode::Timeout, detail));
                    }
                    Some(Life::Registered) => self.check_idle(id),
                    Some(Life::Closing { .. }) | None => {}
                },
                TimerKey::Linger(id) => {
                    if self.conn(id).is_some_and(Connection::is_closing) {
                        self.reap.push(id);
                    }
                }
                TimerKey::AcceptRetry if self.lifecycle == Lifecycle::Running => self.accept_all(),
                TimerKey::ClusterTick => self.cluster_tick(),
                TimerKey::AcceptRetry | TimerKey::ShutdownDeadline => {}
                TimerKey::LogSummary => {
                    if let Some((total, by_code)) = self.log_budget.take_summary() {
                        warn!(
                            "{total} log line(s) held back in the last {:?} (over {} a second): {by_code}",
                            log_budget::SUMMARY_INTERVAL,
                            log_budget::LINES_PER_SECOND
                        );
                    }
                    self.timers.arm(
                        self.now + log_budget::SUMMARY_INTERVAL,
                        TimerKey::LogSummary,
                    );
                }
                TimerKey::Stall(to, armed) => self.on_stall_timer(to, armed),
                TimerKey::Metrics(key) => {
                    if self
                        .metrics_conns
                        .get(key)
                        .is_some_and(|c| c.deadline <= self.now)
                    {
                        self.drop_metrics_conn(key);
                    }
                }
                TimerKey::Stats => {
                    info!("{}", metrics::stats_line(&self.snapshot()));
                    self.notifier
                        .send(&format!("STATUS={}", self.status_line()));
                    self.timers.arm(
                        self.now + self.config.timeouts.stats_interval,
                        TimerKey::Stats,
                    );
                }
                TimerKey::Relay(timer) => {
                    self.relay.on_timer(&timer, self.now, &mut self.actions);
                }
            }
            let _ = self.apply_actions();
            self.close_queued();
        }
    }

    /// Drops stale deadlines once they clearly outnumber the live ones
    /// (a liveness and a linger deadline per connection, one per call).
    pub(super) fn compact_timers(&mut self) {
        let live_bound = 2 * self.conns.len() + self.relay.live_calls() + 1024;
        if self.timers.len() <= 2 * live_bound {
            return;
        }
        let (conns, relay) = (&self.conns, &self.relay);
        let alive = |id: &ConnId| conns.get(id.index()).is_some_and(|conn| conn.id == *id);
        self.timers.retain(|key| match key {
            TimerKey::Liveness(id) | TimerKey::Linger(id) => alive(id),
            TimerKey::AcceptRetry
            | TimerKey::Stats
            | TimerKey::ShutdownDeadline
            | TimerKey::LogSummary
            | TimerKey::ClusterTick => true,
            TimerKey::Metrics(_) => true,
            TimerKey::Stall(to, _) => alive(to),
            TimerKey::Relay(timer) => relay.timer_is_live(timer),
        });
        debug!("timers compacted to {}", self.timers.len());
    }

    pub(super) fn check_idle(&mut self, id: ConnId) {
        let idle = self.config.timeouts.idle;
        let Some(conn) = self.conn(id).filter(|c| c.life == Life::Registered) else {
            return;
        };
        // A connection the relay stopped reading (backpressure) is not idle.
        let deadline = if conn.outbound.paused_on().is_some() {
            self.now + idle
        } else {
            conn.last_progress + idle
        };
        if self.now >= deadline {
            let detail = format!("neither sent nor took a byte for {idle:?}");
            self.begin_close(id, CloseReason::Idle(detail));
        } else {
            self.timers.arm(deadline, TimerKey::Liveness(id));
        }
    }
}
