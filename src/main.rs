//! The `callrelay` binary: parse the command line, bind, run the loop.
//! Errors are printed once and exit with status 2; no sockets or frames here.

use std::process::ExitCode;

use callrelay::config::{self, Command};
use callrelay::server::{Exit, Server};

fn main() -> ExitCode {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_else(|| "callrelay".to_owned());
    let args: Vec<String> = args.collect();
    let (config, check_only) = match config::parse_args(&program, &args) {
        Ok(Command::Run(config)) => (*config, false),
        Ok(Command::CheckConfig(config)) => (*config, true),
        Ok(Command::Help(text)) => return print(&text),
        Ok(Command::Version) => {
            return print(&format!("callrelay {}\n", env!("CARGO_PKG_VERSION")));
        }
        Ok(Command::Token(request)) => return print_token(&request),
        Err(error) => {
            eprintln!("callrelay: {error}");
            return ExitCode::from(2);
        }
    };
    let files = match Files::load(&config) {
        Ok(files) => files,
        Err(error) => {
            eprintln!("callrelay: {error}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        // Secrets are only named by their files: nothing secret is printed.
        return print(&format!(
            "callrelay: the configuration is valid; in effect:\n{config:#?}\n"
        ));
    }
    run(config, files)
}

/// Prints `text` on stdout (a closed pipe is no error worth a panic).
fn print(text: &str) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// What the configuration's files hold, read (and checked) before binding.
struct Files {
    keys: Option<callrelay::auth::Keys>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    cluster_secret: Option<Vec<u8>>,
}

impl Files {
    fn load(config: &config::Config) -> Result<Files, String> {
        let keys = match config.auth.secret_file.as_deref() {
            Some(path) => Some(config::load_keys(path).map_err(|error| error.to_string())?),
            None => None,
        };
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                Some(config::load_tls(cert, key).map_err(|error| error.to_string())?)
            }
            _ => None,
        };
        let cluster_secret = match config.cluster.as_ref().and_then(|c| c.secret_file.as_ref()) {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|error| {
                    format!("--cluster-secret-file {}: {error}", path.display())
                })?;
                let secret = bytes.trim_ascii();
                if secret.len() < 16 {
                    return Err(format!(
                        "--cluster-secret-file {}: the secret must be at least 16 bytes",
                        path.display()
                    ));
                }
                Some(secret.to_vec())
            }
            None => None,
        };
        Ok(Files {
            keys,
            tls,
            cluster_secret,
        })
    }
}

/// Binds and runs the relay until a signal ends it.
fn run(config: config::Config, files: Files) -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = config.log_level {
        // Everything passes the logger; the level is log's own maximum,
        // which SIGHUP can change.
        logger.filter_level(log::LevelFilter::Trace);
        logger.init();
        log::set_max_level(level);
    } else {
        logger.init();
    }
    let mut server = match Server::bind(config.clone()) {
        Ok(server) => server,
        Err(error) => {
            let metrics = config
                .metrics_listen
                .map(|addr| format!(" (or metrics on {addr})"))
                .unwrap_or_default();
            eprintln!(
                "callrelay: cannot listen on {}{metrics}: {error}",
                config.listen
            );
            return ExitCode::from(2);
        }
    };
    if let Some(keys) = files.keys {
        server.set_auth_keys(keys);
    }
    if let Some(tls) = files.tls {
        server.set_tls(tls);
    }
    if let Some(cluster) = config.cluster.clone() {
        let trunk = cluster.trunk_listen;
        if let Err(error) = server.join_cluster(cluster, files.cluster_secret) {
            eprintln!("callrelay: cannot listen for trunks on {trunk}: {error}");
            return ExitCode::from(2);
        }
    }
    if let Err(error) = server.handle_signals() {
        eprintln!("callrelay: cannot handle signals: {error}");
        return ExitCode::from(2);
    }
    match server.run() {
        Ok(Exit::Graceful) => ExitCode::SUCCESS,
        Ok(Exit::Forced) => ExitCode::from(1),
        Err(error) => {
            eprintln!("callrelay: poll failed: {error}");
            ExitCode::from(1)
        }
    }
}

/// `callrelay token`: prints a token signed with the secret file's first key.
fn print_token(request: &config::TokenRequest) -> ExitCode {
    let keys = match config::load_keys(&request.secret_file) {
        Ok(keys) => keys,
        Err(error) => {
            eprintln!("callrelay: {error}");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    print(&format!(
        "{}\n",
        keys.sign(&request.user, now + request.ttl.as_secs())
    ))
}
