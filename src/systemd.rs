//! systemd's service notification protocol (`Type=notify`): the node says
//! when it is ready (listeners bound), reloading (SIGHUP) and stopping.
//! Outside systemd (`NOTIFY_SOCKET` unset) each call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "cannot notify systemd");
    }
}

/// Every listener is bound: clients can connect.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A SIGHUP reload starts; [`ready`] ends it. systemd's `notify-reload`
/// wants the monotonic time with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}
