#!/usr/bin/env bash
# The GPU device script (issue 13): one command, under 5 minutes on an H200.
#
#   bash benchmarks/gpu/run.sh            # from the repository root
#
# Writes one results file, $OUT/gpu-results.txt (or benchmarks/results/gpu-<UTC>.txt
# when OUT is unset): the machine, then one section per part, JSON lines where
# the part prints them. A part that fails is recorded and the script goes on.
# Python: $PYTHON (default python3) with torch (CUDA), numpy, grpcio, protobuf,
# pydantic-settings, pyyaml, pytest; wheels in .whl/ are installed first if
# present (see docs/gpu.md). py-spy is used if found.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.:proto:service:client${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
    RESULTS=$OUT/gpu-results.txt
else
    mkdir -p benchmarks/results
    RESULTS=benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ).txt
fi
: >"$RESULTS"

section() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)" | tee -a "$RESULTS"; }
# part NAME SECONDS CMD...: run with a time limit, output into the results file.
part() {
    local name=$1 limit=$2
    shift 2
    section "$name"
    timeout "$limit" "$@" 2>&1 | tee -a "$RESULTS"
    local rc=${PIPESTATUS[0]}
    echo "--- $name: exit $rc" | tee -a "$RESULTS"
}

section machine
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    nproc
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} 2>&1 | tee -a "$RESULTS"

# 1. equivalence on cuda: fp32 to 1e-5, bf16/fp16 within their tolerances.
part equivalence 100 env SEQINFER_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    tests/unit/test_engine.py tests/unit/test_engine_buckets.py \
    tests/unit/test_engine_precision.py tests/integration/test_equivalence.py
part precision-drift 40 "$PY" -m benchmarks.gpu.precision --device cuda --steps 10000
# 2. the engine alone, graphs on and off.
part engine-sweep 70 "$PY" -m benchmarks.gpu.engine_bench sweep --device cuda
# 3. 10 M resident sessions against 10 k, batch 256.
part resident 40 "$PY" -m benchmarks.gpu.engine_bench resident --device cuda \
    --sessions 10000,10000000 --batch 256
# 4. the server on the GPU, load generators on the CPU cores.
part server 45 "$PY" -m benchmarks.gpu.server_load --duration 6 --profile-seconds 5 \
    --client-procs "$(($(nproc) / 2))"

section done
echo "results: $RESULTS"
