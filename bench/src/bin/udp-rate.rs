//! `udp-rate`: datagram rate of each UDP path variant over loopback, with ratios to the
//! tokio + quinn-udp baseline. Same rig as the `udp_path` criterion bench, fixed run sizes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_bench::udp_rate::{self, Rig, Summary, Variant};
use clap::Parser;
use std::process::ExitCode;

/// Measures how many 1 200-byte datagrams per second one receiver thread drains over
/// loopback, for each UDP path variant, and prints a markdown table (or JSON).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Datagrams per run.
    #[arg(long, default_value_t = 1_000_000)]
    datagrams: u64,
    /// Measured runs per variant; the table shows the median run.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Datagrams sent once per variant before measuring (not reported).
    #[arg(long, default_value_t = 100_000)]
    warmup: u64,
    /// Flow-control window in datagrams (sent but not yet read); 0 lets the sender blast and
    /// counts the receive-queue overflow as loss.
    #[arg(long, default_value_t = udp_rate::DEFAULT_WINDOW)]
    window: u64,
    /// Variants to run, comma separated: A, B, B-nogso, C, Q.
    #[arg(long, value_delimiter = ',', default_value = "A,B,B-nogso,C,Q")]
    variants: Vec<String>,
    /// Print JSON instead of the markdown table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut variants = Vec::new();
    for name in &args.variants {
        match Variant::parse(name) {
            Some(v) => variants.push(v),
            None => {
                eprintln!("unknown variant {name:?}; use A, B, B-nogso, C or Q");
                return ExitCode::from(2);
            }
        }
    }
    let mut rows = Vec::new();
    for v in variants {
        match measure(v, &args) {
            Ok(s) => rows.push(s),
            Err(e) => {
                eprintln!("variant {}: {e}", v.name());
                return ExitCode::FAILURE;
            }
        }
    }
    if args.json {
        println!("{:#}", udp_rate::json(&rows));
    } else {
        println!(
            "{} datagrams of {} bytes per run, window {}, median of {} runs, loopback\n",
            args.datagrams,
            udp_rate::DATAGRAM,
            args.window,
            args.runs
        );
        print!("{}", udp_rate::markdown_table(&rows));
    }
    ExitCode::SUCCESS
}

fn measure(v: Variant, args: &Args) -> std::io::Result<Summary> {
    let mut rig = Rig::start(v, args.window)?;
    if args.warmup > 0 {
        rig.run(args.warmup)?;
    }
    let mut summary = Summary::new(v);
    for _ in 0..args.runs {
        summary.add(&rig.run(args.datagrams)?);
    }
    Ok(summary)
}
