//! A TCP proxy in front of the test S3 server that counts the bytes each
//! way: what an operation read from S3 (responses) and sent to it
//! (requests), as a server's transfer counters would.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct CountingProxy {
    /// `http://127.0.0.1:<port>`: use as `AWS_ENDPOINT_URL`.
    pub url: String,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
}

impl CountingProxy {
    /// Forwards every connection to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (d, u) = (down.clone(), up.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    copy(c2, s2, u.clone());
                    copy(server, client, d.clone());
                }
            }
        });
        CountingProxy { url, down, up }
    }

    /// Bytes the server sent (responses: headers and bodies) so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    /// Bytes the clients sent (requests) so far.
    pub fn bytes_up(&self) -> u64 {
        self.up.load(Ordering::SeqCst)
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, counter: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            counter.fetch_add(n as u64, Ordering::SeqCst);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
