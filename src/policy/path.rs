//! Request-path normalisation: the one form of a path that the checks match and that is
//! forwarded, so that `/v1.45//containers/%2e%2e/containers/x/archive` cannot slip past a
//! rule written for `/containers/x/archive` and reach dockerd as that.
//!
//! The path is percent-decoded once (as Go's `net/http` decodes it for dockerd's router),
//! `//` and `.` segments are dropped, `..` removes the segment before it (never above the
//! root, as Go's `path.Clean`), and an API version prefix (`/v1.45`) is split off. What is
//! forwarded is encoded again where a decoded byte would change the meaning of the target
//! (`%`, `?`, `#`, spaces, controls, non-ASCII).

/// A normalised request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalisedPath {
    /// `v1.45`, without slashes.
    pub version: Option<String>,
    /// `/containers/abc/json`: no version, no empty, `.` or `..` segment, no trailing `/`.
    pub plain: String,
}

/// Normalises the path part of a request target; `Err` says why it is not a path.
pub fn normalise(sent: &str) -> Result<NormalisedPath, String> {
    if !sent.starts_with('/') {
        return Err(format!("{sent:?} is not an absolute path"));
    }
    let decoded = percent_decode(sent.as_bytes(), false)?;
    if decoded.contains('\0') {
        return Err("the path holds a NUL byte".to_string());
    }
    let segments = clean_segments(&decoded);
    let (version, rest) = match segments.first() {
        Some(first) if is_version(first) => (Some(first.to_string()), &segments[1..]),
        _ => (None, &segments[..]),
    };
    Ok(NormalisedPath {
        version,
        plain: format!("/{}", rest.join("/")),
    })
}

/// A file-system path compared lexically (bind-mount sources, `--bind-mounts`): the same
/// segment rules, no decoding. `None` for a path that is not absolute.
pub fn clean_fs_path(path: &str) -> Option<String> {
    path.starts_with('/')
        .then(|| format!("/{}", clean_segments(path).join("/")))
}

/// Whether `path` is `base` or below it, both cleaned ([`clean_fs_path`]).
pub fn is_under(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn clean_segments(path: &str) -> Vec<&str> {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    segments
}

/// `v1`, `v1.45`: dockerd's `/v{version}` route prefix.
fn is_version(segment: &str) -> bool {
    let Some(number) = segment.strip_prefix('v') else {
        return false;
    };
    let mut parts = number.split('.');
    let whole =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let major = parts.next();
    whole(major) && parts.next().is_none_or(|minor| whole(Some(minor))) && parts.next().is_none()
}

/// Decodes `%XX` (and `+` as a space when `plus_is_space`, for query strings).
fn percent_decode(bytes: &[u8], plus_is_space: bool) -> Result<String, String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "a % not followed by two hex digits".to_string())?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "the decoded path is not UTF-8".to_string())
}

/// A query name or value, decoded; one that does not decode is kept as sent (dockerd
/// would refuse it, and the checks then compare against the text itself).
pub fn decode_query(text: &str) -> String {
    percent_decode(text.as_bytes(), true).unwrap_or_else(|_| text.to_string())
}

/// A decoded path encoded for the request line: what keeps its meaning stays as is.
pub fn encode(plain: &str) -> String {
    encode_except(plain, b"/:@!$&'()*+,;=-._~")
}

/// A query name or value, encoded.
pub fn encode_query(text: &str) -> String {
    encode_except(text, b"-._~")
}

fn encode_except(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> (Option<String>, String) {
        let n = normalise(path).unwrap();
        (n.version, n.plain)
    }

    #[test]
    fn tricks_end_up_as_the_path_dockerd_would_route() {
        let v = Some("v1.45".to_string());
        assert_eq!(
            norm("/v1.45/containers/json"),
            (v.clone(), "/containers/json".into())
        );
        assert_eq!(
            norm("/v1.45//containers/%2e%2e/containers/x/archive"),
            (v.clone(), "/containers/x/archive".into())
        );
        assert_eq!(
            // `..` takes the version away too, as Go's path cleaning does for dockerd.
            norm("/v1.45/../../containers/x/export"),
            (None, "/containers/x/export".into())
        );
        assert_eq!(
            norm("/%63ontainers/x/./archive/"),
            (None, "/containers/x/archive".into())
        );
        assert_eq!(norm("/v1/_ping"), (Some("v1".into()), "/_ping".into()));
        assert_eq!(norm("/vx/_ping"), (None, "/vx/_ping".into()));
        assert_eq!(norm("/"), (None, "/".into()));
        assert!(normalise("containers/json").is_err());
        assert!(normalise("/containers/%zz").is_err());
        assert!(normalise("/containers/%00").is_err());
    }

    #[test]
    fn encoding_keeps_what_would_change_the_target() {
        assert_eq!(
            encode("/containers/a?b#c d%"),
            "/containers/a%3Fb%23c%20d%25"
        );
        assert_eq!(encode("/images/x:1@sha"), "/images/x:1@sha");
    }

    #[test]
    fn fs_paths_compare_by_segment() {
        assert_eq!(
            clean_fs_path("/srv//ci/../ci/./x/").as_deref(),
            Some("/srv/ci/x")
        );
        assert_eq!(clean_fs_path("relative"), None);
        assert!(is_under("/srv/ci/x", "/srv/ci"));
        assert!(is_under("/srv/ci", "/srv/ci"));
        assert!(!is_under("/srv/cix", "/srv/ci"));
        assert!(is_under("/anything", "/"));
    }
}
