# leader-proxy --policy-rego: containers may only be created from the images listed here;
# every other call passes. Rego v1 (`if`, `in`).
package docker.authz

allowed_images := {"bb:local", "registry.example.com/ci/runner:stable"}

default allow := false

allow if not creates_container

allow if {
	creates_container
	input.Body.Image in allowed_images
}

creates_container if {
	input.Method == "POST"
	input.PathArr[count(input.PathArr) - 2] == "containers"
	input.PathArr[count(input.PathArr) - 1] == "create"
}
