#!/usr/bin/env bash
# Regenerates the committed Python stubs from proto/seqinfer/v1/*.proto.
# -I proto makes the generated imports read `from seqinfer.v1 import ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-proto}"
PY="${PYTHON:-python}"
# google/rpc/status.proto ships with googleapis-common-protos.
gapi="$("$PY" -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))')"
"$PY" -m grpc_tools.protoc -I proto -I "$gapi" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/seqinfer/v1/*.proto
