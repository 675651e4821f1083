//! age encryption of a remote's objects to its remote key: small objects
//! (the manifest) in memory, packs and `.idx` from their file on a
//! blocking thread, into memory for a single PUT or in pieces for the parts
//! of a multipart upload (age's STREAM: 64 KiB chunks; bounded memory);
//! the padding of small objects' plaintext to a bucket of sizes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{CryptError, RemoteKey};

/// `data` as an age file to `key` (unpadded: small objects use [`encrypt_padded`]).
#[cfg(test)]
pub(crate) fn encrypt_bytes(key: &RemoteKey, data: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::with_capacity(data.len() + 256);
    encrypt_stream(key, data, &mut out)?;
    Ok(out)
}

/// The smallest padded size (a bucket of sizes starts here).
const PAD_MIN: usize = 1024;
/// Up to here, sizes are padded to the next power of two; above, with
/// Padmé (at most about 12 % more, fewer distinct sizes as they grow).
const PAD_POW2_MAX: usize = 64 * 1024;
/// age's STREAM chunk: each carries a 16-byte tag.
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

/// The bucket of sizes an object of `len` bytes is padded to.
pub(crate) fn padded_len(len: usize) -> usize {
    if len <= PAD_MIN {
        return PAD_MIN;
    }
    if len <= PAD_POW2_MAX {
        return len.next_power_of_two();
    }
    // Padmé (Nikitin et al., 2019): keep the top log2(log2 len) + 1 bits.
    let e = usize::BITS - 1 - len.leading_zeros();
    let s = u32::BITS - e.leading_zeros();
    let mask = (1usize << (e - s)) - 1;
    (len + mask) & !mask
}

/// The bytes of an age payload of `n` plaintext bytes (one tag per chunk, at least one chunk).
fn payload_len(n: usize) -> usize {
    n + TAG * n.div_ceil(CHUNK).max(1)
}

/// The plaintext bytes whose payload fills `payload` bytes (at a chunk
/// boundary, up to 16 bytes fewer: no plaintext length fits exactly).
fn plaintext_for(payload: usize) -> usize {
    let chunks = payload.div_ceil(CHUNK + TAG).max(1);
    payload.saturating_sub(TAG * chunks)
}

/// A writer into a buffer that can be measured while age writes into it.
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `data` as an age file to `recipients`, padded with `filler` (bytes its
/// format ignores at the end: JSON whitespace, an identity file's empty
/// lines) so that the whole file's size is [`padded_len`] of what it would
/// be: the header's size (its recipient stanzas and age's random "grease"
/// stanza) is known once written, before the plaintext, and the padding
/// makes up for it. For small objects: the manifest, the keyring.
pub(crate) fn encrypt_padded(recipients: &[&dyn age::Recipient], data: &[u8], filler: u8) -> Result<Vec<u8>, CryptError> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().copied()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let out = Shared::default();
    let mut writer = encryptor.wrap_output(out.clone())?;
    let header = out.0.borrow().len();
    let total = padded_len(header + payload_len(data.len()));
    let pad = plaintext_for(total - header).saturating_sub(data.len());
    writer.write_all(data)?;
    writer.write_all(&vec![filler; pad])?;
    writer.finish()?;
    Ok(out.0.take())
}

/// The plaintext of the age file `data` (`what` names it in errors).
pub(crate) fn decrypt_bytes(key: &RemoteKey, data: &[u8], what: &str) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::new();
    decrypt_stream(key, data, &mut out, what)?;
    Ok(out)
}

fn encrypt_stream(key: &RemoteKey, mut input: impl Read, output: impl Write) -> Result<(), CryptError> {
    let recipient: &dyn age::Recipient = key.recipient();
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient)).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut writer = encryptor.wrap_output(output)?;
    std::io::copy(&mut input, &mut writer)?;
    writer.finish()?;
    Ok(())
}

