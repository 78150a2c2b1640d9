//! Accepting connections: the connection limits (total, per address,
//! unregistered), refusals logged within the log budget, the reserve
//! descriptor for running out of file descriptors, and inserting accepted
//! sockets after the event batch.

use super::*;
use crate::server::transport::Tuning;

impl Server {
    pub(super) fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    if let Some(reason) = self.refusal(addr.ip()) {
                        self.refuse(stream, addr, reason);
                        continue;
                    }
                    *self.per_ip.entry(addr.ip()).or_insert(0) += 1;
                    self.unregistered += 1;
                    self.accepted.push((stream, addr));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if is_out_of_fds(&error) && self.reserve_fd.take().is_some() => {
                    // Out of descriptors: free the reserve, accept the pending
                    // connection and close it at once, take the reserve back.
                    // Without this the connection would stay pending and wake
                    // the loop again and again.
                    let accepted = self.listener.accept();
                    let pending = accepted.is_ok();
                    if let Ok((stream, addr)) = accepted {
                        self.refuse(stream, addr, "out of file descriptors");
                    }
                    // Only now is a descriptor free again for the reserve.
                    self.reserve_fd = File::open("/dev/null").ok();
                    if !pending {
                        // Nothing was pending after all (Linux reports EMFILE
                        // before it looks at the queue): stop, or this loop
                        // would never see WouldBlock.
                        return;
                    }
                }
                Err(error) => {
                    let level = self.budgeted("accept_failed", log::Level::Warn);
                    log!(
                        level,
                        "accept failed: {error}; retrying in {ACCEPT_RETRY:?}"
                    );
                    self.timers
                        .arm(self.now + ACCEPT_RETRY, TimerKey::AcceptRetry);
                    return;
                }
            }
        }
    }

    /// Why a new connection from `ip` must be refused, if it must.
    pub(super) fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let config = &self.config;
        if self.auth_failures.blocked(ip, self.now) {
            Some("authentication failures (--auth-fail-limit)")
        } else if self.conns.len() + self.accepted.len() >= config.max_connections {
            Some("connection limit (--max-connections)")
        } else if self.unregistered >= config.max_unregistered {
            Some("unregistered connection limit (--max-unregistered)")
        } else if config.max_per_ip > 0
            && self.per_ip.get(&ip).copied().unwrap_or(0) as usize >= config.max_per_ip
        {
            Some("per-address limit (--max-per-ip)")
        } else {
            None
        }
    }

    /// Closes a just-accepted connection; the log line is within the log
    /// budget (beyond it, refusals are counted by reason and summed up).
    pub(super) fn refuse(&mut self, stream: TcpStream, addr: SocketAddr, reason: &'static str) {
        drop(stream);
        self.counters.connections_refused += 1;
        if self.auth_failures.blocked(addr.ip(), self.now) {
            self.counters.auth_refused += 1;
        }
        let level = self.budgeted(reason, log::Level::Warn);
        log!(level, "refused a connection from {addr}: {reason}");
    }

    pub(super) fn insert_accepted(&mut self) {
        let tuning = Tuning {
            user_timeout: self.config.timeouts.idle,
            send_lowat: u32::try_from(self.config.send_lowat).unwrap_or(u32::MAX),
        };
        for (stream, addr) in std::mem::take(&mut self.accepted) {
            let (mut transport, failures) = Transport::accepted(stream, &tuning, self.tls.clone());
            for (option, error) in failures {
                debug!("{addr}: {option} failed: {error}");
            }
            let entry = self.conns.vacant_entry();
            // Generation 0 is never a connection's: it names trunk streams.
            self.next_generation = self.next_generation.wrapping_add(1).max(1);
            let Ok(slot) = u32::try_from(entry.key()) else {
                warn!("{addr}: no connection slot left");
                self.abandon_admitted(addr);
                continue;
            };
            let id = ConnId {
                slot,
                generation: self.next_generation,
            };
            if let Err(error) =
                self.poll
                    .registry()
                    .register(&mut transport, Token(id.index()), Interest::READABLE)
            {
                warn!("{addr}: cannot register with the poll: {error}");
                self.abandon_admitted(addr);
                continue;
            }
            entry.insert(Connection::new(id, transport, addr, self.now));
            self.counters.connections_accepted += 1;
            // Connections that never register are logged at debug level
            // only (PROTOCOL.md 8.5): the line that counts is the
            // registration's.
            debug!("{id} connected from {addr}");
            self.timers.arm(
                self.now + self.config.timeouts.register,
                TimerKey::Liveness(id),
            );
        }
    }
}

