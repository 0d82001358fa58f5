//! The `litegate` command line. Everything it runs lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use litegate::config::{Config, ListenAddr, LogFormat};
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
        /// Raft mode: create a new cluster from cluster.peers, on one node
        /// only. Ignored by a node that already belongs to a cluster.
        #[arg(long)]
        bootstrap: bool,
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
    /// Raft mode: the leader hands leadership to NAME, or to the most
    /// up-to-date app node. New writes are held meanwhile, not failed.
    Handoff {
        /// The node to hand off to (default: the most up-to-date app node).
        #[arg(long)]
        to: Option<String>,
        /// The leader's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        admin: String,
        /// A file holding the admin token (admin.token_file).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Raft mode: the cluster's membership, as the Raft log holds it.
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Run CMD only on the node that is the primary (e.g. migrations).
    /// Elsewhere it says why it skipped and exits 0.
    Exec {
        /// Required: run only where this node is the primary.
        #[arg(long)]
        if_primary: bool,
        /// This node's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        admin: String,
        /// How long to wait for a primary to be known.
        #[arg(long, default_value = "5s")]
        wait: litegate::config::Duration,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Nodes on loopback in front of a built-in demo app, to see litegate work.
    Demo,
    /// Show a running node's role, primary, peers and upstream health.
    /// Exits 0 when the node is ready (to serve reads; with --writes, to
    /// place writes), 2 when it answered but is not ready, 1 when it could
    /// not be asked.
    Status {
        /// The node's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        admin: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// Exit by readiness for writes (/readyz/writes) instead of reads.
        #[arg(long)]
        writes: bool,
    },
}

#[derive(Subcommand, Debug)]
enum MemberAction {
    /// Every voter and learner with its address, as the Raft log records them.
    List {
        /// Any node's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        admin: String,
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    /// Start it first (its own node.id and name, cluster.peers listing at
    /// least one member, no --bootstrap).
    Add {
        #[command(flatten)]
        node: NewNodeArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a node (a leader hands leadership off first). Stop it after.
    Remove {
        /// The member's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace member OLD (e.g. one whose data dir was lost) by a new node
    /// with an unused id: it catches up, then one joint change swaps them.
    Replace {
        /// The member to replace.
        old: String,
        #[command(flatten)]
        node: NewNodeArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// The node a `member add` or `member replace` brings in.
#[derive(clap::Args, Debug)]
struct NewNodeArgs {
    /// Its node.id: one no member ever had.
    #[arg(long)]
    id: u64,
    /// Its node.name.
    #[arg(long)]
    name: String,
    /// host:port of its cluster listener, as the other nodes reach it.
    #[arg(long)]
    cluster: String,
    /// The URL clients reach it at (not for a witness).
    #[arg(long, default_value = "")]
    public_url: String,
    /// It is a witness: it votes, has no app, and is never the primary.
    #[arg(long)]
    witness: bool,
}

impl NewNodeArgs {
    fn into_member(self) -> litegate::primary::raft_membership::NewMember {
        litegate::primary::raft_membership::NewMember {
            id: self.id,
            name: self.name,
            cluster: self.cluster,
            public_url: self.public_url,
            witness: self.witness,
        }
    }
}

/// Where a membership change is sent: any node's admin listener.
#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// Any node's admin listener; a follower forwards to the leader.
    #[arg(long, default_value = "http://127.0.0.1:9191")]
    admin: String,
    /// A file holding the admin token (admin.token_file).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` logs in the format and at the level its config names (the
    // file, or LITEGATE_LOG_FORMAT / LITEGATE_LOG_LEVEL through the usual
    // override): the config is read once quietly to learn them, then again
    // with logging on, so what loading says is logged that way too.
    let (format, level) = match &cli.command {
        Command::Run { config, .. } => {
            let quiet = tracing::subscriber::NoSubscriber::default();
            match tracing::subscriber::with_default(quiet, || load(config.clone())) {
                Ok(config) => (config.log.format, Some(config.log.level)),
                Err(message) => return fail(&message),
            }
        }
        _ => (format_from_env(), None),
    };
    init_logging(format, level.as_deref());
    match cli.command {
        Command::Check { config } => match load(config) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(message) => fail(&message),
        },
        Command::Run { config, bootstrap } => match config_path(config) {
            Ok(path) => match load(Some(path.clone())) {
                Ok(config) => run_node(
                    config,
                    litegate::node::RunOptions {
                        bootstrap,
                        config_path: Some(path),
                    },
                ),
                Err(message) => fail(&message),
            },
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
                run_node(config, litegate::node::RunOptions::default())
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
        Command::Handoff {
            to,
            admin,
            token_file,
        } => {
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(t) => t.map(|t| t.trim().to_owned()),
                Err(e) => return fail(&format!("cannot read --token-file: {e}")),
            };
            let call = litegate::admin::client::handoff(&admin, to.as_deref(), token.as_deref());
            match runtime().block_on(call) {
                Ok(r) => {
                    println!(
                        "{} handed leadership to {}",
                        r["from"].as_str().unwrap_or("?"),
                        r["to"].as_str().unwrap_or("?")
                    );
                    ExitCode::SUCCESS
                }
                Err(message) => fail(&message),
            }
        }
        Command::Member {
            action: MemberAction::Add { node, admin },
        } => change_members(
            litegate::primary::raft_membership::MemberChange::Add {
                node: node.into_member(),
            },
            admin,
        ),
        Command::Member {
            action: MemberAction::Remove { name, admin },
        } => change_members(
            litegate::primary::raft_membership::MemberChange::Remove { name },
            admin,
        ),
        Command::Member {
            action: MemberAction::Replace { old, node, admin },
        } => change_members(
            litegate::primary::raft_membership::MemberChange::Replace {
                old,
                node: node.into_member(),
            },
            admin,
        ),
        Command::Member {
            action: MemberAction::List { admin, json },
        } => match runtime().block_on(litegate::admin::client::fetch_members(&admin)) {
            Ok(doc) if json => {
                println!("{doc:#}");
                ExitCode::SUCCESS
            }
            Ok(doc) => {
                println!(
                    "{:<6} {:<16} {:<8} {:<22} {:<7} public_url",
                    "id", "name", "role", "cluster", "leader"
                );
                for m in doc["members"].as_array().into_iter().flatten() {
                    let role = match (m["role"].as_str(), m["witness"].as_bool()) {
                        (Some(role), Some(true)) => format!("{role}*"),
                        (role, _) => role.unwrap_or("?").to_owned(),
                    };
                    println!(
                        "{:<6} {:<16} {:<8} {:<22} {:<7} {}",
                        m["id"],
                        m["name"].as_str().unwrap_or("-"),
                        role,
                        m["cluster"].as_str().unwrap_or("-"),
                        if m["leader"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            ""
                        },
                        m["public_url"].as_str().unwrap_or("-"),
                    );
                }
                if doc["joint"].as_bool() == Some(true) {
                    println!("(a membership change is under way: joint configuration)");
                }
                println!(
                    "(* witness; membership as of log index {})",
                    doc["log_index"]
                );
                ExitCode::SUCCESS
            }
            Err(message) => fail(&message),
        },
        Command::Exec {
            if_primary,
            admin,
            wait,
            command,
        } => {
            if !if_primary {
                return fail("exec runs a command only where a condition holds: pass --if-primary");
            }
            let role =
                runtime().block_on(litegate::admin::client::wait_for_role(&admin, wait.get()));
            match role {
                Ok(litegate::admin::client::KnownRole::Primary) => run_command(&command),
                Ok(litegate::admin::client::KnownRole::Replica(primary)) => {
                    println!(
                        "litegate: skipped `{}`: this node is a replica (the primary is {primary})",
                        command.join(" ")
                    );
                    ExitCode::SUCCESS
                }
                Err(message) => fail(&message),
            }
        }
        Command::Status {
            admin,
            json,
            writes,
        } => {
            use litegate::admin::client::{self, Readiness};
            let answers = runtime().block_on(async {
                let status = client::fetch_status(&admin).await?;
                let ready = client::fetch_readiness(&admin, writes).await?;
                Ok::<_, String>((status, ready))
            });
            let (status, ready) = match answers {
                Ok(answers) => answers,
                Err(message) => return fail(&message),
            };
            let what = if writes {
                "to place writes"
            } else {
                "to serve reads"
            };
            if json {
                println!("{status:#}");
            } else {
                print!("{}", client::render_status(&status));
                match &ready {
                    Readiness::Ready => println!("ready:    yes ({what})"),
                    Readiness::NotReady(why) => println!("ready:    no ({what}): {why}"),
                }
            }
            match ready {
                Readiness::Ready => ExitCode::SUCCESS,
                Readiness::NotReady(_) => ExitCode::from(NOT_READY),
            }
        }
    }
}

fn change_members(
    change: litegate::primary::raft_membership::MemberChange,
    admin: AdminArgs,
) -> ExitCode {
    let token = match admin.token_file.map(std::fs::read_to_string).transpose() {
        Ok(t) => t.map(|t| t.trim().to_owned()),
        Err(e) => return fail(&format!("cannot read --token-file: {e}")),
    };
    let call = litegate::admin::client::change_members(&admin.admin, &change, token.as_deref());
    match runtime().block_on(call) {
        Ok(done) => {
            match (done["added"].as_str(), done["removed"].as_str()) {
                (Some(added), Some(removed)) => {
                    println!("replaced {removed} by {added} (node {})", done["id"])
                }
                (Some(added), None) => println!("{added} (node {}) is a voter", done["id"]),
                (None, Some(removed)) => println!(
                    "{removed} (node {}) left the cluster; stop it now",
                    done["id"]
                ),
                (None, None) => println!("{done}"),
            }
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

fn config_path(path: Option<PathBuf>) -> Result<PathBuf, String> {
    path.or_else(|| std::env::var_os("LITEGATE_CONFIG").map(PathBuf::from))
        .ok_or_else(|| "no config file: pass --config FILE or set LITEGATE_CONFIG".to_owned())
}

fn load(path: Option<PathBuf>) -> Result<Config, String> {
    let path = config_path(path)?;
    Config::load(&path, std::env::vars()).map_err(|e| e.to_string())
}

fn run_node(config: Config, options: litegate::node::RunOptions) -> ExitCode {
    match runtime().block_on(litegate::node::run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Runs `exec`'s command with this process's stdio; its exit code is ours.
fn run_command(command: &[String]) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let Some((program, args)) = command.split_first() else {
        return fail("exec: no command given after --");
    };
    match std::process::Command::new(program).args(args).status() {
        Ok(status) => {
            let code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => fail(&format!("cannot run {program:?}: {e}")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// `litegate status`'s exit code for a node that answered but is not ready
/// (1 is every command's failure to run at all).
const NOT_READY: u8 = 2;

fn fail(message: &str) -> ExitCode {
    eprintln!("litegate: {message}");
    ExitCode::FAILURE
}

/// Commands without a config file take `LITEGATE_LOG_FORMAT` alone.
fn format_from_env() -> LogFormat {
    match std::env::var("LITEGATE_LOG_FORMAT") {
        Ok(v) if v.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// `level` is the config's `log.level` (none without a config file);
/// `LITEGATE_LOG` wins over it (`log_level.rs`).
fn init_logging(format: LogFormat, level: Option<&str>) {
    let (filter, bad_env) = litegate::log_level::layer(level);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .init(),
        // Flattened: the event's fields sit next to `level`, `target` and
        // `timestamp`, where shippers look for them.
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .init(),
    }
    if let Some(error) = bad_env {
        tracing::warn!("{error}");
    }
}
