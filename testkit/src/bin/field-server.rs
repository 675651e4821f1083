//! The field server as a process, for the benchmark (`bench/run.sh --rtt
//! MS --tls`): S3 over a realistic network in front of a local S3 server.
//!
//! Prints one line, `<endpoint url>\t<CA bundle path or ->`, then serves
//! until its standard input closes. A test fixture: not installed.

use std::io::{BufRead, Write};
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: field-server --upstream http://HOST:PORT [--rtt-ms N] [--bandwidth BYTES_PER_SECOND] [--tls]");
    std::process::exit(2)
}

fn main() {
    let mut upstream = None;
    let mut rtt_ms = 0u64;
    let mut bandwidth = None;
    let mut tls = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--upstream" => upstream = Some(args.next().unwrap_or_else(|| usage())),
            "--rtt-ms" => rtt_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--bandwidth" => bandwidth = Some(args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage())),
            "--tls" => tls = true,
            _ => usage(),
        }
    }
    let Some(upstream) = upstream else { usage() };
    let server = testkit::FieldServer::start_at(&upstream, tls);
    let half = Duration::from_micros(rtt_ms * 500);
    server.set_latency(half, half);
    server.set_bandwidth(bandwidth);
    let ca = server.ca_bundle().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}\t{}", server.url, ca).and_then(|_| out.flush()).is_err() {
        std::process::exit(1);
    }
    drop(out);
    // Serve until the benchmark closes our stdin (or exits).
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    let c = server.counts();
    eprintln!("field-server: {c:?}");
}
