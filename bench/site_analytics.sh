#!/usr/bin/env bash
# Cross-site analytics: fedsql's per-site partial aggregates (a coordinator
# and three `fedsql site` processes, each over its own PostgreSQL database)
# vs what a user would do without fedsql — pull each site's rows with
# psycopg and aggregate them centrally with pandas — in one run, with the
# bytes each moves counted by TCP proxies (see bench/site_analytics_bench.py).
#
#   bench/site_analytics.sh [ROWS_PER_SITE]     (default 1000000)
#
# Builds fedsql in release (FEDSQL_BIN to measure another binary), installs
# psycopg and pandas from PyPI into $FEDSQL_BENCH_VENV, starts a throw-away
# PostgreSQL on 127.0.0.1:55471 with one database per site and stops
# everything when done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
PG_PORT=55471
REGIONS=(apac eu us)
. bench/lib.sh
bench_venv 'import psycopg, pandas' "psycopg[binary]==3.3.9" "pandas==3.1.1"
build_release

WORK="$(mktemp -d /tmp/fedsql-site-analytics.XXXXXX)"
chmod 755 "$WORK"
trap bench_cleanup EXIT
start_postgres "$PG_PORT"

psql_pg() { psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
seed=0
for region in "${REGIONS[@]}"; do
  seed=$((seed + 1))
  psql_pg -d postgres -c "CREATE DATABASE site_$region"
  psql_pg -d "site_$region" -o /dev/null <<SQL
CREATE SCHEMA bank;
SELECT setseed(0.$seed);
CREATE TABLE bank.transactions AS
  SELECT i AS tx_id,
         round((random() * 2000)::numeric, 2)::float8 AS amount,
         (ARRAY['grocery','travel','online','fuel','dining','electronics','health','cash'])
           [1 + (i * 7 + $seed) % 8] AS merchant_category,
         (ARRAY['online','pos','atm'])[1 + i % 3] AS channel,
         random() < 0.02 + 0.01 * $seed AS is_fraud,
         md5(i::text) AS memo
  FROM generate_series(1, $ROWS) AS i;
ANALYZE bank.transactions;
SQL
done

"$VENV/bin/python" bench/site_analytics_bench.py --fedsql "$FEDSQL" --work "$WORK" \
  --pg-port "$PG_PORT" --rows "$ROWS"
