//! TLS for the load tool (`--tls`, `--tls-ca FILE`, `--sink-cert FILE`,
//! `--sink-key FILE`): a [`Stream`] is a socket that is either plain or
//! carries a rustls connection, with `Read` and `Write` that work the same
//! way blocking (the set-up steps) and nonblocking (the mio loops).
//!
//! Nonblocking, `read` returns `WouldBlock` only when the socket did, and
//! `write` only when the socket is full, so edge-triggered readiness stays
//! correct; TLS bytes still queued after a `WouldBlock` go out with
//! [`Stream::flush_pending`], which the loops call on every writable event.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// A socket, plain or TLS.
pub struct Stream<S> {
    /// The socket underneath (for options, timeouts and registration).
    pub sock: S,
    tls: Option<Box<rustls::Connection>>,
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {error}"))
}

impl<S> Stream<S> {
    /// A plain socket.
    pub fn plain(sock: S) -> Stream<S> {
        Stream { sock, tls: None }
    }

    /// The same connection over another handle of its socket (the std
    /// socket of the set-up becomes the mio socket of the loop).
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> Stream<T> {
        Stream {
            sock: f(self.sock),
            tls: self.tls,
        }
    }
}

impl<S: Read + Write> Stream<S> {
    /// Writes queued TLS bytes until none are left or the socket is full
    /// (then `Ok`: the next writable event calls this again).
    pub fn flush_pending(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

impl Stream<std::net::TcpStream> {
    /// Blocking: completes the TLS handshake (nothing for plain sockets)
    /// within `timeout`, for peers that do nothing until it is done (a
    /// TLS-terminating pipe connects onwards only after it).
    pub fn handshake(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        if self.tls.is_none() {
            return Ok(());
        }
        self.sock.set_read_timeout(Some(timeout))?;
        loop {
            self.flush_pending()?;
            let tls = self.tls.as_mut().expect("TLS");
            if !tls.is_handshaking() {
                break;
            }
            match tls.read_tls(&mut self.sock) {
                Ok(0) => return Err(invalid("closed during the handshake")),
                Ok(_) => {
                    tls.process_new_packets().map_err(invalid)?;
                }
                Err(error) => return Err(error),
            }
        }
        self.sock.set_read_timeout(None)
    }
}

impl<S: Read + Write> Read for Stream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.read(buf);
        }
        loop {
            let tls = self.tls.as_mut().expect("TLS");
            match tls.reader().read(buf) {
                Ok(count) => return Ok(count),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            // No plaintext: more records from the socket (WouldBlock only from it).
            match tls.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    tls.process_new_packets().map_err(invalid)?;
                    // Handshake answers, key updates, alerts.
                    self.flush_pending()?;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl<S: Read + Write> Write for Stream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.write(buf);
        }
        self.flush_pending()?;
        let tls = self.tls.as_mut().expect("TLS");
        let count = tls.writer().write(buf)?;
        self.flush_pending()?;
        if count == 0 && !buf.is_empty() {
            // rustls's buffer is full and the socket took nothing more.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()?;
        self.sock.flush()
    }
}

/// The client configuration of this run (`--tls`), set once at start-up.
static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
/// The sink's server configuration (`--sink-cert`, `--sink-key`).
static SINK: OnceLock<Arc<ServerConfig>> = OnceLock::new();

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every client socket of this run speaks TLS: the server's certificate
/// must chain to `ca` (PEM), or with no CA is not checked at all.
pub fn enable_client(ca: Option<&Path>) -> Result<(), String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let config = match ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|error| format!("--tls-ca {}: {error}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|error| format!("--tls-ca {}: {error}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|error| format!("--tls-ca {}: {error}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("--tls-ca {}: no certificate in it", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
    };
    let _ = CLIENT.set(Arc::new(config));
    Ok(())
}

/// The sink's listener speaks TLS with this certificate chain and key (PEM).
pub fn enable_sink(cert: &Path, key: &Path) -> Result<(), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("--sink-cert {}: {error}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("--sink-key {}: {error}", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|error| format!("--sink-cert/--sink-key: {error}"))?;
    let _ = SINK.set(Arc::new(config));
    Ok(())
}

/// True when client sockets speak TLS.
pub fn client_enabled() -> bool {
    CLIENT.get().is_some()
}

/// True when the sink accepts TLS.
pub fn sink_enabled() -> bool {
    SINK.get().is_some()
}

/// A client socket to `addr`: TLS with `--tls` (nothing sent yet: the
/// handshake goes with the first write, or the first flush), else plain.
pub fn client<S>(sock: S, addr: SocketAddr) -> io::Result<Stream<S>> {
    let Some(config) = CLIENT.get() else {
        return Ok(Stream::plain(sock));
    };
    let connection =
        rustls::ClientConnection::new(Arc::clone(config), ServerName::IpAddress(addr.ip().into()))
            .map_err(invalid)?;
    Ok(Stream {
        sock,
        tls: Some(Box::new(connection.into())),
    })
}

/// A socket the sink accepted: TLS with `--sink-cert`, else plain.
pub fn sink<S>(sock: S) -> io::Result<Stream<S>> {
    let Some(config) = SINK.get() else {
        return Ok(Stream::plain(sock));
    };
    let connection = rustls::ServerConnection::new(Arc::clone(config)).map_err(invalid)?;
    Ok(Stream {
        sock,
        tls: Some(Box::new(connection.into())),
    })
}

/// `--tls` without `--tls-ca`: any certificate is taken (like HAProxy's
/// `verify none`); the handshake's signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
