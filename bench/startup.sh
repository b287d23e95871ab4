#!/usr/bin/env bash
# Start-up with many persisted views: the time of `fedsql query "SELECT 1"`
# on a data dir holding N views, against the same data dir's start-up
# before the views were made (the baseline, same run).
#
#   bench/startup.sh [N]     (default 300)
#
# Builds fedsql in release (FEDSQL_BIN to measure another binary).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-300}"
. bench/lib.sh
build_release
WORK="$(mktemp -d /tmp/fedsql-startup.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
seconds() {
  python3 - "$FEDSQL" "$WORK/data" <<'PY'
import subprocess, sys, time
start = time.perf_counter()
subprocess.run([sys.argv[1], "query", "--data-dir", sys.argv[2], "SELECT 1"], check=True,
               capture_output=True)
print(f"{time.perf_counter() - start:.3f}")
PY
}
"$FEDSQL" query --data-dir "$WORK/data" "SELECT 1" >/dev/null 2>&1   # generates the demo once
base=$(seconds)
views=$(python3 -c "print(' '.join(f'CREATE VIEW demo.bank.v{i} AS SELECT customer_id, region FROM demo.bank.customers WHERE age > {i % 50};' for i in range($N)))")
"$FEDSQL" query --data-dir "$WORK/data" "$views" >/dev/null 2>&1
with=$(seconds)
printf '%-32s %8s\n' "start-up" "seconds"
printf '%-32s %8.2f\n' "no views (baseline)" "$base"
printf '%-32s %8.2f\n' "$N persisted views" "$with"
python3 -c "print(f'replay: {($with - $base) * 1000 / $N:.1f} ms per view')"
