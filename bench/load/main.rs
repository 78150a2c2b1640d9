//! callrelay-load: the bundled load tool.
//!
//! Modes: `media` (streams of self-measuring media frames through the relay,
//! or straight to a sink, or through a byte pipe), `calls` (call set-up and
//! tear-down rate), `idle` (many registered idle connections) and `sink`
//! (the far end of a byte pipe). It speaks the protocol with the project's
//! own codec. Every loop is bounded in time; bad use gets a message and
//! exit status 2, a run with errors exit status 1.

mod calls;
mod idle;
mod media;
mod mixed;
mod payload;
mod proc_stats;
mod report;
mod session;
mod sink;
mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callrelay::protocol::Framing;
use getopts::{Matches, Options};

/// Options every mode has.
#[derive(Clone, Debug)]
pub struct Common {
    /// The relay (or pipe) address.
    pub addr: SocketAddr,
    /// The measured window.
    pub duration: Duration,
    /// Time before the window starts.
    pub warmup: Duration,
    /// Time after the window for frames still in flight.
    pub drain: Duration,
    /// No progress lines.
    pub quiet: bool,
    /// The server process to measure, if any.
    pub server_pid: Option<proc_stats::Servers>,
    /// Where callees register (the second `--addr`; else `addr`): callers
    /// on one node, callees on another.
    pub callee_addr: SocketAddr,
}

/// A mode's result.
pub struct Outcome {
    /// For machines.
    pub json: report::Json,
    /// For people.
    pub human: String,
    /// False if the run saw errors.
    pub ok: bool,
}

/// The one-line-per-second progress report on stderr.
pub struct Progress {
    quiet: bool,
    mode: &'static str,
    started: Instant,
    next: Instant,
}

