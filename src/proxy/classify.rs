//! Deciding, from the request line and headers alone, whether a request is a
//! read the local app may serve or must reach the primary (docs/design.md
//! §2) — or must not reach any app at all.

use http::{HeaderMap, HeaderValue, Method, Version};

use crate::config::{MethodRule, PathGlob, PathPrecedence, RoutingConfig};

use super::errors::ProxyError;
use super::headers;
use super::path::{self, MatchPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A safe method: served by the local replica.
    Read,
    /// A mutating method, or any method on a `primary_paths` path.
    Write,
    /// A `local_paths` path: served here whatever the method, never waited.
    Local,
    /// An HTTP/1.1 `GET` upgrade to a `routing.upgrade_protocols` protocol
    /// (WebSocket).
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

    /// The class a request refused by [`Classifier::classify`] is counted
    /// under: what its method alone would make it.
    pub fn of_method(method: &Method) -> Class {
        if is_safe(method) {
            Class::Read
        } else {
            Class::Write
        }
    }
}

#[derive(Debug, Clone)]
pub struct Classification {
    pub class: Class,
    /// Only the primary's app may serve it.
    pub needs_primary: bool,
    /// The `Upgrade` protocol to carry to the next hop. Set only for a
    /// [`Class::WebSocket`]; any other request loses its `Upgrade` and
    /// `Connection` headers as hop-by-hop.
    pub upgrade: Option<HeaderValue>,
}

#[derive(Debug, Clone)]
pub struct Classifier {
    primary_paths: Vec<PathGlob>,
    local_paths: Vec<PathGlob>,
    /// `routing.upgrade_protocols`; never `h2c` (config validation).
    upgrade_protocols: Vec<String>,
    method_rule: MethodRule,
    path_precedence: PathPrecedence,
}

impl Classifier {
    pub fn new(routing: &RoutingConfig) -> Self {
        Self {
            primary_paths: routing.primary_paths.clone(),
            local_paths: routing.local_paths.clone(),
            upgrade_protocols: routing.upgrade_protocols.clone(),
            method_rule: routing.method_rule,
            path_precedence: routing.path_precedence,
        }
    }

    /// `primary_paths` wins over `local_paths` when both match (sending a
    /// read to the primary costs a hop, sending a write to a replica fails
    /// it), unless `routing.path_precedence = "local-first"`.
    /// Globs are matched against the views of the path in `path.rs`, never
    /// the raw bytes. `CONNECT` and `TRACE` are refused (`405`), and so is a
    /// path that cannot be matched safely (`400`).
    pub fn classify(
        &self,
        method: &Method,
        path: &str,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<Classification, ProxyError> {
        if *method == Method::CONNECT || *method == Method::TRACE {
            return Err(ProxyError::MethodNotAllowed(method.clone()));
        }
        let paths = if path == "*" && *method == Method::OPTIONS {
            MatchPaths::asterisk()
        } else {
            path::normalise(path).map_err(ProxyError::BadRequest)?
        };
        let on_primary_path = paths.any(|view| self.primary_paths.iter().any(|g| g.matches(view)));
        let on_local_path = paths.all(|view| self.local_paths.iter().any(|g| g.matches(view)));
        let upgrade = self.allowed_upgrade(method, version, headers);
        let local_first = self.path_precedence == PathPrecedence::LocalFirst;
        let class = if upgrade.is_some() {
            Class::WebSocket
        } else if on_local_path && local_first {
            Class::Local
        } else if on_primary_path {
            Class::Write
        } else if on_local_path {
            Class::Local
        } else if is_read(self.method_rule, method) {
            Class::Read
        } else {
            Class::Write
        };
        let needs_primary = match class {
            Class::Write => true,
            Class::WebSocket => on_primary_path && !(on_local_path && local_first),
            Class::Read | Class::Local => false,
        };
        Ok(Classification {
            class,
            needs_primary,
            upgrade,
        })
    }

    /// Only an HTTP/1.1 `GET` may upgrade (RFC 6455 §4.1; HTTP/2 has no
    /// `Upgrade`), and only to a protocol the operator allowed: an upgrade
    /// is served by whichever app the path routes it to, so a `POST` or an
    /// unknown protocol that passed as one would dodge write routing.
    fn allowed_upgrade(
        &self,
        method: &Method,
        version: Version,
        headers: &HeaderMap,
    ) -> Option<HeaderValue> {
        if *method != Method::GET || version != Version::HTTP_11 {
            return None;
        }
        let requested = headers::requested_upgrade(headers)?;
        let name = headers::upgrade_protocol(requested)?;
        // Config validation refuses h2c too; this holds however the
        // classifier was built.
        let allowed = !name.eq_ignore_ascii_case("h2c")
            && self
                .upgrade_protocols
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name));
        allowed.then(|| requested.clone())
    }
}

