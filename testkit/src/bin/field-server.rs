//! The field server as a process, for the benchmark (`bench/run.sh --rtt
//! MS --tls`): S3 over a realistic network in front of a local S3 server.
//!
//! Prints one line, `<endpoint url>\t<CA bundle path or ->`, then serves
//! until its standard input closes. Lines on its standard input: `counts`
//! answers one line, `<requests> <bytes down> <bytes up> <critical path>`
//! (S3 requests and body bytes since the start or the last `reset`);
//! `reset` sets the counters to zero and answers `ok`; others are ignored.
//! A test fixture: not installed.

use std::io::{BufRead, Write};
use std::time::Duration;

use testkit::field::{Fault, FaultAction, RequestKind};

fn usage() -> ! {
    eprintln!(
        "usage: field-server --upstream http://HOST:PORT [--rtt-ms N] [--bandwidth BYTES_PER_SECOND] [--tls]\n\
         \x20                   [--faults SHARE [--seed N]] [--bucket-region BUCKET=REGION]..."
    );
    std::process::exit(2)
}

/// `share` of all requests meet a fault: S3's 503 SlowDown, 500
/// InternalError, a connection reset halfway through the response, and on
/// conditional writes 409 ConditionalRequestConflict, in equal parts.
fn mixed_faults(share: f64) -> Vec<Fault> {
    use RequestKind::*;
    let all = [List, Get, RangedGet, Head, HeadBucket, Put, ConditionalPut, Copy, CreateMultipart, Part, Complete, Abort, Delete, OtherBucket, Other];
    let part = share / 3.0;
    vec![
        Fault::new(FaultAction::Conflict, &[ConditionalPut, Complete], part),
        Fault::new(FaultAction::SlowDown, &all, part),
        Fault::new(FaultAction::InternalError, &all, part),
        Fault::new(FaultAction::ResetMidBody, &all, part),
    ]
}

fn main() {
    let mut upstream = None;
    let mut rtt_ms = 0u64;
    let mut bandwidth = None;
    let mut tls = false;
    let mut fault_share = 0.0f64;
    let mut seed = 1u64;
    let mut regions = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--upstream" => upstream = Some(args.next().unwrap_or_else(|| usage())),
            "--rtt-ms" => rtt_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--bandwidth" => bandwidth = Some(args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage())),
            "--tls" => tls = true,
            "--faults" => fault_share = args.next().and_then(|v| v.parse().ok()).filter(|s| (0.0..=1.0).contains(s)).unwrap_or_else(|| usage()),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--bucket-region" => {
                let v = args.next().unwrap_or_else(|| usage());
                let Some((bucket, region)) = v.split_once('=') else { usage() };
                regions.push((bucket.to_string(), region.to_string()));
            }
            _ => usage(),
        }
    }
    let Some(upstream) = upstream else { usage() };
    let server = testkit::FieldServer::start_at(&upstream, tls);
    let half = Duration::from_micros(rtt_ms * 500);
    server.set_latency(half, half);
    server.set_bandwidth(bandwidth);
    for (bucket, region) in &regions {
        server.set_bucket_region(bucket, region);
    }
    if fault_share > 0.0 {
        server.set_faults(seed, mixed_faults(fault_share));
    }
    let ca = server.ca_bundle().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}\t{}", server.url, ca).and_then(|_| out.flush()).is_err() {
        std::process::exit(1);
    }
    drop(out);
    // Serve until the benchmark closes our stdin (or exits).
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim() {
            "counts" => {
                let c = server.counts();
                format!("{} {} {} {}", c.total(), c.bytes_down, c.bytes_up, c.critical_path)
            }
            "reset" => {
                server.reset_counts();
                "ok".to_string()
            }
            _ => continue,
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    let c = server.counts();
    eprintln!("field-server: {c:?}");
}
