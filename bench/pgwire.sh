#!/usr/bin/env bash
# Postgres-wire throughput: fedsql vs a real PostgreSQL 15 on this machine,
# same client (pgbench), same data, same run. Prints a ratio table.
#
#   bench/pgwire.sh [SECONDS]      (default 10 s per workload; 8 clients)
#
# Builds fedsql in release (the first cold build takes ~35 min on 2 cores).
# Starts PostgreSQL on 127.0.0.1:$PG_PORT (55442) and fedsql on $FEDSQL_PORT (55443), and
# stops both when done.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CLIENTS="${CLIENTS:-8}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fedsql-target}"
PGBIN=/usr/lib/postgresql/15/bin
PG_PORT="${PG_PORT:-55442}"
FEDSQL_PORT="${FEDSQL_PORT:-55443}"

if [ ! -x "$PGBIN/postgres" ] || ! command -v pgbench >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib
fi

cargo build --release --locked --bin fedsql
FEDSQL="$CARGO_TARGET_DIR/release/fedsql"

WORK="$(mktemp -d /tmp/fedsql-bench.XXXXXX)"
chmod 777 "$WORK"
PGDATA="$WORK/pg"
FEDSQL_PID=""
cleanup() {
  [ -n "$FEDSQL_PID" ] && kill "$FEDSQL_PID" 2>/dev/null || true
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "starting PostgreSQL 15 on 127.0.0.1:${PG_PORT}"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/log" -w \
  -o "-p ${PG_PORT} -c listen_addresses=127.0.0.1 -k $PGDATA -c fsync=off -c max_connections=50" start >/dev/null

echo "starting fedsql on 127.0.0.1:${FEDSQL_PORT}"
"$FEDSQL" serve --data-dir "$WORK/fedsql" --pg-listen 127.0.0.1:${FEDSQL_PORT} --flight-listen 127.0.0.1:$((FEDSQL_PORT + 1)) > "$WORK/fedsql.log" 2>&1 &
FEDSQL_PID=$!
for _ in $(seq 1 600); do
  grep -q "^  psql " "$WORK/fedsql.log" 2>/dev/null && break
  sleep 0.1
done

# The same 100,000 transactions in both systems.
"$FEDSQL" query --data-dir "$WORK/fedsql" --format csv \
  "SELECT tx_id, customer_id, ts, amount, merchant_category, channel, is_fraud FROM bank.transactions ORDER BY tx_id LIMIT 100000" \
  > "$WORK/tx.csv"
psql -q -h 127.0.0.1 -p ${PG_PORT} -U postgres -d postgres <<SQL
CREATE TABLE transactions (tx_id bigint, customer_id bigint, ts timestamp, amount float8,
  merchant_category text, channel text, is_fraud boolean);
\copy transactions FROM '$WORK/tx.csv' WITH (FORMAT csv, HEADER true)
ANALYZE transactions;
SQL
psql -q -h 127.0.0.1 -p ${FEDSQL_PORT} -U fedsql -d demo \
  -c "CREATE OR REPLACE VIEW transactions AS SELECT * FROM bank.transactions ORDER BY tx_id LIMIT 100000" >/dev/null

echo "SELECT 1;" > "$WORK/select1.sql"
echo "SELECT tx_id, customer_id, ts, amount, merchant_category, channel, is_fraud FROM transactions;" > "$WORK/rows100k.sql"

tps() { # port user db script clients
  pgbench -h 127.0.0.1 -p "$1" -U "$2" -n -M simple -c "$5" -j 2 -T "$DURATION" -f "$4" "$3" 2>&1 \
    | awk '/^tps = / {print $3}'
}

printf '\n%-28s %14s %14s %10s\n' "workload ($CLIENTS clients, ${DURATION}s)" "postgres tps" "fedsql tps" "ratio"
for workload in select1 rows100k; do
  clients="$CLIENTS"
  pg=$(tps ${PG_PORT} postgres postgres "$WORK/$workload.sql" "$clients")
  fs=$(tps ${FEDSQL_PORT} fedsql demo "$WORK/$workload.sql" "$clients")
  ratio=$(awk -v a="$fs" -v b="$pg" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  printf '%-28s %14.1f %14.1f %10s\n' "$workload" "$pg" "$fs" "$ratio"
done
