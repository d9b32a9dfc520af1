#!/usr/bin/env bash
# Front-end scaling on a many-core machine (issue 10): one command, under 5 minutes.
#
#   bash benchmarks/scaling.sh            # from the repository root
#
# K = 1, 2, 4, 8, 12, 14 front ends (a K that does not fit the machine's
# physical cores beside a load CPU is skipped and said so), each front end
# and the engine pinned to a core, the load generators on the other CPUs;
# StreamSteps and StepMany, 6 s each. Writes $OUT/scaling.json and .md (or
# benchmarks/results/scaling-<UTC>.json/.md when OUT is unset).
# Efficiency = throughput / (K x the K=1 throughput), flagged below 0.8.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=.:proto:service:client${PYTHONPATH:+:$PYTHONPATH}
if [ -n "${OUT:-}" ]; then
    RESULTS=$OUT/scaling.json
else
    mkdir -p benchmarks/results
    RESULTS=benchmarks/results/scaling-$(date -u +%Y%m%dT%H%M%SZ).json
fi
nproc
timeout 290 "$PY" -m benchmarks.frontends.scaling --k "${KS:-1,2,4,8,12,14}" \
    --duration "${DURATION:-6}" --out "$RESULTS"