fn decrypt_stream(key: &RemoteKey, input: impl Read, mut output: impl Write, what: &str) -> Result<(), CryptError> {
    let bad = |e: &dyn std::fmt::Display| CryptError::Decrypt { what: what.to_string(), detail: e.to_string() };
    let decryptor = age::Decryptor::new(input).map_err(|e| bad(&e))?;
    // Every generation of the remote key: an object written before a rotation reads too.
    let mut reader = decryptor.decrypt(key.identities().map(|i| i as &dyn age::Identity)).map_err(|e| bad(&e))?;
    // A chunk that fails authentication is an io::Error of kind InvalidData.
    std::io::copy(&mut reader, &mut output).map_err(|e| if e.kind() == std::io::ErrorKind::InvalidData { bad(&e) } else { CryptError::Io(e) })?;
    Ok(())
}

/// `f`'s answer, run on a blocking thread; a panic there (the task's join
/// error) is a [`CryptError::Io`].
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, CryptError> + Send + 'static) -> Result<T, CryptError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CryptError::Io(std::io::Error::other(e.to_string())))?
}

/// Encrypts the file `src` into a new file `dst` (on a blocking thread).
pub(crate) async fn encrypt_file(key: Arc<RemoteKey>, src: PathBuf, dst: PathBuf) -> Result<(), CryptError> {
    blocking(move || {
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let mut output = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&dst)?);
        encrypt_stream(&key, input, &mut output)?;
        output.flush()?;
        Ok(())
    })
    .await
}

/// The most bytes the age file of `n` plaintext bytes to one X25519
/// recipient can have: its payload, and a header of at most 4 KiB (one
/// recipient stanza and age's random "grease" stanza take a few hundred).
pub(crate) fn ciphertext_len_max(n: u64) -> u64 {
    payload_len(n as usize) as u64 + 4096
}

/// A writer that hands what it is given on in pieces of `part` bytes (the
/// last one shorter) through a bounded channel, on a blocking thread.
struct PartWriter {
    buf: Vec<u8>,
    part: usize,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    /// Run once, after the first piece went (a test hook's gate).
    after_first: Option<Box<dyn FnOnce() + Send>>,
}

impl PartWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part));
        // The receiver is gone when the upload failed: its error tells.
        self.tx.blocking_send(bytes::Bytes::from(piece)).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        if let Some(f) = self.after_first.take() {
            f();
        }
        Ok(())
    }
}

impl Write for PartWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(self.part - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == self.part {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts encrypting the file `src` to `key` on a blocking thread, its
/// ciphertext sent on `parts` in pieces of `part` bytes (the last one
/// shorter, none empty) as it is produced: memory is bounded by the
/// channel's capacity and the receiver's. The handle answers the
/// ciphertext's length, or why it stopped: a receiver must not take the
/// pieces for a whole object before it has answered Ok.
pub(crate) fn encrypt_file_to_parts(
    key: Arc<RemoteKey>,
    src: PathBuf,
    part: usize,
    parts: tokio::sync::mpsc::Sender<bytes::Bytes>,
    after_first: Option<Box<dyn FnOnce() + Send>>,
) -> tokio::task::JoinHandle<Result<u64, CryptError>> {
    tokio::task::spawn_blocking(move || {
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let mut out = PartWriter { buf: Vec::with_capacity(part), part: part.max(1), tx: parts, after_first };
        let mut total = 0u64;
        let mut counted = CountingWriter { inner: &mut out, n: &mut total };
        encrypt_stream(&key, input, &mut counted)?;
        if !out.buf.is_empty() {
            out.send()?;
        }
        Ok(total)
    })
}

/// The age file of the file `src` to `key`, in memory (for a single PUT:
/// callers keep it to [`ciphertext_len_max`] of a small enough file), and
/// when `md5`, its MD5 in base64 (a `Content-MD5`), hashed on a second
/// thread as the ciphertext is produced: the hash adds no pass after the
/// encryption (MD5 is the slower of the two).
pub(crate) async fn encrypt_file_to_memory(key: Arc<RemoteKey>, src: PathBuf, md5: bool) -> Result<(Vec<u8>, Option<String>), CryptError> {
    blocking(move || {
        let len = std::fs::metadata(&src)?.len();
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let out = Vec::with_capacity(usize::try_from(ciphertext_len_max(len)).unwrap_or(0));
        if !md5 {
            let mut out = out;
            encrypt_stream(&key, input, &mut out)?;
            return Ok((out, None));
        }
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
            let hasher = scope.spawn(move || {
                use md5::Digest;
                let mut h = md5::Md5::new();
                for piece in rx {
                    h.update(&piece);
                }
                aws_smithy_types::base64::encode(h.finalize())
            });
            let mut w = HashingWriter { out, hashed: 0, tx };
            encrypt_stream(&key, input, &mut w)?;
            w.hand_over(0)?;
            let HashingWriter { out, tx, .. } = w;
            drop(tx);
            let md5 = hasher.join().map_err(|_| std::io::Error::other("the MD5 thread panicked"))?;
            Ok((out, Some(md5)))
        })
    })
    .await
}

