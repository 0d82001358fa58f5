//! WebSockets and other HTTP/1.1 upgrades: once the app answers `101`, the
//! client's connection and the app's are joined and bytes flow both ways
//! until either side closes.

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// An upgrade a client asked for and litegate allowed: the one protocol
/// the app may switch to, and the client's connection for after the `101`.
pub struct ClientUpgrade {
    pub protocol: HeaderValue,
    pub connection: OnUpgrade,
}

/// Joins the two upgraded connections in a task of their own, so the `101`
/// can be sent to the client first (the client's side upgrades only then).
pub fn bridge(client: OnUpgrade, app: OnUpgrade) {
    tokio::spawn(async move {
        let (client, app) = match tokio::try_join!(client, app) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
        match tokio::io::copy_bidirectional(&mut client, &mut app).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, "upgraded connection ended with an error"),
        }
    });
}
