//! Weight-exchange throughput: a 10M-parameter model's weights fetched
//! (`DoGet`) and sent back (`DoPut`) over the loopback Flight exchange,
//! against copying the same bytes in memory, in one run.
//!
//! `cargo bench -p fedsql-udfs --bench exchange` (goal: ≥ 1 GB/s each way).

use std::time::Instant;

use fedsql_udfs::exchange::{ExchangeClient, ExchangeServer};

// The fedsql binary's allocator, so the numbers are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARAMETERS: usize = 10_000_000;
const RUNS: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let weights: Vec<f32> = (0..PARAMETERS).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let bytes = (PARAMETERS * 4) as f64;
    let server = ExchangeServer::start().await?;
    server.publish(1, weights.clone());
    let mut client = ExchangeClient::connect(&server.admit("c")).await?;

    let (mut fetch, mut send, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let (got, _) = client.fetch(1).await?;
        fetch.push(t.elapsed().as_secs_f64());
        assert_eq!(got.len(), PARAMETERS);

        let t = Instant::now();
        client.send(1, "c", &got, 1, 0.0).await?;
        send.push(t.elapsed().as_secs_f64());
        assert!(server.take_update(1, "c").is_some());

        let t = Instant::now();
        let copied = std::hint::black_box(weights.clone());
        copy.push(t.elapsed().as_secs_f64());
        drop(copied);
    }
    let gbps = |s: f64| bytes / s / 1e9;
    let baseline = gbps(median(copy));
    println!(
        "\n{PARAMETERS} parameters ({:.0} MB), median of {RUNS} runs\n",
        bytes / 1e6
    );
    println!("{:32} {:>8} {:>10}", "path", "GB/s", "vs memcpy");
    for (name, t) in [
        ("DoGet global weights (Flight)", median(fetch)),
        ("DoPut client update (Flight)", median(send)),
    ] {
        println!("{name:32} {:8.2} {:9.2}x", gbps(t), gbps(t) / baseline);
    }
    println!(
        "{:32} {:8.2} {:9.2}x",
        "in-memory copy (baseline)", baseline, 1.0
    );
    println!("\ngoal: >= 1 GB/s each way over loopback");
    server.stop().await;
    Ok(())
}