/// The methods Django treats as safe (`django.http.request` SAFE_METHODS),
/// less `TRACE`, which litegate refuses.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `method` is a read under `rule`, on a path no list matched.
fn is_read(rule: MethodRule, method: &Method) -> bool {
    match rule {
        MethodRule::Django => is_safe(method),
        MethodRule::Litefs => matches!(*method, Method::GET | Method::HEAD),
    }
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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn classify(
        method: &str,
        path: &str,
        version: Version,
        h: &[(&str, &str)],
    ) -> Result<Classification, ProxyError> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        classifier().classify(&method, path, version, &headers(h))
    }

    fn class(method: &str, path: &str) -> (Class, bool) {
        let c = classify(method, path, Version::HTTP_11, &[]).unwrap();
        (c.class, c.needs_primary)
    }

    const WEBSOCKET: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
    ];

    #[test]
    fn methods_and_paths() {
        assert_eq!(class("GET", "/"), (Class::Read, false));
        assert_eq!(class("HEAD", "/"), (Class::Read, false));
        assert_eq!(class("OPTIONS", "/"), (Class::Read, false));
        assert_eq!(class("OPTIONS", "*"), (Class::Read, false));
        assert_eq!(class("POST", "/"), (Class::Write, true));
        assert_eq!(class("PATCH", "/"), (Class::Write, true));
        assert_eq!(class("DELETE", "/"), (Class::Write, true));
        assert_eq!(class("PROPFIND", "/"), (Class::Write, true));
        assert_eq!(class("GET", "/oauth/callback"), (Class::Write, true));
        assert_eq!(class("POST", "/static/upload"), (Class::Local, false));
        assert_eq!(class("GET", "/static/app.css"), (Class::Local, false));
        // Both lists match: the primary wins.
        assert_eq!(class("GET", "/oauth/static/x"), (Class::Write, true));
    }

    #[test]
    fn connect_and_trace_are_refused() {
        for method in ["CONNECT", "TRACE"] {
            let err = classify(method, "/", Version::HTTP_11, &[]).unwrap_err();
            assert!(matches!(err, ProxyError::MethodNotAllowed(_)), "{method}");
            assert_eq!(err.status(), http::StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(err.code(), "method-not-allowed");
        }
        // CONNECT's target is an authority, not a path: still a 405.
        let err = classify("CONNECT", "", Version::HTTP_11, &[]).unwrap_err();
        assert!(matches!(err, ProxyError::MethodNotAllowed(_)));
    }

    #[test]
    fn other_spellings_of_a_primary_path_reach_the_primary() {
        for path in [
            "/%6fauth/callback",
            "/%6Fauth/callback",
            "/oauth%2Fcallback",
            "/oauth%2fcallback",
            "//oauth/callback",
            "/oauth//callback",
            "/x/../oauth/callback",
            "/x/%2e%2e/oauth/callback",
            "/./oauth/callback",
            "/static/../oauth/callback",
        ] {
            assert_eq!(class("GET", path), (Class::Write, true), "{path}");
        }
    }

    #[test]
    fn local_only_when_every_view_is_local() {
        assert_eq!(class("POST", "/static/a/../b"), (Class::Local, false));
        assert_eq!(class("POST", "/%73tatic/x"), (Class::Local, false));
        // The app may route this as /secret (dot segments removed).
        assert_eq!(class("POST", "/static/../secret"), (Class::Write, true));
        assert_eq!(class("GET", "/static/../secret"), (Class::Read, false));
    }

    #[test]
    fn unsafe_paths_are_bad_requests() {
        for path in ["/%zz", "/oauth%4", "/%00", "/%FF", "oauth", "*", ""] {
            let err = classify("GET", path, Version::HTTP_11, &[]).unwrap_err();
            assert!(matches!(err, ProxyError::BadRequest(_)), "{path:?}");
            assert_eq!(err.code(), "bad-request");
        }
    }

    #[test]
    fn websockets() {
        let c = classify("GET", "/ws/chat", Version::HTTP_11, WEBSOCKET).unwrap();
        assert_eq!((c.class, c.needs_primary), (Class::WebSocket, false));
        assert_eq!(c.upgrade.unwrap(), "websocket");
        let c = classify("GET", "/ws/primary", Version::HTTP_11, WEBSOCKET).unwrap();
        assert_eq!((c.class, c.needs_primary), (Class::WebSocket, true));
        // Protocol names are case-insensitive.
        let h = &[("connection", "upgrade"), ("upgrade", "WebSocket")];
        let c = classify("GET", "/ws/chat", Version::HTTP_11, h).unwrap();
        assert_eq!(c.class, Class::WebSocket);
    }

    #[test]
    fn only_an_http11_get_to_an_allowed_protocol_upgrades() {
        let foo = &[("connection", "Upgrade"), ("upgrade", "foo")];
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&str, Version, Headers, Class)] = &[
            ("POST", Version::HTTP_11, WEBSOCKET, Class::Write),
            ("POST", Version::HTTP_11, foo, Class::Write),
            ("DELETE", Version::HTTP_11, WEBSOCKET, Class::Write),
            ("PUT", Version::HTTP_11, foo, Class::Write),
            ("POST", Version::HTTP_10, WEBSOCKET, Class::Write),
            ("GET", Version::HTTP_10, WEBSOCKET, Class::Read),
            ("GET", Version::HTTP_2, WEBSOCKET, Class::Read),
            ("GET", Version::HTTP_11, foo, Class::Read),
            (
                "GET",
                Version::HTTP_11,
                &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                ],
                Class::Read,
            ),
            (
                "GET",
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "websocket, h2c")],
                Class::Read,
            ),
            (
                "GET",
                Version::HTTP_11,
                &[("connection", "keep-alive"), ("upgrade", "websocket")],
                Class::Read,
            ),
        ];
        for (method, version, h, want) in cases {
            let c = classify(method, "/notes", *version, h).unwrap();
            assert_eq!(c.class, *want, "{method} {version:?} {h:?}");
            assert!(c.upgrade.is_none(), "{method} {version:?} {h:?}");
            assert_eq!(c.needs_primary, *want == Class::Write);
        }
    }

    #[test]
    fn h2c_never_upgrades_even_if_listed() {
        let routing = RoutingConfig {
            upgrade_protocols: vec!["websocket".into(), "h2c".into()],
            ..RoutingConfig::default()
        };
        let h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        let c = Classifier::new(&routing)
            .classify(&Method::GET, "/", Version::HTTP_11, &h)
            .unwrap();
        assert_eq!((c.class, c.upgrade), (Class::Read, None));
    }

    #[test]
    fn an_empty_protocol_list_turns_upgrades_off() {
        let routing = RoutingConfig {
            upgrade_protocols: Vec::new(),
            ..RoutingConfig::default()
        };
        let c = Classifier::new(&routing)
            .classify(&Method::GET, "/ws", Version::HTTP_11, &headers(WEBSOCKET))
            .unwrap();
        assert_eq!((c.class, c.upgrade), (Class::Read, None));
    }

    fn litefs_like(primary: &[&str], local: &[&str]) -> Classifier {
        Classifier::new(&RoutingConfig {
            method_rule: MethodRule::Litefs,
            path_precedence: PathPrecedence::LocalFirst,
            primary_paths: primary.iter().map(|p| p.parse().unwrap()).collect(),
            local_paths: local.iter().map(|p| p.parse().unwrap()).collect(),
            ..RoutingConfig::default()
        })
    }

    fn class_with(c: &Classifier, method: Method, path: &str) -> (Class, bool) {
        let c = c
            .classify(&method, path, Version::HTTP_11, &HeaderMap::new())
            .unwrap();
        (c.class, c.needs_primary)
    }

    #[test]
    fn the_litefs_method_rule_makes_options_a_write() {
        let litefs = litefs_like(&[], &[]);
        assert_eq!(
            class_with(&litefs, Method::OPTIONS, "/x"),
            (Class::Write, true)
        );
        assert_eq!(class_with(&litefs, Method::GET, "/x"), (Class::Read, false));
        assert_eq!(
            class_with(&litefs, Method::HEAD, "/x"),
            (Class::Read, false)
        );
        assert_eq!(
            class_with(&litefs, Method::POST, "/x"),
            (Class::Write, true)
        );
        // The default keeps OPTIONS a read, as Django does.
        let default = Classifier::new(&RoutingConfig::default());
        assert_eq!(
            class_with(&default, Method::OPTIONS, "/x"),
            (Class::Read, false)
        );
        // TRACE stays refused under either rule: it would echo cookies.
        let trace = Method::from_bytes(b"TRACE").unwrap();
        assert!(litefs
            .classify(&trace, "/x", Version::HTTP_11, &HeaderMap::new())
            .is_err());
    }

    #[test]
    fn local_first_lets_passthrough_win_like_litefs() {
        let litefs = litefs_like(&["/api/*"], &["/api/health"]);
        assert_eq!(
            class_with(&litefs, Method::POST, "/api/health"),
            (Class::Local, false)
        );
        assert_eq!(
            class_with(&litefs, Method::GET, "/api/items"),
            (Class::Write, true)
        );
        let default = Classifier::new(&RoutingConfig {
            primary_paths: vec!["/api/*".parse().unwrap()],
            local_paths: vec!["/api/health".parse().unwrap()],
            ..RoutingConfig::default()
        });
        assert_eq!(
            class_with(&default, Method::POST, "/api/health"),
            (Class::Write, true)
        );
        // An upgrade on a path both lists match stays here under local-first.
        let ws = litefs
            .classify(
                &Method::GET,
                "/api/health",
                Version::HTTP_11,
                &headers(WEBSOCKET),
            )
            .unwrap();
        assert_eq!((ws.class, ws.needs_primary), (Class::WebSocket, false));
    }
}
