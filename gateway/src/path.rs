//! One normalised path per request (SPEC §8.2): a neutral, pure module. The router (2)
//! computes it once before matching; every policy, hash key, `/admin/explain`, the access log
//! and the forwarded request then see the same path; `config` checks route paths with it.
//!
//! Pure functions, no allocation when the path is already normal (the common case).
//!
//! Why this matters: a route that protects `/admin` and an open route on `/` to the same
//! upstream are only safe when the gateway and the upstream agree on what the path is.
//! Upstreams (Go, Spring, Tomcat, Express, WSGI) decode `%61`, merge `//`, drop `;params`
//! and resolve `..;`: so the gateway does the same before it matches, and forwards what it
//! matched.

use std::borrow::Cow;

pub use crate::config::EncodedSlashes;

/// The request target as the client sent it, kept when normalising changed it: integrity's
/// `@path`, `@request-target` and `@target-uri` sign what the client sent (SPEC §8.2).
#[derive(Clone, Debug)]
pub struct RawTarget(pub http::uri::PathAndQuery);

/// Why a path was refused (the 400's logged reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// A byte that is not an RFC 3986 `pchar` or `/` (raw backslash, space, non-ASCII, ...).
    InvalidByte,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    Nul,
    /// Escaped bytes that are not valid UTF-8 (`%C0%AE`, overlong forms).
    NotUtf8,
    /// `%2F` / `%5C` with `encoded_slashes = "reject"`.
    EncodedSlash,
    /// With `encoded_slashes = "keep"`: a segment that would be `.` or `..` if the encoded
    /// slashes were separators.
    EncodedDotSegment,
    /// `..` above the root.
    AboveRoot,
    /// Not origin-form (does not start with `/`).
    NotOriginForm,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::InvalidByte => "invalid character in path",
            Self::BadEscape => "invalid percent-escape in path",
            Self::Nul => "%00 in path",
            Self::NotUtf8 => "percent-escapes in path are not valid UTF-8",
            Self::EncodedSlash => "encoded slash in path",
            Self::EncodedDotSegment => "encoded slash hides a dot segment",
            Self::AboveRoot => "path climbs above the root",
            Self::NotOriginForm => "request target is not origin-form",
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `pct-encoded`, plus `/`.
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise a request path (without its query) per SPEC §8.2. Borrowed when already normal.
pub fn normalise(path: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Fast path: plain bytes, no escape, no `//`, no dot segment.
    if bytes.iter().all(|&b| is_plain(b)) && !path.contains("//") && !has_dot_segment(path) {
        return Ok(Cow::Borrowed(path));
    }
    // Steps 1-3: validate and decode unreserved escapes.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let v = escape_at(bytes, i)?;
            if v == 0 {
                return Err(PathError::Nul);
            }
            if is_unreserved(v) {
                decoded.push(char::from(v));
                i += 3;
            } else if v >= 0x80 {
                // A run of escaped high bytes must be whole UTF-8 characters.
                let mut run = Vec::with_capacity(4);
                let mut j = i;
                while j < bytes.len() && bytes[j] == b'%' {
                    let w = escape_at(bytes, j)?;
                    if w < 0x80 {
                        break;
                    }
                    run.push(w);
                    j += 3;
                }
                if std::str::from_utf8(&run).is_err() {
                    return Err(PathError::NotUtf8);
                }
                for w in run {
                    push_escape(&mut decoded, w);
                }
                i = j;
            } else {
                if (v == b'/' || v == b'\\') && slashes == EncodedSlashes::Reject {
                    return Err(PathError::EncodedSlash);
                }
                push_escape(&mut decoded, v);
                i += 3;
            }
        } else if is_plain(b) {
            decoded.push(char::from(b));
            i += 1;
        } else {
            return Err(PathError::InvalidByte);
        }
    }
    // Steps 4-5: merge `/` runs, resolve dot segments.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        if seg.is_empty() {
            // `//` merged; a final empty segment is the trailing slash.
            trailing_slash = true;
            continue;
        }
        trailing_slash = false;
        let head = seg.split(';').next().unwrap_or(seg);
        if slashes == EncodedSlashes::Keep && hides_dot_segment(head) {
            return Err(PathError::EncodedDotSegment);
        }
        match head {
            "." => trailing_slash = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            _ => out.push(seg),
        }
    }
    let mut s = String::with_capacity(decoded.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Ok(Cow::Owned(s))
}

fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    match (
        bytes.get(i + 1).copied().and_then(hex_val),
        bytes.get(i + 2).copied().and_then(hex_val),
    ) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(PathError::BadEscape),
    }
}

