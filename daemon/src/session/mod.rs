//! A session's stdio as the daemon sees it: lines read from the shim's
//! forwarded stdin, bytes written back as the shim's stdout/stderr.

pub(crate) mod background;
pub(crate) mod progress;
pub(crate) mod state;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use git_s3_proto::pb::{session_output, SessionOutput};
use tokio::sync::mpsc;

pub(crate) type OutputSender = mpsc::UnboundedSender<Result<SessionOutput, tonic::Status>>;

/// Writes to the shim's stdout/stderr. Cheap to clone; sends never block.
#[derive(Clone)]
pub(crate) struct Out {
    tx: OutputSender,
    /// 0 quiet, 1 normal, 2+ verbose (tracing events go to stderr too).
    verbosity: Arc<AtomicU8>,
}

impl Out {
    pub(crate) fn new(tx: OutputSender, verbosity: u8) -> Out {
        Out { tx, verbosity: Arc::new(AtomicU8::new(verbosity)) }
    }

    pub(crate) fn stdout(&self, s: impl Into<Vec<u8>>) {
        let _ = self.tx.send(Ok(SessionOutput { msg: Some(session_output::Msg::Stdout(s.into())) }));
    }

    pub(crate) fn stderr(&self, s: impl Into<Vec<u8>>) {
        let _ = self.tx.send(Ok(SessionOutput { msg: Some(session_output::Msg::Stderr(s.into())) }));
    }

    pub(crate) fn exit(&self, code: i32) {
        let _ = self.tx.send(Ok(SessionOutput { msg: Some(session_output::Msg::ExitCode(code)) }));
    }

    pub(crate) fn set_verbosity(&self, v: u8) {
        self.verbosity.store(v, Ordering::Relaxed)
    }

    pub(crate) fn verbosity_handle(&self) -> Arc<AtomicU8> {
        self.verbosity.clone()
    }

    pub(crate) fn sender(&self) -> OutputSender {
        self.tx.clone()
    }
}

/// The longest line a session reads (git's commands, git-lfs's JSON
/// requests and answers to prompts are far shorter).
pub const MAX_LINE: usize = 1 << 20;

/// What `read_line` returns in place of a line longer than `MAX_LINE` (whose
/// bytes are dropped up to its newline): no reader accepts it as a command,
/// a JSON request or an answer, so each stops with its own clear error.
pub const TOO_LONG_LINE: &str = "\u{0}(a line longer than 1 MiB)";

/// Line reader over the chunks of stdin the shim forwards. Its buffer is
/// bounded by `MAX_LINE` plus one chunk.
pub struct Input {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    eof: bool,
    /// Dropping the rest of a too long line.
    skipping: bool,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
}

impl Input {
    pub fn new(rx: mpsc::Receiver<Vec<u8>>) -> Input {
        Input { rx, buf: Vec::new(), eof: false, skipping: false, scanned: 0 }
    }

    /// The next line without its `\n` (and `\r`), or None at end of input.
    /// Each byte is searched for a newline once, however the chunks are cut.
    pub async fn read_line(&mut self) -> Option<String> {
        loop {
            let found = self.buf[self.scanned..].iter().position(|b| *b == b'\n').map(|p| self.scanned + p);
            self.scanned = self.buf.len();
            if self.skipping {
                match found {
                    Some(pos) => {
                        self.buf.drain(..=pos);
                        self.scanned = 0;
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        self.buf.clear();
                        self.scanned = 0;
                    }
                }
            } else if found.map_or(self.buf.len(), |p| p) > MAX_LINE {
                self.skipping = true;
                self.scanned = 0;
                return Some(TOO_LONG_LINE.to_string());
            } else if let Some(pos) = found {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                self.scanned = 0;
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            if self.eof {
                if self.skipping || self.buf.is_empty() {
                    return None;
                }
                let line = std::mem::take(&mut self.buf);
                self.scanned = 0;
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

    #[tokio::test]
    async fn a_too_long_line_is_replaced_and_skipped() {
        let (tx, rx) = mpsc::channel(8);
        let mut input = Input::new(rx);
        tokio::spawn(async move {
            tx.send(b"list\n".to_vec()).await.unwrap();
            for _ in 0..40 {
                tx.send(vec![b'x'; 64 << 10]).await.unwrap();
            }
            tx.send(b"x\ncapabilities\n".to_vec()).await.unwrap();
        });
        assert_eq!(input.read_line().await.as_deref(), Some("list"));
        assert_eq!(input.read_line().await.as_deref(), Some(TOO_LONG_LINE));
        assert!(input.buf.len() <= MAX_LINE + (64 << 10));
        assert_eq!(input.read_line().await.as_deref(), Some("capabilities"));
        assert_eq!(input.read_line().await, None);
    }
}
