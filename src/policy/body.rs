//! `--deny` and `--bind-mounts`: what the bodies of the calls that make or change a
//! container, an exec, a service or a volume may ask for. Only those calls' bodies are read
//! ([`BodyRules::wants_body`]); every other body (build contexts, `load`, archive uploads)
//! streams through unread.
//!
//! Bind-mount sources are found in every form the API takes them: `HostConfig.Binds`
//! (`SRC:DST[:OPTS]`, a source starting with `/`), `HostConfig.Mounts` and a service's
//! `ContainerSpec.Mounts` (`Type: bind`), and local-driver volumes with `o=bind` and a
//! `device` (in `/volumes/create`, or in a mount's `VolumeOptions`). They are compared
//! lexically, after cleaning (`path::clean_fs_path`): the proxy cannot see the managers'
//! file systems, so a symlink under an allowed path is the operator's to avoid.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde_json::Value;

use super::path::{clean_fs_path, is_under};
use super::{Call, Check, Deny, DenyRule, Inspect, PolicySettings};

/// Where dockerd's socket is on Linux (`/var/run` is a link to `/run`).
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// The calls whose bodies are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ContainerCreate,
    ContainerUpdate,
    ExecCreate,
    Service,
    VolumeCreate,
}

fn endpoint(call: &Call) -> Option<Endpoint> {
    if call.method != "POST" {
        return None;
    }
    match call.segments().as_slice() {
        ["containers", "create"] => Some(Endpoint::ContainerCreate),
        ["containers", _, "update"] => Some(Endpoint::ContainerUpdate),
        ["containers", _, "exec"] => Some(Endpoint::ExecCreate),
        ["services", "create"] | ["services", _, "update"] => Some(Endpoint::Service),
        ["volumes", "create"] => Some(Endpoint::VolumeCreate),
        _ => None,
    }
}

/// The check of `--deny` and `--bind-mounts`.
pub struct BodyRules {
    deny: BTreeSet<DenyRule>,
    bind_mounts: Option<Vec<String>>,
}

impl BodyRules {
    /// `None` when neither is given.
    pub fn new(settings: &PolicySettings) -> Option<Self> {
        (!settings.deny.is_empty() || settings.bind_mounts.is_some()).then(|| Self {
            deny: settings.deny.clone(),
            bind_mounts: settings.bind_mounts.clone(),
        })
    }

    fn refuse(&self, rule: DenyRule, what: impl std::fmt::Display) -> Result<(), Deny> {
        if self.deny.contains(&rule) {
            Err(Deny::forbidden(
                rule.name(),
                format!("{what} is refused (--deny {})", rule.name()),
            ))
        } else {
            Ok(())
        }
    }

    fn decide(&self, endpoint: Endpoint, body: &Value) -> Result<(), Deny> {
        match endpoint {
            Endpoint::ContainerCreate => {
                let host = &body["HostConfig"];
                self.host_config(host)?;
                self.binds(&container_binds(host))
            }
            Endpoint::ContainerUpdate => self.devices(body),
            Endpoint::ExecCreate => {
                if body["Privileged"] == Value::Bool(true) {
                    self.refuse(DenyRule::Privileged, "a privileged exec")?;
                }
                Ok(())
            }
            Endpoint::Service => {
                let task = &body["TaskTemplate"];
                let spec = &task["ContainerSpec"];
                if non_empty(&spec["CapabilityAdd"]) {
                    self.refuse(
                        DenyRule::CapAdd,
                        format!("adding capabilities ({})", list(&spec["CapabilityAdd"])),
                    )?;
                }
                let privileges = &spec["Privileges"];
                if privileges["Seccomp"]["Mode"] == "unconfined" {
                    self.refuse(DenyRule::Unconfined, "seccomp unconfined")?;
                }
                if privileges["AppArmor"]["Mode"] == "disabled" {
                    self.refuse(DenyRule::Unconfined, "apparmor disabled")?;
                }
                let networks = [&task["Networks"], &body["Networks"]];
                let on_host = networks.iter().any(|n| {
                    n.as_array()
                        .is_some_and(|n| n.iter().any(|n| n["Target"] == "host"))
                });
                if on_host {
                    self.refuse(DenyRule::HostNamespaces, "the host's network namespace")?;
                }
                self.binds(&mount_binds(&spec["Mounts"]))
            }
            Endpoint::VolumeCreate => {
                let mut binds = Vec::new();
                if let Some(source) = bind_volume(&body["Driver"], &body["DriverOpts"]) {
                    binds.push(Bind::new(source, format!("volume {}", body["Name"])));
                }
                self.binds(&binds)
            }
        }
    }

