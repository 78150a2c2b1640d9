//! Operations on the same loop: signals and the graceful shutdown, the
//! metrics snapshot and its HTTP connections.

use super::*;

impl Server {
    /// Reads pending signals: SIGHUP reloads the secret file; of SIGINT
    /// and SIGTERM the first starts a graceful shutdown, a second one forces
    /// the exit.
    pub(super) fn on_signals(&mut self) -> Option<Exit> {
        let pending: Vec<i32> = self
            .signals
            .as_mut()
            .map(|signals| signals.pending().collect())
            .unwrap_or_default();
        for signal in pending {
            if signal == SIGHUP {
                self.notifier.send("RELOADING=1\nSTATUS=reloading");
                self.reload();
                self.notifier
                    .send(&format!("READY=1\nSTATUS={}", self.status_line()));
                continue;
            }
            match self.lifecycle {
                Lifecycle::Running => self.begin_shutdown(),
                Lifecycle::Draining { .. } => {
                    warn!("second signal: exiting at once");
                    return Some(Exit::Forced);
                }
            }
        }
        None
    }

    /// SIGHUP: reads the `--config` file again (what can change at run
    /// time changes, and is logged; what cannot is reported as needing a
    /// restart), then the secret file (if it does not parse, the keys in
    /// use stay: PROTOCOL.md section 9) and the certificate.
    fn reload(&mut self) {
        self.reload_config();
        if let Some(path) = self.config.auth.secret_file.clone() {
            match crate::config::load_keys(&path) {
                Ok(keys) => {
                    info!("SIGHUP: reloaded {}", path.display());
                    self.set_auth_keys(keys);
                }
                Err(error) => error!("SIGHUP: {error}; the keys in use stay"),
            }
        }
        let tls = &self.config.tls;
        if let (Some(cert), Some(key)) = (tls.cert.clone(), tls.key.clone()) {
            match crate::config::load_tls(&cert, &key) {
                Ok(config) => {
                    info!(
                        "SIGHUP: reloaded {} (new handshakes use it)",
                        cert.display()
                    );
                    self.set_tls(config);
                }
                Err(error) => error!("SIGHUP: {error}; the certificate in use stays"),
            }
        }
    }

    /// Stops accepting, ends every call (CALL_END to both parties), and
    /// closes every connection with ERROR `shutting_down` after its output.
    pub(super) fn begin_shutdown(&mut self) {
        let deadline = self.now + self.config.timeouts.shutdown;
        info!(
            "signal received: shutting down ({} connections, {} calls; at most {:?})",
            self.conns.len(),
            self.relay.live_calls(),
            self.config.timeouts.shutdown
        );
        self.lifecycle = Lifecycle::Draining { deadline };
        self.notifier
            .send("STOPPING=1\nSTATUS=draining: calls ended, connections closing");
        if let Err(error) = self.poll.registry().deregister(&mut self.listener) {
            debug!("deregister listener: {error}");
        }
        self.relay.end_all(&mut self.actions);
        let _ = self.apply_actions();
        let ids: Vec<ConnId> = self.conns.iter().map(|(_, conn)| conn.id).collect();
        for id in ids {
            let detail = "the server is shutting down".to_owned();
            self.begin_close(id, CloseReason::Error(ErrorCode::ShuttingDown, detail));
        }
        self.timers.arm(deadline, TimerKey::ShutdownDeadline);
    }

