//! Command-line options: parsing (getopts), defaults, validation and the
//! `--help` text. Produces a [`Config`]; knows nothing of sockets.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use getopts::Options;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::{AuthMode, Keys};
use crate::ids::USER_ID_MAX_BYTES;
use crate::protocol::Limits;

/// Default listen address (PROTOCOL.md: port 8888 on every interface).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8888";
/// Default connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default soft output limit: media to the connection is dropped above it.
pub const DEFAULT_OUTPUT_SOFT: usize = 256 * 1024;
/// Default hard output limit: the connection is closed above it.
pub const DEFAULT_OUTPUT_HARD: usize = 8 * 1024 * 1024;
/// Default registration timeout.
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default ring timeout.
pub const DEFAULT_RING_TIMEOUT: Duration = Duration::from_secs(30);
/// Default seed media grace period after a call ends.
pub const DEFAULT_MEDIA_GRACE: Duration = Duration::from_secs(1);
/// Default time a closing connection gets to take its last bytes.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);
/// Default most connections that have not registered yet.
pub const DEFAULT_MAX_UNREGISTERED: usize = 1_000;
/// Default time a graceful shutdown waits for output to drain.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time frames may wait behind a stalled cut-through frame.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest wait of a media frame for one receiver before it is
/// dropped (PROTOCOL.md section 8.2).
pub const DEFAULT_MEDIA_MAX_DELAY: Duration = Duration::from_millis(300);
/// Default most unsent bytes the kernel holds per client socket
/// (`TCP_NOTSENT_LOWAT`, section 8.2).
pub const DEFAULT_SEND_LOWAT: usize = 16 * 1024;
/// Default time a call waits for a lost party to come back (section 8.3).
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(10);
/// Default failed authentications from one address within 10 s before its
/// new connections are refused for 10 s (PROTOCOL.md section 9).
pub const DEFAULT_AUTH_FAIL_LIMIT: u32 = 20;
/// Default lifetime of a token printed by `callrelay token`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(86_400);
/// Default interval of the stats log line.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);

/// The timeouts the server enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A connection must register within this.
    pub register: Duration,
    /// A registered connection silent for this long is closed.
    pub idle: Duration,
    /// A call not answered within this is refused with "timeout".
    pub ring: Duration,
    /// Seed media arriving this long after its call ended is dropped quietly.
    pub media_grace: Duration,
    /// A closing connection gets this long to take its last bytes.
    pub linger: Duration,
    /// A graceful shutdown waits at most this long for output to drain.
    pub shutdown: Duration,
    /// Interval of the stats log line (zero: off).
    pub stats_interval: Duration,
    /// Frames held behind a cut-through frame whose sender stalls may
    /// wait this long; then that sender is closed and its frame padded.
    pub stall: Duration,
    /// A media frame that waited this long for one receiver is dropped
    /// whole (zero: never).
    pub media_max_delay: Duration,
    /// A call whose party's connection was lost waits this long for it to
    /// register again (zero: the call ends at once).
    pub resume_window: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            register: DEFAULT_REGISTER_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            ring: DEFAULT_RING_TIMEOUT,
            media_grace: DEFAULT_MEDIA_GRACE,
            linger: DEFAULT_LINGER,
            shutdown: DEFAULT_SHUTDOWN_TIMEOUT,
            stats_interval: DEFAULT_STATS_INTERVAL,
            stall: DEFAULT_STALL_TIMEOUT,
            media_max_delay: DEFAULT_MEDIA_MAX_DELAY,
            resume_window: DEFAULT_RESUME_WINDOW,
        }
    }
}