impl Server {
    /// Gives back what admission counted for an accepted socket that never
    /// became a connection (every such path goes through here).
    fn abandon_admitted(&mut self, addr: SocketAddr) {
        self.forget_address(addr.ip());
        self.unregistered -= 1;
    }
}

/// Failed authentications per source address (PROTOCOL.md section 9):
/// beyond the limit within [`AUTH_FAIL_WINDOW`], the address's new
/// connections are closed at once for [`AUTH_FAIL_BLOCK`].
#[derive(Debug, Default)]
pub(super) struct AuthFailures {
    by_address: HashMap<IpAddr, FailWindow>,
    /// Entries after the last sweep of expired ones: the next sweep waits
    /// until the map has doubled, so sweeping costs O(1) per failure
    /// amortized, whatever the number of addresses.
    swept_at: usize,
}

/// How long failures count.
pub(super) const AUTH_FAIL_WINDOW: Duration = Duration::from_secs(10);
/// How long an address over the limit is refused.
pub(super) const AUTH_FAIL_BLOCK: Duration = Duration::from_secs(10);
/// Addresses remembered before expired ones are swept.
const AUTH_FAIL_SWEEP: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct FailWindow {
    start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl AuthFailures {
    /// Counts a failure of `ip` at `now`; past `limit` in the window, the
    /// address is blocked.
    pub(super) fn record(&mut self, ip: IpAddr, now: Instant, limit: u32) {
        if self.by_address.len() >= AUTH_FAIL_SWEEP.max(2 * self.swept_at) {
            self.by_address.retain(|_, window| !window.expired(now));
            self.swept_at = self.by_address.len();
        }
        let window = self.by_address.entry(ip).or_insert(FailWindow {
            start: now,
            count: 0,
            blocked_until: None,
        });
        if now.duration_since(window.start) >= AUTH_FAIL_WINDOW {
            window.start = now;
            window.count = 0;
        }
        window.count = window.count.saturating_add(1);
        if window.count > limit {
            window.blocked_until = Some(now + AUTH_FAIL_BLOCK);
        }
    }

    /// True while `ip` is refused.
    pub(super) fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.by_address
            .get(&ip)
            .and_then(|window| window.blocked_until)
            .is_some_and(|until| now < until)
    }
}

impl FailWindow {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.start) >= AUTH_FAIL_WINDOW
            && self.blocked_until.is_none_or(|until| now >= until)
    }
}

pub(super) fn is_out_of_fds(error: &io::Error) -> bool {
    // EMFILE (process limit) or ENFILE (system limit).
    matches!(error.raw_os_error(), Some(24) | Some(23))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_past_the_limit_for_the_block_time() {
        let ip: IpAddr = "192.0.2.7".parse().expect("literal");
        let other: IpAddr = "192.0.2.8".parse().expect("literal");
        let start = Instant::now();
        let mut failures = AuthFailures::default();
        for _ in 0..3 {
            failures.record(ip, start, 3);
        }
        assert!(!failures.blocked(ip, start), "at the limit, not past it");
        failures.record(ip, start, 3);
        assert!(failures.blocked(ip, start));
        assert!(!failures.blocked(other, start));
        assert!(failures.blocked(ip, start + AUTH_FAIL_BLOCK - Duration::from_millis(1)));
        assert!(!failures.blocked(ip, start + AUTH_FAIL_BLOCK));
        // Failures older than the window do not add up.
        let later = start + AUTH_FAIL_WINDOW;
        for _ in 0..3 {
            failures.record(other, later, 3);
        }
        failures.record(other, later + AUTH_FAIL_WINDOW, 3);
        assert!(!failures.blocked(other, later + AUTH_FAIL_WINDOW));
    }
}
