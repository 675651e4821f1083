//! age encryption of a remote's objects to its remote key: small objects
//! (the manifest) in memory, packs and `.idx` file to file on a blocking
//! thread (age's STREAM: 64 KiB chunks, bounded memory whatever the size).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CryptError, RemoteKey};

/// `data` as an age file to `key`.
pub(crate) fn encrypt_bytes(key: &RemoteKey, data: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::with_capacity(data.len() + 256);
    encrypt_stream(key, data, &mut out)?;
    Ok(out)
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

/// Encrypts the file `src` into a new file `dst` (on a blocking thread).
pub(crate) async fn encrypt_file(key: Arc<RemoteKey>, src: PathBuf, dst: PathBuf) -> Result<(), CryptError> {
    tokio::task::spawn_blocking(move || {
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let mut output = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&dst)?);
        encrypt_stream(&key, input, &mut output)?;
        output.flush()?;
        Ok(())
    })
    .await
    .map_err(|e| CryptError::Io(std::io::Error::other(e.to_string())))?
}

/// Decrypts the age file `src` into a new file `dst` (on a blocking thread).
pub(crate) async fn decrypt_file(key: Arc<RemoteKey>, src: PathBuf, dst: PathBuf, what: String) -> Result<(), CryptError> {
    tokio::task::spawn_blocking(move || {
        let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&src)?);
        let mut output = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&dst)?);
        decrypt_stream(&key, input, &mut output, &what)?;
        output.flush()?;
        Ok(())
    })
    .await
    .map_err(|e| CryptError::Io(std::io::Error::other(e.to_string())))?
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

    #[tokio::test]
    async fn files_round_trip() {
        let k = Arc::new(RemoteKey::generate());
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &data).unwrap();
        encrypt_file(k.clone(), a.clone(), b.clone()).await.unwrap();
        decrypt_file(k, b, c.clone(), "c".into()).await.unwrap();
        assert_eq!(std::fs::read(c).unwrap(), data);
    }
}