/// Everything the server needs to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Frame and field size limits.
    pub limits: Limits,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections from one IP address (0: no limit).
    pub max_per_ip: usize,
    /// Most connections that have not registered yet.
    pub max_unregistered: usize,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Soft output limit per connection, in bytes.
    pub output_soft: usize,
    /// Hard output limit per connection, in bytes.
    pub output_hard: usize,
    /// Most unsent bytes the kernel may hold per client socket (0: the
    /// kernel's default, unbounded by us).
    pub send_lowat: usize,
    /// Token authentication.
    pub auth: AuthOptions,
    /// TLS on the client listener.
    pub tls: TlsOptions,
    /// `--reuse-port`: the client listener sets SO_REUSEPORT, so several
    /// nodes on one machine share its port.
    pub reuse_port: bool,
    /// The cluster this node joins, if any (PROTOCOL.md section 11).
    pub cluster: Option<ClusterOptions>,
    /// `--log-level`: overrides `RUST_LOG`; SIGHUP may change it.
    pub log_level: Option<log::LevelFilter>,
    /// The command line, kept when it names a `--config` file so SIGHUP
    /// can read the file again.
    pub reload_args: Option<Vec<String>>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// Cluster options (PROTOCOL.md section 11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterOptions {
    /// `--cluster redis://HOST:PORT[/DB]`: Redis's address.
    pub redis: SocketAddr,
    /// The Redis database number.
    pub redis_db: u32,
    /// `--node-id`.
    pub node_id: crate::ids::NodeId,
    /// `--trunk-listen`: where other nodes dial this one.
    pub trunk_listen: SocketAddr,
    /// `--trunk-advertise`: the address other nodes are told to dial.
    pub trunk_advertise: SocketAddr,
    /// `--cluster-prefix`: of every Redis key and channel.
    pub prefix: String,
    /// `--cluster-secret-file`: trunks prove they hold this secret.
    pub secret_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8888)),
            limits: Limits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_ip: 0,
            max_unregistered: DEFAULT_MAX_UNREGISTERED,
            metrics_listen: None,
            output_soft: DEFAULT_OUTPUT_SOFT,
            output_hard: DEFAULT_OUTPUT_HARD,
            send_lowat: DEFAULT_SEND_LOWAT,
            auth: AuthOptions::default(),
            tls: TlsOptions::default(),
            reuse_port: false,
            cluster: None,
            log_level: None,
            reload_args: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// Token authentication options (PROTOCOL.md section 9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthOptions {
    /// `--auth`: off unless a secret file is given (then require).
    pub mode: AuthMode,
    /// `--auth-secret-file`.
    pub secret_file: Option<PathBuf>,
    /// `--auth-fail-limit`: failures per address within 10 s.
    pub fail_limit: u32,
}

impl Default for AuthOptions {
    fn default() -> AuthOptions {
        AuthOptions {
            mode: AuthMode::Off,
            secret_file: None,
            fail_limit: DEFAULT_AUTH_FAIL_LIMIT,
        }
    }
}

/// TLS options (PROTOCOL.md section 10).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `--tls-cert`: the certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// `--tls-key`: its private key, PEM.
    pub key: Option<PathBuf>,
    /// `--require-tls`: plain connections get ERROR `tls_required`.
    pub require: bool,
}

/// Loads the certificate chain and key (PEM) into a rustls server
/// configuration (TLS 1.2 and 1.3, ring); the error names the file.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let named = |path: &Path, what: String| ConfigError::new(format!("{}: {what}", path.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|error| named(cert, error.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|error| named(cert, error.to_string()))?;
    if chain.is_empty() {
        return Err(named(cert, "no certificate in the file".to_owned()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|error| named(key, error.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| named(cert, error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|error| named(key, format!("does not go with the certificate: {error}")))?;
    Ok(Arc::new(config))
}

/// `callrelay token`: what to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user the token is for.
    pub user: String,
    /// How long it is valid.
    pub ttl: Duration,
    /// The secret file whose first key signs.
    pub secret_file: PathBuf,
}

/// Reads and parses a secret file; the error names the file and the line.
pub fn load_keys(path: &Path) -> Result<Keys, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(format!("--auth-secret-file {}: {error}", path.display()))
    })?;
    Keys::parse(&text).map_err(|error| {
        ConfigError::new(format!("--auth-secret-file {}: {error}", path.display()))
    })
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the relay.
    Run(Box<Config>),
    /// Print a token (`callrelay token USER [--ttl SECS] --auth-secret-file FILE`).
    Token(TokenRequest),
    /// Print this help text and exit.
    Help(String),
    /// Print the version and exit.
    Version,
    /// `--check-config`: the configuration is valid; print it and exit.
    CheckConfig(Box<Config>),
}

