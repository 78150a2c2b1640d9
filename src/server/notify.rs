//! The systemd notification protocol (`sd_notify`, `Type=notify`): state
//! lines sent as datagrams to the Unix socket named by `$NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace). Without the variable
//! nothing is sent. No crate: it is one datagram per state change.

use std::os::unix::net::UnixDatagram;

use log::debug;

/// Where the service manager listens, if it does.
pub struct Notifier {
    target: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (and nothing to do without it).
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|path| !path.is_empty())
            .and_then(|path| UnixDatagram::unbound().ok().map(|socket| (socket, path)));
        Notifier { target }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier { target: None }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines); a failure is
    /// only logged: the relay serves on without its service manager.
    pub fn send(&self, state: &str) {
        let Some((socket, path)) = &self.target else {
            return;
        };
        let sent = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
            }
            None => socket.send_to(state.as_bytes(), path),
        };
        if let Err(error) = sent {
            debug!("sd_notify to {path}: {error}");
        }
    }
}
