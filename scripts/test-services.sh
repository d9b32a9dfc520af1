#!/usr/bin/env bash
# Installs the system packages that the test suite starts as real servers on
# loopback (each test starts and stops its own instance on ephemeral ports).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing system packages (tests needing them will skip): ${need[*]}" >&2
  fi
fi