/// Collects what it is given, and hands each MiB of it to a hashing thread.
struct HashingWriter {
    out: Vec<u8>,
    hashed: usize,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl HashingWriter {
    /// Hands over what is not hashed yet once it is at least `at_least` bytes.
    fn hand_over(&mut self, at_least: usize) -> std::io::Result<()> {
        if self.out.len() - self.hashed >= at_least.max(1) {
            let piece = self.out[self.hashed..].to_vec();
            self.hashed = self.out.len();
            self.tx.send(piece).map_err(|_| std::io::Error::other("the MD5 thread stopped"))?;
        }
        Ok(())
    }
}

impl Write for HashingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(b);
        self.hand_over(1 << 20)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts the bytes written through it.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: &'a mut u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        *self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts the age file `src` into a new file `dst` (on a blocking thread).
pub(crate) async fn decrypt_file(key: Arc<RemoteKey>, src: PathBuf, dst: PathBuf, what: String) -> Result<(), CryptError> {
    blocking(move || {
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let mut output = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&dst)?);
        decrypt_stream(&key, input, &mut output, &what)?;
        output.flush()?;
        Ok(())
    })
    .await
}

/// Decrypts the age file `src` into a new file `dst` (on a blocking
/// thread), hashing the plaintext as it is written: its SHA-256 (hex) and
/// length. A tampered, truncated or foreign object is a
/// [`CryptError::Decrypt`] naming `what`; `dst` then holds a part that the
/// caller must not use.
pub(crate) async fn decrypt_hashing(key: Arc<RemoteKey>, src: PathBuf, dst: PathBuf, what: String) -> Result<(String, u64), CryptError> {
    blocking(move || {
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let output = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&dst)?);
        let mut hashing = Sha256Writer { inner: output, hash: Sha256::new(), len: 0 };
        decrypt_stream(&key, input, &mut hashing, &what)?;
        hashing.inner.flush()?;
        Ok((hex::encode(hashing.hash.finalize()), hashing.len))
    })
    .await
}

/// Hashes (SHA-256) and counts what it writes through.
struct Sha256Writer<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What [`decrypt_chunks`] found at the end of a stream.
pub(crate) type Verdict = Option<String>;

/// Decrypts the age file arriving in `chunks` (a download) on a blocking
/// thread, as it arrives, and sends its plaintext on `out` (to `git
/// index-pack`), all but its last `hold` bytes: those go only once the
/// whole stream has authenticated (age checks each 64 KiB chunk, and that
/// the last one is marked last) and `check` of its first 4 bytes and last
/// `hold` bytes answers None. Otherwise the reader of `out` sees a
/// truncated stream (index-pack then writes nothing) and the answer is
/// `check`'s words, or the decryption error. `what` names the object.
pub(crate) async fn decrypt_chunks(
    key: Arc<RemoteKey>,
    chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    what: String,
    hold: usize,
    check: impl FnOnce(&[u8], &[u8]) -> Verdict + Send + 'static,
) -> Result<Verdict, CryptError> {
    blocking(move || {
        let bad = |e: &dyn std::fmt::Display| CryptError::Decrypt { what: what.clone(), detail: e.to_string() };
        let decryptor = age::Decryptor::new(ChannelReader { rx: chunks, cur: bytes::Bytes::new() }).map_err(|e| bad(&e))?;
        // Every generation of the remote key (a pack may predate a rotation).
        let mut reader = decryptor.decrypt(key.identities().map(|i| i as &dyn age::Identity)).map_err(|e| bad(&e))?;
        let (mut head, mut held) = (Vec::with_capacity(4), Vec::with_capacity(CHUNK + hold));
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).map_err(|e| bad(&e))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n.min(4 - head.len())]);
            held.extend_from_slice(&buf[..n]);
            if held.len() > hold {
                let rest = held.split_off(held.len() - hold);
                if out.blocking_send(bytes::Bytes::from(std::mem::replace(&mut held, rest))).is_err() {
                    // The reader is gone (index-pack failed): its error tells.
                    return Ok(None);
                }
            }
        }
        if let Some(why) = check(&head, &held) {
            return Ok(Some(why));
        }
        let _ = out.blocking_send(bytes::Bytes::from(held));
        Ok(None)
    })
    .await
}

