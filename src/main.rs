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
        Err(error) => {
            eprintln!("callrelay: {error}");
            return ExitCode::from(2);
        }
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
