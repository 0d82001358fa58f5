//! Deciding, from the request line and headers alone, whether a request is a
//! read the local app may serve or must reach the primary (docs/design.md §2).

use http::{HeaderMap, HeaderValue, Method};

use crate::config::{PathGlob, RoutingConfig};

use super::headers;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A safe method: served by the local replica.
    Read,
    /// A mutating method, or any method on a `primary_paths` path.
    Write,
    /// A `local_paths` path: served here whatever the method, never waited.
    Local,
    /// An HTTP/1.1 upgrade (WebSocket).
    WebSocket,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Local => "local",
            Class::WebSocket => "websocket",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Classification {
    pub class: Class,
    /// Only the primary's app may serve it.
    pub needs_primary: bool,
    /// The `Upgrade` protocol to carry to the next hop.
    pub upgrade: Option<HeaderValue>,
}

#[derive(Debug, Clone)]
pub struct Classifier {
    primary_paths: Vec<PathGlob>,
    local_paths: Vec<PathGlob>,
}

impl Classifier {
    pub fn new(routing: &RoutingConfig) -> Self {
        Self {
            primary_paths: routing.primary_paths.clone(),
            local_paths: routing.local_paths.clone(),
        }
    }

    /// `primary_paths` wins over `local_paths` when both match: sending a
    /// read to the primary costs a hop, sending a write to a replica fails it.
    pub fn classify(&self, method: &Method, path: &str, headers: &HeaderMap) -> Classification {
        let on_primary_path = self.primary_paths.iter().any(|g| g.matches(path));
        let upgrade = headers::upgrade_protocol(headers);
        let class = if upgrade.is_some() {
            Class::WebSocket
        } else if on_primary_path {
            Class::Write
        } else if self.local_paths.iter().any(|g| g.matches(path)) {
            Class::Local
        } else if is_safe(method) {
            Class::Read
        } else {
            Class::Write
        };
        let needs_primary = match class {
            Class::Write => true,
            Class::WebSocket => on_primary_path,
            Class::Read | Class::Local => false,
        };
        Classification {
            class,
            needs_primary,
            upgrade,
        }
    }
}

/// The methods Django treats as safe (`django.http.request` SAFE_METHODS).
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        let routing = RoutingConfig {
            primary_paths: vec!["/oauth/*".parse().unwrap(), "/ws/primary".parse().unwrap()],
            local_paths: vec![
                "/static/*".parse().unwrap(),
                "/oauth/static/*".parse().unwrap(),
            ],
            ..RoutingConfig::default()
        };
        Classifier::new(&routing)
    }

    fn class(method: Method, path: &str) -> (Class, bool) {
        let c = classifier().classify(&method, path, &HeaderMap::new());
        (c.class, c.needs_primary)
    }

    #[test]
    fn methods_and_paths() {
        assert_eq!(class(Method::GET, "/"), (Class::Read, false));
        assert_eq!(class(Method::HEAD, "/"), (Class::Read, false));
        assert_eq!(class(Method::OPTIONS, "/"), (Class::Read, false));
        assert_eq!(class(Method::TRACE, "/"), (Class::Read, false));
        assert_eq!(class(Method::POST, "/"), (Class::Write, true));
        assert_eq!(class(Method::PATCH, "/"), (Class::Write, true));
        assert_eq!(class(Method::DELETE, "/"), (Class::Write, true));
        assert_eq!(
            class(Method::from_bytes(b"PROPFIND").unwrap(), "/"),
            (Class::Write, true)
        );
        assert_eq!(class(Method::GET, "/oauth/callback"), (Class::Write, true));
        assert_eq!(class(Method::POST, "/static/upload"), (Class::Local, false));
        assert_eq!(class(Method::GET, "/static/app.css"), (Class::Local, false));
        // Both lists match: the primary wins.
        assert_eq!(class(Method::GET, "/oauth/static/x"), (Class::Write, true));
    }

    #[test]
    fn websockets() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let c = classifier().classify(&Method::GET, "/ws/chat", &h);
        assert_eq!((c.class, c.needs_primary), (Class::WebSocket, false));
        let c = classifier().classify(&Method::GET, "/ws/primary", &h);
        assert_eq!((c.class, c.needs_primary), (Class::WebSocket, true));
    }
}