/// A command line that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see --help)", self.message)
    }
}

impl std::error::Error for ConfigError {}

fn options() -> Options {
    let mut opts = Options::new();
    opts.optopt(
        "l",
        "listen",
        "address to listen on (default 0.0.0.0:8888)",
        "ADDR",
    );
    opts.optopt(
        "p",
        "port",
        "port to listen on, on every interface (shorthand for --listen 0.0.0.0:PORT)",
        "PORT",
    );
    opts.optopt(
        "",
        "register-timeout",
        "close connections that have not registered within this (default 10)",
        "SECS",
    );
    opts.optopt(
        "",
        "idle-timeout",
        "close registered connections silent for this long, ending their calls (default 90)",
        "SECS",
    );
    opts.optopt(
        "",
        "ring-timeout",
        "refuse calls not answered within this with \"timeout\" (default 30)",
        "SECS",
    );
    opts.optopt("", "media-grace", "after a call ends, drop a seed client's stale media for this long instead of failing it (default 1; 0 = off)", "SECS");
    opts.optopt(
        "",
        "linger-timeout",
        "time a closing connection gets to take its last bytes (default 2)",
        "SECS",
    );
    opts.optopt(
        "",
        "max-connections",
        "most connections at once; more are accepted and closed at once (default 10000)",
        "N",
    );
    opts.optopt(
        "",
        "max-per-ip",
        "most connections from one IP address; 0 = no limit (default 0)",
        "N",
    );
    opts.optopt(
        "",
        "max-unregistered",
        "most connections that have not registered yet, so silent sockets cannot crowd out users (default 1000)",
        "N",
    );
    opts.optopt(
        "",
        "shutdown-timeout",
        "on SIGINT/SIGTERM, time to end calls and flush output before exiting (default 5)",
        "SECS",
    );
    opts.optopt(
        "",
        "stall-timeout",
        "while other frames wait behind a FILE or media frame, its sender must move 64 KiB per SECS or be closed (default 5)",
        "SECS",
    );
    opts.optopt(
        "",
        "media-max-delay",
        "drop a media frame whole once it has waited this long for one receiver; 0 = never (default 0.3)",
        "SECS",
    );
    opts.optopt(
        "",
        "send-lowat",
        "most unsent bytes the kernel may hold per client socket (TCP_NOTSENT_LOWAT), so delay builds up where the relay can drop; 0 = kernel default (default 16K)",
        "SIZE",
    );
    opts.optopt(
        "",
        "resume-window",
        "a call whose party lost its connection waits this long for it to register again; 0 = the call ends at once (default 10)",
        "SECS",
    );
    opts.optopt(
        "",
        "metrics-listen",
        "serve Prometheus metrics on http://ADDR/metrics (default off)",
        "ADDR",
    );
    opts.optflag(
        "",
        "reuse-port",
        "set SO_REUSEPORT on the client listener, so several nodes on one machine share its port (one process per core)",
    );
    opts.optopt(
        "",
        "cluster",
        "join the cluster whose directory is this Redis (6 or later); without it the node stands alone and needs no Redis",
        "redis://HOST:PORT[/DB]",
    );
    opts.optopt(
        "",
        "node-id",
        "this node's id in the cluster, 1-64 of [A-Za-z0-9._:-] (default: host name and client port)",
        "ID",
    );
    opts.optopt(
        "",
        "trunk-listen",
        "with --cluster: where other nodes connect to this one (default 127.0.0.1 and the client port + 1000; port 0: any free port)",
        "ADDR",
    );
    opts.optopt(
        "",
        "trunk-advertise",
        "with --cluster: the address other nodes dial to reach --trunk-listen (default: --trunk-listen; port 0: the port bound)",
        "ADDR",
    );
    opts.optopt(
        "",
        "cluster-prefix",
        "with --cluster: prefix of every Redis key and channel, so clusters can share a Redis (default callrelay:)",
        "P",
    );
    opts.optopt(
        "",
        "cluster-secret-file",
        "with --cluster: nodes prove on every trunk that they hold this secret (HMAC challenge); without it keep trunk ports private",
        "FILE",
    );
    opts.optopt(
        "",
        "stats-interval",
        "log a stats line every SECS seconds; 0 = off (default 60)",
        "SECS",
    );
    opts.optopt(
        "",
        "max-user-id",
        "most UTF-8 bytes in a user id, at most 128 (default 128)",
        "BYTES",
    );
    opts.optopt(
        "",
        "max-field",
        "most UTF-16 bytes in a QString field other than TEXT's text (default 1K)",
        "SIZE",
    );
    opts.optopt(
        "",
        "max-text",
        "most UTF-16 bytes in a TEXT message's text (default 64K)",
        "SIZE",
    );
    opts.optopt(
        "",
        "max-file",
        "most bytes of FILE data (default 64M)",
        "SIZE",
    );
    opts.optopt(
        "",
        "max-media",
        "most bytes of a length-prefixed media payload (default 4M)",
        "SIZE",
    );
    opts.optopt("", "output-soft", "output buffer size above which media to a connection is dropped whole frames at a time and file senders wait (default 256K)", "SIZE");
    opts.optopt(
        "",
        "output-hard",
        "output buffer size above which a connection is closed (default 8M)",
        "SIZE",
    );
    opts.optopt(
        "",
        "auth-secret-file",
        "registrations carry tokens signed with these keys: one `KID SECRET` per line, the first signs (callrelay token), all verify; SIGHUP reloads it",
        "FILE",
    );
    opts.optopt(
        "",
        "auth",
        "off, optional (tokens or bare ids) or require (default require with --auth-secret-file, else off)",
        "MODE",
    );
    opts.optopt(
        "",
        "tls-cert",
        "accept TLS too, on the same port (first bytes 16 03): certificate chain, PEM; SIGHUP reloads it",
        "FILE",
    );
    opts.optopt(
        "",
        "tls-key",
        "the TLS certificate's private key, PEM",
        "FILE",
    );
    opts.optflag(
        "",
        "require-tls",
        "plain connections get ERROR tls_required and are closed",
    );
    opts.optopt(
        "",
        "ttl",
        "token: seconds the printed token is valid (default 86400)",
        "SECS",
    );
    opts.optopt(
        "",
        "auth-fail-limit",
        "failed authentications from one address within 10 s before its new connections are refused for 10 s (default 20)",
        "N",
    );
    opts.optopt(
        "",
        "log-level",
        "error, warn, info, debug or trace: overrides RUST_LOG, and SIGHUP applies a new one from --config (default: RUST_LOG, else info)",
        "LEVEL",
    );
    opts.optopt(
        "",
        "config",
        "read options from FILE first: one `long-option = value` per line (same names; flags take true/false; # comments); the command line wins",
        "FILE",
    );
    opts.optflag(
        "",
        "check-config",
        "check the configuration (files it names included), print it (no secrets: only their files) and exit 0; errors exit 2",
    );
    opts.optflag("h", "help", "print this help and exit");
    opts.optflag("V", "version", "print the version and exit");
    opts
}

