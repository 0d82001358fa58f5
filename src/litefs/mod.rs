//! Talking to LiteFS through its documented interface: the HTTP API
//! (`GET /info`, the `GET /events` stream of newline-delimited JSON) and the
//! files in its FUSE mount (`.primary`, `<db>-pos`); `POST /promote` for a
//! handoff.

pub mod api;
mod watcher;

use std::io;
use std::path::Path;

pub use api::{Event, NodeInfo};
pub use watcher::{spawn as spawn_watcher, LeaseView, Watcher};

/// The TXID in `<mount>/<db>-pos`, written by LiteFS as `%016x/%016x`
/// (TXID, then the post-apply checksum). `None` before the database exists.
pub fn read_position(mount: &Path, db: &str) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(mount.join(format!("{db}-pos"))) {
        Ok(text) => parse_position(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a LiteFS position: {text:?}"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_position(text: &str) -> Option<u64> {
    let (txid, checksum) = text.trim_end().split_once('/')?;
    if txid.len() != 16 || checksum.len() != 16 {
        return None;
    }
    u64::from_str_radix(checksum, 16).ok()?;
    u64::from_str_radix(txid, 16).ok()
}

/// The hostname in `<mount>/.primary`. LiteFS shows this file only on a
/// replica connected to a primary; on the primary itself and on a replica
/// that lost its primary it is absent — which the file alone cannot tell
/// apart, so absence is `None`, never "we are the primary".
pub fn read_primary_file(mount: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(mount.join(".primary")) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|h| !h.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(
            parse_position("00000000000000ff/a1b2c3d4e5f60718\n"),
            Some(255)
        );
        assert_eq!(parse_position("00000000000000ff"), None);
        assert_eq!(parse_position("ff/a1b2c3d4e5f60718"), None);
        assert_eq!(parse_position("zzzzzzzzzzzzzzzz/a1b2c3d4e5f60718"), None);
    }
}