fn push_escape(out: &mut String, v: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 15)]));
}

/// A segment (already decoded) that has a dot segment when `%2F`/`%5C` split it.
fn hides_dot_segment(seg: &str) -> bool {
    if !seg.contains("%2F") && !seg.contains("%5C") {
        return false;
    }
    seg.replace("%5C", "%2F")
        .split("%2F")
        .any(|p| p == "." || p == "..")
}

/// Whether any segment, before its first `;`, is a dot segment, or an escape could make one.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let head = seg.split(';').next().unwrap_or(seg);
        head == "." || head == ".."
    })
}

/// The path routes match on: each segment's `;` parameters removed, and the segments this
/// leaves empty dropped (`/;x/admin;y` → `/admin`). `path` is already normal.
pub fn match_path(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut s = String::with_capacity(path.len());
    let mut trailing = false;
    for seg in path.split('/').skip(1) {
        let head = seg.split(';').next().unwrap_or(seg);
        if head.is_empty() {
            // A trailing slash stays; a segment that was only parameters goes.
            trailing = seg.is_empty();
            continue;
        }
        trailing = false;
        s.push('/');
        s.push_str(head);
    }
    if trailing || s.is_empty() {
        s.push('/');
    }
    Cow::Owned(s)
}

/// `path` (normal, possibly with `;` parameters) with the segments that make up `prefix`
/// (a normal match-path prefix without trailing `/`) removed, as matching saw them:
/// `/api;v=1/users` − `/api` = `/users`. `None` when `prefix` is not a segment prefix of
/// the match path.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str, case_insensitive: bool) -> Option<&'a str> {
    if prefix.is_empty() || prefix == "/" {
        return Some(path);
    }
    let mut want = prefix.split('/').skip(1).peekable();
    let mut pos = 0; // byte index in `path` of the `/` that starts the next segment
    while want.peek().is_some() {
        let rest = path.get(pos..)?;
        if !rest.starts_with('/') {
            return None;
        }
        let end = rest[1..].find('/').map_or(rest.len(), |e| e + 1);
        let seg = &rest[1..end];
        let head = seg.split(';').next().unwrap_or(seg);
        if head.is_empty() {
            if seg.is_empty() {
                return None;
            }
            pos += end;
            continue;
        }
        let w = want.next()?;
        let same = if case_insensitive {
            head.eq_ignore_ascii_case(w)
        } else {
            head == w
        };
        if !same {
            return None;
        }
        pos += end;
    }
    let rest = &path[pos..];
    Some(if rest.is_empty() { "/" } else { rest })
}