/// The `--help` text.
pub fn usage(program: &str) -> String {
    let brief = format!(
        "Usage: {program} [options]\n\n\
         callrelay relays one-to-one audio/video calls, text and files between\n\
         Qt 5 clients speaking QDataStream (Qt_5_9) over TCP. See docs/protocol.md.\n\n\
         SECS accepts fractions (0.5). SIZE accepts a K, M or G suffix (powers of 1024).\n\
         `{program} token USER [--ttl SECS] --auth-secret-file FILE` prints a token for USER\n\
         signed with the file's first key (default TTL 86400 s).\n\
         Logging: RUST_LOG=error|warn|info|debug|trace (default info), on stderr."
    );
    options().usage(&brief)
}

/// Parses the arguments after the program name.
pub fn parse_args(program: &str, args: &[String]) -> Result<Command, ConfigError> {
    let (expanded, file_lines) =
        crate::config_file::expand(args, &options()).map_err(ConfigError::new)?;
    let command = parse_expanded(program, &expanded).map_err(|error| {
        // An option from the file: say where it was.
        let at = file_lines
            .iter()
            .find(|(key, _)| error.message.contains(&format!("--{key}")));
        match at {
            Some((_, at)) => ConfigError::new(format!("{at}: {}", error.message)),
            None => error,
        }
    })?;
    Ok(match command {
        Command::Run(mut config)
            if args
                .iter()
                .any(|arg| arg == "--config" || arg.starts_with("--config=")) =>
        {
            config.reload_args = Some(args.to_vec());
            Command::Run(config)
        }
        other => other,
    })
}

