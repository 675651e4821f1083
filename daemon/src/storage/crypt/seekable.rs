//! Plaintext ranges of an age file in the bucket, read without the whole
//! file: what a lazy fetch's ranged reads need from an encrypted pack.
//!
//! An age file is its header, a 16-byte nonce, then STREAM chunks of 64 KiB
//! plaintext and a 16-byte tag each: plaintext offset `o` lies in chunk
//! `o / 65536`, whose ciphertext starts at `payload + chunk * 65552`. The
//! header is read once (its first [`HEAD_READ`] bytes); then only whole
//! chunks are read (neighbours merged into one request by the caller), and
//! decrypted by the `age` crate's own seekable `StreamReader` over a reader
//! that serves the bytes read ([`Sparse`]): every chunk is authenticated,
//! with its index and last-chunk flag, as a whole-file decryption would.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use bytes::Bytes;

use super::{CryptError, RemoteKey};
use crate::s3::store::ranged::RangeRead;

/// Plaintext bytes of a STREAM chunk.
pub(crate) const CHUNK: u64 = 64 * 1024;
/// Its ciphertext: plaintext and tag.
pub(crate) const SEALED: u64 = CHUNK + 16;
/// The bytes read from the start of an object for its header (one X25519
/// stanza and age's "grease" stanza come to a few hundred).
pub(crate) const HEAD_READ: u64 = 4096;
/// The nonce between the header and the payload.
const NONCE: u64 = 16;

/// An age file in the bucket as far as it has been read: its first bytes,
/// where its payload starts, its length, and the chunks read so far.
#[derive(Debug, Clone)]
pub(crate) struct Sealed {
    head: Bytes,
    payload: u64,
    len: u64,
    plain_len: u64,
    chunks: BTreeMap<u64, Bytes>,
}

impl Sealed {
    /// From the object's first bytes `head` (up to [`HEAD_READ`]) and its
    /// plaintext length (the manifest's size of the pack). None when the
    /// header does not end within `head` (then the object is read whole).
    pub(crate) fn from_head(head: Bytes, plain_len: u64) -> Option<Sealed> {
        // The header ends with its MAC line: "--- <base64>\n".
        let mac = head.windows(5).position(|w| w == b"\n--- ")? + 1;
        let end = mac + head[mac..].iter().position(|&b| b == b'\n')? + 1;
        let payload = end as u64 + NONCE;
        let chunks = plain_len.div_ceil(CHUNK).max(1);
        let len = payload + plain_len + 16 * chunks;
        (head.len() as u64 >= payload).then_some(Sealed { head, payload, len, plain_len, chunks: BTreeMap::new() })
    }

    /// The chunks that hold the plaintext `ranges`.
    pub(crate) fn chunks_of(&self, ranges: &[Range<u64>]) -> BTreeSet<u64> {
        let last = self.plain_len.saturating_sub(1) / CHUNK;
        ranges.iter().filter(|r| r.start < r.end).flat_map(|r| (r.start / CHUNK)..=((r.end - 1) / CHUNK).min(last)).collect()
    }

    /// The ciphertext ranges of the chunks of `chunks` not read yet.
    pub(crate) fn unread(&self, chunks: &BTreeSet<u64>) -> Vec<Range<u64>> {
        chunks.iter().filter(|c| !self.chunks.contains_key(c)).map(|&c| self.sealed_range(c)).collect()
    }

    fn sealed_range(&self, c: u64) -> Range<u64> {
        let start = self.payload + c * SEALED;
        start..(start + SEALED).min(self.len)
    }

    /// Keeps the chunks of `chunks` that `read` (ciphertext ranges) holds;
    /// false when one is missing from it (the object is shorter than its
    /// manifest entry says: truncated).
    pub(crate) fn keep(&mut self, chunks: &BTreeSet<u64>, read: &RangeRead) -> bool {
        for &c in chunks {
            if self.chunks.contains_key(&c) {
                continue;
            }
            match read.slice(self.sealed_range(c)) {
                Some(b) => {
                    self.chunks.insert(c, b);
                }
                None => return false,
            }
        }
        true
    }