/// The bytes arriving on a channel, read on a blocking thread.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    cur: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// A temp file beside `path` (same directory, removed when dropped).
pub(crate) fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile, CryptError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    Ok(tempfile::Builder::new().prefix(".git-s3-age-").tempfile_in(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_tampering_is_refused() {
        let k = RemoteKey::generate();
        let data = b"{\"refs\":{\"refs/heads/main\":\"abc\"}}".repeat(5000);
        let enc = encrypt_bytes(&k, &data).unwrap();
        assert!(super::super::is_age(&enc));
        assert!(!enc.windows(9).any(|w| w == b"refs/head"));
        assert_eq!(decrypt_bytes(&k, &enc, "m").unwrap(), data);
        // another key
        assert!(matches!(decrypt_bytes(&RemoteKey::generate(), &enc, "m"), Err(CryptError::Decrypt { .. })));
        // a flipped byte in the payload, and a truncation
        let mut bad = enc.clone();
        let n = bad.len() - 10;
        bad[n] ^= 1;
        assert!(matches!(decrypt_bytes(&k, &bad, "m"), Err(CryptError::Decrypt { .. })));
        assert!(matches!(decrypt_bytes(&k, &enc[..enc.len() - 100], "m"), Err(CryptError::Decrypt { .. })));
    }

    #[test]
    fn padding_puts_sizes_in_buckets() {
        assert_eq!(padded_len(0), 1024);
        assert_eq!(padded_len(1024), 1024);
        assert_eq!(padded_len(1025), 2048);
        assert_eq!(padded_len(40_000), 65_536);
        assert_eq!(padded_len(65_536), 65_536);
        for len in [65_537, 100_000, 1_000_000, 123_456_789] {
            let p = padded_len(len);
            assert!(p >= len && (p - len) * 100 <= len * 12, "{len} -> {p}");
        }
        // Padmé: few sizes (100_000 and 100_100 share one)
        assert_eq!(padded_len(100_000), padded_len(100_100));
        for n in [0, 1, 65_536, 65_537, 200_000] {
            assert!(payload_len(plaintext_for(payload_len(n))) == payload_len(n), "{n}");
        }
    }

    #[test]
    fn padded_files_have_the_size_of_their_bucket_whatever_the_header() {
        let k = RemoteKey::generate();
        let r: &dyn age::Recipient = k.recipient();
        let small = br#"{"refs":{}}"#.to_vec();
        let bigger = br#"{"refs":{"refs/heads/main":"abc"},"packs":[]}"#.to_vec();
        // age adds a "grease" stanza of random size to every header: the padding makes up for it.
        for data in [&small, &bigger, &small, &bigger, &small, &bigger, &small, &bigger] {
            let enc = encrypt_padded(&[r], data, b'\n').unwrap();
            assert_eq!(enc.len(), 1024);
            let plain = decrypt_bytes(&k, &enc, "m").unwrap();
            assert!(plain.starts_with(data) && plain[data.len()..].iter().all(|&b| b == b'\n'));
            assert!(serde_json::from_slice::<serde_json::Value>(&plain).is_ok(), "trailing whitespace is valid JSON");
        }
        let large: Vec<u8> = vec![b'x'; 70_000];
        let sizes: Vec<usize> = (0..4).map(|_| encrypt_padded(&[r], &large, b' ').unwrap().len()).collect();
        // Padmé of 70 000 + two tags + a header of some hundred bytes: 71 680.
        assert!(sizes.iter().all(|&s| s == 71_680), "{sizes:?}");
    }

    #[tokio::test]
    async fn chunks_are_decrypted_as_they_arrive_and_the_tail_waits_for_the_check() {
        let k = Arc::new(RemoteKey::generate());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let enc = encrypt_bytes(&k, &data).unwrap();
        let run = |enc: Vec<u8>, verdict: Verdict| {
            let k = k.clone();
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let (ptx, mut prx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
                let feed = async move {
                    for c in enc.chunks(10_000) {
                        tx.send(bytes::Bytes::copy_from_slice(c)).await.unwrap();
                    }
                };
                let collect = async move {
                    let mut got: Vec<u8> = Vec::new();
                    while let Some(b) = prx.recv().await {
                        got.extend_from_slice(&b);
                    }
                    got
                };
                let check = move |head: &[u8], tail: &[u8]| {
                    assert_eq!((head.len(), tail.len()), (4, 40));
                    verdict
                };
                let (_, r, got) = tokio::join!(feed, decrypt_chunks(k, rx, ptx, "o".into(), 40, check), collect);
                (r, got)
            }
        };
        let (r, got) = run(enc.clone(), None).await;
        assert_eq!((r.unwrap(), got == data), (None, true));
        // refused by the check: all but the held tail went out
        let (r, got) = run(enc.clone(), Some("swapped".into())).await;
        assert_eq!((r.unwrap(), got.len()), (Some("swapped".to_string()), data.len() - 40));
        // truncated: a decryption error, and never the tail
        let (r, got) = run(enc[..enc.len() - 1000].to_vec(), None).await;
        assert!(matches!(r, Err(CryptError::Decrypt { .. })), "{r:?}");
        assert!(got.len() < data.len() - 40);
    }

    #[tokio::test]
    async fn files_round_trip_through_memory_and_through_parts() {
        let k = Arc::new(RemoteKey::generate());
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &data).unwrap();
        encrypt_file(k.clone(), a.clone(), b.clone()).await.unwrap();
        decrypt_file(k.clone(), b.clone(), c.clone(), "c".into()).await.unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), data);
        let (whole, none) = encrypt_file_to_memory(k.clone(), a.clone(), false).await.unwrap();
        assert!(whole.len() as u64 <= ciphertext_len_max(data.len() as u64) && none.is_none());
        // With its MD5, hashed as it is made: the MD5 of what came out.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&b, &big).unwrap();
        let (hashed, md5) = encrypt_file_to_memory(k.clone(), b.clone(), true).await.unwrap();
        use md5::Digest;
        assert_eq!(md5.unwrap(), aws_smithy_types::base64::encode(md5::Md5::digest(&hashed)));
        assert_eq!(decrypt_bytes(&k, &hashed, "b").unwrap(), big);
        std::fs::write(&b, &whole).unwrap();
        decrypt_file(k.clone(), b.clone(), c.clone(), "c".into()).await.unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), data);
        // In pieces of 100 000 bytes, the first one handed over before the rest is encrypted.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let after_first: Box<dyn FnOnce() + Send> = Box::new(move || first_rx.recv().unwrap());
        let producer = encrypt_file_to_parts(k.clone(), a, 100_000, tx, Some(after_first));
        let first = rx.recv().await.unwrap();
        assert_eq!(first.len(), 100_000);
        first_tx.send(()).unwrap();
        let mut pieces = vec![first];
        while let Some(p) = rx.recv().await {
            pieces.push(p);
        }
        let total = producer.await.unwrap().unwrap();
        assert!(pieces.iter().all(|p| !p.is_empty()) && pieces[..pieces.len() - 1].iter().all(|p| p.len() == 100_000));
        let joined: Vec<u8> = pieces.concat();
        assert_eq!(joined.len() as u64, total);
        assert_eq!(decrypt_bytes(&k, &joined, "c").unwrap(), data);
        // A file that cannot be read: the handle says so, and no piece went.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let gone = encrypt_file_to_parts(k, dir.path().join("missing"), 100_000, tx, None);
        assert!(rx.recv().await.is_none());
        assert!(gone.await.unwrap().is_err());
    }
}