/// [`parse_args`] once `--config` is expanded.
fn parse_expanded(program: &str, args: &[String]) -> Result<Command, ConfigError> {
    let matches = options()
        .parse(args)
        .map_err(|error| ConfigError::new(error.to_string()))?;
    if matches.opt_present("help") {
        return Ok(Command::Help(usage(program)));
    }
    if matches.opt_present("version") {
        return Ok(Command::Version);
    }
    if matches.free.first().map(String::as_str) == Some("token") {
        return parse_token(&matches);
    }
    if let Some(extra) = matches.free.first() {
        return Err(ConfigError::new(format!("unexpected argument {extra:?}")));
    }
    let mut config = Config::default();
    if let Some(port) = matches.opt_str("port") {
        let port: u16 = port
            .parse()
            .map_err(|_| ConfigError::new(format!("--port: {port:?} is not a port number")))?;
        config.listen.set_port(port);
    }
    if let Some(listen) = matches.opt_str("listen") {
        if matches.opt_present("port") {
            return Err(ConfigError::new("give --listen or --port, not both"));
        }
        config.listen = parse_addr(&listen)?;
    }
    let timeouts = &mut config.timeouts;
    read_secs(&matches, "register-timeout", &mut timeouts.register, false)?;
    read_secs(&matches, "idle-timeout", &mut timeouts.idle, false)?;
    read_secs(&matches, "ring-timeout", &mut timeouts.ring, false)?;
    read_secs(&matches, "media-grace", &mut timeouts.media_grace, true)?;
    read_secs(&matches, "linger-timeout", &mut timeouts.linger, true)?;
    read_secs(&matches, "shutdown-timeout", &mut timeouts.shutdown, true)?;
    read_secs(
        &matches,
        "stats-interval",
        &mut timeouts.stats_interval,
        true,
    )?;
    read_secs(&matches, "stall-timeout", &mut config.timeouts.stall, false)?;
    read_secs(
        &matches,
        "media-max-delay",
        &mut config.timeouts.media_max_delay,
        true,
    )?;
    read_secs(
        &matches,
        "resume-window",
        &mut config.timeouts.resume_window,
        true,
    )?;
    if let Some(listen) = matches.opt_str("metrics-listen") {
        config.metrics_listen = Some(parse_addr(&listen)?);
    }
    config.reuse_port = matches.opt_present("reuse-port");
    if let Some(level) = matches.opt_str("log-level") {
        config.log_level = Some(level.parse().map_err(|_| {
            ConfigError::new(format!(
                "--log-level {level:?}: one of error, warn, info, debug, trace"
            ))
        })?);
    }
    config.cluster = parse_cluster(&matches, config.listen)?;
    if let Some(count) = matches.opt_str("max-per-ip") {
        config.max_per_ip = parse_count_or_zero(&count, "max-per-ip")?;
    }
    if let Some(count) = matches.opt_str("max-unregistered") {
        config.max_unregistered = parse_count(&count, "max-unregistered")?;
    }
    if let Some(count) = matches.opt_str("max-connections") {
        config.max_connections = parse_count(&count, "max-connections")?;
    }
    let limits = &mut config.limits;
    if let Some(bytes) = matches.opt_str("max-user-id") {
        let bytes = parse_count(&bytes, "max-user-id")?;
        if bytes > USER_ID_MAX_BYTES {
            return Err(ConfigError::new(format!(
                "--max-user-id: at most {USER_ID_MAX_BYTES} (the heartbeat suffix rule relies on it)"
            )));
        }
        limits.max_user_id = bytes;
    }
    read_size(&matches, "max-field", &mut limits.max_field, false)?;
    read_size(&matches, "max-text", &mut limits.max_text, false)?;
    let mut max_file = usize::try_from(limits.max_file).unwrap_or(usize::MAX);
    read_size(&matches, "max-file", &mut max_file, false)?;
    limits.max_file = max_file as u64;
    let mut max_media = limits.max_media as usize;
    read_size(&matches, "max-media", &mut max_media, false)?;
    limits.max_media = u32::try_from(max_media)
        .ok()
        .filter(|media| *media < u32::MAX)
        .ok_or_else(|| ConfigError::new("--max-media: at most 4G - 2"))?;
    if limits.max_file >= u64::from(u32::MAX) {
        return Err(ConfigError::new(
            "--max-file: at most 4G - 2 (a QByteArray length)",
        ));
    }
    if limits.max_field.max(limits.max_text) >= 16 * 1024 * 1024 {
        return Err(ConfigError::new(
            "--max-field and --max-text: below 16M (the heartbeat suffix rule relies on it)",
        ));
    }
    read_auth(&matches, &mut config)?;
    config.tls = TlsOptions {
        cert: matches.opt_str("tls-cert").map(PathBuf::from),
        key: matches.opt_str("tls-key").map(PathBuf::from),
        require: matches.opt_present("require-tls"),
    };
    if config.tls.cert.is_some() != config.tls.key.is_some() {
        return Err(ConfigError::new("--tls-cert and --tls-key go together"));
    }
    if config.tls.require && config.tls.cert.is_none() {
        return Err(ConfigError::new(
            "--require-tls needs --tls-cert and --tls-key",
        ));
    }
    read_size(&matches, "output-soft", &mut config.output_soft, false)?;
    read_size(&matches, "send-lowat", &mut config.send_lowat, true)?;
    if u32::try_from(config.send_lowat).is_err() {
        return Err(ConfigError::new("--send-lowat must be below 4G"));
    }
    read_size(&matches, "output-hard", &mut config.output_hard, false)?;
    if config.output_soft > config.output_hard {
        return Err(ConfigError::new(
            "--output-soft must not exceed --output-hard",
        ));
    }
    if matches.opt_present("check-config") {
        return Ok(Command::CheckConfig(Box::new(config)));
    }
    Ok(Command::Run(Box::new(config)))
}

