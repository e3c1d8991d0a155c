//! `--policy-rego FILE`: a Rego policy evaluated in-process (the `regorus` interpreter) over
//! the input opa-docker-authz gives its policies, so policies written for that dockerd
//! plugin work here unchanged (docs/policy.md, "Rego"). The decision is
//! `data.docker.authz.allow`; anything but `true` (false, undefined, an error) refuses the
//! request.
//!
//! Policies load in Rego v1 or, failing that, v0 (`allow { … }` without `if`, how most
//! existing opa-docker-authz policies are written); a file with `import rego.v1` is v1 in
//! either case. A file that loads in neither, or has no `data.docker.authz.allow`, is a
//! [`PolicyError`] (exit 2 at start, the old policy kept on SIGHUP).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use regorus::{CompiledPolicy, Engine, Value as RegoValue};
use serde_json::{json, Map, Value};

use super::{Call, Check, Deny, Inspect, PolicyError};

/// The rule whose value is the decision, as in opa-docker-authz.
const DECISION: &str = "data.docker.authz.allow";

/// The metric and log name of a refusal by the policy.
const RULE: &str = "rego";

/// A loaded policy.
pub struct RegoPolicy {
    file: PathBuf,
    compiled: CompiledPolicy,
}

impl RegoPolicy {
    /// Reads and compiles `file`.
    pub fn load(file: &Path) -> Result<Self, PolicyError> {
        let bad = |reason: String| PolicyError {
            flag: "policy-rego",
            value: file.display().to_string(),
            reason,
        };
        let text =
            std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let name = file.display().to_string();
        let mut engine = match engine_with(&name, &text, false) {
            Ok(engine) => engine,
            Err(v1) => engine_with(&name, &text, true).map_err(|v0| {
                bad(format!(
                    "it is neither Rego v1 nor v0.\nas v1: {v1}\nas v0: {v0}"
                ))
            })?,
        };
        let compiled = engine
            .compile_with_entrypoint(&DECISION.into())
            .map_err(|e| bad(format!("{DECISION} does not compile: {e}")))?;
        Ok(Self {
            file: file.to_path_buf(),
            compiled,
        })
    }

    /// The decision for `call`.
    pub fn allows(&self, call: &Call) -> Result<bool, String> {
        let input = RegoValue::from(input(call));
        match self.compiled.eval_with_input(input) {
            Ok(decision) => Ok(decision == RegoValue::Bool(true)),
            Err(error) => Err(error.to_string()),
        }
    }
}

fn engine_with(name: &str, text: &str, rego_v0: bool) -> Result<Engine, String> {
    let mut engine = Engine::new();
    engine.set_rego_v0(rego_v0);
    engine
        .add_policy(name.to_string(), text.to_string())
        .map_err(|e| e.to_string())?;
    Ok(engine)
}

#[async_trait]
impl Check for RegoPolicy {
    /// opa-docker-authz parses a body sent as `application/json`, as dockerd gives its
    /// plugins only those (and never a stream).
    fn wants_body(&self, call: &Call) -> bool {
        is_json(call)
    }

    async fn check(&self, call: &mut Call, _inspect: &dyn Inspect) -> Result<(), Deny> {
        match self.allows(call) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Deny::forbidden(
                RULE,
                format!(
                    "request rejected by administrative policy ({DECISION} in {})",
                    self.file.display()
                ),
            )),
            Err(error) => Err(Deny::forbidden(
                RULE,
                format!(
                    "administrative policy failed ({DECISION} in {}): {error}",
                    self.file.display()
                ),
            )),
        }
    }
}

fn is_json(call: &Call) -> bool {
    call.header("Content-Type")
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// opa-docker-authz's input for `call`:
/// - `Method`; `Path`: the request target as sent, query included (dockerd's `RequestURI`);
/// - `PathPlain` and `PathArr`: the normalised path with its version prefix, the one that is
///   forwarded, as a string and split at `/` (`["", "v1.41", "containers", "json"]`);
/// - `Query`: each parameter's values; `Headers`: each header's first value, names in Go's
///   canonical form (`Content-Type`), as dockerd hands them over;
/// - `Body`: the parsed JSON body, or null; `BindMounts`: `{Source, ReadOnly, Resolved}` of
///   each bind in `HostConfig.Binds` and `HostConfig.Mounts`. `Resolved` is always empty:
///   the proxy does not see the managers' file systems to follow symlinks;
/// - `User`: the client's identity (certificate subject, unix uid), empty for plain TCP;
///   `AuthMethod`: how it was established.
pub fn input(call: &Call) -> Value {
    let plain = match &call.version {
        Some(version) if call.plain == "/" => format!("/{version}"),
        Some(version) => format!("/{version}{}", call.plain),
        None => call.plain.clone(),
    };
    let path_arr: Vec<&str> = plain.split('/').collect();
    let mut query: Map<String, Value> = Map::new();
    for (name, value) in call.query_pairs() {
        if let Value::Array(values) = query
            .entry(name)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            values.push(Value::String(value));
        }
    }
    let mut headers: Map<String, Value> = Map::new();
    for (name, value) in &call.headers {
        headers
            .entry(canonical_header(name))
            .or_insert_with(|| Value::String(value.clone()));
    }
    let path = if call.query.is_empty() {
        call.path_as_sent.clone()
    } else {
        format!("{}?{}", call.path_as_sent, call.query)
    };
    let body = call
        .body
        .clone()
        .filter(|_| is_json(call))
        .unwrap_or(Value::Null);
    json!({
        "Method": call.method,
        "Path": path,
        "PathPlain": plain,
        "PathArr": path_arr,
        "Query": query,
        "Headers": headers,
        "BindMounts": bind_mounts(&body),
        "Body": body,
        "User": call.user,
        "AuthMethod": call.auth_method,
    })
}