impl Progress {
    fn new(quiet: bool, mode: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            quiet,
            mode,
            started: now,
            next: now + Duration::from_secs(1),
        }
    }

    /// True when a progress line is due.
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + Duration::from_secs(1);
        true
    }

    /// When the next line is due.
    fn next(&self, now: Instant) -> Instant {
        self.next.max(now)
    }

    /// Prints a progress line.
    fn line(&self, text: &str) {
        if !self.quiet {
            eprintln!(
                "[{} {:>3.0}s] {text}",
                self.mode,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// The name of a framing on the command line.
pub fn framing_name(framing: Framing) -> &'static str {
    match framing {
        Framing::Seed => "seed",
        Framing::LengthPrefixed => "framed",
    }
}

const MODES: &str = "\
Modes:
  media   N caller/callee pairs register, call, accept, then stream media for
          --duration seconds, flat out or at --rate frames/s per stream. Every
          payload carries its stream, sequence number and send time, so the
          receiver reports delivered, lost and out-of-order frames and one-way
          latency percentiles. --target direct sends the same frames over plain
          loopback connections to a sink in this process (no relay); --target
          pipe sends them through a byte pipe at --addr (e.g. HAProxy in mode
          tcp) that forwards to --sink, where this tool listens.
  calls   N pairs loop call request -> accept -> end; reports calls/s and the
          latency of each step. With --reconnect the callee registers again on
          a new connection after every call (one registration per call: with
          --secret-file, the cost of verifying a token).
  idle    K registered connections that only send heartbeats, spread over
          --sources loopback source addresses, held for --duration seconds;
          reports how many were established and held (and, with --server-pid,
          the server's RSS per connection).
  mixed   the soak scenario: --pairs worker threads loop over rounds with fresh
          connections (register, refused call, call, media both ways, hang up,
          text, a hostile connection, a silent one) for --duration seconds;
          reports errors and the server's RSS over time, and with --metrics
          checks that connections, calls and users return to zero.
  sink    accept connections on --listen and read media frames for --duration
          seconds (the far end of a pipe set up by hand).

TLS: media (every target), calls, idle and mixed take --tls (the client
sockets speak TLS; --tls-ca FILE pins the CA); media --target pipe/direct and
sink take --sink-cert and --sink-key (the sink accepts TLS).

With --server-pid PID the server's CPU seconds (user+sys) and peak RSS over the
measured window are read from /proc, with CPU seconds per GiB and per frame.
Exit status: 0 = run without errors, 1 = the run saw errors, 2 = bad use.";

fn options() -> Options {
    let mut opts = Options::new();
    opts.optmulti(
        "a",
        "addr",
        "relay (or pipe) address (default 127.0.0.1:8888); media/calls take a second one: callers register on the first, callees on the second (two nodes of a cluster)",
        "ADDR",
    );
    opts.optopt("d", "duration", "measured seconds (default 5)", "SECS");
    opts.optopt(
        "w",
        "warmup",
        "seconds before measuring starts (default 1)",
        "SECS",
    );
    opts.optopt(
        "",
        "drain",
        "seconds to wait after the window for frames in flight (default 2)",
        "SECS",
    );
    opts.optopt(
        "p",
        "pairs",
        "media/calls: caller-callee pairs (default 1 for media, 10 for calls)",
        "N",
    );
    opts.optopt(
        "c",
        "connections",
        "idle: connections to hold (default 1000)",
        "K",
    );
    opts.optopt(
        "s",
        "size",
        "media/sink: payload bytes per frame, at least 29 (default 1024)",
        "BYTES",
    );
    opts.optopt(
        "r",
        "rate",
        "media: frames per second per stream; 0 = flat out (default 0)",
        "FPS",
    );
    opts.optflag("b", "both", "media: stream in both directions of each pair");
    opts.optflag(
        "",
        "reconnect",
        "calls: the callee registers again on a new connection after every call",
    );
    opts.optopt(
        "",
        "window",
        "media flat out: most payload bytes in flight per stream (default 262144)",
        "BYTES",
    );
    opts.optopt(
        "",
        "rx-rate",
        "media: receivers read at most this many bytes per second (a slow link; default: as fast as they can)",
        "BYTES_PER_S",
    );
    opts.optopt(
        "",
        "rcvbuf",
        "media: SO_RCVBUF of the receiving sockets (default: the kernel's)",
        "BYTES",
    );
    opts.optopt(
        "",
        "slice",
        "media: report the one-way latency per slice of this many seconds too (default 5)",
        "SECS",
    );
    opts.optopt(
        "f",
        "framing",
        "seed or framed (default framed; idle: seed)",
        "FRAMING",
    );
    opts.optopt(
        "t",
        "target",
        "media: relay, direct or pipe (default relay)",
        "TARGET",
    );
    opts.optopt(
        "",
        "sink",
        "media --target pipe: address this tool listens on for the pipe's connections",
        "ADDR",
    );
    opts.optopt(
        "l",
        "listen",
        "sink: address to listen on (default 127.0.0.1:9999)",
        "ADDR",
    );
    opts.optopt(
        "",
        "heartbeat",
        "idle: heartbeat interval in seconds (default 30)",
        "SECS",
    );
    opts.optopt(
        "",
        "sources",
        "idle: loopback source addresses 127.0.0.1.. to spread over (default 4)",
        "N",
    );
    opts.optmulti(
        "",
        "server-pid",
        "measure this process's CPU and memory over the window (repeatable: the figures are summed, e.g. the nodes of a cluster)",
        "PID",
    );
    opts.optopt(
        "",
        "metrics",
        "mixed: the relay's metrics address, for the leak check at the end",
        "ADDR",
    );
    opts.optopt(
        "",
        "secret-file",
        "register with tokens signed with this secret file's first key (a relay run with --auth-secret-file)",
        "FILE",
    );
    opts.optflag(
        "",
        "tls",
        "media/calls/idle/mixed: the client sockets speak TLS (without --tls-ca the server's certificate is not checked)",
    );
    opts.optopt(
        "",
        "tls-ca",
        "with --tls: the server's certificate must chain to this CA (PEM); implies --tls",
        "FILE",
    );
    opts.optopt(
        "",
        "sink-cert",
        "media --target pipe/direct, sink: the sink accepts TLS with this certificate chain (PEM)",
        "FILE",
    );
    opts.optopt(
        "",
        "sink-key",
        "media --target pipe/direct, sink: the private key of --sink-cert (PEM)",
        "FILE",
    );
    opts.optflag("q", "quiet", "no progress lines on stderr");
    opts.optflag("j", "json", "print the result as one JSON object on stdout");
    opts.optflag("h", "help", "print this help and exit");
    opts
}

fn usage() -> String {
    options().usage(&format!("Usage: callrelay-load MODE [options]\n\n{MODES}"))
}

/// A command line that cannot be used (exit 2), or a run that failed (exit 1).
enum UsageError {
    Usage(String),
    Failed(String),
}

#[allow(non_snake_case)]
fn UsageError(message: String) -> UsageError {
    UsageError::Usage(message)
}

fn parse_secs(matches: &Matches, name: &str, default: f64) -> Result<Duration, UsageError> {
    let Some(text) = matches.opt_str(name) else {
        return Ok(Duration::from_secs_f64(default));
    };
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=86_400.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(UsageError(format!(
            "--{name}: {text:?} is not a number of seconds (0 to 86400)"
        ))),
    }
}

fn parse_number<T: std::str::FromStr + PartialOrd>(
    matches: &Matches,
    name: &str,
    default: T,
    min: T,
    max: T,
) -> Result<T, UsageError> {
    let Some(text) = matches.opt_str(name) else {
        return Ok(default);
    };
    match text.parse::<T>() {
        Ok(value) if value >= min && value <= max => Ok(value),
        _ => Err(UsageError(format!("--{name}: {text:?} is out of range"))),
    }
}

fn parse_addr(text: &str, name: &str) -> Result<SocketAddr, UsageError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            UsageError(format!(
                "--{name}: {text:?} is not an address like 127.0.0.1:8888"
            ))
        })
}

