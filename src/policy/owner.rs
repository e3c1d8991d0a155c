//! `--owner-label KEY=VALUE`: a listener's clients see and touch only what was created
//! through a listener with the same label (docs/policy.md, "Ownership"). Two CI jobs on two
//! sockets, each with its own label, share a dockerd without seeing each other.
//!
//! - Containers, volumes, networks and services created get the label in their create body
//!   (a service's task containers too, through its `ContainerSpec`).
//! - Lists, prunes and `/events` get the label filter merged into the client's `filters`
//!   (`GET /tasks` too: dockerd matches a task's `label` filter against its service's
//!   labels).
//! - Any other call on a container, volume, network, service or exec instance asks the
//!   current leader about the object ([`Inspect`], by name or id prefix, as dockerd resolves
//!   them) and answers dockerd's own `404` wording when it does not carry the label, so an
//!   object of another owner looks exactly like one that does not exist. Exec ids are
//!   resolved to their container; containers a create body refers to (`VolumesFrom`,
//!   `Links`, `container:<id>` namespaces) and the container of a network
//!   connect/disconnect must be owned too. A task is owned when its service is.
//! - A container name another owner's container holds (`create ?name=`, `rename ?name=`)
//!   answers dockerd's `409` without that container's id, which dockerd's own would show.
//! - Named volumes a create body mounts (`Binds` `name:/dst`, `Mounts` of `Type: volume`,
//!   a service's `ContainerSpec.Mounts`) must not be another owner's (`409`); one that does
//!   not exist yet is created by dockerd from the mount's `VolumeOptions.Labels`, which get
//!   the label, so it is the creator's. A `Binds` entry naming a volume becomes such a mount
//!   (`ro` and `nocopy` carried over); one with other options (`z`, `Z`) stays a bind entry,
//!   checked but not labelled.
//! - `GET /system/df` is refused (`403`): it lists every owner's containers and volumes, and
//!   has no filter to narrow it.
//! - Images are shared: pulling, building and running them works; removing them
//!   (`DELETE /images/…`, `images/prune`, `build/prune`) is refused (`403`), since one
//!   owner's removal would break another's.

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::path;
use super::{Call, Check, Deny, Inspect, PolicyError};

/// The metric and log name of every refusal of this check.
const RULE: &str = "owner";

/// The label a listener's objects carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerLabel {
    key: String,
    value: String,
}

impl OwnerLabel {
    /// `KEY=VALUE`: a non-empty key without `=` and a non-empty value, neither with spaces
    /// or control characters (they would not survive a `label=KEY=VALUE` filter).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |reason: &str| PolicyError {
            flag: "owner-label",
            value: text.to_string(),
            reason: reason.to_string(),
        };
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        if key.is_empty() || value.is_empty() {
            return Err(bad("expected KEY=VALUE, both non-empty"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("a label may not hold spaces or control characters"));
        }
        Ok(Self {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// `KEY=VALUE`, as a `label` filter takes it.
    pub fn filter(&self) -> String {
        format!("{}={}", self.key, self.value)
    }

    /// Whether a `Labels` object carries this label.
    fn carried_by(&self, labels: &Value) -> bool {
        labels[self.key.as_str()].as_str() == Some(self.value.as_str())
    }

    /// Sets the label in the `Labels` object at `labels` (made if missing or null); a value
    /// the client gave the same key is replaced, so no one creates for another owner.
    fn stamp(&self, labels: &mut Value) {
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        if let Value::Object(map) = labels {
            map.insert(self.key.clone(), Value::String(self.value.clone()));
        }
    }
}

/// The objects ownership covers, with dockerd's inspect path and its own "not found"
/// wording (checked against dockerd 20.10 by tests/policy_owner.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Container,
    Volume,
    Network,
    Service,
}

impl Kind {
    fn inspect_path(self, id: &str) -> String {
        let id = path::encode_query(id);
        match self {
            Kind::Container => format!("/containers/{id}/json"),
            Kind::Volume => format!("/volumes/{id}"),
            Kind::Network => format!("/networks/{id}"),
            Kind::Service => format!("/services/{id}"),
        }
    }

    /// Where the inspect answer keeps the object's labels.
    fn labels(self, inspected: &Value) -> &Value {
        match self {
            Kind::Container => &inspected["Config"]["Labels"],
            Kind::Volume | Kind::Network => &inspected["Labels"],
            Kind::Service => &inspected["Spec"]["Labels"],
        }
    }

    fn not_found(self, id: &str) -> Deny {
        let message = match self {
            Kind::Container => format!("No such container: {id}"),
            Kind::Volume => format!("get {id}: no such volume"),
            Kind::Network => format!("network {id} not found"),
            Kind::Service => format!("service {id} not found"),
        };
        Deny::new(404, RULE, message)
    }
}

/// What ownership does with one call.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// A create body gets the label.
    Create(Kind),
    /// The label filter is merged into `filters`.
    Filter,
    /// The object named must carry the label.
    Object(Kind, String),
    /// The exec instance's container must carry the label.
    Exec(String),
    /// The object must carry the label, and so must the container in the body
    /// (`POST /networks/{id}/connect`, `…/disconnect`).
    NetworkContainer(String),
    /// The task's service must carry the label.
    Task(String),
    /// `POST /services/{id}/update`: the service must carry the label, and the spec sent
    /// (a whole new one) gets it again, as a create body does.
    ServiceUpdate(String),
    /// Removing shared images.
    ImageRemoval,
    /// `GET /system/df`: every owner's objects, unfiltered.
    DiskUsage,
    Pass,
}

