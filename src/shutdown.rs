//! One shutdown signal for every listener and background task of a node.

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn begun(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// SIGTERM and SIGINT, as they arrive.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// SIGHUP, as it arrives. Once installed, a SIGHUP no longer ends the
/// process (its default action), whatever the handler then does.
pub struct Hangups(tokio::signal::unix::Signal);

impl Hangups {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self(signal(SignalKind::hangup())?))
    }

    /// Resolves at the next SIGHUP; `None` if signals can no longer arrive.
    pub async fn next(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// Fires `trigger` on the first SIGTERM or SIGINT; a SIGHUP is logged and
/// otherwise ignored (there is no config file to reload).
pub fn on_signals(trigger: Trigger) -> std::io::Result<()> {
    let mut signals = Signals::install()?;
    let mut hangups = Hangups::install()?;
    tokio::spawn(async move {
        while hangups.next().await.is_some() {
            tracing::info!("SIGHUP: nothing to reload here");
        }
    });
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!(
            signal = name,
            "shutting down: no new connections; in-flight requests may finish"
        );
        trigger.fire();
    });
    Ok(())
}
