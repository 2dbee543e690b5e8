//! Datagram rate of each UDP path variant (see `alknet_bench::udp_rate`), in one criterion
//! group so they are compared in one run. One iteration is one 1 200-byte datagram; criterion's
//! throughput is datagrams *received* per second (a run's time is scaled by what arrived).
//! The sender is paced by `udp_rate::DEFAULT_WINDOW`, so runs lose nothing and a slow side
//! shows as a low rate. After the group, a table with ratios to the tokio + quinn-udp baseline (Q) is printed.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use alknet_bench::udp_rate::{self, Rig, Summary, Variant};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use std::time::Duration;

/// Runs shorter than this are warm-up noise (thread hand-off dominates) and stay out of the
/// printed table; criterion still sees them.
const TABLE_MIN_RUN: u64 = 10_000;

fn udp_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp_path");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut rows = Vec::new();
    for v in Variant::ALL {
        let mut rig = match Rig::start(v, udp_rate::DEFAULT_WINDOW) {
            Ok(rig) => rig,
            Err(e) => {
                eprintln!("udp_path/{}: skipped, {e}", v.name());
                continue;
            }
        };
        let mut summary = Summary::new(v);
        group.bench_function(v.name(), |b| {
            b.iter_custom(|iters| {
                let run = rig.run(iters).expect("udp_path run");
                if iters >= TABLE_MIN_RUN {
                    summary.add(&run);
                }
                run.time_for(iters)
            })
        });
        rows.push(summary);
    }
    group.finish();
    if rows.iter().any(|s| s.total.runs > 0) {
        println!("\nudp_path: datagrams received per second (median run), ratio to Q\n");
        print!("{}", udp_rate::markdown_table(&rows));
    }
}

criterion_group!(benches, udp_path);
criterion_main!(benches);