fn action(call: &Call) -> Action {
    let method = call.method.as_str();
    let segments = call.segments();
    let object = |kind: Kind, id: &str| Action::Object(kind, id.to_string());
    match (method, segments.as_slice()) {
        ("POST", ["containers", "create"]) => Action::Create(Kind::Container),
        ("POST", ["volumes", "create"]) => Action::Create(Kind::Volume),
        ("POST", ["networks", "create"]) => Action::Create(Kind::Network),
        ("POST", ["services", "create"]) => Action::Create(Kind::Service),
        ("GET", ["containers", "json"])
        | ("GET", ["volumes"])
        | ("GET", ["networks"])
        | ("GET", ["services"])
        | ("GET", ["tasks"])
        | ("GET", ["events"])
        | ("POST", ["containers" | "volumes" | "networks", "prune"]) => Action::Filter,
        ("DELETE", ["images", ..]) | ("POST", ["images" | "build", "prune"]) => {
            Action::ImageRemoval
        }
        (_, ["system", "df"]) => Action::DiskUsage,
        ("POST", ["networks", id, "connect" | "disconnect"]) => {
            Action::NetworkContainer(id.to_string())
        }
        (_, ["containers", id, ..]) => object(Kind::Container, id),
        (_, ["volumes", id, ..]) => object(Kind::Volume, id),
        (_, ["networks", id, ..]) => object(Kind::Network, id),
        ("POST", ["services", id, "update"]) => Action::ServiceUpdate(id.to_string()),
        (_, ["services", id, ..]) => object(Kind::Service, id),
        (_, ["exec", id, ..]) => Action::Exec(id.to_string()),
        (_, ["tasks", id, ..]) => Action::Task(id.to_string()),
        // `docker commit`: the container is in the query.
        ("POST", ["commit"]) => call
            .query_pairs()
            .into_iter()
            .find(|(name, _)| name == "container")
            .map_or(Action::Pass, |(_, id)| Action::Object(Kind::Container, id)),
        _ => Action::Pass,
    }
}

/// The check of `--owner-label`.
pub struct Ownership {
    label: OwnerLabel,
}

impl Ownership {
    pub fn new(label: OwnerLabel) -> Self {
        Self { label }
    }

    /// `Ok` if the object exists at the leader and carries the label; otherwise dockerd's
    /// own 404 for it.
    async fn owned(&self, kind: Kind, id: &str, inspect: &dyn Inspect) -> Result<(), Deny> {
        match inspect.get_json(&kind.inspect_path(id)).await {
            Ok(Some(inspected)) if self.label.carried_by(kind.labels(&inspected)) => Ok(()),
            Ok(_) => Err(kind.not_found(id)),
            Err(error) => Err(leader_unreachable(error)),
        }
    }

    /// An exec instance is its container's: another owner's is as unknown as a missing one.
    async fn exec_owned(&self, id: &str, inspect: &dyn Inspect) -> Result<(), Deny> {
        let path = format!("/exec/{}/json", path::encode_query(id));
        let not_found = || Deny::new(404, RULE, format!("No such exec instance: {id}"));
        self.owned_through(&path, "ContainerID", Kind::Container, not_found, inspect)
            .await
    }