/// The authentication options; a secret file turns `require` on unless
/// `--auth` says otherwise, and registrations may then be tokens.
fn read_auth(matches: &getopts::Matches, config: &mut Config) -> Result<(), ConfigError> {
    let auth = &mut config.auth;
    auth.secret_file = matches.opt_str("auth-secret-file").map(PathBuf::from);
    auth.mode = match matches.opt_str("auth") {
        Some(text) => AuthMode::parse(&text).ok_or_else(|| {
            ConfigError::new(format!("--auth: {text:?} is not off, optional or require"))
        })?,
        None if auth.secret_file.is_some() => AuthMode::Require,
        None => AuthMode::Off,
    };
    if auth.mode != AuthMode::Off && auth.secret_file.is_none() {
        return Err(ConfigError::new(format!(
            "--auth {} needs --auth-secret-file",
            auth.mode.as_str()
        )));
    }
    if let Some(count) = matches.opt_str("auth-fail-limit") {
        auth.fail_limit = parse_count(&count, "auth-fail-limit")?
            .try_into()
            .map_err(|_| ConfigError::new("--auth-fail-limit: too large"))?;
    }
    if auth.mode != AuthMode::Off {
        config.limits.max_registration = crate::auth::MAX_TOKEN_BYTES;
    }
    Ok(())
}

