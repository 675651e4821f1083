//! An encrypted remote's pack objects bound to their names (issue 22): all
//! of a remote's objects are encrypted to one key, so two objects'
//! ciphertexts swapped in the bucket both decrypt. What a decrypted object
//! holds is checked against the plaintext name it was fetched as, before
//! anything is indexed: a pack ends with its checksum, which git names it
//! after; an `.idx` (v2) ends with its pack's checksum, then its own.
//! (age authenticates the bytes, so the trailer cannot be forged; `git
//! index-pack` then checks the trailer against the content.)

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

const PACK_MAGIC: &[u8] = b"PACK";
const IDX_MAGIC: &[u8] = b"\xfftOc";

/// What a decrypted object turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A pack, and the checksum it ends with (its name).
    Pack(String),
    /// An `.idx`, and the checksum of the pack it indexes.
    Idx(String),
    Other,
}

/// How many bytes at the end of a pack or `.idx` named `name` the check
/// reads: two checksums.
pub(crate) fn tail_len(name: &str) -> usize {
    name.len()
}

/// Checks that a decrypted object that starts with `head` (4 bytes or
/// more) and ends with `tail` ([`tail_len`] bytes) is pack `name`'s
/// `.pack` (`ext` "pack") or `.idx` ("idx"): None when it is, else what it
/// holds instead, in words.
pub(crate) fn mismatch_of(head: &[u8], tail: &[u8], name: &str, ext: &str) -> Option<String> {
    let found = what_it_is(head, tail, name.len() / 2);
    let ok = match (&found, ext) {
        (Found::Pack(sum), "pack") | (Found::Idx(sum), "idx") => sum.eq_ignore_ascii_case(name),
        _ => false,
    };
    (!ok).then(|| match found {
        Found::Pack(sum) => format!("it holds pack {sum}'s .pack"),
        Found::Idx(sum) => format!("it holds pack {sum}'s .idx"),
        Found::Other => "it is neither a pack nor an .idx".to_string(),
    })
}

/// [`mismatch_of`] the decrypted file at `path` (its first and last bytes,
/// read on a blocking thread).
pub(crate) async fn mismatch(path: PathBuf, name: String, ext: &'static str) -> std::io::Result<Option<String>> {
    crate::local::files::blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        let tail_len = tail_len(&name) as u64;
        if len < 12 + tail_len {
            return Ok(mismatch_of(b"", b"", &name, ext));
        }
        let mut head = [0u8; 4];
        f.read_exact(&mut head)?;
        let mut tail = vec![0u8; tail_len as usize];
        f.seek(SeekFrom::Start(len - tail_len))?;
        f.read_exact(&mut tail)?;
        Ok(mismatch_of(&head, &tail, &name, ext))
    })
    .await
}

/// What an object that starts with `head` and ends with `tail` (two
/// checksums of `hash_len` bytes) is.
fn what_it_is(head: &[u8], tail: &[u8], hash_len: usize) -> Found {
    if hash_len == 0 || tail.len() != 2 * hash_len || head.len() < 4 {
        return Found::Other;
    }
    match &head[..4] {
        PACK_MAGIC => Found::Pack(hex::encode(&tail[hash_len..])),
        IDX_MAGIC => Found::Idx(hex::encode(&tail[..hash_len])),
        _ => Found::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pack_or_idx_is_what_its_name_says() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let pack = dir.path().join("p");
        let body: Vec<u8> = [PACK_MAGIC, &[0, 0, 0, 2, 0, 0, 0, 0], &[7u8; 40], &[0xaa; 20]].concat();
        std::fs::write(&pack, &body).unwrap();
        let idx = dir.path().join("i");
        let body: Vec<u8> = [IDX_MAGIC, &[0, 0, 0, 2], &[1u8; 40], &[0xaa; 20], &[0xcc; 20]].concat();
        std::fs::write(&idx, &body).unwrap();
        let short = dir.path().join("s");
        std::fs::write(&short, b"PACK").unwrap();
        assert_eq!(mismatch(pack.clone(), a.clone(), "pack").await.unwrap(), None);
        assert_eq!(mismatch(idx.clone(), a.clone(), "idx").await.unwrap(), None);
        // another pack's object, or the .idx where the .pack should be
        assert_eq!(mismatch(pack.clone(), b.clone(), "pack").await.unwrap().unwrap(), format!("it holds pack {a}'s .pack"));
        assert_eq!(mismatch(idx.clone(), a.clone(), "pack").await.unwrap().unwrap(), format!("it holds pack {a}'s .idx"));
        assert_eq!(mismatch(pack, a.clone(), "idx").await.unwrap().unwrap(), format!("it holds pack {a}'s .pack"));
        assert!(mismatch(short, a, "pack").await.unwrap().is_some());
    }
}