    fn host_config(&self, host: &Value) -> Result<(), Deny> {
        if host["Privileged"] == Value::Bool(true) {
            self.refuse(DenyRule::Privileged, "a privileged container")?;
        }
        if non_empty(&host["CapAdd"]) {
            self.refuse(
                DenyRule::CapAdd,
                format!("adding capabilities ({})", list(&host["CapAdd"])),
            )?;
        }
        for (key, name) in [
            ("NetworkMode", "network"),
            ("PidMode", "pid"),
            ("IpcMode", "ipc"),
            ("UTSMode", "uts"),
            ("UsernsMode", "userns"),
            ("CgroupnsMode", "cgroup"),
        ] {
            if host[key] == "host" {
                self.refuse(
                    DenyRule::HostNamespaces,
                    format!("the host's {name} namespace"),
                )?;
            }
        }
        self.devices(host)?;
        for option in host["SecurityOpt"].as_array().into_iter().flatten() {
            let option = option.as_str().unwrap_or_default();
            let unconfined = ["seccomp", "apparmor", "systempaths"].iter().any(|kind| {
                option == format!("{kind}=unconfined") || option == format!("{kind}:unconfined")
            });
            if unconfined {
                self.refuse(DenyRule::Unconfined, format!("--security-opt {option}"))?;
            }
        }
        Ok(())
    }

    fn devices(&self, resources: &Value) -> Result<(), Deny> {
        for key in ["Devices", "DeviceCgroupRules", "DeviceRequests"] {
            if non_empty(&resources[key]) {
                self.refuse(DenyRule::Devices, format!("host devices ({key})"))?;
            }
        }
        Ok(())
    }

