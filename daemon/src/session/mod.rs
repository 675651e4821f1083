//! A session's stdio as the daemon sees it: lines read from the shim's
//! forwarded stdin, bytes written back as the shim's stdout/stderr.

pub mod background;
pub mod progress;
pub mod state;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use git_s3_proto::pb::{session_output, SessionOutput};
use tokio::sync::mpsc;

pub type OutputSender = mpsc::UnboundedSender<Result<SessionOutput, tonic::Status>>;

/// Writes to the shim's stdout/stderr. Cheap to clone; sends never block.
#[derive(Clone)]
pub struct Out {
    tx: OutputSender,
    /// 0 quiet, 1 normal, 2+ verbose (tracing events go to stderr too).
    verbosity: Arc<AtomicU8>,
}

impl Out {
    pub fn new(tx: OutputSender, verbosity: u8) -> Out {
        Out { tx, verbosity: Arc::new(AtomicU8::new(verbosity)) }
    }

    pub fn stdout(&self, s: impl Into<Vec<u8>>) {
        let _ = self.tx.send(Ok(SessionOutput { msg: Some(session_output::Msg::Stdout(s.into())) }));
    }

    pub fn stderr(&self, s: impl Into<Vec<u8>>) {
        let _ = self.tx.send(Ok(SessionOutput { msg: Some(session_output::Msg::Stderr(s.into())) }));
    }

    /// A line on stderr unless quiet.
    pub fn info(&self, s: impl AsRef<str>) {
        if self.verbosity() >= 1 {
            self.stderr(format!("{}\n", s.as_ref()));
        }
    }

    pub fn exit(&self, code: i32) {
        let _ = self.tx.send(Ok(SessionOutput { msg: Some(session_output::Msg::ExitCode(code)) }));
    }

    pub fn verbosity(&self) -> u8 {
        self.verbosity.load(Ordering::Relaxed)
    }

    pub fn set_verbosity(&self, v: u8) {
        self.verbosity.store(v, Ordering::Relaxed)
    }

    pub fn verbosity_handle(&self) -> Arc<AtomicU8> {
        self.verbosity.clone()
    }

    pub fn sender(&self) -> OutputSender {
        self.tx.clone()
    }
}

/// Line reader over the chunks of stdin the shim forwards.
pub struct Input {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    eof: bool,
}

impl Input {
    pub fn new(rx: mpsc::Receiver<Vec<u8>>) -> Input {
        Input { rx, buf: Vec::new(), eof: false }
    }

    /// The next line without its `\n` (and `\r`), or None at end of input.
    pub async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            if self.eof {
                if self.buf.is_empty() {
                    return None;
                }
                let line = std::mem::take(&mut self.buf);
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            match self.rx.recv().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.eof = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_across_chunks() {
        let (tx, rx) = mpsc::channel(8);
        let mut input = Input::new(rx);
        tx.send(b"capab".to_vec()).await.unwrap();
        tx.send(b"ilities\nlist\r\n\npartial".to_vec()).await.unwrap();
        drop(tx);
        assert_eq!(input.read_line().await.as_deref(), Some("capabilities"));
        assert_eq!(input.read_line().await.as_deref(), Some("list"));
        assert_eq!(input.read_line().await.as_deref(), Some(""));
        assert_eq!(input.read_line().await.as_deref(), Some("partial"));
        assert_eq!(input.read_line().await, None);
    }
}
