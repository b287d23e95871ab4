#!/usr/bin/env bash
# TPC-H through fedsql vs PostgreSQL alone, one run, same machine:
#   - every table in one Postgres source (issue 2's measurement);
#   - split: lineitem and orders in Postgres, the other six in MariaDB read
#     over ODBC (issue 3's measurement);
# against PostgreSQL running the same 22 queries on all eight tables. Each
# query is capped at 60 s (a capped query counts as 60 s); every fedsql
# answer is checked against Postgres's.
#
#   bench/tpch.sh [SCALE]                (default 1)
#   bench/tpch.sh SCALE --rows-moved     the split's rows read from the sources
#                                        with DataFusion's join filters off/on
#     [--inlist-max N]                   …and on with key lists of up to N values
#
# Needs the Debian packages scripts/test installs (postgresql, mariadb-server,
# unixodbc, odbc-mariadb). Builds fedsql in release, installs tpchgen-cli and
# psycopg from PyPI into the bench venv, starts throw-away PostgreSQL and
# MariaDB servers and fedsql on loopback ports 55470-55473 and stops them
# when done.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-1}"
shift || true
. bench/lib.sh
bench_venv 'import psycopg, tpchgen' \
  "pyarrow==26.0.1" "psycopg[binary]==3.3.9" "tpchgen-cli==4.0.0"
"$VENV/bin/python" -c 'import tpchgen' 2>/dev/null ||
  "$VENV/bin/pip" install -q --disable-pip-version-check "tpchgen-cli==4.0.0"
build_release

WORK="$(mktemp -d /tmp/fedsql-tpch-bench.XXXXXX)"
chmod 755 "$WORK"
PG_PORT=55470 MARIA_PORT=55471 FED_PG=55472 FED_FLIGHT=55473
trap bench_cleanup EXIT

echo "generating TPC-H SF$SCALE"
"$VENV/bin/tpchgen-cli" csv -s "$SCALE" --output-dir "$WORK/data" >/dev/null
chmod -R a+rX "$WORK/data"

echo "starting PostgreSQL and MariaDB"
# Settings a DBA would give an analytics box with this much memory.
start_postgres "$PG_PORT" -c shared_buffers=2GB -c work_mem=256MB \
  -c effective_cache_size=8GB -c max_parallel_workers_per_gather=2
start_mariadb "$MARIA_PORT" --innodb-buffer-pool-size=2G --local-infile=1

TABLES="region nation part supplier partsupp customer orders lineitem"
load_pg() { # DATABASE TABLE...
  local db="$1"
  shift
  psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE DATABASE $db"
  psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" -f tests/tpch/schema.sql
  for t in "$@"; do
    psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" \
      -c "\\copy $t FROM '$WORK/data/$t.csv' (FORMAT csv, HEADER true)"
  done
  psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" -c "VACUUM ANALYZE"
}
echo "loading all eight tables into Postgres (database tpch)"
load_pg tpch $TABLES
echo "loading lineitem and orders into Postgres (database split)"
load_pg split orders lineitem
echo "loading the other six tables into MariaDB (database tpch_wh)"
{
  echo "CREATE DATABASE tpch_wh; USE tpch_wh;"
  for t in region nation part supplier partsupp customer; do
    grep "^CREATE TABLE $t " tests/tpch/schema.sql
    echo "LOAD DATA LOCAL INFILE '$WORK/data/$t.csv' INTO TABLE $t CHARACTER SET utf8mb4
          FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' IGNORE 1 LINES;"
  done
  # What the warehouse DBA runs: exact per-column statistics, which fedsql
  # reads at CREATE SOURCE (to decide on partial aggregates).
  echo "ANALYZE TABLE region, nation, part, supplier, partsupp, customer PERSISTENT FOR ALL;"
} | mariadb --local-infile=1 -h127.0.0.1 -P"$MARIA_PORT" -uroot >/dev/null

WH_ODBC="Driver={MariaDB Unicode};Server=127.0.0.1;Port=$MARIA_PORT;Database=tpch_wh;Uid=root;Pwd=;"
"$VENV/bin/python" bench/tpch_bench.py \
  --fedsql "$FEDSQL" --work "$WORK" --fedsql-pg "$FED_PG" --fedsql-flight "$FED_FLIGHT" \
  --postgres "host=127.0.0.1 port=$PG_PORT user=postgres dbname=tpch" \
  --source "tpch|CREATE SOURCE tpch TYPE postgres OPTIONS (url 'postgres://postgres@127.0.0.1:$PG_PORT/tpch')" \
  --source "pg|CREATE SOURCE pg TYPE postgres OPTIONS (url 'postgres://postgres@127.0.0.1:$PG_PORT/split')" \
  --source "wh|CREATE SOURCE wh TYPE odbc OPTIONS (connection_string '$WH_ODBC', dialect 'mysql')" \
  --scale "$SCALE" "$@"