fn parse_framing(matches: &Matches, default: Framing) -> Result<Framing, UsageError> {
    match matches.opt_str("framing").as_deref() {
        None => Ok(default),
        Some("seed") => Ok(Framing::Seed),
        Some("framed") => Ok(Framing::LengthPrefixed),
        Some(other) => Err(UsageError(format!(
            "--framing: {other:?} is not seed or framed"
        ))),
    }
}

fn run(args: &[String]) -> Result<Outcome, UsageError> {
    let matches = options()
        .parse(args)
        .map_err(|error| UsageError(error.to_string()))?;
    let Some(mode) = matches.free.first().cloned() else {
        return Err(UsageError(
            "no mode given: media, calls, idle, mixed or sink".to_owned(),
        ));
    };
    if let Some(extra) = matches.free.get(1) {
        return Err(UsageError(format!("unexpected argument {extra:?}")));
    }
    if let Some(path) = matches.opt_str("secret-file") {
        let keys = callrelay::config::load_keys(std::path::Path::new(&path))
            .map_err(|error| UsageError(error.to_string()))?;
        session::sign_registrations(keys);
    }
    let tls_client = matches.opt_present("tls") || matches.opt_present("tls-ca");
    let tls_sink = match (matches.opt_str("sink-cert"), matches.opt_str("sink-key")) {
        (None, None) => false,
        (Some(cert), Some(key)) => {
            tls::enable_sink(std::path::Path::new(&cert), std::path::Path::new(&key))
                .map_err(UsageError)?;
            true
        }
        _ => {
            return Err(UsageError(
                "--sink-cert and --sink-key go together".to_owned(),
            ));
        }
    };
    if tls_client && mode == "sink" {
        return Err(UsageError(
            "--tls, --tls-ca: sink makes no client connections (--sink-cert/--sink-key make it accept TLS)"
                .to_owned(),
        ));
    }
    if tls_sink && !matches!(mode.as_str(), "media" | "sink") {
        return Err(UsageError(format!(
            "--sink-cert: {mode} has no sink (media --target pipe or direct, or sink)"
        )));
    }
    if tls_client {
        tls::enable_client(
            matches
                .opt_str("tls-ca")
                .as_deref()
                .map(std::path::Path::new),
        )
        .map_err(UsageError)?;
    }
    let addrs = matches.opt_strs("addr");
    if addrs.len() > 2 {
        return Err(UsageError(
            "--addr: at most two (callers' node, callees' node)".to_owned(),
        ));
    }
    let addrs: Vec<SocketAddr> = addrs
        .iter()
        .map(|text| parse_addr(text, "addr"))
        .collect::<Result<_, _>>()?;
    let addr = match addrs.first() {
        Some(addr) => *addr,
        None => parse_addr("127.0.0.1:8888", "addr")?,
    };
    let mut pids = Vec::new();
    for text in matches.opt_strs("server-pid") {
        let pid: u32 = text
            .parse()
            .map_err(|_| UsageError(format!("--server-pid: {text:?} is not a process id")))?;
        if !proc_stats::readable(pid) {
            return Err(UsageError(format!("--server-pid: cannot read /proc/{pid}")));
        }
        pids.push(pid);
    }
    let common = Common {
        addr,
        callee_addr: addrs.get(1).copied().unwrap_or(addr),
        duration: parse_secs(&matches, "duration", 5.0)?,
        warmup: parse_secs(&matches, "warmup", 1.0)?,
        drain: parse_secs(&matches, "drain", 2.0)?,
        quiet: matches.opt_present("quiet"),
        server_pid: proc_stats::Servers::new(pids),
    };
    if common.callee_addr != common.addr && !matches!(mode.as_str(), "media" | "calls") {
        return Err(UsageError(format!(
            "{mode}: a second --addr is for media and calls (callers on the first node, callees on the second)"
        )));
    }
    let failed = |error: std::io::Error| UsageError::Failed(format!("{mode} failed: {error}"));
    let outcome = match mode.as_str() {
        "media" => {
            let target = match matches.opt_str("target").as_deref() {
                None | Some("relay") => media::Target::Relay,
                Some("direct") => media::Target::Direct,
                Some("pipe") => media::Target::Pipe,
                Some(other) => {
                    return Err(UsageError(format!(
                        "--target: {other:?} is not relay, direct or pipe"
                    )));
                }
            };
            if target == media::Target::Direct && tls_client != tls_sink {
                return Err(UsageError(
                    "--target direct: --tls needs --sink-cert/--sink-key and the other way round (both ends are this tool)"
                        .to_owned(),
                ));
            }
            if target == media::Target::Relay && tls_sink {
                return Err(UsageError(
                    "--sink-cert: --target relay has no sink".to_owned(),
                ));
            }
            if target == media::Target::Pipe && matches.opt_str("sink").is_none() {
                return Err(UsageError(
                    "--target pipe needs --sink ADDR (where the pipe forwards)".to_owned(),
                ));
            }
            let options = media::MediaOptions {
                pairs: parse_number(&matches, "pairs", 1usize, 1, 9_000)?,
                size: parse_number(
                    &matches,
                    "size",
                    1024usize,
                    payload::HEADER_LEN,
                    4 * 1024 * 1024,
                )?,
                rate: parse_number(&matches, "rate", 0.0f64, 0.0, 1_000_000.0)?,
                both: matches.opt_present("both"),
                framing: parse_framing(&matches, Framing::LengthPrefixed)?,
                target,
                sink: matches
                    .opt_str("sink")
                    .map(|text| parse_addr(&text, "sink"))
                    .transpose()?,
                window: parse_number(&matches, "window", 256 * 1024usize, 1, 1 << 30)?,
                rx_rate: matches
                    .opt_present("rx-rate")
                    .then(|| parse_number(&matches, "rx-rate", 0.0f64, 1.0, 1e10))
                    .transpose()?,
                rcvbuf: matches
                    .opt_present("rcvbuf")
                    .then(|| parse_number(&matches, "rcvbuf", 0usize, 256, 1 << 30))
                    .transpose()?,
                slice: parse_secs(&matches, "slice", 5.0)?,
            };
            media::run(&common, &options).map_err(failed)?
        }
        "calls" => {
            let options = calls::Options {
                pairs: parse_number(&matches, "pairs", 10usize, 1, 9_000)?,
                framing: parse_framing(&matches, Framing::LengthPrefixed)?,
                reconnect: matches.opt_present("reconnect"),
            };
            calls::run(&common, &options).map_err(failed)?
        }
        "idle" => {
            let options = idle::IdleOptions {
                connections: parse_number(&matches, "connections", 1000usize, 1, 1_000_000)?,
                heartbeat: parse_secs(&matches, "heartbeat", 30.0)?.max(Duration::from_millis(10)),
                sources: parse_number(&matches, "sources", 4u8, 1, 254)?,
                framing: parse_framing(&matches, Framing::Seed)?,
            };
            idle::run(&common, &options).map_err(failed)?
        }
        "mixed" => {
            let workers = parse_number(&matches, "pairs", 8usize, 1, 256)?;
            let metrics = matches
                .opt_str("metrics")
                .map(|text| parse_addr(&text, "metrics"))
                .transpose()?;
            mixed::run(&common, workers, metrics).map_err(failed)?
        }
        "sink" => {
            let listen = parse_addr(
                &matches
                    .opt_str("listen")
                    .unwrap_or_else(|| "127.0.0.1:9999".to_owned()),
                "listen",
            )?;
            let size = parse_number(
                &matches,
                "size",
                1024usize,
                payload::HEADER_LEN,
                4 * 1024 * 1024,
            )?;
            sink::run(
                &common,
                listen,
                parse_framing(&matches, Framing::LengthPrefixed)?,
                size,
            )
            .map_err(failed)?
        }
        other => {
            return Err(UsageError(format!(
                "unknown mode {other:?}: media, calls, idle, mixed or sink"
            )));
        }
    };
    Ok(outcome)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let json = args.iter().any(|arg| arg == "-j" || arg == "--json");
    match run(&args) {
        Ok(outcome) => {
            if json {
                println!("{}", outcome.json.finish());
            } else {
                println!("{}", outcome.human);
            }
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(UsageError::Usage(message)) => {
            eprintln!("callrelay-load: {message} (see --help)");
            ExitCode::from(2)
        }
        Err(UsageError::Failed(message)) => {
            eprintln!("callrelay-load: {message}");
            ExitCode::from(1)
        }
    }
}
