"""Kafka consumption: the Python confluent-kafka consumer (json.loads on
every message) and fedsql's `SELECT count(*), sum(amount)` over its Postgres
wire, timed on the same topic. Called by bench/kafka.sh."""

import argparse
import json
import time

import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition


def python_consumer(brokers, topic, partitions):
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "bench-python",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    start = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    remaining, count, total = partitions, 0, 0.0
    while remaining:
        for message in consumer.consume(num_messages=10000, timeout=10):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    remaining -= 1
                    continue
                raise RuntimeError(message.error())
            total += json.loads(message.value())["amount"]
            count += 1
    consumer.close()
    return time.perf_counter() - start, count, total


def fedsql(port, table):
    with psycopg.connect(host="127.0.0.1", port=port, user="fedsql", dbname="fedsql") as conn:
        start = time.perf_counter()
        count, total = conn.execute(f"SELECT count(*), sum(amount) FROM {table}").fetchone()
        return time.perf_counter() - start, count, total


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--fedsql-pg", type=int, required=True)
    p.add_argument("--baseline", required=True, help="'messages bytes seconds' from kafka-count")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()

    runs = [r.split() for r in a.baseline.split(";")]
    messages, nbytes = int(runs[0][0]), int(runs[0][1])
    assert all(int(r[0]) == messages for r in runs), runs
    baseline = min(float(r[2]) for r in runs)
    ours = []
    for _ in range(a.runs):
        seconds, count, total = fedsql(a.fedsql_pg, f"k.public.{a.topic}")
        assert count == messages, f"fedsql counted {count} of {messages}"
        ours.append(seconds)
    py_seconds, py_count, py_total = python_consumer(a.brokers, a.topic, a.partitions)
    assert py_count == messages, f"python read {py_count}"
    assert abs(py_total - float(total)) < 1e-6 * abs(py_total) + 1e-3, (py_total, total)

    print(f"{messages:,} messages, {nbytes / messages:.0f} bytes each on average ({nbytes / 1e6:.0f} MB)\n")
    print(f"{'consumer':<44} {'seconds':>8} {'msgs/s':>12} {'vs decode-free':>15}")
    rows = [
        ("rdkafka, count bytes only (decode-free limit)", baseline),
        ("fedsql SELECT count(*), sum(amount)", min(ours)),
        ("Python confluent-kafka + json.loads", py_seconds),
    ]
    for name, seconds in rows:
        print(f"{name:<44} {seconds:>8.2f} {messages / seconds:>12,.0f} {baseline / seconds:>14.2f}x")
    print(f"\nfedsql vs Python: {py_seconds / min(ours):.1f}x faster (goal >= 5x); "
          f"fedsql vs decode-free: {baseline / min(ours):.2f}x (goal >= 0.5x)")


if __name__ == "__main__":
    main()
