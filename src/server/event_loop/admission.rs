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
        if self.conns.len() + self.accepted.len() >= config.max_connections {
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
        let level = self.budgeted(reason, log::Level::Warn);
        log!(level, "refused a connection from {addr}: {reason}");
    }

    pub(super) fn insert_accepted(&mut self) {
        let tuning = Tuning {
            user_timeout: self.config.timeouts.idle,
            send_lowat: u32::try_from(self.config.send_lowat).unwrap_or(u32::MAX),
        };
        for (stream, addr) in std::mem::take(&mut self.accepted) {
            let (mut transport, failures) = Transport::plain(stream, &tuning);
            for (option, error) in failures {
                debug!("{addr}: {option} failed: {error}");
            }
            let entry = self.conns.vacant_entry();
            self.next_generation = self.next_generation.wrapping_add(1);
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

pub(super) fn is_out_of_fds(error: &io::Error) -> bool {
    // EMFILE (process limit) or ENFILE (system limit).
    matches!(error.raw_os_error(), Some(24) | Some(23))
}
