//! The `navis-auth` command: parse the command line, set up logging, run the service or a client
//! subcommand, and turn the outcome into an exit code. `src/main.rs` is only a call to [`main`];
//! the integration tests run the same function in a child process of their own test binary, so
//! a replica they start and stop is always built from the code under test.

use std::ffi::OsString;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::config::{Cli, Command, Config};
use crate::{cli, server};

/// Runs the command `args` names (`args[0]` is the program name) and returns its exit status:
/// 0 success, 1 failure (a client subcommand may return others, see `cli`), 2 bad arguments.
pub fn main<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // One clear line naming the flag, not clap's multi-line report: its first paragraph
            // (which lists missing flags on lines of their own) joined into one line.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).take_while(|l| !l.is_empty());
            let first = lines.next().unwrap_or("error: invalid arguments");
            let rest = lines.collect::<Vec<_>>().join(", ");
            let first = first.trim_start_matches("error: ");
            if rest.is_empty() {
                eprintln!("navis-auth: {first}");
            } else {
                eprintln!("navis-auth: {first} {rest}");
            }
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("navis-auth: cannot start the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> u8 {
    let outcome = match cli.command {
        Command::Serve(args) => {
            let config = Config::from(*args);
            init_logging(&config.log, config.log_json);
            serve(config).await
        }
        other => {
            init_logging("warn", false);
            client(other).await
        }
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("navis-auth: {e:#}");
            1
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<u8> {
    let listeners = server::Listeners::bind(&config).await?;
    server::run(config, listeners, shutdown_signal()).await?;
    Ok(0)
}

async fn client(cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Keys { cmd, client } => cli::keys(cmd, &client).await.map(|()| 0),
        Command::Oauth { cmd, client } => cli::oauth(cmd, &client).await.map(|()| 0),
        Command::Revoke { cmd, client } => cli::revoke(cmd, &client).await.map(|()| 0),
        Command::Validate {
            token,
            scopes,
            resource,
            client,
        } => cli::validate(&token, scopes, resource, &client).await,
        Command::Serve(_) => Ok(0),
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("navis-auth: --log: {e}; using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
