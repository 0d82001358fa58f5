//! `litegate demo`: three litegate nodes on loopback that elect their
//! primary with Raft, each a real `litegate run` process in front of its own
//! instance of the built-in demo app (the instances share one guest book,
//! standing in for a replicated database), to see write forwarding and
//! failover work in a minute. Ctrl-C stops everything and removes the
//! demo's files.

mod app;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::shutdown;

/// The ports the demo prefers, so its URLs are easy to type; any that are
/// taken fall back to a free port.
const FIRST_PUBLIC_PORT: u16 = 8081;
const FIRST_ADMIN_PORT: u16 = 9191;
const FIRST_CLUSTER_PORT: u16 = 7071;
const NODES: usize = 3;

struct DemoNode {
    name: String,
    public: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Child,
}

pub async fn run(exe: &Path) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("litegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run_in(exe, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(exe: &Path, dir: &Path) -> Result<(), String> {
    let book: app::Book = Arc::new(Mutex::new(Vec::new()));
    let secret = dir.join("cluster.secret");
    std::fs::write(
        &secret,
        format!("demo-{}-{:x}\n", std::process::id(), rand_seed()),
    )
    .map_err(|e| e.to_string())?;

    // Every node's ports first: each config lists all the nodes.
    let mut planned = Vec::new();
    for i in 0..NODES {
        let offset = u16::try_from(i).unwrap_or(0);
        let app = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start the demo app: {e}"))?;
        planned.push((
            format!("node-{}", i + 1),
            app,
            preferred_port(FIRST_PUBLIC_PORT + offset)?,
            preferred_port(FIRST_ADMIN_PORT + offset)?,
            preferred_port(FIRST_CLUSTER_PORT + offset)?,
        ));
    }
    let peers: Vec<String> = planned
        .iter()
        .enumerate()
        .map(|(i, (name, _, public, _, cluster))| {
            format!(
                "  {{ id = {}, name = \"{name}\", cluster = \"{cluster}\", public_url = \"http://{public}\" }},",
                i + 1
            )
        })
        .collect();

    let mut nodes = Vec::new();
    for (i, (name, app, public, admin, cluster)) in planned.into_iter().enumerate() {
        let app_addr = app.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(app::serve(app, name.clone(), Arc::clone(&book)));
        let config = format!(
            "[node]\nid = {id}\nname = \"{name}\"\n\n[public]\nlisten = \"{public}\"\n\n\
             [upstream]\nurl = \"http://{app_addr}\"\n\n[primary]\nmode = \"raft\"\n\n\
             [cluster]\nlisten = \"{cluster}\"\ndata_dir = \"{data}\"\nsecret_file = \"{secret}\"\n\
             peers = [\n{peers}\n]\n\n[admin]\nlisten = \"{admin}\"\n",
            id = i + 1,
            data = dir.join(format!("{name}-data")).display(),
            secret = secret.display(),
            peers = peers.join("\n"),
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = dir.join(format!("{name}.log"));
        // One node creates the cluster; the others join when it calls.
        let child = spawn_node(exe, &config_path, &log, i == 0)?;
        nodes.push(DemoNode {
            name,
            public,
            admin,
            config: config_path,
            log,
            child,
        });
    }

    let outcome = async {
        for node in &nodes {
            wait_listening(node.public, &node.log).await?;
        }
        let leader = wait_for_leader(&nodes).await?;
        println!("{}", banner(&nodes, &leader, exe));
        supervise(&mut nodes).await
    }
    .await;
    for node in &mut nodes {
        stop(&mut node.child).await;
    }
    outcome
}

/// Enough to make each demo's secret differ; it guards loopback only.
fn rand_seed() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn spawn_node(exe: &Path, config: &Path, log: &Path, bootstrap: bool) -> Result<Child, String> {
    let log_file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command.arg("run").arg("--config").arg(config);
    if bootstrap {
        command.arg("--bootstrap");
    }
    command
        .env("LITEGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))
}

fn preferred_port(port: u16) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

async fn wait_listening(addr: SocketAddr, log: &Path) -> Result<(), String> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!(
        "a demo node did not start listening on {addr}; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    ))
}

/// The name of the node every node agrees is the primary.
async fn wait_for_leader(nodes: &[DemoNode]) -> Result<String, String> {
    for _ in 0..200 {
        let mut views = Vec::new();
        for node in nodes {
            let admin = format!("http://{}", node.admin);
            if let Ok(status) = crate::admin::client::fetch_status(&admin).await {
                views.push(status["primary"].as_str().map(str::to_owned));
            }
        }
        if views.len() == nodes.len() {
            if let Some(Some(first)) = views.first() {
                if views.iter().all(|v| v.as_deref() == Some(first.as_str())) {
                    return Ok(first.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the demo nodes did not elect a primary within 10s; their logs are in {}",
        nodes[0]
            .log
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    ))
}

/// Waits for Ctrl-C or SIGTERM, and reports a node that exits by itself.
async fn supervise(nodes: &mut [DemoNode]) -> Result<(), String> {
    let (trigger, mut stopping) = shutdown::channel();
    shutdown::on_signals(trigger).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stopping.begun() => {
                println!("\nstopping the demo");
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                println!(
                    "{} exited ({status}); the others carry on without it. Restarting it; its log is {}",
                    node.name,
                    node.log.display()
                );
                // It keeps its vote and log in its data dir and rejoins.
                match spawn_node(
                    &std::env::current_exe().map_err(|e| e.to_string())?,
                    &node.config,
                    &node.log,
                    false,
                ) {
                    Ok(child) => node.child = child,
                    Err(e) => println!("cannot restart {}: {e}", node.name),
                }
            }
        }
    }
}

/// SIGTERM first, so the node shuts down as in production; SIGKILL if it
/// does not exit promptly.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

fn banner(nodes: &[DemoNode], leader: &str, exe: &Path) -> String {
    let mut out =
        format!("\nlitegate demo: three nodes elected {leader} as the primary (Raft)\n\n");
    for n in nodes {
        let _ = writeln!(
            out,
            "  {:<8} http://{}   (admin http://{})   pid {}",
            n.name,
            n.public,
            n.admin,
            n.child.id().map(|p| p.to_string()).unwrap_or_default(),
        );
    }
    let primary = nodes.iter().find(|n| n.name == leader).unwrap_or(&nodes[0]);
    let replica = nodes.iter().find(|n| n.name != leader).unwrap_or(&nodes[1]);
    let exe = exe.display();
    let _ = write!(
        out,
        "\nTry:\n\
         \x20 open http://{replica}/ and write something: the page is served by {replica_name}'s app,\n\
         \x20   the write by {leader}'s (the primary)\n\
         \x20 curl -si -d 'hello' http://{replica}/entries | grep -i served-by   # a write via a replica\n\
         \x20 curl -s http://{replica}/entries                                  # a read, served locally\n\
         \x20 {exe} status --admin http://{primary_admin}                   # term, leader, each peer\n\
         \x20 kill -9 {pid}      # kill the primary: the others elect a new one in well under a second;\n\
         \x20                    #   the demo restarts the killed node, which rejoins as a replica\n\
         \x20 {exe} handoff --admin http://{primary_admin}                  # a planned, lossless switch\n\
         \x20 curl -s http://{replica_admin}/metrics | grep -E 'litegate_(raft_term|is_primary|http_requests_total)'\n\
         \nNode logs: {logs}\nCtrl-C stops everything.\n",
        replica = replica.public,
        replica_name = replica.name,
        replica_admin = replica.admin,
        primary_admin = primary.admin,
        pid = primary.child.id().map(|p| p.to_string()).unwrap_or_default(),
        logs = primary.log.parent().map(|p| p.display().to_string()).unwrap_or_default(),
    );
    out
}