    /// A task (`GET /tasks/{id}`, `…/logs`) is its service's: another owner's task is as
    /// unknown as a missing one, in dockerd's words for a task.
    async fn task_owned(&self, id: &str, inspect: &dyn Inspect) -> Result<(), Deny> {
        let path = format!("/tasks/{}", path::encode_query(id));
        let not_found = || Deny::new(404, RULE, format!("task {id} not found"));
        self.owned_through(&path, "ServiceID", Kind::Service, not_found, inspect)
            .await
    }

    /// An object without labels of its own, owned through the `parent` whose id its inspect
    /// answer at `path` holds in `field`. Missing, or its parent missing or another owner's:
    /// `not_found`. A leader that cannot be asked stays a `502`.
    async fn owned_through(
        &self,
        path: &str,
        field: &str,
        parent: Kind,
        not_found: impl Fn() -> Deny + Send + Sync,
        inspect: &dyn Inspect,
    ) -> Result<(), Deny> {
        let object = inspect.get_json(path).await.map_err(leader_unreachable)?;
        let Some(parent_id) = object.as_ref().and_then(|o| o[field].as_str()) else {
            return Err(not_found());
        };
        match self.owned(parent, parent_id, inspect).await {
            Err(deny) if deny.status == 404 => Err(not_found()),
            owned => owned,
        }
    }

    /// Stamps the label into a create body, after checking the containers a container's
    /// body refers to.
    async fn create(&self, kind: Kind, call: &mut Call, inspect: &dyn Inspect) -> Result<(), Deny> {
        let mut body = call
            .body
            .clone()
            .unwrap_or_else(|| Value::Object(Map::new()));
        if !body.is_object() {
            return Err(Deny::new(400, RULE, "the body is not a JSON object"));
        }
        if kind == Kind::Container {
            self.name_free(call, inspect).await?;
            for referred in referred_containers(&body["HostConfig"]) {
                // dockerd answers a create naming a missing container `400` (a `404`
                // would make the docker CLI look for the image and try to pull it).
                self.owned(Kind::Container, &referred, inspect)
                    .await
                    .map_err(|deny| match deny.status {
                        404 => Deny {
                            status: 400,
                            ..deny
                        },
                        _ => deny,
                    })?;
            }
        }
        // dockerd answers a volume create naming an existing volume with that volume: another
        // owner's would be shown (and seem this owner's) instead of made.
        if let Some(name) = body["Name"].as_str().filter(|_| kind == Kind::Volume) {
            if !name.is_empty() {
                self.volume_usable(name, inspect).await?;
            }
        }
        if kind == Kind::Container && body["HostConfig"].is_object() {
            volume_binds_to_mounts(&mut body["HostConfig"]);
            self.volume_mounts(&mut body["HostConfig"], inspect).await?;
        }
        self.label.stamp(&mut body["Labels"]);
        if kind == Kind::Service {
            let spec = &mut body["TaskTemplate"]["ContainerSpec"];
            if spec.is_object() {
                self.label.stamp(&mut spec["Labels"]);
                self.volume_mounts(spec, inspect).await?;
            }
        }
        call.set_body(body);
        Ok(())
    }

    /// The container name in the query (`?name=`) is not another owner's container's.
    /// dockerd's own conflict names the holder's id; this one does not.
    async fn name_free(&self, call: &Call, inspect: &dyn Inspect) -> Result<(), Deny> {
        let Some((_, name)) = call.query_pairs().into_iter().find(|(n, _)| n == "name") else {
            return Ok(());
        };
        let name = name.trim_start_matches('/');
        if name.is_empty() {
            return Ok(());
        }
        let holder = inspect
            .get_json(&Kind::Container.inspect_path(name))
            .await
            .map_err(leader_unreachable)?;
        // dockerd finds a container by id prefix too: only the same name is a clash.
        let Some(holder) = holder.filter(|h| h["Name"] == format!("/{name}").as_str()) else {
            return Ok(());
        };
        if self.label.carried_by(Kind::Container.labels(&holder)) {
            return Ok(());
        }
        Err(Deny::new(
            409,
            RULE,
            format!(
                "Conflict. The container name \"/{name}\" is already in use by another \
                 owner's container (--owner-label). You have to use another name."
            ),
        ))
    }

