# leader-proxy --policy-rego: everyone may read (GET, HEAD); only the users listed may
# change anything. `User` is the client's identity: the subject of its TLS certificate
# (`CN=operator`), `unix:uid=0` for a unix-socket client of uid 0, empty for plain TCP.
package docker.authz

import rego.v1

writers := {"CN=operator", "unix:uid=0"}

default allow := false

allow if input.Method in {"GET", "HEAD"}

allow if input.User in writers
