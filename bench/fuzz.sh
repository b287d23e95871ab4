#!/usr/bin/env bash
# The differential fuzzer at length: N random TPC-H queries from SEED,
# answered by fedsql over a Postgres source and over a MariaDB source (ODBC),
# each with pushdown on and off, compared with PostgreSQL's own answers on
# the same data (tests/tests/fuzz.rs, fedsql_tests::fuzz). Prints, per
# target, queries run, valid ones, PostgreSQL-rejected ones, fallbacks
# taken, failures (differences, errors where PostgreSQL answers, hangs) and
# whether the server crashed. Failures are minimised and written as .slt
# cases into $FEDSQL_FUZZ_SAVE (default /tmp/fedsql-fuzz-failures).
#
#   bench/fuzz.sh [N] [SEED] [SCALE]     (defaults 5000, 1, 0.1)
#
# Needs the Debian packages scripts/test installs (postgresql, mariadb-server,
# unixodbc, odbc-mariadb); installs tpchgen-cli into the bench venv, builds
# the tests (dev profile, as CI), starts throw-away PostgreSQL and MariaDB
# servers on loopback ports 55480-55481 and stops them when done.
set -uo pipefail
cd "$(dirname "$0")/.."
N="${1:-5000}"
SEED="${2:-1}"
SCALE="${3:-0.1}"
. bench/lib.sh
bench_venv 'import tpchgen' "tpchgen-cli==4.0.0"
cargo build --locked --workspace --all-targets || exit 1

WORK="$(mktemp -d /tmp/fedsql-fuzz-bench.XXXXXX)"
chmod 755 "$WORK"
PG_PORT=55480 MARIA_PORT=55481
trap bench_cleanup EXIT
start_postgres "$PG_PORT" "-c max_connections=200" || exit 1
start_mariadb "$MARIA_PORT" || exit 1

echo "fuzzing: $N queries per target, seed $SEED, TPC-H SF$SCALE"
status=0
for target in postgres mariadb; do
  FEDSQL_TEST_PG="127.0.0.1:$PG_PORT" FEDSQL_TEST_MARIADB="127.0.0.1:$MARIA_PORT" \
    FEDSQL_TPCHGEN="$VENV/bin/tpchgen-cli" FEDSQL_FUZZ_QUERIES="$N" FEDSQL_FUZZ_SEED="$SEED" \
    FEDSQL_FUZZ_SCALE="$SCALE" FEDSQL_FUZZ_TARGET="$target" \
    cargo test --locked -p fedsql-tests --test fuzz -- --nocapture \
    > "$WORK/fuzz-$target.log" 2>&1 || status=1
  grep -E "^fuzz |^query [0-9]+ |^  minimal|^  saved" "$WORK/fuzz-$target.log" ||
    tail -40 "$WORK/fuzz-$target.log"
done
exit $status
