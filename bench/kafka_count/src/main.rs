//! `kafka-count produce BROKERS TOPIC N` writes N JSON payments (~200 bytes)
//! round-robin over the topic's partitions;
//! `kafka-count count BROKERS TOPIC` reads every partition from the start to
//! the high watermark (explicit assignment, like fedsql) and prints
//! `messages bytes seconds`, touching nothing but the payload length.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("produce") if args.len() == 5 => produce(&args[2], &args[3], args[4].parse().expect("N")),
        Some("count") if args.len() == 4 => count(&args[2], &args[3]),
        _ => {
            eprintln!("usage: kafka-count produce BROKERS TOPIC N | count BROKERS TOPIC");
            std::process::exit(2);
        }
    }
}

fn produce(brokers: &str, topic: &str, n: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let merchants = ["grocery", "travel", "electronics", "restaurants", "fuel"];
    for i in 0..n {
        let payload = format!(
            r#"{{"id": {i}, "customer_id": {}, "amount": {:.2}, "merchant": "{}", "channel": "card_present", "country": "FR", "ts": "2024-01-01T00:00:{:02}Z", "note": "benchmark payment record"}}"#,
            i % 10_000,
            (i % 1000) as f64 * 0.37 + 1.0,
            merchants[(i % 5) as usize],
            i % 60
        );
        let key = format!("c{}", i % 10_000);
        let mut record = BaseRecord::to(topic).payload(&payload).key(&key);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

fn count(brokers: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kafka-count")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let start = Instant::now();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(5))
            .expect("watermarks");
        if high > low {
            assignment.add_partition_offset(topic, *p, Offset::Offset(low)).expect("assign");
            remaining += 1;
        }
    }
    consumer.assign(&assignment).expect("assign");
    let (mut messages, mut bytes) = (0u64, 0u64);
    while remaining > 0 {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                messages += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => remaining -= 1,
            Some(Err(e)) => panic!("consume: {e}"),
            None => panic!("no message for 10 s"),
        }
    }
    println!("{messages} {bytes} {:.3}", start.elapsed().as_secs_f64());
}
