# leader-proxy --policy-rego: refuse privileged containers and bind mounts of the host's
# root, allow everything else. Written in Rego v0 (`allow { … }`), as most policies for
# opa-docker-authz are; leader-proxy loads it unchanged (docs/policy.md, "Rego").
package docker.authz

default allow = false

allow {
	not deny
}

deny {
	input.Body.HostConfig.Privileged == true
}

deny {
	input.BindMounts[_].Source == "/"
}
