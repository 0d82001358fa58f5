//! Why this node takes no part in its cluster although it runs: a data dir
//! the cluster does not recognize, a copied identity. Set by the RPC
//! endpoints that refuse such traffic, shown by `status` and in the text of
//! a `503 no-primary`.

use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Standing {
    refusal: Mutex<Option<String>>,
}

impl Standing {
    pub fn refuse(&self, why: String) {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
