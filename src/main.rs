//! The `callrelay` binary: parse the command line, bind, run the loop.
//! Errors are printed once and exit with status 2; no sockets or frames here.

use std::process::ExitCode;

use callrelay::config::{self, Command};
use callrelay::server::{Exit, Server};

fn main() -> ExitCode {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_else(|| "callrelay".to_owned());
    let args: Vec<String> = args.collect();
    let config = match config::parse_args(&program, &args) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("callrelay {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Token(request)) => return print_token(&request),
        Err(error) => {
            eprintln!("callrelay: {error}");
            return ExitCode::from(2);
        }
    };
    let keys = match config.auth.secret_file.as_deref().map(config::load_keys) {
        Some(Ok(keys)) => Some(keys),
        Some(Err(error)) => {
            eprintln!("callrelay: {error}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => match config::load_tls(cert, key) {
            Ok(tls) => Some(tls),
            Err(error) => {
                eprintln!("callrelay: {error}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
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
    if let Some(keys) = keys {
        server.set_auth_keys(keys);
    }
    if let Some(tls) = tls {
        server.set_tls(tls);
    }
    if let Some(cluster) = config.cluster.clone() {
        let secret = match &cluster.secret_file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) if bytes.trim_ascii().len() >= 16 => Some(bytes.trim_ascii().to_vec()),
                Ok(_) => {
                    eprintln!(
                        "callrelay: --cluster-secret-file {}: the secret must be at least 16 bytes",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
                Err(error) => {
                    eprintln!(
                        "callrelay: --cluster-secret-file {}: {error}",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            },
            None => None,
        };
        let trunk = cluster.trunk_listen;
        if let Err(error) = server.join_cluster(cluster, secret) {
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
    println!("{}", keys.sign(&request.user, now + request.ttl.as_secs()));
    ExitCode::SUCCESS
}
