//! The cluster (PROTOCOL.md section 11; docs/cluster.md): nodes share a
//! directory of users in Redis and carry calls, text and media between
//! them over direct node-to-node trunks. This module is the protocol side,
//! with no sockets: the RESP codec ([`resp`]), the directory's decisions
//! ([`directory`]) and the trunk framing ([`trunk`]). The server drives
//! the connections in its one poll loop (`server::cluster`).

pub mod directory;
pub mod resp;
pub mod trunk;