    fn binds(&self, binds: &[Bind]) -> Result<(), Deny> {
        for bind in binds {
            let Some(source) = clean_fs_path(&bind.source) else {
                continue;
            };
            let socket = source.ends_with("/docker.sock")
                || DOCKER_SOCKETS.iter().any(|s| is_under(s, &source));
            if socket {
                self.refuse(
                    DenyRule::DockerSocket,
                    format!("bind mount {} (it holds the Docker socket)", bind.shown),
                )?;
            }
            if let Some(allowed) = &self.bind_mounts {
                if !allowed.iter().any(|base| is_under(&source, base)) {
                    let rule = if allowed.is_empty() {
                        "no bind mount is allowed (--bind-mounts none)".to_string()
                    } else {
                        format!(
                            "its source {source} is not under {} (--bind-mounts)",
                            allowed.join(",")
                        )
                    };
                    return Err(Deny::forbidden(
                        "bind-mounts",
                        format!("bind mount {} is refused: {rule}", bind.shown),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Check for BodyRules {
    fn wants_body(&self, call: &Call) -> bool {
        endpoint(call).is_some()
    }

    async fn check(&self, call: &mut Call, _inspect: &dyn Inspect) -> Result<(), Deny> {
        let Some(endpoint) = endpoint(call) else {
            return Ok(());
        };
        match &call.body {
            Some(body) => self.decide(endpoint, body),
            None if call.body_bytes.as_ref().is_none_or(|b| b.is_empty()) => Ok(()),
            None => Err(Deny::new(
                400,
                "body",
                "leader-proxy policy: the request body is not JSON",
            )),
        }
    }
}

/// A bind-mount source and how the client wrote the mount (for the message).
struct Bind {
    source: String,
    shown: String,
}

impl Bind {
    fn new(source: &str, shown: String) -> Self {
        Self {
            source: source.to_string(),
            shown,
        }
    }
}

fn container_binds(host: &Value) -> Vec<Bind> {
    let mut binds = Vec::new();
    for bind in host["Binds"].as_array().into_iter().flatten() {
        let Some(text) = bind.as_str() else { continue };
        let source = text.split(':').next().unwrap_or_default();
        if source.starts_with('/') {
            binds.push(Bind::new(source, text.to_string()));
        }
    }
    binds.extend(mount_binds(&host["Mounts"]));
    binds
}

/// `Mounts` of a container or a service: `Type: bind`, and volumes that are binds.
fn mount_binds(mounts: &Value) -> Vec<Bind> {
    let mut binds = Vec::new();
    for mount in mounts.as_array().into_iter().flatten() {
        let source = mount["Source"].as_str().unwrap_or_default();
        let target = mount["Target"].as_str().unwrap_or_default();
        let shown = format!("{source}:{target}");
        match mount["Type"].as_str() {
            Some("bind") => binds.push(Bind::new(source, shown)),
            Some("volume") => {
                let driver = &mount["VolumeOptions"]["DriverConfig"];
                if let Some(device) = bind_volume(&driver["Name"], &driver["Options"]) {
                    binds.push(Bind::new(device, shown));
                }
            }
            _ => {}
        }
    }
    binds
}

/// The device of a local-driver volume mounted with `o=bind`: a bind mount by another name.
fn bind_volume<'a>(driver: &Value, options: &'a Value) -> Option<&'a str> {
    let local = driver.is_null() || driver == "" || driver == "local";
    let binds = options["o"].as_str().is_some_and(|o| {
        o.split(',')
            .any(|o| o.trim() == "bind" || o.trim() == "rbind")
    });
    if local && binds {
        options["device"].as_str()
    } else {
        None
    }
}

fn non_empty(value: &Value) -> bool {
    value.as_array().is_some_and(|a| !a.is_empty())
}

fn list(value: &Value) -> String {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(deny: &[DenyRule], binds: Option<&[&str]>) -> BodyRules {
        BodyRules {
            deny: deny.iter().copied().collect(),
            bind_mounts: binds.map(|b| b.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn rule_of(r: &BodyRules, endpoint: Endpoint, body: Value) -> Option<&'static str> {
        r.decide(endpoint, &body).err().map(|d| d.rule)
    }

    #[test]
    fn every_form_of_a_bind_mount_is_checked() {
        let r = rules(&[], Some(&["/srv/ci"]));
        let create = Endpoint::ContainerCreate;
        assert_eq!(
            rule_of(&r, create, json!({"HostConfig": {"Binds": ["/:/host"]}})),
            Some("bind-mounts")
        );
        assert_eq!(
            rule_of(
                &r,
                create,
                json!({"HostConfig": {"Binds": ["/srv/ci/x:/x:ro"]}})
            ),
            None
        );
        assert_eq!(
            rule_of(
                &r,
                create,
                json!({"HostConfig": {"Binds": ["/srv/ci/../etc:/x"]}})
            ),
            Some("bind-mounts")
        );
        assert_eq!(
            rule_of(&r, create, json!({"HostConfig": {"Binds": ["named:/x"]}})),
            None
        );
        assert_eq!(
            rule_of(
                &r,
                create,
                json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}})
            ),
            Some("bind-mounts")
        );
        let volume = json!({"HostConfig": {"Mounts": [{"Type": "volume", "Target": "/h",
            "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"o": "bind", "device": "/etc"}}}}]}});
        assert_eq!(rule_of(&r, create, volume), Some("bind-mounts"));
        let service = json!({"TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}}});
        assert_eq!(rule_of(&r, Endpoint::Service, service), Some("bind-mounts"));
        let vol =
            json!({"Name": "v", "DriverOpts": {"type": "none", "o": "bind", "device": "/etc"}});
        assert_eq!(
            rule_of(&r, Endpoint::VolumeCreate, vol),
            Some("bind-mounts")
        );
        let none = rules(&[], Some(&[]));
        assert_eq!(
            rule_of(
                &none,
                create,
                json!({"HostConfig": {"Binds": ["/srv/ci:/x"]}})
            ),
            Some("bind-mounts")
        );
    }

    #[test]
    fn deny_rules_name_themselves() {
        let r = rules(&DenyRule::ALL, None);
        let create = Endpoint::ContainerCreate;
        let hc = |host: Value| json!({ "HostConfig": host });
        assert_eq!(
            rule_of(&r, create, hc(json!({"Privileged": true}))),
            Some("privileged")
        );
        assert_eq!(
            rule_of(&r, create, hc(json!({"CapAdd": ["SYS_ADMIN"]}))),
            Some("cap-add")
        );
        assert_eq!(
            rule_of(&r, create, hc(json!({"NetworkMode": "host"}))),
            Some("host-namespaces")
        );
        assert_eq!(
            rule_of(&r, create, hc(json!({"PidMode": "host"}))),
            Some("host-namespaces")
        );
        assert_eq!(
            rule_of(
                &r,
                create,
                hc(json!({"Devices": [{"PathOnHost": "/dev/sda"}]}))
            ),
            Some("devices")
        );
        assert_eq!(
            rule_of(&r, create, hc(json!({"Binds": ["/var/run:/r"]}))),
            Some("docker-socket")
        );
        assert_eq!(
            rule_of(
                &r,
                create,
                hc(json!({"SecurityOpt": ["seccomp=unconfined"]}))
            ),
            Some("unconfined")
        );
        assert_eq!(
            rule_of(
                &r,
                create,
                hc(json!({"NetworkMode": "bridge", "Binds": ["/srv:/srv"]}))
            ),
            None
        );
        assert_eq!(
            rule_of(&r, Endpoint::ExecCreate, json!({"Privileged": true})),
            Some("privileged")
        );
        assert_eq!(
            rule_of(&r, Endpoint::ContainerUpdate, json!({"Devices": [{}]})),
            Some("devices")
        );
        let open = rules(&[], None);
        assert_eq!(
            rule_of(
                &open,
                create,
                hc(json!({"Privileged": true, "Binds": ["/:/h"]}))
            ),
            None
        );
    }
}