/// `token USER [--ttl SECS] --auth-secret-file FILE`.
fn parse_token(matches: &getopts::Matches) -> Result<Command, ConfigError> {
    let user = match matches.free.as_slice() {
        [_, user] => user.clone(),
        _ => {
            return Err(ConfigError::new(
                "usage: token USER [--ttl SECS] --auth-secret-file FILE",
            ));
        }
    };
    crate::ids::UserId::from_string(user.clone(), USER_ID_MAX_BYTES)
        .map_err(|error| ConfigError::new(format!("token: {user:?}: {error}")))?;
    let secret_file = matches
        .opt_str("auth-secret-file")
        .map(PathBuf::from)
        .ok_or_else(|| ConfigError::new("token needs --auth-secret-file FILE"))?;
    let mut ttl = DEFAULT_TOKEN_TTL;
    read_secs(matches, "ttl", &mut ttl, false)?;
    Ok(Command::Token(TokenRequest {
        user,
        ttl,
        secret_file,
    }))
}

fn parse_addr(text: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || {
        ConfigError::new(format!(
            "--listen: {text:?} is not an address like 0.0.0.0:8888"
        ))
    };
    text.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

fn parse_count(text: &str, name: &str) -> Result<usize, ConfigError> {
    match text.parse::<usize>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(ConfigError::new(format!(
            "--{name}: {text:?} is not a positive whole number"
        ))),
    }
}

fn parse_count_or_zero(text: &str, name: &str) -> Result<usize, ConfigError> {
    text.parse::<usize>()
        .map_err(|_| ConfigError::new(format!("--{name}: {text:?} is not a whole number")))
}

fn read_secs(
    matches: &getopts::Matches,
    name: &str,
    target: &mut Duration,
    zero_allowed: bool,
) -> Result<(), ConfigError> {
    let Some(text) = matches.opt_str(name) else {
        return Ok(());
    };
    let bad = || ConfigError::new(format!("--{name}: {text:?} is not a number of seconds"));
    let secs: f64 = text.parse().map_err(|_| bad())?;
    if !(0.0..=1e9).contains(&secs) || (secs == 0.0 && !zero_allowed) {
        return Err(bad());
    }
    *target = Duration::from_secs_f64(secs);
    Ok(())
}

fn read_size(
    matches: &getopts::Matches,
    name: &str,
    target: &mut usize,
    zero_ok: bool,
) -> Result<(), ConfigError> {
    if let Some(text) = matches.opt_str(name) {
        *target = parse_size(&text)
            .filter(|size| zero_ok || *size > 0)
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "--{name}: {text:?} is not a size like 65536, 64K or 8M"
                ))
            })?;
    }
    Ok(())
}

