#!/usr/bin/env bash
# Federated training across processes: fedsql sites vs Flower 1.42 in its
# deployment mode (a SuperLink and three SuperNodes, `flwr run`), same data,
# model family, rounds and clients, in one run (see bench/flower_sites_bench.py).
#
#   bench/flower_sites.sh [ROUNDS]     (default 10)
#
# Builds fedsql in release (FEDSQL_BIN to measure another binary), installs
# flwr, scikit-learn and psycopg from PyPI into $FEDSQL_BENCH_VENV, starts a
# throw-away PostgreSQL on 127.0.0.1:55470 with one database per region (the
# sites' data) and stops everything when done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-10}"
PG_PORT=55470
REGIONS=(apac eu us)
. bench/lib.sh
bench_venv 'import flwr, sklearn, psycopg' \
  "flwr==1.42.0" "scikit-learn==1.9.1" "psycopg[binary]==3.3.9"
build_release

WORK="$(mktemp -d /tmp/fedsql-flower-sites.XXXXXX)"
chmod 755 "$WORK"
trap bench_cleanup EXIT
start_postgres "$PG_PORT"

# Each region's slice of the demo bank: in its own database for its site,
# and as the features CSV Flower's SuperNode for that region reads.
mkdir -p "$WORK/csv"
export_csv() { "$FEDSQL" query --data-dir "$WORK/export" --format csv "$1" 2>/dev/null; }
psql_pg() { psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
for region in "${REGIONS[@]}"; do
  db="site_$region"
  psql_pg -d postgres -c "CREATE DATABASE $db"
  psql_pg -d "$db" <<SQL
CREATE SCHEMA bank;
CREATE TABLE bank.customers (customer_id bigint PRIMARY KEY, region text, age int, income float8,
  tenure_months int, credit_score int, segment text);
CREATE TABLE bank.transactions (tx_id bigint PRIMARY KEY, customer_id bigint, ts timestamp,
  amount float8, merchant_category text, channel text, is_fraud boolean);
SQL
  export_csv "SELECT * FROM demo.bank.customers WHERE region = '$region' ORDER BY customer_id" \
    | psql_pg -d "$db" -c "\\copy bank.customers FROM STDIN CSV HEADER"
  export_csv "SELECT t.* FROM demo.bank.transactions t JOIN demo.bank.customers c USING (customer_id)
              WHERE c.region = '$region' ORDER BY t.tx_id" \
    | psql_pg -d "$db" -c "\\copy bank.transactions FROM STDIN CSV HEADER"
  export_csv "SELECT ln(t.amount) AS log_amount, t.channel, t.merchant_category,
                CAST(date_part('hour', t.ts) < 5 AS INT) AS night, c.credit_score, t.is_fraud
              FROM demo.bank.transactions t JOIN demo.bank.customers c USING (customer_id)
              WHERE c.region = '$region' ORDER BY t.tx_id" > "$WORK/csv/$region.csv"
done

"$VENV/bin/python" bench/flower_sites_bench.py --fedsql "$FEDSQL" --work "$WORK" \
  --data-dir "$WORK/csv" --pg-port "$PG_PORT" --rounds "$ROUNDS"
