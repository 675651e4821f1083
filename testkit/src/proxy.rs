//! A TCP proxy in front of the test S3 server that cuts responses short:
//! for transfers that break off mid-stream, which a real server never does
//! on demand.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct CuttingProxy {
    /// `http://127.0.0.1:<port>`: use as `AWS_ENDPOINT_URL`.
    pub url: String,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    /// Forwards every connection to `upstream` (`http://host:port`). Once a
    /// connection has sent a `GET` whose request line contains `path_part`,
    /// its response is cut after `after` bytes (both sockets closed), for
    /// the first `times` such requests; later ones pass untouched.
    pub fn start(upstream: &str, path_part: &str, after: usize, times: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let budget = Arc::new(AtomicUsize::new(times));
        let cuts = Arc::new(AtomicUsize::new(0));
        let marker = b"GET /".to_vec();
        let path_part = path_part.as_bytes().to_vec();
        let (b, c) = (budget.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let armed = Arc::new(AtomicBool::new(false));
                spawn_copy_requests(&client, &server, marker.clone(), path_part.clone(), armed.clone(), b.clone());
                spawn_copy_responses(client, server, armed, after, c.clone());
            }
        });
        CuttingProxy { url, cuts }
    }

    /// Responses cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

fn spawn_copy_requests(client: &TcpStream, server: &TcpStream, marker: Vec<u8>, path_part: Vec<u8>, armed: Arc<AtomicBool>, budget: Arc<AtomicUsize>) {
    let (Ok(mut from), Ok(mut to)) = (client.try_clone(), server.try_clone()) else { return };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let is_target = contains(chunk, &marker) && contains(chunk, &path_part);
            if is_target && budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1)).is_ok() {
                armed.store(true, Ordering::SeqCst);
            }
            if to.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn spawn_copy_responses(mut client: TcpStream, mut server: TcpStream, armed: Arc<AtomicBool>, after: usize, cuts: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        let mut sent_since_armed = 0usize;
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if armed.load(Ordering::SeqCst) {
                let room = after.saturating_sub(sent_since_armed);
                if n >= room {
                    let _ = client.write_all(&buf[..room]);
                    let _ = client.flush();
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                sent_since_armed += n;
            }
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client.shutdown(Shutdown::Write);
    });
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
