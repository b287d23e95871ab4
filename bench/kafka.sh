#!/usr/bin/env bash
# Kafka consumption: 1M JSON messages (~200 bytes) in a 3-partition topic on
# tansu, consumed by a plain rdkafka program that only counts bytes (the
# decode-free limit, bench/kafka_count), by fedsql (`SELECT count(*),
# sum(amount)` over a Kafka source, release build) and by Python
# confluent-kafka with json.loads; one run, one table.
#
#   bench/kafka.sh [MESSAGES]     (default 1000000)
#
# Uses the tansu scripts/test builds (~/.cache/fedsql-tansu; built here if
# missing), installs confluent-kafka and psycopg from PyPI into the bench
# venv, runs tansu and fedsql on loopback ports 55470-55472, stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
. bench/lib.sh
bench_venv 'import confluent_kafka, psycopg' "confluent-kafka==2.16.1" "psycopg[binary]==3.3.9"
"$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null \
  || "$VENV/bin/pip" install -q --disable-pip-version-check "confluent-kafka==2.16.1"
build_release
cargo build --release --locked --manifest-path bench/kafka_count/Cargo.toml \
  --target-dir "$CARGO_TARGET_DIR/kafka-count"
COUNT="$CARGO_TARGET_DIR/kafka-count/release/kafka-count"
# The broker bounds every consumer here: a release build of tansu (in
# ~/.cache/fedsql-tansu-release, ~30 min to build once) is used when
# present, else the debug build the tests use.
TANSU_ROOT="${FEDSQL_TANSU_ROOT:-$HOME/.cache/fedsql-tansu}"
[ -x "$HOME/.cache/fedsql-tansu-release/bin/tansu" ] && TANSU_ROOT="$HOME/.cache/fedsql-tansu-release"
if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
  cargo install tansu --version 0.6.0 --locked --no-default-features --features libsql --debug \
    --root "$TANSU_ROOT" --target-dir "$HOME/.cache/fedsql-tansu-build"
fi

WORK="$(mktemp -d /tmp/fedsql-kafka-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
BROKERS=127.0.0.1:55470
(cd "$WORK" && exec "$TANSU_ROOT/bin/tansu" broker --listener-url "tcp://$BROKERS" \
  --advertised-listener-url "tcp://$BROKERS" --storage-engine sqlite://tansu.db > "$WORK/tansu.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 100); do grep -q "ready in" "$WORK/tansu.log" 2>/dev/null && break; sleep 0.1; done
"$TANSU_ROOT/bin/tansu" topic create payments --broker "tcp://$BROKERS" --partitions 3 >/dev/null
echo "producing $N messages"
"$COUNT" produce "$BROKERS" payments "$N"

start_fedsql "$WORK" 55471 55472 --no-demo
psql -q -h 127.0.0.1 -p 55471 -U fedsql -d fedsql \
  -c "CREATE SOURCE k TYPE kafka OPTIONS (brokers '$BROKERS', sample 100)"

BASELINE=""
for _ in 1 2 3; do
  RUN=$("$COUNT" count "$BROKERS" payments)
  BASELINE="${BASELINE:+$BASELINE;}$RUN"
done
echo "decode-free runs (messages bytes seconds): $BASELINE"
echo "broker: $TANSU_ROOT/bin/tansu"
"$VENV/bin/python" bench/kafka_bench.py --brokers "$BROKERS" --topic payments \
  --fedsql-pg 55471 --baseline "$BASELINE"