/// `content-type` → `Content-Type`, as Go's `CanonicalMIMEHeaderKey`.
fn canonical_header(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// The binds of a container body, as opa-docker-authz lists them.
fn bind_mounts(body: &Value) -> Vec<Value> {
    let host = &body["HostConfig"];
    let mut binds = Vec::new();
    for bind in host["Binds"].as_array().into_iter().flatten() {
        let Some(bind) = bind.as_str() else { continue };
        let mut parts = bind.split(':');
        let source = parts.next().unwrap_or_default();
        // `name:/dst` is a named volume, not a bind.
        if !source.starts_with('/') {
            continue;
        }
        let options = parts.nth(1).unwrap_or_default();
        let read_only = options.split(',').any(|o| o == "ro");
        binds.push(json!({"Source": source, "ReadOnly": read_only, "Resolved": ""}));
    }
    for mount in host["Mounts"].as_array().into_iter().flatten() {
        if mount["Type"] == "bind" {
            binds.push(json!({
                "Source": mount["Source"],
                "ReadOnly": mount["ReadOnly"].as_bool().unwrap_or(false),
                "Resolved": "",
            }));
        }
    }
    binds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<RegoPolicy, PolicyError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("authz.rego");
        std::fs::write(&file, text).expect("write");
        RegoPolicy::load(&file)
    }

    fn call(method: &str, target: &str, body: Option<Value>) -> Call {
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "User-Agent".to_string(),
                "Docker-Client/28.0.0 (linux)".to_string(),
            ),
        ];
        let mut call =
            Call::new(method, target, headers, "CN=ci".into(), "TLS".into()).expect("call");
        if let Some(body) = body {
            call.set_body(body);
        }
        call
    }

    #[test]
    fn input_has_opa_docker_authz_shape() {
        let body = json!({"Image": "bb", "HostConfig": {
            "Binds": ["/srv/ci:/ci:ro", "cache:/cache", "/tmp:/tmp"],
            "Mounts": [{"Type": "bind", "Source": "/data", "Target": "/d", "ReadOnly": true},
                       {"Type": "volume", "Source": "v", "Target": "/v"}]}});
        let input = input(&call(
            "POST",
            "/v1.41//containers/create?name=a%20b&x=1&x=2",
            Some(body.clone()),
        ));
        assert_eq!(input["Method"], "POST");
        assert_eq!(
            input["Path"],
            "/v1.41//containers/create?name=a%20b&x=1&x=2"
        );
        assert_eq!(input["PathPlain"], "/v1.41/containers/create");
        assert_eq!(
            input["PathArr"],
            json!(["", "v1.41", "containers", "create"])
        );
        assert_eq!(input["Query"], json!({"name": ["a b"], "x": ["1", "2"]}));
        assert_eq!(input["Headers"]["Content-Type"], "application/json");
        assert_eq!(input["Body"], body);
        assert_eq!(
            input["BindMounts"],
            json!([
                {"Source": "/srv/ci", "ReadOnly": true, "Resolved": ""},
                {"Source": "/tmp", "ReadOnly": false, "Resolved": ""},
                {"Source": "/data", "ReadOnly": true, "Resolved": ""},
            ])
        );
        assert_eq!(input["User"], "CN=ci");
        assert_eq!(input["AuthMethod"], "TLS");
        let ping = super::input(&call("GET", "/_ping", None));
        assert_eq!(ping["PathArr"], json!(["", "_ping"]));
        assert_eq!(ping["Body"], Value::Null);
        assert_eq!(ping["BindMounts"], json!([]));
    }

    #[test]
    fn v0_and_v1_policies_both_load_and_decide() {
        let v0 = "package docker.authz\n\ndefault allow = false\n\nallow {\n  not deny\n}\n\n\
                  deny {\n  input.Body.HostConfig.Privileged == true\n}\n";
        let v1 = "package docker.authz\n\ndefault allow := false\n\nallow if not deny\n\n\
                  deny if input.Body.HostConfig.Privileged == true\n";
        let with_import = "package docker.authz\nimport rego.v1\n\ndefault allow := false\n\n\
                           allow if input.Method == \"GET\"\n";
        let privileged = call(
            "POST",
            "/containers/create",
            Some(json!({"HostConfig": {"Privileged": true}})),
        );
        let plain = call("POST", "/containers/create", Some(json!({"Image": "bb"})));
        for text in [v0, v1] {
            let policy = policy(text).expect(text);
            assert_eq!(policy.allows(&privileged), Ok(false), "{text}");
            assert_eq!(policy.allows(&plain), Ok(true), "{text}");
        }
        let reads = policy(with_import).expect("rego.v1 import");
        assert_eq!(reads.allows(&plain), Ok(false));
        assert_eq!(
            reads.allows(&call("GET", "/containers/json", None)),
            Ok(true)
        );
    }

    #[test]
    fn an_undefined_decision_refuses() {
        let policy =
            policy("package docker.authz\nallow if input.Method == \"HEAD\"\n").expect("load");
        assert_eq!(policy.allows(&call("GET", "/_ping", None)), Ok(false));
    }

    #[test]
    fn files_that_do_not_compile_name_the_flag() {
        for text in [
            "package docker.authz\nallow {\n",
            "package other\nallow := true\n",
            "not rego at all",
        ] {
            let error = policy(text).err().expect(text);
            assert_eq!(error.flag, "policy-rego", "{text}");
        }
        let missing = RegoPolicy::load(Path::new("/nonexistent/authz.rego"))
            .err()
            .expect("missing file");
        assert!(missing.reason.contains("cannot read"), "{}", missing.reason);
    }
}