    /// The plaintext of `chunks` (all read), each run of neighbours as one
    /// piece: (plaintext offset, bytes). Blocking (decryption): run it on
    /// a blocking thread. A chunk that does not authenticate is an error
    /// naming `what`.
    pub(crate) fn open(&self, key: &RemoteKey, chunks: &BTreeSet<u64>, what: &str) -> Result<Vec<(u64, Bytes)>, CryptError> {
        let bad = |e: &dyn std::fmt::Display| CryptError::Decrypt { what: what.to_string(), detail: e.to_string() };
        let decryptor = age::Decryptor::new(Sparse { s: self, pos: 0 }).map_err(|e| bad(&e))?;
        // Every generation of the remote key (a pack may predate a rotation).
        let mut reader = decryptor.decrypt(key.identities().map(|i| i as &dyn age::Identity)).map_err(|e| bad(&e))?;
        let mut pieces = Vec::new();
        for run in runs(chunks) {
            let from = run.start * CHUNK;
            let to = (run.end * CHUNK).min(self.plain_len);
            if from >= to {
                continue;
            }
            if from > 0 {
                // Into the chunk first (StreamReader decrypts it to drop one
                // byte), then back to its start within it: a seek straight to
                // a chunk boundary would have it authenticate the file's
                // length by reading its last chunk, which was not read.
                reader.seek(SeekFrom::Start(from + 1)).map_err(|e| bad(&e))?;
                reader.seek(SeekFrom::Start(from)).map_err(|e| bad(&e))?;
            }
            let mut buf = vec![0u8; usize::try_from(to - from).map_err(|e| bad(&e))?];
            reader.read_exact(&mut buf).map_err(|e| bad(&e))?;
            pieces.push((from, Bytes::from(buf)));
        }
        Ok(pieces)
    }
}

/// `chunks` as runs of neighbours (sorted, disjoint, not touching).
fn runs(chunks: &BTreeSet<u64>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &c in chunks {
        match out.last_mut() {
            Some(r) if r.end == c => r.end = c + 1,
            _ => out.push(c..c + 1),
        }
    }
    out
}

/// The bytes of a [`Sealed`] file that were read, as a seekable reader of
/// the whole file: a read of anything else is an error (never zeros).
struct Sparse<'a> {
    s: &'a Sealed,
    pos: u64,
}

