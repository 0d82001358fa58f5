//! Which data dir each node id runs on. A data dir draws a random
//! incarnation when it is created (kept in `identity.json`). Every Raft
//! message carries the sender's incarnation and the one the sender knows
//! for the receiver; the epoch poll tells each peer's too. A node
//! remembers, in `raft.redb`, the first incarnation it sees for each peer
//! id. A peer id that comes back with another incarnation has lost its
//! data dir, and with it its vote and log: it is refused, so it neither
//! votes nor counts, and it learns from the refusal that it must be
//! replaced (`litegate member replace`).
//!
//! A peer that sends no incarnation (an older litegate) or one not seen
//! before is accepted, and the first one seen is kept. A membership change
//! that removes an id forgets that id's incarnation.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use ring::rand::{SecureRandom, SystemRandom};

use super::db::{self, RaftDb};

/// The `meta` key of the map peer id → incarnation.
const PEERS_KEY: &str = "peer_incarnations";

/// A fresh incarnation: 128 random bits, hex.
pub fn draw() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random source failed".to_owned())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a sighting of a peer's incarnation means.
#[derive(Debug, PartialEq, Eq)]
pub enum Sighting {
    /// The one already known, or the first one (now kept).
    Known,
    /// Another than the one known: the peer's data dir is not the one it
    /// had.
    Changed { known: String },
}

#[derive(Debug)]
pub struct Incarnations {
    mine: String,
    db: Arc<RaftDb>,
    known: Mutex<BTreeMap<u64, String>>,
}

impl Incarnations {
    pub fn open(mine: String, db: Arc<RaftDb>) -> Result<Self, String> {
        let known = db
            .get::<BTreeMap<u64, String>>(PEERS_KEY)
            .map_err(|e| format!("cannot read {}: {e}", db::DB_FILE))?
            .unwrap_or_default();
        Ok(Self {
            mine,
            db,
            known: Mutex::new(known),
        })
    }

    /// This data dir's incarnation.
    pub fn mine(&self) -> &str {
        &self.mine
    }

    /// The incarnation known for `peer`, if any.
    pub fn expected(&self, peer: u64) -> Option<String> {
        lock(&self.known).get(&peer).cloned()
    }

    /// `peer` said it runs as `incarnation`. A first sighting is on disk
    /// before this returns, so a restart cannot forget it and then take a
    /// wiped peer's new incarnation as the first. Blocks on disk I/O.
    pub fn observe(&self, peer: u64, incarnation: &str) -> io::Result<Sighting> {
        let mut known = lock(&self.known);
        match known.get(&peer) {
            Some(k) if k == incarnation => return Ok(Sighting::Known),
            Some(k) => return Ok(Sighting::Changed { known: k.clone() }),
            None => {}
        }
        let mut next = known.clone();
        next.insert(peer, incarnation.to_owned());
        self.save(&next)?;
        *known = next;
        Ok(Sighting::Known)
    }

    /// [`Self::observe`] from async code: no disk I/O when `incarnation`
    /// is the one known, the blocking pool otherwise.
    pub async fn sighted(self: &Arc<Self>, peer: u64, incarnation: &str) -> io::Result<Sighting> {
        if self.expected(peer).as_deref() == Some(incarnation) {
            return Ok(Sighting::Known);
        }
        let (me, incarnation) = (Arc::clone(self), incarnation.to_owned());
        tokio::task::spawn_blocking(move || me.observe(peer, &incarnation))
            .await
            .map_err(io::Error::other)?
    }

    /// Forgets the ids a membership change removed. Blocks on disk I/O.
    pub fn forget(&self, removed: &[u64]) -> io::Result<()> {
        let mut known = lock(&self.known);
        if !removed.iter().any(|id| known.contains_key(id)) {
            return Ok(());
        }
        let mut next = known.clone();
        for id in removed {
            next.remove(id);
        }
        self.save(&next)?;
        *known = next;
        Ok(())
    }

