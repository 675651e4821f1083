//! A small Git LFS server (batch API, basic transfers) on loopback, for
//! tests that need the code host's own LFS server (e.g. `git s3 lfs
//! migrate`). Objects live as files named by oid in a directory; every
//! response closes its connection. No locking API (answers 404) and no auth.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A running server; it stops serving when dropped.
pub struct LfsServer {
    port: u16,
    dir: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    downloads: Arc<AtomicUsize>,
}

impl LfsServer {
    /// Serves the objects in `dir` (created if absent).
    pub fn start(dir: &Path) -> LfsServer {
        std::fs::create_dir_all(dir).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let downloads = Arc::new(AtomicUsize::new(0));
        let (d, s, n) = (dir.to_path_buf(), stop.clone(), downloads.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (d, n) = (d.clone(), n.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &d, port, &n);
                });
            }
        });
        LfsServer { port, dir: dir.to_path_buf(), stop, downloads }
    }

    /// The LFS URL of repository `name` (any name: one store for all).
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}/info/lfs", self.port)
    }

    /// Puts an object straight into the store.
    pub fn put(&self, oid: &str, data: &[u8]) {
        std::fs::write(self.dir.join(oid), data).unwrap();
    }

    /// The oids the server holds.
    pub fn oids(&self) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&self.dir).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect();
        v.sort();
        v
    }

    /// Object downloads (GETs) served so far.
    pub fn downloads(&self) -> usize {
        self.downloads.load(Ordering::SeqCst)
    }
}

impl Drop for LfsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn valid_oid(oid: &str) -> bool {
    oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_hexdigit())
}

fn respond(conn: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    write!(conn, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    conn.write_all(body)?;
    conn.flush()
}

fn serve(mut conn: TcpStream, dir: &Path, port: u16, downloads: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    const JSON: &str = "application/vnd.git-lfs+json";
    if method == "POST" && path.ends_with("/objects/batch") {
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let upload = req["operation"] == "upload";
        let objects: Vec<serde_json::Value> = req["objects"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|o| {
                let oid = o["oid"].as_str().unwrap_or("").to_string();
                let size = o["size"].as_u64().unwrap_or(0);
                let href = format!("http://127.0.0.1:{port}/objects/{oid}");
                let have = valid_oid(&oid) && dir.join(&oid).is_file();
                match (upload, have) {
                    (true, true) => serde_json::json!({"oid": oid, "size": size}),
                    (true, false) => serde_json::json!({"oid": oid, "size": size, "actions": {"upload": {"href": href}}}),
                    (false, true) => serde_json::json!({"oid": oid, "size": size, "actions": {"download": {"href": href}}}),
                    (false, false) => serde_json::json!({"oid": oid, "size": size, "error": {"code": 404, "message": "object not found"}}),
                }
            })
            .collect();
        let resp = serde_json::json!({"transfer": "basic", "objects": objects});
        return respond(&mut conn, "200 OK", JSON, resp.to_string().as_bytes());
    }
    if let Some(oid) = path.strip_prefix("/objects/").filter(|o| valid_oid(o)) {
        let file = dir.join(oid);
        match method.as_str() {
            "GET" => match std::fs::read(&file) {
                Ok(data) => {
                    downloads.fetch_add(1, Ordering::SeqCst);
                    return respond(&mut conn, "200 OK", "application/octet-stream", &data);
                }
                Err(_) => return respond(&mut conn, "404 Not Found", JSON, b"{\"message\":\"not found\"}"),
            },
            "PUT" => {
                let tmp = dir.join(format!(".{oid}.tmp"));
                std::fs::write(&tmp, &body)?;
                std::fs::rename(&tmp, &file)?;
                return respond(&mut conn, "200 OK", JSON, b"{}");
            }
            _ => {}
        }
    }
    respond(&mut conn, "404 Not Found", JSON, b"{\"message\":\"not found\"}")
}