impl Read for Sparse<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.s.len || buf.is_empty() {
            return Ok(0);
        }
        let (data, offset) = if self.pos < self.s.payload {
            (&self.s.head, self.pos)
        } else {
            let c = (self.pos - self.s.payload) / SEALED;
            let chunk = self.s.chunks.get(&c).ok_or_else(|| std::io::Error::other(format!("chunk {c} of the age file was not read")))?;
            (chunk, self.pos - self.s.payload - c * SEALED)
        };
        let offset = usize::try_from(offset).map_err(std::io::Error::other)?;
        let n = buf.len().min(data.len().saturating_sub(offset));
        if n == 0 {
            return Err(std::io::Error::other("the age file's bytes end before its chunk does"));
        }
        buf[..n].copy_from_slice(&data[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Sparse<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.s.len.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::other("a seek before the start of the age file"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::crypt::codec::encrypt_bytes;

    /// The ranges `ranges` of `enc` as a ranged GET returns them.
    fn read_of(enc: &[u8], ranges: &[Range<u64>]) -> RangeRead {
        RangeRead::from_pieces(ranges.iter().map(|r| (r.start, Bytes::copy_from_slice(&enc[r.start as usize..r.end as usize]))).collect())
    }

    fn sealed(enc: &[u8], plain_len: usize) -> Sealed {
        Sealed::from_head(Bytes::copy_from_slice(&enc[..HEAD_READ as usize]), plain_len as u64).unwrap()
    }

    #[test]
    fn ranges_of_the_plaintext_are_read_and_authenticated_chunk_by_chunk() {
        let k = RemoteKey::generate();
        for len in [300_000usize, 4 * CHUNK as usize] {
            let data: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
            let enc = encrypt_bytes(&k, &data).unwrap();
            let mut s = sealed(&enc, len);
            assert_eq!(s.len, enc.len() as u64, "{len}: the length follows from the header and the plaintext's");
            let wanted = [70_000..70_100, 200_000..(len as u64)];
            let chunks = s.chunks_of(&wanted);
            assert_eq!(chunks.iter().copied().collect::<Vec<_>>(), if len == 300_000 { vec![1, 3, 4] } else { vec![1, 3] });
            let unread = s.unread(&chunks);
            assert!(s.keep(&chunks, &read_of(&enc, &unread)));
            let pieces = s.open(&k, &chunks, "o").unwrap();
            for (at, bytes) in &pieces {
                assert_eq!(&bytes[..], &data[*at as usize..*at as usize + bytes.len()], "{len} at {at}");
            }
            assert!(pieces.iter().any(|(at, b)| *at + b.len() as u64 == len as u64), "{len}: the last chunk, authenticated as last");
            // a middle chunk alone: the last one is never read
            let mut s = sealed(&enc, len);
            let middle: BTreeSet<u64> = [2].into();
            assert!(s.keep(&middle, &read_of(&enc, &s.unread(&middle))));
            assert_eq!(&s.open(&k, &middle, "o").unwrap()[0].1[..], &data[2 * CHUNK as usize..3 * CHUNK as usize], "{len}");
            // chunk 0 (read with the header) too
            let first: BTreeSet<u64> = [0].into();
            assert!(s.keep(&first, &read_of(&enc, &s.unread(&first))));
            assert_eq!(&s.open(&k, &first, "o").unwrap()[0].1[..], &data[..CHUNK as usize]);
        }
    }

    #[test]
    fn a_tampered_or_moved_chunk_is_refused() {
        let k = RemoteKey::generate();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let enc = encrypt_bytes(&k, &data).unwrap();
        let chunks: BTreeSet<u64> = [2].into();
        let mut s = sealed(&enc, data.len());
        let r = s.sealed_range(2);
        let mut bad = enc.clone();
        bad[r.start as usize + 100] ^= 1;
        assert!(s.keep(&chunks, &read_of(&bad, std::slice::from_ref(&r))));
        assert!(matches!(s.open(&k, &chunks, "o"), Err(CryptError::Decrypt { .. })));
        // chunk 1's bytes where chunk 2's should be: its nonce is another
        let mut s = sealed(&enc, data.len());
        let one = s.sealed_range(1);
        let moved = RangeRead::from_pieces(vec![(r.start, Bytes::copy_from_slice(&enc[one.start as usize..one.end as usize]))]);
        assert!(s.keep(&chunks, &moved));
        assert!(matches!(s.open(&k, &chunks, "o"), Err(CryptError::Decrypt { .. })));
        // another key
        assert!(matches!(sealed(&enc, data.len()).open(&RemoteKey::generate(), &BTreeSet::new(), "o"), Err(CryptError::Decrypt { .. })));
        // a truncated object: the last chunk is not all there
        let mut s = sealed(&enc, data.len());
        let last: BTreeSet<u64> = [4].into();
        let r = s.sealed_range(4);
        let short = r.start..r.end - 1;
        assert!(!s.keep(&last, &read_of(&enc, std::slice::from_ref(&short))));
    }

    #[test]
    fn runs_group_neighbours() {
        let c: BTreeSet<u64> = [0, 1, 3, 5, 6, 7].into();
        assert_eq!(runs(&c), vec![0..2, 3..4, 5..8]);
    }
}