    /// The named volumes of `holder`'s `Mounts` (and, in a container's `HostConfig`, the
    /// `Binds` entries left there) may not be another owner's; each volume mount gets the
    /// label in its `VolumeOptions.Labels`, which dockerd uses when it creates the volume.
    async fn volume_mounts(&self, holder: &mut Value, inspect: &dyn Inspect) -> Result<(), Deny> {
        let bound: Vec<String> = holder["Binds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|bind| bind.as_str().and_then(named_volume_bind))
            .map(|bind| bind.name)
            .collect();
        for name in bound {
            self.volume_usable(&name, inspect).await?;
        }
        let Some(mounts) = holder["Mounts"].as_array_mut() else {
            return Ok(());
        };
        for mount in mounts.iter_mut().filter(|m| m["Type"] == "volume") {
            if let Some(name) = mount["Source"].as_str().filter(|n| !n.is_empty()) {
                self.volume_usable(name, inspect).await?;
            }
            let options = &mut mount["VolumeOptions"];
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            self.label.stamp(&mut options["Labels"]);
        }
        Ok(())
    }

    /// A volume a create body names: missing (dockerd makes it) or this owner's.
    async fn volume_usable(&self, name: &str, inspect: &dyn Inspect) -> Result<(), Deny> {
        match inspect.get_json(&Kind::Volume.inspect_path(name)).await {
            Ok(None) => Ok(()),
            Ok(Some(volume)) if self.label.carried_by(Kind::Volume.labels(&volume)) => Ok(()),
            Ok(Some(_)) => Err(Deny::new(
                409,
                RULE,
                format!("volume {name} is another owner's (--owner-label)"),
            )),
            Err(error) => Err(leader_unreachable(error)),
        }
    }

    /// Merges `label=KEY=VALUE` into the client's `filters` (JSON in the query), keeping its
    /// own filters: dockerd ANDs label filters, so the answer is the client's selection
    /// among this owner's objects.
    fn filter(&self, call: &mut Call) -> Result<(), Deny> {
        let sent = call
            .query_pairs()
            .into_iter()
            .find(|(name, _)| name == "filters")
            .map(|(_, value)| value);
        let merged = merge_label_filter(sent.as_deref(), &self.label.filter())?;
        call.set_query_param("filters", &merged);
        Ok(())
    }
}

#[async_trait]
impl Check for Ownership {
    fn wants_body(&self, call: &Call) -> bool {
        matches!(
            action(call),
            Action::Create(_) | Action::ServiceUpdate(_) | Action::NetworkContainer(_)
        )
    }

