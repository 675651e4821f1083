//! LFS objects of an encrypted remote (issue 22): each is a standard age
//! file encrypted to the remote key, at `<prefix>/.git-s3/lfs/<name>`, where
//! `<name>` is the HMAC of `lfs/<oid>` under the key generation that wrote
//! it (`RemoteKey::object_name`): no oid in the bucket. LFS objects are not
//! in the manifest, so a reader tries every generation the keyring holds,
//! the current one first; a writer always uses the current one. The
//! decrypted content's SHA-256 must be the oid (a swapped object decrypts,
//! but holds another oid). Files are encrypted and decrypted file to file
//! on a blocking thread (age's 64 KiB STREAM chunks): memory stays bounded
//! whatever the object's size.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{CryptError, RemoteKey, AGE_MAGIC};
use crate::s3::url::RemoteUrl;

/// Where an encrypted remote keeps its LFS objects, under its prefix.
pub(crate) const LFS_DIR: &str = ".git-s3/lfs/";

/// The largest age header of one X25519 recipient (its stanza, age's random
/// "grease" stanza and the MAC are a few hundred bytes).
const MAX_HEADER: u64 = 4096;

/// The object key of LFS object `oid` under `key`'s generation.
pub(crate) fn object_key(url: &RemoteUrl, key: &RemoteKey, oid: &str) -> String {
    url.key(&format!("{LFS_DIR}{}", key.object_name(&format!("lfs/{oid}"))))
}

/// The keys `oid` may be at: under each generation the keyring holds, the current one first.
pub(crate) fn candidate_keys(url: &RemoteUrl, key: &RemoteKey, oid: &str) -> Vec<String> {
    key.generations().map(|k| object_key(url, k, oid)).collect()
}

/// Whether an age file of `cipher` bytes can hold `plain` bytes (age adds a
/// header of varying size and 16 bytes per 64 KiB chunk): what an existence
/// check accepts as the object already uploaded.
pub(crate) fn plausible_size(plain: u64, cipher: u64) -> bool {
    let payload = plain + 16 * plain.div_ceil(64 * 1024).max(1);
    cipher > payload + AGE_MAGIC.len() as u64 && cipher <= payload + MAX_HEADER
}

/// Decrypts the age file `src` into the new file `dst` (on a blocking
/// thread), hashing the plaintext as it is written: its SHA-256 (hex) and
/// length. A tampered, truncated or foreign object is a
/// [`CryptError::Decrypt`] naming `what`; `dst` then holds a part that the
/// caller must not use.
pub(crate) async fn decrypt_hashing(key: Arc<RemoteKey>, src: PathBuf, dst: PathBuf, what: String) -> Result<(String, u64), CryptError> {
    tokio::task::spawn_blocking(move || {
        let bad = |e: &dyn std::fmt::Display| CryptError::Decrypt { what: what.clone(), detail: e.to_string() };
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let decryptor = age::Decryptor::new(input).map_err(|e| bad(&e))?;
        let mut reader = decryptor.decrypt(key.identities().map(|i| i as &dyn age::Identity)).map_err(|e| bad(&e))?;
        let mut output = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&dst)?);
        let (mut hash, mut len, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 16]);
        loop {
            // A chunk that fails authentication is an io::Error of kind InvalidData.
            let n = match reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(bad(&e)),
                Err(e) => return Err(CryptError::Io(e)),
            };
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            output.write_all(&buf[..n])?;
            len += n as u64;
        }
        output.flush()?;
        Ok((hex::encode(hash.finalize()), len))
    })
    .await
    .map_err(|e| CryptError::Io(std::io::Error::other(e.to_string())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_keyed_per_generation_and_reveal_no_oid() {
        let url = RemoteUrl::parse("s3://bkt/p").unwrap();
        let k = RemoteKey::generate().rotated();
        let oid = "ab".repeat(32);
        let keys = candidate_keys(&url, &k, &oid);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], object_key(&url, &k, &oid));
        assert!(keys.iter().all(|x| x.starts_with("p/.git-s3/lfs/") && !x.contains(&oid)));
        assert_ne!(keys[0], keys[1]);
        // not a pack's name under the same key
        assert_ne!(k.object_name(&format!("lfs/{oid}")), k.object_name(&format!("pack-{oid}.pack")));
    }

    #[tokio::test]
    async fn round_trip_hashes_and_sizes_are_plausible() {
        let k = Arc::new(RemoteKey::generate());
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        for data in [Vec::new(), b"hello\n".to_vec(), (0..200_000u32).map(|i| (i % 251) as u8).collect()] {
            std::fs::write(&a, &data).unwrap();
            super::super::codec::encrypt_file(k.clone(), a.clone(), b.clone()).await.unwrap();
            let cipher = std::fs::metadata(&b).unwrap().len();
            assert!(plausible_size(data.len() as u64, cipher), "{} -> {cipher}", data.len());
            assert!(!plausible_size(data.len() as u64 + 70_000, cipher));
            let (sha, len) = decrypt_hashing(k.clone(), b.clone(), c.clone(), "o".into()).await.unwrap();
            assert_eq!((sha, len), (hex::encode(Sha256::digest(&data)), data.len() as u64));
            assert_eq!(std::fs::read(&c).unwrap(), data);
        }
        // a flipped byte: refused
        let mut bad = std::fs::read(&b).unwrap();
        let n = bad.len() - 5;
        bad[n] ^= 1;
        std::fs::write(&b, bad).unwrap();
        let r = decrypt_hashing(k, b, c, "o".into()).await;
        assert!(matches!(r, Err(CryptError::Decrypt { .. })), "{r:?}");
    }
}
