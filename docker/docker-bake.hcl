// docker buildx bake: the static half of the build plan.
//
// The per-variant targets (cu124-base, cu124-torch, cu124-data, ...) and the groups
// `default` (the default variant's data image), `all`, and one per variant are rendered from
// images/matrix.toml by `imagectl bake-plan --write build/bake/matrix.bake.json` and merged
// with this file:
//
//   docker buildx bake -f docker/docker-bake.hcl -f build/bake/matrix.bake.json [TARGET|GROUP]
//
// `make build` / `imagectl build` do exactly that. Each generated target inherits one of the
// abstract layer targets below, in the spirit of vllm's `_common`.

variable "CA_BUNDLE" {
  // Path of a CA bundle for a TLS-inspecting proxy; passed as a BuildKit secret, never a layer.
  default = ""
}

target "_common" {
  context    = "."
  dockerfile = "docker/Dockerfile"
  secret     = CA_BUNDLE != "" ? ["id=ca_bundle,src=${CA_BUNDLE}"] : []
}

target "_base" {
  inherits = ["_common"]
  target   = "base"
}

target "_torch" {
  inherits = ["_common"]
  target   = "torch"
}

target "_data" {
  inherits = ["_common"]
  target   = "data"
}

target "_devel" {
  inherits = ["_common"]
  target   = "devel"
}
