//! [`Call`]: one Docker API request as the checks see it, and [`Deny`]: why one is refused.

use bytes::Bytes;

use super::path::{self, NormalisedPath};

/// One request, parsed once by the front for every check (opa-docker-authz's input is made
/// of the same parts).
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// `GET`, `POST`, … as sent.
    pub method: String,
    /// The request target's path as the client sent it (opa-docker-authz's `Path`).
    pub path_as_sent: String,
    /// The normalised path without the API version prefix: `/containers/abc/json`
    /// (`PathPlain`). What the checks match and, with [`Self::version`], what is forwarded.
    pub plain: String,
    /// The API version prefix (`v1.45`), if the client sent one.
    pub version: Option<String>,
    /// The raw query string, without `?` (empty if none).
    pub query: String,
    /// The request headers, names as sent. Checks read them; what they rewrite is the
    /// path, the query and the body (a head whose target did not change and whose body
    /// was not read goes on as it came).
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body, for the calls a check asked the body of ([`super::Check::wants_body`]).
    pub body: Option<serde_json::Value>,
    /// The bytes of the body that will be forwarded: the ones read, or the serialised
    /// [`Self::body`] after a check rewrote it ([`Self::set_body`]).
    pub body_bytes: Option<Bytes>,
    /// Who the client is, as plain text: the TLS client certificate's subject, or
    /// `unix:uid=…`; empty for a plain TCP client (opa-docker-authz's `User`).
    pub user: String,
    /// How the client was authenticated: `TLS`, `unix`, or empty (`AuthMethod`).
    pub auth_method: String,
}

impl Call {
    /// A call for `method target` with the headers given; the body is added later, if a
    /// check wants it. `Err` is a path that cannot be normalised (answered `400`).
    pub fn new(
        method: &str,
        target: &str,
        headers: Vec<(String, String)>,
        user: String,
        auth_method: String,
    ) -> Result<Self, Deny> {
        let (path_as_sent, query) = match target.split_once('?') {
            Some((path, query)) => (path, query),
            None => (target, ""),
        };
        let NormalisedPath { version, plain } = path::normalise(path_as_sent)
            .map_err(|reason| Deny::new(400, "path", format!("bad request path: {reason}")))?;
        Ok(Self {
            method: method.to_string(),
            path_as_sent: path_as_sent.to_string(),
            plain,
            version,
            query: query.to_string(),
            headers,
            body: None,
            body_bytes: None,
            user,
            auth_method,
        })
    }

    /// The request target forwarded: the version prefix, the normalised path (re-encoded
    /// where needed) and the query.
    pub fn target(&self) -> String {
        let mut target = String::with_capacity(self.plain.len() + self.query.len() + 8);
        if let Some(version) = &self.version {
            target.push('/');
            target.push_str(version);
        }
        target.push_str(&path::encode(&self.plain));
        if !self.query.is_empty() {
            target.push('?');
            target.push_str(&self.query);
        }
        target
    }

    /// The path's segments: `["containers", "abc", "json"]` (`PathArr`, without the
    /// version).
    pub fn segments(&self) -> Vec<&str> {
        self.plain.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The first value of a header, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query's parameters, decoded (`+` is a space, as Go's `url.ParseQuery` reads them).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (path::decode_query(name), path::decode_query(value))
            })
            .collect()
    }

    /// Replaces every value of parameter `name` with `value` (added if absent), keeping the
    /// others as sent.
    pub fn set_query_param(&mut self, name: &str, value: &str) {
        let mut kept: Vec<String> = self
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                path::decode_query(key) != name
            })
            .map(str::to_string)
            .collect();
        kept.push(format!(
            "{}={}",
            path::encode_query(name),
            path::encode_query(value)
        ));
        self.query = kept.join("&");
    }

    /// Replaces the body; what is forwarded is this value, serialised.
    pub fn set_body(&mut self, body: serde_json::Value) {
        self.body_bytes = Some(Bytes::from(body.to_string()));
        self.body = Some(body);
    }
}

/// A refused request: answered `status` with `{"message": …}` (the docker CLI prints
/// "Error response from daemon: …"), logged with the client, counted by `rule`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deny {
    /// `403` (a rule), `404` (an object the client may not see), `413` (a body too large),
    /// `400` (a path that does not parse), `502` (the leader could not be asked).
    pub status: u16,
    /// The rule, as the metric's `rule` label: `section`, `read-only`, `privileged`,
    /// `bind-mounts`, …
    pub rule: &'static str,
    pub message: String,
}

impl Deny {
    pub fn new(status: u16, rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            rule,
            message: message.into(),
        }
    }

    /// A `403` for `rule`, the message prefixed so the client sees who refused it.
    pub fn forbidden(rule: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(403, rule, format!("leader-proxy policy: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(target: &str) -> Call {
        Call::new("GET", target, Vec::new(), String::new(), String::new()).unwrap()
    }

    #[test]
    fn the_target_forwarded_is_the_normalised_one_with_the_query() {
        let c = call("/v1.45//containers/%2e%2e/containers/a%20b/json?all=1");
        assert_eq!(c.plain, "/containers/a b/json");
        assert_eq!(c.target(), "/v1.45/containers/a%20b/json?all=1");
        assert_eq!(c.segments(), ["containers", "a b", "json"]);
        assert_eq!(call("/_ping").target(), "/_ping");
        assert_eq!(
            Call::new("GET", "no-slash", Vec::new(), String::new(), String::new())
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn query_parameters_are_read_decoded_and_replaced_whole() {
        let mut c = call("/containers/json?all=1&filters=%7B%22a%22%3A1%7D&x=a+b");
        assert_eq!(
            c.query_pairs(),
            [
                ("all".to_string(), "1".to_string()),
                ("filters".to_string(), r#"{"a":1}"#.to_string()),
                ("x".to_string(), "a b".to_string()),
            ]
        );
        c.set_query_param("filters", r#"{"label":["ci=1"]}"#);
        assert_eq!(
            c.query,
            "all=1&x=a+b&filters=%7B%22label%22%3A%5B%22ci%3D1%22%5D%7D"
        );
        assert_eq!(c.query_pairs()[2].1, r#"{"label":["ci=1"]}"#);
        c.set_body(serde_json::json!({"Labels": {"ci": "1"}}));
        assert_eq!(
            c.body_bytes.as_deref(),
            Some(&br#"{"Labels":{"ci":"1"}}"#[..])
        );
    }
}
