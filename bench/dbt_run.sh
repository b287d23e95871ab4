#!/usr/bin/env bash
# fedsql run vs real dbt-core on the same generated project (50 models:
# chains and fans of views and tables over the demo bank), one run each
# (see bench/dbt_bench.py).
#
#   bench/dbt_run.sh [MODELS]     (default 50)
#
# Builds fedsql in release (FEDSQL_BIN to measure another binary), installs
# dbt-core 1.11.16 + dbt-postgres 1.11.0 into $FEDSQL_DBT_VENV (default
# ~/.cache/fedsql-dbt, the venv scripts/test uses), starts `fedsql serve`
# on 127.0.0.1:55490 for dbt and stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${1:-50}"
. bench/lib.sh
DBT_VENV="${FEDSQL_DBT_VENV:-$HOME/.cache/fedsql-dbt}"
if ! "$DBT_VENV/bin/dbt" --version 2>/dev/null | grep -q "installed: 1.11.16"; then
  python3 -m venv "$DBT_VENV"
  "$DBT_VENV/bin/pip" install -q --disable-pip-version-check "dbt-core==1.11.16" "dbt-postgres==1.11.0"
fi
build_release

WORK="$(mktemp -d /tmp/fedsql-dbt-bench.XXXXXX)"
trap bench_cleanup EXIT
start_fedsql "$WORK" 55490 55491
python3 bench/dbt_bench.py --fedsql "$FEDSQL" --dbt "$DBT_VENV/bin/dbt" --work "$WORK" \
  --pg-port 55490 --models "$MODELS"
