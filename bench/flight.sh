#!/usr/bin/env bash
# Flight SQL throughput: a 10M-row x 4-column result read over fedsql's
# Flight SQL (pyarrow), over fedsql's Postgres wire (psycopg), and over
# roapi's Flight SQL serving the same Parquet file; one run, one table.
#
#   bench/flight.sh [ROWS]      (default 10000000)
#
# Builds fedsql in release (the first cold build takes ~35 min on 2 cores),
# installs roapi, pyarrow and psycopg from PyPI into a venv
# ($FEDSQL_BENCH_VENV, default ~/.cache/fedsql-bench-venv), starts both
# servers on loopback ports 55450-55455 and stops them when done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-10000000}"
. bench/lib.sh
bench_venv 'import pyarrow.flight, psycopg, os, sys; assert os.path.exists(sys.prefix + "/bin/roapi")' \
  "roapi==0.12.7" "pyarrow==26.0.1" "psycopg[binary]==3.3.9"
build_release

WORK="$(mktemp -d /tmp/fedsql-flight-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "writing $ROWS rows to Parquet"
"$VENV/bin/python" bench/flight_bench.py --make-parquet "$WORK/bench.parquet" --rows "$ROWS"

start_fedsql "$WORK" 55450 55451 --no-demo
"$VENV/bin/roapi" -t "bench=$WORK/bench.parquet" \
  --addr-flight-sql 127.0.0.1:55452 --addr-http 127.0.0.1:55453 --addr-postgres 127.0.0.1:55454 \
  > "$WORK/roapi.log" 2>&1 &
PIDS+=($!)
psql -q -h 127.0.0.1 -p 55450 -U fedsql -d fedsql \
  -c "CREATE EXTERNAL TABLE bench STORED AS PARQUET LOCATION '$WORK/bench.parquet'"
for _ in $(seq 1 600); do
  (echo > /dev/tcp/127.0.0.1/55452) 2>/dev/null && break
  sleep 0.1
done

"$VENV/bin/python" bench/flight_bench.py --rows "$ROWS" \
  --fedsql-flight 55451 --fedsql-pg 55450 --roapi-flight 55452