/// Whether a route's `path` / `path_prefix` from config is already in normal form (`check`
/// refuses others: they could never match).
pub fn is_normal(path: &str) -> bool {
    match normalise(path, EncodedSlashes::Keep) {
        Ok(n) => n == path && match_path(path) == path,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalise(p, EncodedSlashes::Reject).map(Cow::into_owned)
    }
    fn k(p: &str) -> Result<String, PathError> {
        normalise(p, EncodedSlashes::Keep).map(Cow::into_owned)
    }

    #[test]
    fn a_normal_path_is_borrowed_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a;x=1/b",
            "/a.b/..c/.d",
            "/~u/@x:y!$&'()*+,=",
        ] {
            assert!(
                matches!(normalise(p, EncodedSlashes::Reject), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn decodes_unreserved_escapes_only() {
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/%41%7a%30%2D%2e%5F%7E").unwrap(), "/Az0-._~");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3bb").unwrap(), "/a%3Bb", "upper-case hex");
        assert_eq!(
            n("/%2561dmin").unwrap(),
            "/%2561dmin",
            "%25 is never decoded"
        );
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn refuses_what_is_not_a_pchar_or_a_valid_escape() {
        assert_eq!(n("/\\admin"), Err(PathError::InvalidByte));
        assert_eq!(n("/a b"), Err(PathError::InvalidByte));
        assert_eq!(n("/a\"b"), Err(PathError::InvalidByte));
        assert_eq!(n("/a{b}"), Err(PathError::InvalidByte));
        assert_eq!(n("/a%"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/admin%00"), Err(PathError::Nul));
        assert_eq!(n("/%c0%ae%c0%ae/admin"), Err(PathError::NotUtf8));
        assert_eq!(n("/%e0%80%af"), Err(PathError::NotUtf8));
        assert_eq!(n("/%c3"), Err(PathError::NotUtf8));
        assert_eq!(n("admin"), Err(PathError::NotOriginForm));
        assert_eq!(n(""), Err(PathError::NotOriginForm));
    }

    #[test]
    fn encoded_slashes_are_refused_or_kept_never_separators() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(k("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(k("/a%5cb").unwrap(), "/a%5Cb");
        assert_eq!(k("/api/..%2Fadmin"), Err(PathError::EncodedDotSegment));
        assert_eq!(k("/api/%2e%2e%5cadmin"), Err(PathError::EncodedDotSegment));
        assert_eq!(k("/a%2F.%2Fb"), Err(PathError::EncodedDotSegment));
        assert_eq!(k("/a%2F..b").unwrap(), "/a%2F..b");
    }

    #[test]
    fn merges_slashes_and_resolves_dot_segments() {
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a///b//").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/open/..;/admin").unwrap(), "/admin");
        assert_eq!(n("/open/.;x/admin").unwrap(), "/open/admin");
        assert_eq!(n("/api/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/api/.%2E/admin").unwrap(), "/admin");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/../../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/..b/c").unwrap(), "/a/..b/c");
    }

    #[test]
    fn match_path_drops_parameters_and_the_empty_segments_they_leave() {
        assert_eq!(match_path("/admin;x"), "/admin");
        assert_eq!(match_path("/;x/admin"), "/admin");
        assert_eq!(match_path("/a;p=1/b;q/"), "/a/b/");
        assert_eq!(match_path("/;x"), "/");
        assert_eq!(match_path("/admin/;x"), "/admin");
        assert_eq!(match_path("/plain"), "/plain");
        assert_eq!(
            match_path("/a%3Bb"),
            "/a%3Bb",
            "only a raw ; starts parameters"
        );
    }

    #[test]
    fn strip_prefix_removes_the_matched_segments_keeping_parameters_after() {
        assert_eq!(
            strip_prefix("/api/users/7", "/api", false),
            Some("/users/7")
        );
        assert_eq!(strip_prefix("/api", "/api", false), Some("/"));
        assert_eq!(strip_prefix("/api/", "/api", false), Some("/"));
        assert_eq!(strip_prefix("/apiary", "/api", false), None);
        assert_eq!(
            strip_prefix("/api;v=1/users;x", "/api", false),
            Some("/users;x")
        );
        assert_eq!(strip_prefix("/;x/api/users", "/api", false), Some("/users"));
        assert_eq!(strip_prefix("/API/users", "/api", false), None);
        assert_eq!(strip_prefix("/API/users", "/api", true), Some("/users"));
        assert_eq!(strip_prefix("/a/b/c", "/a/b", false), Some("/c"));
        assert_eq!(strip_prefix("/a", "/a/b", false), None);
    }

    #[test]
    fn config_paths_must_already_be_normal() {
        assert!(is_normal("/admin"));
        assert!(is_normal("/"));
        assert!(is_normal("/a%20b"));
        assert!(!is_normal("/%61dmin"));
        assert!(!is_normal("//admin"));
        assert!(!is_normal("/a/../b"));
        assert!(!is_normal("/a;x"));
        assert!(!is_normal("/a%2fb"));
    }

    /// Property: normalising twice gives the same path; the output never has `//`, a dot
    /// segment or a decodable unreserved escape. Inputs from a fixed-seed generator over an
    /// alphabet of the tricky pieces.
    #[test]
    fn normalising_is_idempotent_and_leaves_nothing_to_decode() {
        const PIECES: &[&str] = &[
            "/", "/", "a", "A", ".", "..", "%2e", "%2E", "%2f", "%5c", "%61", "%41", ";", ";x",
            "%3b", "%25", "%00", "%c3%a9", "%c0%ae", "\\", "~", "%7e", "//", "%", "b=c",
        ];
        let mut rng = fastrand::Rng::with_seed(0x9a7e_0001);
        for _ in 0..50_000 {
            let mut p = String::from("/");
            for _ in 0..rng.usize(0..10) {
                p.push_str(PIECES[rng.usize(0..PIECES.len())]);
            }
            for mode in [EncodedSlashes::Reject, EncodedSlashes::Keep] {
                let Ok(once) = normalise(&p, mode) else {
                    continue;
                };
                let twice = normalise(&once, mode).expect("a normal path stays valid");
                assert_eq!(once, twice, "not idempotent for {p:?}");
                assert!(!once.contains("//"), "{p:?} -> {once:?}");
                assert!(!has_dot_segment(&once), "{p:?} -> {once:?}");
                let b = once.as_bytes();
                for (i, _) in once.match_indices('%') {
                    let v = escape_at(b, i).expect("valid escape");
                    assert!(!is_unreserved(v), "{p:?} -> {once:?}");
                }
            }
        }
    }
}