    fn save(&self, known: &BTreeMap<u64, String>) -> io::Result<()> {
        let bytes = db::encode(known)?;
        self.db.write(|txn| {
            let mut meta = txn.open_table(db::META).map_err(db::io)?;
            meta.insert(PEERS_KEY, bytes.as_slice()).map_err(db::io)?;
            Ok(())
        })
    }
}

/// Whether `text` can be an incarnation (as [`draw`] makes them); anything
/// else from a peer is ignored, as if it sent none.
pub fn plausible(text: &str) -> bool {
    !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a node whose data dir the cluster does not know says: in its log,
/// `status` (`raft.not_serving`) and the text of a `503 no-primary`.
pub fn wiped_reason(me: u64, mine: &str, known: &str, sender: Option<u64>) -> String {
    format!(
        "this node's data dir is not the one the cluster knows as node {me} (it has incarnation {mine}; node {} knows node {me} by {known}): the data dir was lost or replaced, and with it this node's vote and log, so it does not rejoin as node {me}. Replace it: start it with a new node.id (and an empty cluster.data_dir) and run `litegate member replace <name of node {me}> --id NEW --name ... --cluster ... --public-url ...` against any member",
        sender.map_or("?".to_owned(), |s| s.to_string()),
    )
}

/// What a node says about a peer that came back with another data dir.
pub fn changed_reason(peer: u64, theirs: &str, known: &str) -> String {
    format!(
        "node {peer} came back with another data dir (incarnation {theirs}, known as {known}): it lost its vote and log and is not let back as node {peer}; replace it with `litegate member replace`"
    )
}

/// A poisoned lock only means another task panicked mid-update of plain
/// data; the data is still the last whole value.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("litegate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_first_incarnation_seen_is_kept_across_a_restart_and_another_is_refused() {
        let dir = temp_dir("incarnations");
        let db = super::super::store::open_db(&dir).unwrap();
        let mine = draw().unwrap();
        assert_eq!(mine.len(), 32);
        assert_ne!(mine, draw().unwrap());
        let known = Incarnations::open(mine.clone(), Arc::clone(&db)).unwrap();
        assert_eq!(known.mine(), mine);
        assert_eq!(known.expected(2), None);
        assert_eq!(known.observe(2, "aa").unwrap(), Sighting::Known);
        assert_eq!(known.observe(2, "aa").unwrap(), Sighting::Known);
        assert_eq!(known.observe(3, "cc").unwrap(), Sighting::Known);
        drop(known);

        // A restart remembers, so the wiped node 2's new incarnation is
        // not taken as a first sighting.
        let again = Incarnations::open(mine, Arc::clone(&db)).unwrap();
        assert_eq!(again.expected(2).as_deref(), Some("aa"));
        assert_eq!(
            again.observe(2, "bb").unwrap(),
            Sighting::Changed { known: "aa".into() }
        );
        assert_eq!(again.expected(2).as_deref(), Some("aa"));

        // Removing node 2 from the membership forgets it; node 3 stays.
        again.forget(&[2, 9]).unwrap();
        assert_eq!(again.expected(2), None);
        assert_eq!(again.observe(2, "bb").unwrap(), Sighting::Known);
        drop(again);
        let last = Incarnations::open("x".into(), db).unwrap();
        assert_eq!(last.expected(2).as_deref(), Some("bb"));
        assert_eq!(last.expected(3).as_deref(), Some("cc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_reasons_name_the_fix() {
        let wiped = wiped_reason(3, "new", "old", Some(1));
        assert!(wiped.contains("litegate member replace"), "{wiped}");
        assert!(wiped.contains("node 1 knows node 3 by old"), "{wiped}");
        assert!(changed_reason(3, "new", "old").contains("member replace"));
        assert!(plausible(&draw().unwrap()));
        assert!(!plausible("") && !plausible("not hex") && !plausible(&"a".repeat(65)));
    }
}
