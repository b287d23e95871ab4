#!/usr/bin/env bash
# Federated training: fedsql vs Flower 1.42 on the same data, same model
# family, same rounds and clients, in one run (see bench/flower_bench.py).
#
#   bench/flower.sh [ROUNDS]     (default 10)
#
# Builds fedsql in release, installs flwr, scikit-learn and psycopg from PyPI
# into $FEDSQL_BENCH_VENV (default ~/.cache/fedsql-bench-venv), starts fedsql
# on 127.0.0.1:55460 with the full-size demo catalog and stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-10}"
. bench/lib.sh
bench_venv 'import flwr, sklearn, psycopg' \
  "flwr==1.42.0" "scikit-learn==1.9.1" "psycopg[binary]==3.3.9"
build_release

WORK="$(mktemp -d /tmp/fedsql-flower-bench.XXXXXX)"
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$FEDSQL" serve --data-dir "$WORK/fedsql" --pg-listen 127.0.0.1:55460 \
  --flight-listen 127.0.0.1:55461 > "$WORK/fedsql.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do
  grep -q "^  psql " "$WORK/fedsql.log" 2>/dev/null && break
  sleep 0.1
done

"$FEDSQL" query --server postgres://fedsql@127.0.0.1:55460/demo --format csv \
  "$("$VENV/bin/python" -c 'import sys; sys.path.insert(0, "bench"); import flower_bench; print(flower_bench.FEATURES_SQL)')" \
  > "$WORK/rows.csv"

"$VENV/bin/python" bench/flower_bench.py --csv "$WORK/rows.csv" --fedsql-port 55460 --rounds "$ROUNDS"
