//! The paths `routing.primary_paths` and `routing.local_paths` are matched
//! against. The app still receives the request's path byte for byte; these
//! forms exist only so that a glob cannot be dodged by spelling a path
//! differently (`/%6fauth/x`, `/oauth%2Fx`, `//oauth/x`, `/a/../oauth/x`).
//!
//! Apps and their servers do not agree on what a path means: uvicorn,
//! hypercorn and Django's WSGI handler percent-decode it (`%2F` included)
//! but neither collapse `//` nor resolve `..`; other stacks do one or both.
//! So a path has up to four *views*: decoded, plus decoded with duplicate
//! slashes collapsed, with dot segments removed, and with both. A request
//! goes to the primary if **any** view matches `primary_paths`, and counts as
//! local only if **every** view matches `local_paths` — whichever view the
//! app routes by, the safer decision is taken.

use std::borrow::Cow;

/// The views of one request path; see the module comment. The common path
/// has one view, borrowed: classifying it allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchPaths<'a> {
    first: Cow<'a, str>,
    /// The other views, the fully normalised one last.
    more: Vec<String>,
}

impl<'a> MatchPaths<'a> {
    /// `OPTIONS *`: the server as a whole, matched as the literal `*`.
    pub fn asterisk() -> Self {
        Self {
            first: Cow::Borrowed("*"),
            more: Vec::new(),
        }
    }

    fn views(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.first.as_ref()).chain(self.more.iter().map(String::as_str))
    }

    pub fn any(&self, matches: impl FnMut(&str) -> bool) -> bool {
        self.views().any(matches)
    }

    pub fn all(&self, matches: impl FnMut(&str) -> bool) -> bool {
        self.views().all(matches)
    }

    /// The fully normalised view: decoded, slashes collapsed, dot segments
    /// removed.
    #[cfg(test)]
    fn normalised(&self) -> &str {
        self.more.last().map_or(&self.first, |v| v)
    }
}

/// The views of `raw` (a request path without its query), or why it cannot
/// be matched safely — the caller answers that with `400`.
pub fn normalise(raw: &str) -> Result<MatchPaths<'_>, &'static str> {
    if !raw.starts_with('/') {
        return Err("the request path must start with \"/\"");
    }
    // The common path: nothing to decode, collapse or resolve.
    if !raw.contains('%') && !raw.contains("//") && !raw.contains("/.") {
        return Ok(MatchPaths {
            first: Cow::Borrowed(raw),
            more: Vec::new(),
        });
    }
    let decoded = percent_decode(raw)?;
    let collapsed = collapse_slashes(&decoded);
    let resolved = remove_dot_segments(&decoded);
    let both = remove_dot_segments(&collapsed);
    // The fully normalised view goes last.
    let mut views: Vec<String> = Vec::with_capacity(4);
    for view in [decoded, collapsed, resolved] {
        if view != both && !views.contains(&view) {
            views.push(view);
        }
    }
    views.push(both);
    let mut views = views.into_iter();
    Ok(MatchPaths {
        first: Cow::Owned(views.next().unwrap_or_default()),
        more: views.collect(),
    })
}

/// Decodes every `%XX` once, as the app's server does (`%2F` becomes `/`).
/// A `%` without two hex digits, an encoded NUL, or escapes that do not
/// form UTF-8 cannot be read the way the app reads them, so they are
/// refused. A backslash, raw or `%5C`, stays a backslash: Django and
/// Starlette route it as an ordinary character, not as `/`.
fn percent_decode(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err("a \"%\" in the request path is not followed by two hex digits");
        };
        // Both digits are below 16, so this is one byte.
        let byte = u8::try_from(hi * 16 + lo).unwrap_or_default();
        if byte == 0 {
            return Err("the request path contains an encoded NUL (%00)");
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| "the request path's percent-escapes do not decode to UTF-8")
}

