//! callrelay: a small relay for one-to-one audio/video calls between Qt 5
//! clients that speak QDataStream over TCP (see `docs/protocol.md`).
//!
//! The layers point one way, and only `server` does I/O:
//!
//! ```text
//! protocol  <-  relay  <-  server  <-  main (src/main.rs)
//! (bytes)      (calls)    (mio loop, sockets, buffers, timers)
//! ```
//!
//! - [`protocol`]: QDataStream codec, message types, the incremental parser.
//! - [`relay`]: registrations and calls as plain state machines returning
//!   [`relay::Action`]s; no sockets, no buffers.
//! - [`server`]: the single-threaded mio poll loop that owns a slab of
//!   connections and applies the relay's actions.
//! - [`cluster`]: the cluster's directory, Redis codec and trunk framing
//!   (no I/O; the server drives them).
//! - [`config`]: command-line options, defaults and validation;
//!   [`config_file`]: `--config FILE` turned into options.
//! - [`ids`]: identifier newtypes shared by the layers.
#![deny(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod ids;
pub mod metrics;
pub mod protocol;
pub mod relay;
pub mod server;
