#!/usr/bin/env bash
# `make docker-e2e`: builds the seqinfer image and proves the container works.
#
#  1. a Debian bookworm base image built locally (scripts/docker-base-image.sh),
#     so that nothing is pulled from a registry;
#  2. a wheelhouse of everything the image installs (torch CPU, the project's
#     dependencies, setuptools), made by the host's pip, so that the build needs
#     no package index;
#  3. the image built through deploy/docker-compose.yml with the test-only
#     deploy/docker-compose.hostnet.yml override (host network, loopback ports);
#  4. the seqinfer service started, waited on until Docker's healthcheck (the
#     gRPC health service, asked by `seqinfer health`) says healthy;
#  5. one real step from the Python client on the host, and the step seen on the
#     container's /metrics.
# Everything is torn down at the end (the images stay, as a build cache).
#
# Needs: a running Docker engine (here: `dockerd --bridge=none --iptables=false &`),
# docker compose v2 or docker-compose v1, debootstrap (root) unless the base image
# exists, and the project's venv for the host side (PYTHON, default .venv/bin/python).
# Env: SEQINFER_BASE_IMAGE to use another base image (skips debootstrap),
# KEEP=1 to leave the container running for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-$repo/.venv/bin/python}
base_image=${SEQINFER_BASE_IMAGE:-seqinfer-base:bookworm}
project=seqinfer-e2e-$$
say() { printf '\n== %s\n' "$*"; }

if ! docker info >/dev/null 2>&1; then
  echo "docker-e2e: no Docker engine answers. Start one, e.g. (as root):" >&2
  echo "  dockerd --bridge=none --iptables=false >/var/tmp/dockerd.log 2>&1 &" >&2
  exit 2
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "docker-e2e: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 2
fi

say "base image $base_image"
if [ "$base_image" = seqinfer-base:bookworm ]; then
  scripts/docker-base-image.sh "$base_image"
else
  docker image inspect "$base_image" >/dev/null
fi

# The build context: the working tree's files (tracked and untracked, not ignored),
# never .venv or build outputs, plus the wheelhouse.
ctx=$(mktemp -d /var/tmp/seqinfer-e2e-ctx.XXXXXX)
cleanup() {
  status=$?
  if [ -z "${KEEP:-}" ]; then
    "${compose[@]}" -p "$project" "${files[@]}" down --remove-orphans >/dev/null 2>&1 || true
  else
    echo "KEEP=1: container left running; stop it with:" \
      "${compose[*]} -p $project ${files[*]} down"
  fi
  rm -rf "$ctx"
  # Earlier builds of the tag, left untagged by this one.
  docker image prune -f --filter "label=org.opencontainers.image.title=seqinfer" >/dev/null 2>&1 || true
  exit $status
}
files=(-f "$ctx/deploy/docker-compose.yml" -f "$ctx/deploy/docker-compose.hostnet.yml")
trap cleanup EXIT
say "build context $ctx"
git ls-files -z --cached --others --exclude-standard | tar -C "$repo" --null -T - -cf - \
  | tar -C "$ctx" -xf -
if [ ! -f "$ctx/README.md" ]; then
  # pyproject.toml names README.md as the long description; the image needs it to install.
  echo "docker-e2e: warning: README.md is missing; a placeholder goes into the image" >&2
  echo "# seqinfer" >"$ctx/README.md"
fi

say "wheelhouse (host pip, no index needed inside the build)"
torch_pin=$(sed -n 's/^TORCH_PIN ?= *//p' Makefile)
nice "$python" -m pip wheel -q --wheel-dir "$ctx/deploy/wheelhouse" \
  "$ctx" "${torch_pin:-torch==2.13.0}" "setuptools>=77"
# The project itself is installed from source in the image; only dependencies here.
# Fixed mtimes: the builder's cache key of `COPY deploy/wheelhouse/` includes them,
# and an unchanged wheelhouse should not reinstall torch on every run.
rm -f "$ctx"/deploy/wheelhouse/seqinfer-*.whl
find "$ctx/deploy/wheelhouse" -exec touch -h -d '2000-01-01 00:00:00' {} +
ls "$ctx/deploy/wheelhouse" | sed 's/^/  /'

port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics_port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SEQINFER_BASE_IMAGE=$base_image SEQINFER_E2E_PORT=$port SEQINFER_E2E_METRICS_PORT=$metrics_port

say "build"
nice "${compose[@]}" -p "$project" "${files[@]}" build seqinfer

say "up (gRPC 127.0.0.1:$port, metrics 127.0.0.1:$metrics_port)"
# Docker refuses published ports on the host network, and an override cannot drop
# the base file's `ports` (compose v1 merges lists; `!reset` is compose v2 only):
# run the merged service definition with `ports` removed, everything else as is.
"${compose[@]}" -p "$project" "${files[@]}" config >"$ctx/compose.merged.yml"
"$python" - "$ctx/compose.merged.yml" <<'EOF'
import sys

import yaml

path = sys.argv[1]
with open(path) as f:
    config = yaml.safe_load(f)
service = config["services"]["seqinfer"]
service.pop("ports", None)
# Only this service (Prometheus and Grafana images cannot be pulled here), so no
# volumes of theirs are created either.
config["services"] = {"seqinfer": service}
config.pop("volumes", None)
with open(path, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
EOF
files=(-f "$ctx/compose.merged.yml")
"${compose[@]}" -p "$project" "${files[@]}" up -d --no-deps seqinfer
container=$("${compose[@]}" -p "$project" "${files[@]}" ps -q seqinfer)

say "waiting for the container's healthcheck"
health=starting
for _ in $(seq 1 90); do
  health=$(docker inspect --format '{{.State.Health.Status}}' "$container")
  [ "$health" = healthy ] && break
  [ "$health" = unhealthy ] && break
  [ "$(docker inspect --format '{{.State.Running}}' "$container")" = true ] || break
  sleep 2
done
if [ "$health" != healthy ]; then
  echo "docker-e2e: FAILED: container health is '$health'" >&2
  docker inspect --format '{{json .State.Health}}' "$container" >&2 || true
  docker logs --tail 50 "$container" >&2 || true
  exit 1
fi
echo "healthy"

say "one real step from the Python client on the host"
"$python" - "127.0.0.1:$port" "http://127.0.0.1:$metrics_port/metrics" <<'EOF'
import sys
import urllib.request

import numpy as np

from seqinfer.client import Client

address, metrics_url = sys.argv[1], sys.argv[2]
with Client(address) as client, client.session("bench-gru") as session:
    out = session.step(np.ones((1, 64), dtype=np.float32))
    outputs = np.asarray(out.outputs)
    assert outputs.shape == (64,) and np.isfinite(outputs).all(), outputs
    print(f"step ok: session {session.session_id}, outputs[:3] = {outputs[:3]}")
text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
steps = [
    float(line.rsplit(" ", 1)[1])
    for line in text.splitlines()
    if line.startswith('seqinfer_steps_total{model="bench-gru:1"}')
]
assert steps and steps[0] >= 1, f"step not counted on /metrics: {steps}"
print(f"metrics ok: seqinfer_steps_total{{model=\"bench-gru:1\"}} = {steps[0]:.0f}")
EOF

say "docker-e2e: PASSED"
