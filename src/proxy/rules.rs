//! The request rules a SIGHUP may change while requests are in flight:
//! how requests are classified and how long they may wait. A request is
//! classified and its body timed under one snapshot; a write held for the
//! primary reads `primary_wait` again, so a reload during its wait may
//! shorten or lengthen it.

use std::time::Duration;

use crate::config::Config;

use super::classify::Classifier;

#[derive(Debug)]
pub struct RequestRules {
    pub classifier: Classifier,
    /// `routing.primary_wait`.
    pub primary_wait: Duration,
    /// `public.body_read_timeout`.
    pub body_read_timeout: Duration,
}

impl RequestRules {
    pub fn from_config(config: &Config) -> Self {
        Self {
            classifier: Classifier::new(&config.routing),
            primary_wait: config.routing.primary_wait.get(),
            body_read_timeout: config.public.body_read_timeout.get(),
        }
    }
}
