//! The `litegate` command line. Everything it runs lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use litegate::config::{Config, ListenAddr};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

#[derive(Parser)]
#[command(
    name = "litegate",
    version,
    about = "Write-forwarding reverse proxy for replicated-SQLite apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Single node, no config file: every request passes through to the app.
    Dev {
        /// The app, e.g. http://127.0.0.1:8000
        #[arg(long)]
        upstream: String,
        /// Where clients connect.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: ListenAddr,
        /// Health, status and metrics.
        #[arg(long, default_value = "127.0.0.1:9191")]
        admin: ListenAddr,
        /// This node's name in `Litegate-Served-By` (default: the hostname).
        #[arg(long)]
        name: Option<String>,
    },
    /// Run a node from a config file.
    Run {
        /// The config file (or set LITEGATE_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective configuration.
    Check {
        /// The config file (or set LITEGATE_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Make this node the primary (static mode: the epoch goes up by one).
    Promote {
        /// The node's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        admin: String,
        /// A file holding the admin token (admin.token_file).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Nodes on loopback in front of a built-in demo app, to see litegate work.
    Demo,
    /// Show a running node's role, primary, peers and upstream health.
    Status {
        /// The node's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        admin: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { config } => match load(config) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(message) => fail(&message),
        },
        Command::Run { config } => match load(config) {
            Ok(config) => run_node(config),
            Err(message) => fail(&message),
        },
        Command::Dev {
            upstream,
            listen,
            admin,
            name,
        } => match Config::dev(&upstream, listen, admin) {
            Ok(mut config) => {
                if let Some(name) = name {
                    config.node.name = name;
                }
                run_node(config)
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Demo => {
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => return fail(&format!("cannot find the litegate executable: {e}")),
            };
            match runtime().block_on(litegate::demo::run(&exe)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => fail(&message),
            }
        }
        Command::Promote { admin, token_file } => {
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(t) => t.map(|t| t.trim().to_owned()),
                Err(e) => return fail(&format!("cannot read --token-file: {e}")),
            };
            match runtime().block_on(litegate::admin::client::promote(&admin, token.as_deref())) {
                Ok(r) => {
                    println!(
                        "{} is the primary at term {}",
                        r["primary"].as_str().unwrap_or("?"),
                        r["term"]
                    );
                    if let Some(missed) = r["not_told"].as_array().filter(|m| !m.is_empty()) {
                        println!(
                            "not told yet (they catch up within a second of answering): {missed:?}"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(message) => fail(&message),
            }
        }
        Command::Status { admin, json } => {
            let status = runtime().block_on(litegate::admin::client::fetch_status(&admin));
            match status {
                Ok(s) if json => {
                    println!("{s:#}");
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    print!("{}", litegate::admin::client::render_status(&s));
                    ExitCode::SUCCESS
                }
                Err(message) => fail(&message),
            }
        }
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, String> {
    let path = path
        .or_else(|| std::env::var_os("LITEGATE_CONFIG").map(PathBuf::from))
        .ok_or("no config file: pass --config FILE or set LITEGATE_CONFIG")?;
    Config::load(&path, std::env::vars()).map_err(|e| e.to_string())
}

fn run_node(config: Config) -> ExitCode {
    match runtime().block_on(litegate::node::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn fail(message: &str) -> ExitCode {
    eprintln!("litegate: {message}");
    ExitCode::FAILURE
}

fn init_logging() {
    let filter: Targets = std::env::var("LITEGATE_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
}