    async fn check(&self, call: &mut Call, inspect: &dyn Inspect) -> Result<(), Deny> {
        match action(call) {
            Action::Create(kind) => self.create(kind, call, inspect).await,
            Action::Filter => self.filter(call),
            Action::Object(kind, id) => {
                self.owned(kind, &id, inspect).await?;
                if kind == Kind::Container && call.segments().last() == Some(&"rename") {
                    self.name_free(call, inspect).await?;
                }
                Ok(())
            }
            Action::Exec(id) => self.exec_owned(&id, inspect).await,
            Action::Task(id) => self.task_owned(&id, inspect).await,
            Action::ServiceUpdate(id) => {
                self.owned(Kind::Service, &id, inspect).await?;
                self.create(Kind::Service, call, inspect).await
            }
            Action::NetworkContainer(network) => {
                self.owned(Kind::Network, &network, inspect).await?;
                let container = call
                    .body
                    .as_ref()
                    .and_then(|body| body["Container"].as_str())
                    .map(str::to_string);
                match container {
                    Some(container) => self.owned(Kind::Container, &container, inspect).await,
                    None => Ok(()),
                }
            }
            Action::ImageRemoval => Err(Deny::forbidden(
                RULE,
                "removing images is refused: images are shared by every owner (--owner-label)",
            )),
            Action::DiskUsage => Err(Deny::forbidden(
                RULE,
                "disk usage is refused: it lists every owner's containers and volumes \
                 (--owner-label)",
            )),
            Action::Pass => Ok(()),
        }
    }
}

fn leader_unreachable(error: super::InspectError) -> Deny {
    Deny::new(502, RULE, format!("cannot check ownership: {error}"))
}

/// A `Binds` entry whose source is a volume name (`name:/dst[:opts]`).
struct VolumeBind {
    name: String,
    target: String,
    read_only: bool,
    no_copy: bool,
    /// Only `ro`, `rw` and `nocopy`: a `Mounts` entry can say the same.
    expressible: bool,
}

fn named_volume_bind(text: &str) -> Option<VolumeBind> {
    let mut parts = text.split(':');
    let (name, target) = (parts.next()?, parts.next()?);
    let mode = parts.next().unwrap_or("");
    if name.is_empty()
        || name.starts_with('/')
        || !target.starts_with('/')
        || parts.next().is_some()
    {
        return None;
    }
    let options: Vec<&str> = mode.split(',').filter(|o| !o.is_empty()).collect();
    Some(VolumeBind {
        name: name.to_string(),
        target: target.to_string(),
        read_only: options.contains(&"ro"),
        no_copy: options.contains(&"nocopy"),
        expressible: options.iter().all(|o| matches!(*o, "ro" | "rw" | "nocopy")),
    })
}

/// Moves the `Binds` entries that name a volume, and can be said as a mount, to `Mounts`
/// (`Type: volume`), where the volume's labels can be given.
fn volume_binds_to_mounts(host: &mut Value) {
    let Some(binds) = host["Binds"].as_array() else {
        return;
    };
    let (mut kept, mut moved) = (Vec::new(), Vec::new());
    for bind in binds {
        match bind.as_str().and_then(named_volume_bind) {
            Some(volume) if volume.expressible => moved.push(serde_json::json!({
                "Type": "volume",
                "Source": volume.name,
                "Target": volume.target,
                "ReadOnly": volume.read_only,
                "VolumeOptions": {"NoCopy": volume.no_copy},
            })),
            _ => kept.push(bind.clone()),
        }
    }
    if moved.is_empty() {
        return;
    }
    host["Binds"] = Value::Array(kept);
    if !host["Mounts"].is_array() {
        host["Mounts"] = Value::Array(Vec::new());
    }
    if let Some(mounts) = host["Mounts"].as_array_mut() {
        mounts.extend(moved);
    }
}

/// The containers a container create body names: `VolumesFrom` (`name[:ro|rw]`), `Links`
/// (`name:alias`), and `container:<name>` in `NetworkMode`, `PidMode` and `IpcMode`.
fn referred_containers(host: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for (field, separator) in [("VolumesFrom", ':'), ("Links", ':')] {
        for entry in host[field].as_array().into_iter().flatten() {
            if let Some(entry) = entry.as_str() {
                // A link may be written `/name:/self/alias`; dockerd resolves `/name` as `name`.
                let name = entry.split(separator).next().unwrap_or(entry);
                names.push(name.trim_start_matches('/').to_string());
            }
        }
    }
    for field in ["NetworkMode", "PidMode", "IpcMode"] {
        if let Some(name) = host[field]
            .as_str()
            .and_then(|m| m.strip_prefix("container:"))
        {
            names.push(name.to_string());
        }
    }
    names
}

/// `filters` with `label` holding `label` as well: both of dockerd's forms are kept (the
/// map `{"label": {"k=v": true}}` and the older list `{"label": ["k=v"]}`). A `filters`
/// that is not a JSON object is refused (`400`), as dockerd would refuse it.
fn merge_label_filter(sent: Option<&str>, label: &str) -> Result<String, Deny> {
    let mut filters = match sent.filter(|text| !text.trim().is_empty()) {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(Deny::new(
                    400,
                    RULE,
                    format!("invalid filter: {text:?} is not a JSON object"),
                ))
            }
        },
    };
    match filters.get_mut("label") {
        Some(Value::Object(map)) => {
            map.insert(label.to_string(), Value::Bool(true));
        }
        Some(Value::Array(list)) => list.push(Value::String(label.to_string())),
        _ => {
            let mut map = Map::new();
            map.insert(label.to_string(), Value::Bool(true));
            filters.insert("label".to_string(), Value::Object(map));
        }
    }
    Ok(Value::Object(filters).to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::policy::InspectError;

    /// A leader that knows a few objects, and records what it was asked; `/containers/down`
    /// cannot be asked (the leader went away mid-check).
    #[derive(Default)]
    struct Objects {
        known: HashMap<String, Value>,
        asked: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Inspect for Objects {
        async fn get_json(&self, path: &str) -> Result<Option<Value>, InspectError> {
            self.asked.lock().expect("lock").push(path.to_string());
            if path.starts_with("/containers/down/") {
                return Err(InspectError {
                    path: path.to_string(),
                    reason: "connection refused".into(),
                });
            }
            Ok(self.known.get(path).cloned())
        }
    }

    fn leader() -> Objects {
        let mine = json!({"ci": "job-1"});
        let theirs = json!({"ci": "job-2"});
        let known = [
            (
                "/containers/mine/json",
                json!({"Name": "/mine", "Config": {"Labels": mine}}),
            ),
            (
                "/containers/theirs/json",
                json!({"Name": "/theirs", "Config": {"Labels": theirs}}),
            ),
            // An id prefix of `theirs`, as dockerd resolves it.
            (
                "/containers/5eed/json",
                json!({"Name": "/theirs", "Config": {"Labels": theirs}}),
            ),
            (
                "/containers/abc123/json",
                json!({"Config": {"Labels": mine}}),
            ),
            ("/volumes/vol", json!({"Labels": theirs})),
            ("/volumes/myvol", json!({"Labels": mine})),
            ("/networks/net", json!({"Labels": mine})),
            ("/services/svc", json!({"Spec": {"Labels": theirs}})),
            ("/services/s1", json!({"Spec": {"Labels": mine}})),
            ("/tasks/t1", json!({"ServiceID": "s1"})),
            ("/tasks/t2", json!({"ServiceID": "svc"})),
            ("/exec/e1/json", json!({"ContainerID": "abc123"})),
            ("/exec/e2/json", json!({"ContainerID": "theirs"})),
            ("/exec/e3/json", json!({"ContainerID": "down"})),
        ];
        Objects {
            known: known
                .into_iter()
                .map(|(path, value)| (path.to_string(), value))
                .collect(),
            asked: Mutex::default(),
        }
    }

    fn ownership() -> Ownership {
        Ownership::new(OwnerLabel::parse("ci=job-1").expect("label"))
    }

    fn call(method: &str, target: &str, body: Option<Value>) -> Call {
        let mut call =
            Call::new(method, target, Vec::new(), String::new(), String::new()).expect("call");
        if let Some(body) = body {
            call.set_body(body);
        }
        call
    }

    async fn check(method: &str, target: &str, body: Option<Value>) -> Result<Call, Deny> {
        let mut call = call(method, target, body);
        ownership().check(&mut call, &leader()).await?;
        Ok(call)
    }

    fn denied(result: Result<Call, Deny>) -> (u16, String) {
        let deny = result.expect_err("denied");
        (deny.status, deny.message)
    }

    #[test]
    fn bad_labels_name_the_flag() {
        for bad in ["", "ci", "=x", "ci=", "ci=a b", "c i=x"] {
            let error = OwnerLabel::parse(bad).expect_err(bad);
            assert_eq!(error.flag, "owner-label", "{bad}");
        }
        assert_eq!(
            OwnerLabel::parse("com.example.ci=job=1")
                .expect("ok")
                .filter(),
            "com.example.ci=job=1"
        );
    }

    #[tokio::test]
    async fn creates_carry_the_label_whatever_the_client_sent() {
        let created = check(
            "POST",
            "/v1.41/containers/create?name=x",
            Some(json!({"Image": "bb", "Labels": {"ci": "job-2", "keep": "1"}})),
        )
        .await
        .expect("pass");
        let body = created.body.expect("body");
        assert_eq!(body["Labels"], json!({"ci": "job-1", "keep": "1"}));
        assert_eq!(
            serde_json::from_slice::<Value>(&created.body_bytes.expect("bytes")).expect("json"),
            body,
            "what is forwarded is what was stamped"
        );
        let volume = check("POST", "/volumes/create", None).await.expect("pass");
        assert_eq!(volume.body.expect("body")["Labels"], json!({"ci": "job-1"}));
        let service = check(
            "POST",
            "/services/create",
            Some(json!({"Labels": null, "TaskTemplate": {"ContainerSpec": {"Image": "bb"}}})),
        )
        .await
        .expect("pass")
        .body
        .expect("body");
        assert_eq!(service["Labels"], json!({"ci": "job-1"}));
        assert_eq!(
            service["TaskTemplate"]["ContainerSpec"]["Labels"],
            json!({"ci": "job-1"})
        );
    }

    #[tokio::test]
    async fn lists_prunes_and_events_get_the_filter_merged() {
        let listed = check("GET", "/v1.41/containers/json?all=1", None)
            .await
            .expect("pass");
        let filters = |call: &Call| -> Value {
            let (_, text) = call
                .query_pairs()
                .into_iter()
                .find(|(n, _)| n == "filters")
                .expect("filters");
            serde_json::from_str(&text).expect("json")
        };
        assert_eq!(filters(&listed), json!({"label": {"ci=job-1": true}}));
        assert!(listed.query.contains("all=1"), "{}", listed.query);

        let sent = path::encode_query(r#"{"status":{"exited":true},"label":{"x=1":true}}"#);
        let pruned = check("POST", &format!("/containers/prune?filters={sent}"), None)
            .await
            .expect("pass");
        assert_eq!(
            filters(&pruned),
            json!({"status": {"exited": true}, "label": {"x=1": true, "ci=job-1": true}})
        );
        let sent = path::encode_query(r#"{"label":["x=1"]}"#);
        let events = check("GET", &format!("/events?filters={sent}"), None)
            .await
            .expect("pass");
        assert_eq!(filters(&events), json!({"label": ["x=1", "ci=job-1"]}));
        // `docker service ps`: its service filter stays, ANDed with the owner's label.
        let sent = path::encode_query(r#"{"service":{"svc":true}}"#);
        let tasks = check("GET", &format!("/tasks?filters={sent}"), None)
            .await
            .expect("pass");
        assert_eq!(
            filters(&tasks),
            json!({"service": {"svc": true}, "label": {"ci=job-1": true}})
        );
        assert_eq!(
            denied(check("GET", "/volumes?filters=nojson", None).await).0,
            400
        );
    }

    #[tokio::test]
    async fn objects_of_others_look_like_missing_ones() {
        assert!(check("GET", "/containers/mine/json", None).await.is_ok());
        assert!(check(
            "POST",
            "/networks/net/connect",
            Some(json!({"Container": "mine"}))
        )
        .await
        .is_ok());
        let cases = [
            (
                "DELETE",
                "/v1.41/containers/theirs",
                "No such container: theirs",
            ),
            (
                "GET",
                "/containers/theirs/logs",
                "No such container: theirs",
            ),
            ("GET", "/containers/gone/json", "No such container: gone"),
            ("DELETE", "/volumes/vol", "get vol: no such volume"),
            ("GET", "/services/svc", "service svc not found"),
            ("POST", "/exec/e2/start", "No such exec instance: e2"),
            ("GET", "/tasks/t2", "task t2 not found"),
            ("GET", "/v1.41/tasks/t2/logs?stdout=1", "task t2 not found"),
            ("GET", "/tasks/gone", "task gone not found"),
            ("GET", "/exec/nope/json", "No such exec instance: nope"),
            (
                "POST",
                "/commit?container=theirs",
                "No such container: theirs",
            ),
        ];
        for (method, target, message) in cases {
            assert_eq!(
                denied(check(method, target, None).await),
                (404, message.to_string()),
                "{method} {target}"
            );
        }
        assert!(check("POST", "/exec/e1/start", None).await.is_ok());
        // A leader that cannot be asked about the exec's container refuses the call as
        // unchecked (502), never as missing.
        assert_eq!(denied(check("POST", "/exec/e3/start", None).await).0, 502);
        assert!(check("GET", "/tasks/t1/logs", None).await.is_ok());
        let connect = check(
            "POST",
            "/networks/net/disconnect",
            Some(json!({"Container": "theirs"})),
        )
        .await;
        assert_eq!(denied(connect).1, "No such container: theirs");
    }

    #[tokio::test]
    async fn create_bodies_may_only_name_owned_containers() {
        for host in [
            json!({"VolumesFrom": ["theirs:ro"]}),
            json!({"Links": ["/theirs:/x/db"]}),
            json!({"NetworkMode": "container:theirs"}),
            json!({"PidMode": "container:theirs"}),
            json!({"IpcMode": "container:theirs"}),
        ] {
            let body = json!({"Image": "bb", "HostConfig": host});
            assert_eq!(
                denied(check("POST", "/containers/create", Some(body)).await),
                (400, "No such container: theirs".to_string()),
                "{host}"
            );
        }
        let body = json!({"Image": "bb", "HostConfig": {"VolumesFrom": ["mine"], "IpcMode": "container:mine"}});
        assert!(check("POST", "/containers/create", Some(body))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn another_owners_container_name_is_a_conflict_without_its_id() {
        for target in [
            "/containers/create?name=theirs",
            "/containers/create?name=%2Ftheirs",
            "/containers/mine/rename?name=theirs",
        ] {
            let (status, message) = denied(check("POST", target, Some(json!({}))).await);
            assert_eq!(status, 409, "{target}");
            assert!(
                message.contains("\"/theirs\" is already in use by another owner's"),
                "{target}: {message}"
            );
        }
        for target in [
            "/containers/create?name=mine",
            "/containers/create?name=5eed",
            "/containers/create?name=fresh",
            "/containers/create",
            "/containers/mine/rename?name=fresh",
        ] {
            check("POST", target, Some(json!({}))).await.expect(target);
        }
    }

    #[tokio::test]
    async fn volumes_a_body_mounts_are_the_owners_or_new_and_made_the_owners() {
        let binds = json!(["myvol:/a:ro", "new:/n:rw,nocopy", "/srv:/srv", "zed:/z:z"]);
        let body = json!({"Image": "bb", "HostConfig": {"Binds": binds,
            "Mounts": [{"Type": "volume", "Source": "made", "Target": "/m"},
                       {"Type": "bind", "Source": "/tmp", "Target": "/t"}]}});
        let call = check("POST", "/containers/create", Some(body))
            .await
            .expect("pass");
        let host = &call.body.as_ref().expect("body")["HostConfig"];
        assert_eq!(host["Binds"], json!(["/srv:/srv", "zed:/z:z"]));
        let labelled = json!({"ci": "job-1"});
        assert_eq!(
            host["Mounts"],
            json!([
                {"Type": "volume", "Source": "made", "Target": "/m",
                 "VolumeOptions": {"Labels": labelled}},
                {"Type": "bind", "Source": "/tmp", "Target": "/t"},
                {"Type": "volume", "Source": "myvol", "Target": "/a", "ReadOnly": true,
                 "VolumeOptions": {"NoCopy": false, "Labels": labelled}},
                {"Type": "volume", "Source": "new", "Target": "/n", "ReadOnly": false,
                 "VolumeOptions": {"NoCopy": true, "Labels": labelled}},
            ])
        );

        let theirs = [
            json!({"HostConfig": {"Binds": ["vol:/d"]}}),
            json!({"HostConfig": {"Binds": ["vol:/d:Z"]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "volume", "Source": "vol", "Target": "/d"}]}}),
        ];
        for body in theirs {
            assert_eq!(
                denied(check("POST", "/containers/create", Some(body.clone())).await),
                (
                    409,
                    "volume vol is another owner's (--owner-label)".to_string()
                ),
                "{body}"
            );
        }
        assert_eq!(
            denied(check("POST", "/volumes/create", Some(json!({"Name": "vol"}))).await).0,
            409
        );
        check("POST", "/volumes/create", Some(json!({"Name": "myvol"})))
            .await
            .expect("this owner's volume, created again");
        let service = json!({"Name": "s", "TaskTemplate": {"ContainerSpec": {"Image": "bb",
            "Mounts": [{"Type": "volume", "Source": "vol", "Target": "/d"}]}}});
        assert_eq!(
            denied(check("POST", "/services/create", Some(service.clone())).await).0,
            409
        );
        // An update sends a whole new spec: checked, and labelled again, like a create.
        assert_eq!(
            denied(check("POST", "/services/s1/update?version=3", Some(service)).await).0,
            409
        );
        let spec =
            json!({"Name": "s", "Labels": {}, "TaskTemplate": {"ContainerSpec": {"Image": "bb"}}});
        let updated = check("POST", "/services/s1/update?version=3", Some(spec.clone()))
            .await
            .expect("pass");
        let body = updated.body.as_ref().expect("body");
        assert_eq!(body["Labels"], json!({"ci": "job-1"}));
        assert_eq!(
            body["TaskTemplate"]["ContainerSpec"]["Labels"],
            json!({"ci": "job-1"})
        );
        assert_eq!(
            denied(check("POST", "/services/svc/update?version=3", Some(spec)).await),
            (404, "service svc not found".to_string())
        );
    }

    #[tokio::test]
    async fn images_are_shared_but_not_removed() {
        for (method, target) in [
            ("DELETE", "/v1.41/images/bb:local"),
            ("POST", "/images/prune"),
            ("POST", "/build/prune"),
        ] {
            let (status, message) = denied(check(method, target, None).await);
            assert_eq!(status, 403, "{method} {target}");
            assert!(message.contains("images are shared"), "{message}");
        }
        let (status, message) = denied(check("GET", "/v1.41/system/df", None).await);
        assert_eq!(status, 403);
        assert!(message.contains("every owner's containers"), "{message}");
        let objects = leader();
        for (method, target) in [
            ("POST", "/images/create?fromImage=bb"),
            ("POST", "/build?t=x"),
            ("GET", "/images/json"),
            ("GET", "/_ping"),
        ] {
            let mut call = call(method, target, None);
            ownership().check(&mut call, &objects).await.expect(target);
        }
        assert!(objects.asked.lock().expect("lock").is_empty());
    }
}