/// Parses `123`, `64K`, `8M` or `1G` (powers of 1024).
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (at, 'k' | 'K') => (&text[..at], 1024),
        (at, 'm' | 'M') => (&text[..at], 1024 * 1024),
        (at, 'g' | 'G') => (&text[..at], 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// The cluster options, if `--cluster` is given (the others need it).
fn parse_cluster(
    matches: &getopts::Matches,
    listen: SocketAddr,
) -> Result<Option<ClusterOptions>, ConfigError> {
    let Some(url) = matches.opt_str("cluster") else {
        for name in [
            "node-id",
            "trunk-listen",
            "trunk-advertise",
            "cluster-prefix",
            "cluster-secret-file",
        ] {
            if matches.opt_present(name) {
                return Err(ConfigError::new(format!("--{name} needs --cluster")));
            }
        }
        return Ok(None);
    };
    let (redis, redis_db) = parse_redis_url(&url)?;
    let node_id = match matches.opt_str("node-id") {
        Some(id) => crate::ids::NodeId::new(&id).ok_or_else(|| {
            ConfigError::new(format!(
                "--node-id {id:?}: 1-64 characters of A-Z, a-z, 0-9, '.', '-', '_', ':'"
            ))
        })?,
        None => default_node_id(listen.port())?,
    };
    let trunk_listen = match matches.opt_str("trunk-listen") {
        Some(addr) => parse_addr(&addr)?,
        // Client port 0 (any): trunk port any too.
        None if listen.port() == 0 => SocketAddr::from(([127, 0, 0, 1], 0)),
        None => {
            let port = listen.port().checked_add(1000).ok_or_else(|| {
                ConfigError::new("--trunk-listen: give it (the client port + 1000 is no port)")
            })?;
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let trunk_advertise = match matches.opt_str("trunk-advertise") {
        Some(addr) => parse_addr(&addr)?,
        None => trunk_listen,
    };
    if trunk_advertise.ip().is_unspecified() {
        return Err(ConfigError::new(format!(
            "--trunk-advertise {trunk_advertise}: other nodes cannot dial an unspecified address; give the address they reach this node on"
        )));
    }
    let prefix = matches
        .opt_str("cluster-prefix")
        .unwrap_or_else(|| "callrelay:".to_owned());
    if prefix.is_empty() || prefix.len() > 64 || prefix.contains(char::is_whitespace) {
        return Err(ConfigError::new(format!(
            "--cluster-prefix {prefix:?}: 1-64 characters, no spaces"
        )));
    }
    Ok(Some(ClusterOptions {
        redis,
        redis_db,
        node_id,
        trunk_listen,
        trunk_advertise,
        prefix,
        secret_file: matches.opt_str("cluster-secret-file").map(PathBuf::from),
    }))
}

/// `redis://HOST:PORT[/DB]` (HOST an address or a name resolved once).
fn parse_redis_url(url: &str) -> Result<(SocketAddr, u32), ConfigError> {
    let bad =
        |why: &str| ConfigError::new(format!("--cluster {url:?}: {why} (redis://HOST:PORT[/DB])"));
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| bad("must start with redis://"))?;
    let (host_port, db) = match rest.split_once('/') {
        Some((host_port, "")) => (host_port, 0),
        Some((host_port, db)) => (
            host_port,
            db.parse::<u32>()
                .map_err(|_| bad("the database must be a number"))?,
        ),
        None => (rest, 0),
    };
    use std::net::ToSocketAddrs;
    let addr = host_port
        .to_socket_addrs()
        .map_err(|error| bad(&format!("cannot resolve {host_port:?}: {error}")))?
        .next()
        .ok_or_else(|| bad("the host has no address"))?;
    Ok((addr, db))
}

/// The host name and the client port.
fn default_node_id(port: u16) -> Result<crate::ids::NodeId, ConfigError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    let id = format!("{host}:{port}");
    crate::ids::NodeId::new(&id).ok_or_else(|| {
        ConfigError::new(format!(
            "the default node id {id:?} is not valid: give --node-id"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, ConfigError> {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        parse_args("callrelay", &args)
    }

    #[test]
    fn defaults_match_the_protocol() {
        let Ok(Command::Run(config)) = parse(&[]) else {
            panic!("defaults parse");
        };
        assert_eq!(*config, Config::default());
        assert_eq!(config.listen.port(), 8888);
    }

    #[test]
    fn options_are_applied() {
        let Ok(Command::Run(config)) = parse(&[
            "-p",
            "9000",
            "--idle-timeout",
            "0.5",
            "--max-text",
            "8K",
            "--output-soft",
            "1M",
            "--media-grace",
            "0",
        ]) else {
            panic!("valid options parse");
        };
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.timeouts.idle, Duration::from_millis(500));
        assert_eq!(config.limits.max_text, 8192);
        assert_eq!(config.output_soft, 1024 * 1024);
        assert_eq!(config.timeouts.media_grace, Duration::ZERO);
    }

    #[test]
    fn bad_options_are_errors() {
        for args in [
            &["--port", "x"][..],
            &["--idle-timeout", "-1"],
            &["--ring-timeout", "0"],
            &["--max-user-id", "129"],
            &["--output-soft", "9M"],
            &["--max-text", "lots"],
            &["--bogus"],
            &["extra"],
            &["--listen", "nowhere"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("8m"), Some(8 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("K"), None);
    }
}