fn collapse_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4, step by step; `..` above the root stays at the root.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut out = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input
            .strip_prefix("../")
            .or_else(|| input.strip_prefix("./"))
        {
            // A.
            input = rest;
        } else if input.starts_with("/./") {
            // B.
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            // C.
            input = &input[3..];
            drop_last_segment(&mut out);
        } else if input == "/.." {
            input = "/";
            drop_last_segment(&mut out);
        } else if input == "." || input == ".." {
            // D.
            input = "";
        } else {
            // E: the first segment, with its leading "/", moves to the output.
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            out.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    out
}

fn drop_last_segment(out: &mut String) {
    let cut = out.rfind('/').unwrap_or(0);
    out.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input → every view, the fully normalised one last.
    #[test]
    fn views_of_paths() {
        let table: &[(&str, &[&str])] = &[
            ("/", &["/"]),
            ("/oauth/callback", &["/oauth/callback"]),
            ("/oauth/callback/", &["/oauth/callback/"]),
            // Unreserved characters, either case of hex.
            ("/%6fauth/callback", &["/oauth/callback"]),
            ("/%6Fauth/%7e%2D%2e%5F", &["/oauth/~-._"]),
            // An encoded slash is a slash to the app's router.
            ("/oauth%2Fcallback", &["/oauth/callback"]),
            ("/oauth%2fcallback", &["/oauth/callback"]),
            // Reserved and non-ASCII characters decode too, once.
            ("/a%20b/%3F", &["/a b/?"]),
            ("/caf%C3%A9", &["/café"]),
            ("/100%25", &["/100%"]),
            ("/%2541", &["/%41"]),
            // A backslash is not a separator.
            ("/oauth\\callback", &["/oauth\\callback"]),
            ("/oauth%5Ccallback", &["/oauth\\callback"]),
            // Duplicate slashes: as sent, and collapsed.
            ("//oauth/callback", &["//oauth/callback", "/oauth/callback"]),
            ("/oauth//callback", &["/oauth//callback", "/oauth/callback"]),
            (
                "/oauth%2F%2Fcallback",
                &["/oauth//callback", "/oauth/callback"],
            ),
            // Dot segments: as sent, and removed (encoded dots too).
            ("/x/../oauth/cb", &["/x/../oauth/cb", "/oauth/cb"]),
            ("/x/%2e%2E/oauth/cb", &["/x/../oauth/cb", "/oauth/cb"]),
            ("/x%2F..%2Foauth/cb", &["/x/../oauth/cb", "/oauth/cb"]),
            ("/./oauth/./cb", &["/./oauth/./cb", "/oauth/cb"]),
            ("/oauth/.", &["/oauth/.", "/oauth/"]),
            ("/oauth/..", &["/oauth/..", "/"]),
            ("/..", &["/..", "/"]),
            ("/../../oauth", &["/../../oauth", "/oauth"]),
            ("/a/b/../../../c", &["/a/b/../../../c", "/c"]),
            // Names that merely start with dots are names.
            ("/.well-known/x", &["/.well-known/x"]),
            ("/a/..b/.c", &["/a/..b/.c"]),
            // Both: each alone, and together (order matters: collapse first).
            (
                "/a//../oauth",
                &["/a//../oauth", "/a/../oauth", "/a/oauth", "/oauth"],
            ),
        ];
        for (input, want) in table {
            let got = normalise(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.views().collect::<Vec<_>>(), *want, "{input}");
            assert_eq!(got.normalised(), *want.last().unwrap(), "{input}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for input in [
            "",
            "oauth/callback",
            "*",
            "/%zz",
            "/%4",
            "/a%",
            "/%%41",
            "/%00",
            "/a%00/b",
            "/%FF",
            "/%C3",
            "/%C3%28",
        ] {
            assert!(normalise(input).is_err(), "{input:?} was accepted");
        }
    }

    #[test]
    fn plain_paths_are_borrowed() {
        let paths = normalise("/notes/1").unwrap();
        assert!(matches!(paths.first, Cow::Borrowed(_)));
        assert!(paths.more.is_empty());
    }

    #[test]
    fn any_and_all() {
        let paths = normalise("/static/../oauth/x").unwrap();
        assert!(paths.any(|p| p.starts_with("/oauth/")));
        assert!(!paths.all(|p| p.starts_with("/static/")));
        assert!(MatchPaths::asterisk().all(|p| p == "*"));
    }
}
