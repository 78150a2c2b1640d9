//! The I/O layer: one single-threaded mio poll loop ([`Server`]) that owns
//! the listener, a slab of [`connection::Connection`]s, the timers and the
//! [`crate::relay::Relay`], and applies the relay's actions. Only this
//! module touches sockets.

pub mod buffer;
pub mod cluster;
pub mod connection;
pub mod event_loop;
pub mod log_budget;
pub mod metrics_http;
pub mod notify;
pub mod pipe;
pub mod socket;
pub mod timers;
pub mod transport;

pub use event_loop::{Exit, Server};