    /// The counters and gauges, read now.
    pub(super) fn snapshot(&self) -> Snapshot<'_> {
        let (calls_ringing, calls_active) = self.relay.call_counts();
        let (mut paused, mut queued_bytes, mut tls_connections) = (0, 0, 0);
        for (_, conn) in &self.conns {
            tls_connections += usize::from(conn.transport.is_tls());
            paused += usize::from(conn.outbound.paused_on().is_some());
            queued_bytes += conn.output.len() + conn.inbound.held_len();
        }
        Snapshot {
            counters: &self.counters,
            relay: self.relay.stats(),
            connections: self.conns.len(),
            unregistered: self.unregistered,
            registered: self.relay.online(),
            calls_ringing,
            calls_active,
            paused,
            queued_bytes,
            tls_connections,
            cluster: self
                .cluster
                .as_ref()
                .map(|cluster| crate::metrics::ClusterSnapshot {
                    redis_up: cluster.redis_up(),
                    trunks_up: cluster.trunks_up(),
                    remote_users: self.relay.remote_users(),
                    file_streams: cluster.files.outgoing.len() + cluster.files.incoming.len(),
                }),
        }
    }

    pub(super) fn accept_metrics(&mut self) {
        loop {
            let Some(listener) = self.metrics_listener.as_ref() else {
                return;
            };
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    if error.kind() != io::ErrorKind::WouldBlock {
                        warn!("metrics accept failed: {error}");
                    }
                    return;
                }
            };
            let entry = self.metrics_conns.vacant_entry();
            let key = entry.key();
            let token = Token(METRICS_BASE + key);
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            let deadline = self.now + METRICS_DEADLINE;
            entry.insert(MetricsConn::new(stream, deadline));
            self.timers.arm(deadline, TimerKey::Metrics(key));
        }
    }

    pub(super) fn metrics_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.metrics_conns.get_mut(key) else {
            return;
        };
        let mut progress = if readable {
            conn.on_readable()
        } else {
            HttpProgress::Wait
        };
        if writable && progress == HttpProgress::Wait {
            progress = conn.on_writable();
        }
        if let HttpProgress::Answer(request) = progress {
            let bytes = match request {
                Request::Metrics => metrics_http::response(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &metrics::render_prometheus(&self.snapshot()),
                ),
                Request::Health => match self.lifecycle {
                    Lifecycle::Running => metrics_http::response("200 OK", "text/plain", "ok\n"),
                    Lifecycle::Draining { .. } => metrics_http::response(
                        "503 Service Unavailable",
                        "text/plain",
                        "draining\n",
                    ),
                },
                Request::Ready => match self.not_ready() {
                    None => metrics_http::response("200 OK", "text/plain", "ready\n"),
                    Some(why) => metrics_http::response(
                        "503 Service Unavailable",
                        "text/plain",
                        &format!("{why}\n"),
                    ),
                },
                Request::NotFound => metrics_http::response(
                    "404 Not Found",
                    "text/plain",
                    "try /metrics, /healthz or /readyz\n",
                ),
                Request::MethodNotAllowed => {
                    metrics_http::response("405 Method Not Allowed", "text/plain", "GET only\n")
                }
                Request::Bad => {
                    metrics_http::response("400 Bad Request", "text/plain", "bad request\n")
                }
            };
            progress = match self.metrics_conns.get_mut(key) {
                Some(conn) => conn.answer(bytes),
                None => HttpProgress::Close,
            };
        }
        if progress == HttpProgress::Close {
            self.drop_metrics_conn(key);
        }
    }

    pub(super) fn drop_metrics_conn(&mut self, key: usize) {
        if self.metrics_conns.contains(key) {
            let mut conn = self.metrics_conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.socket);
        }
    }

    pub(super) fn forget_address(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Why new clients should not be sent here now, if they should not.
    fn not_ready(&self) -> Option<&'static str> {
        if matches!(self.lifecycle, Lifecycle::Draining { .. }) {
            return Some("draining");
        }
        match &self.cluster {
            Some(cluster) if !cluster.redis_up() => Some("Redis unreachable"),
            _ => None,
        }
    }

    /// The one-line status for the service manager (`systemctl status`).
    pub(super) fn status_line(&self) -> String {
        let (ringing, active) = self.relay.call_counts();
        format!(
            "{} connections, {} users, {} calls ringing, {} active",
            self.conns.len(),
            self.relay.online(),
            ringing,
            active
        )
    }

    /// Reads the configuration again from the command line kept at start
    /// (only when it names a `--config` file).
    fn reload_config(&mut self) {
        let Some(args) = self.config.reload_args.clone() else {
            return;
        };
        match crate::config::parse_args("callrelay", &args) {
            Ok(crate::config::Command::Run(new)) => self.apply_config(*new),
            Ok(_) => {}
            Err(error) => error!("SIGHUP: {error}; the configuration in use stays"),
        }
    }

    /// Takes what can change at run time from `new` and logs each change;
    /// a change that needs a restart is logged and not made.
    fn apply_config(&mut self, new: Config) {
        let old = std::mem::replace(&mut self.config, new);
        let restart = |name: &str, changed: bool| {
            if changed {
                warn!(
                    "SIGHUP: {name} changed in the configuration: it takes a restart; the running value stays"
                );
            }
        };
        restart("listen", old.listen != self.config.listen);
        restart(
            "metrics-listen",
            old.metrics_listen != self.config.metrics_listen,
        );
        restart("reuse-port", old.reuse_port != self.config.reuse_port);
        restart("cluster options", old.cluster != self.config.cluster);
        restart(
            "max-user-id",
            old.limits.max_user_id != self.config.limits.max_user_id,
        );
        self.config.listen = old.listen;
        self.config.metrics_listen = old.metrics_listen;
        self.config.reuse_port = old.reuse_port;
        self.config.cluster = old.cluster.clone();
        self.config.limits.max_user_id = old.limits.max_user_id;
        self.config.limits.max_registration = old.limits.max_registration;
        let before = format!("{old:?}");
        let after = format!("{:?}", self.config);
        if before == after {
            info!("SIGHUP: the configuration is unchanged");
        } else {
            for (was, is) in debug_fields(&before).zip(debug_fields(&after)) {
                if was != is {
                    info!("SIGHUP: {was} -> {is}");
                }
            }
        }
        let timeouts = &self.config.timeouts;
        self.relay
            .set_timeouts(timeouts.ring, timeouts.resume_window);
        self.max_input = self.config.limits.max_whole_frame().max(READ_BUFFER_SIZE);
        if let Some(level) = self.config.log_level {
            log::set_max_level(level);
        }
    }
}

/// The `name: value` fields of a `{:?}` rendering, innermost first, in order
/// (both renderings of one type have the same fields in the same order).
fn debug_fields(rendered: &str) -> impl Iterator<Item = &str> {
    rendered
        .split(['{', '}', ','])
        .map(str::trim)
        .filter(|field| field.contains(": "))
}
