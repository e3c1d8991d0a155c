//! Credentials kept out of everything the proxy writes. A request URL can carry them:
//! `POST /build?remote=https://user:TOKEN@host/repo.git` (a git remote with its token),
//! `buildargs={"NPM_TOKEN":"…"}`. The access log shows such a URL with the userinfo of any
//! URL in a query value, and every `buildargs` value, replaced by `***`.

use std::borrow::Cow;

const HIDDEN: &str = "***";

/// `uri` (a path with its query) as it may be logged.
pub fn uri(uri: &str) -> Cow<'_, str> {
    let Some((path, query)) = uri.split_once('?') else {
        return Cow::Borrowed(uri);
    };
    let mut changed = false;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| {
            let shown = if key == "buildargs" {
                buildargs(&value)
            } else {
                userinfo(&value)
            };
            if let Cow::Owned(_) = shown {
                changed = true;
            }
            (key.into_owned(), shown.into_owned())
        })
        .collect();
    if !changed {
        return Cow::Borrowed(uri);
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    Cow::Owned(format!("{path}?{query}"))
}

/// `text` with the userinfo of each `scheme://user:secret@host` in it hidden.
fn userinfo(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        let authority_len = rest[authority_start..]
            .find(['/', '?', '#', ' '])
            .unwrap_or(rest.len() - authority_start);
        let authority = &rest[authority_start..authority_start + authority_len];
        out.push_str(&rest[..authority_start]);
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str(HIDDEN);
                out.push_str(&authority[user_end..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &rest[authority_start + authority_len..];
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// A `buildargs` JSON object with every value hidden (the names stay: they say what was
/// passed); anything else, hidden whole.
fn buildargs(value: &str) -> Cow<'static, str> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(value) {
        Ok(args) => {
            let hidden: serde_json::Map<String, serde_json::Value> = args
                .into_iter()
                .map(|(name, _)| (name, serde_json::Value::from(HIDDEN)))
                .collect();
            Cow::Owned(serde_json::Value::Object(hidden).to_string())
        }
        Err(_) => Cow::Owned(HIDDEN.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_remote_token_is_hidden() {
        let shown =
            uri("/v1.41/build?remote=https%3A%2F%2Fuser%3ATOKEN%40git.example%2Frepo.git&t=x");
        assert!(
            !shown.contains("TOKEN") && !shown.contains("user"),
            "{shown}"
        );
        assert!(
            shown.contains("git.example") && shown.contains("t=x"),
            "{shown}"
        );
        let raw = uri("/build?remote=https://user:TOKEN@host/repo.git");
        assert!(!raw.contains("TOKEN"), "{raw}");
    }

    #[test]
    fn buildargs_values_are_hidden_names_kept() {
        let shown = uri("/build?buildargs=%7B%22NPM_TOKEN%22%3A%22s3cret%22%7D");
        assert!(
            !shown.contains("s3cret") && shown.contains("NPM_TOKEN"),
            "{shown}"
        );
        assert!(!uri("/build?buildargs=garbage-s3cret").contains("s3cret"));
    }

    #[test]
    fn urls_without_credentials_are_left_as_they_are() {
        for plain in [
            "/_ping",
            "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%22%5D%7D",
            "/build?remote=https://git.example/repo.git",
        ] {
            assert!(matches!(uri(plain), Cow::Borrowed(_)), "{plain}");
        }
    }
}
