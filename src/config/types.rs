//! Value types that parse with an error message an operator can act on.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a number and a unit: `250ms`, `5s`, `1m 30s`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(StdDuration::from_secs(s))
    }
    pub fn get(self) -> StdDuration {
        self.0
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim()).map(Duration).map_err(|_| {
            format!("invalid duration {s:?}: write a number and a unit (ms, s, m, h), e.g. \"250ms\" or \"5s\"")
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a bare number has no unit; write it as a string with a unit, e.g. \"{v}s\" or \"{v}ms\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A socket address to listen on, `host:port` with a literal IP.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl fmt::Debug for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim().parse().map(ListenAddr).map_err(|_| {
            format!("invalid listen address {s:?}: write an IP and a port, e.g. \"0.0.0.0:8080\" or \"127.0.0.1:9191\" (port 0 picks a free port)")
        })
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A list that may also be written as one comma-separated string, which is
/// how it arrives from an environment variable.
pub fn string_or_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    };
    items
        .iter()
        .map(|s| s.parse().map_err(de::Error::custom))
        .collect()
}

/// A CIDR such as `10.0.0.0/8`; a bare address means that one host.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net));
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Cidr(ipnet::IpNet::from(ip)));
        }
        Err(format!(
            "invalid CIDR {s:?}: write an address with a prefix length, e.g. \"10.0.0.0/8\" or \"127.0.0.1/32\""
        ))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A path pattern: `*` matches any run of characters, `/` included.
#[derive(Clone, PartialEq, Eq)]
pub struct PathGlob(String);

impl PathGlob {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.0.as_bytes(), path.as_bytes())
    }
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for PathGlob {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') && !s.starts_with('*') {
            return Err(format!(
                "invalid path pattern {s:?}: it is matched against the request path, so start it with \"/\", e.g. \"/admin/*\""
            ));
        }
        Ok(PathGlob(s.to_owned()))
    }
}

impl Serialize for PathGlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Linear-time wildcard match: on a mismatch, only the most recent `*` is
/// widened, which is enough because `*` is the only metacharacter.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str| p.parse::<PathGlob>().unwrap();
        assert!(g("/static/*").matches("/static/css/site.css"));
        assert!(!g("/static/*").matches("/stat"));
        assert!(g("/oauth/callback").matches("/oauth/callback"));
        assert!(!g("/oauth/callback").matches("/oauth/callback/x"));
        assert!(g("*/login").matches("/accounts/login"));
        assert!(g("/a/*/b*").matches("/a/x/y/bz"));
        assert!(!g("/a/*/b").matches("/a/x/c"));
        assert!(g("/*").matches("/"));
        assert!("admin".parse::<PathGlob>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<Duration>().unwrap().get(),
            StdDuration::from_millis(250)
        );
        assert_eq!("5s".parse::<Duration>().unwrap().to_string(), "5s");
        let err = "5 parsecs".parse::<Duration>().unwrap_err();
        assert!(err.contains("\"5s\""), "{err}");
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            "127.0.0.1".parse::<Cidr>().unwrap().0.to_string(),
            "127.0.0.1/32"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
