#!/usr/bin/env bash
# Installs the system packages the test suite uses as real tools and servers on
# loopback (each test starts and stops its own instance on ephemeral ports):
#   prometheus      `prometheus` for tests/e2e/test_prometheus_dashboard.py,
#                   `promtool` for tests/unit/test_deploy.py
#   docker-compose  `docker-compose config -q` validates deploy/docker-compose*.yml
#                   (no Docker engine needed for that)
#   redis-server    tests/redis_server.py (store_redis tests, the server on Redis)
# Tests that need a missing tool skip and say which package to install.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing system packages (tests needing them will skip): ${need[*]}" >&2
  fi
fi
