//! What the packs format adds to the git commands of `local/git.rs`: the
//! settings of packs written only to be uploaded, and what a written pack
//! holds.

use std::path::Path;

use tokio::io::AsyncReadExt;

use crate::storage::StorageError;

/// `git -c` settings for packs written to a temporary directory only to be
/// uploaded: no fsync (nothing to keep on this disk) and no `.rev` file.
pub(crate) const SCRATCH_PACK_CONFIG: [&str; 4] = ["-c", "core.fsync=none", "-c", "pack.writeReverseIndex=false"];

/// The object count in a pack's header (`PACK`, version, count).
pub(crate) async fn pack_object_count(path: &Path) -> Result<u64, StorageError> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hdr = [0u8; 12];
    f.read_exact(&mut hdr).await?;
    if &hdr[..4] != b"PACK" {
        return Err(StorageError::Corrupt(format!("{} is not a git pack", path.display())));
    }
    Ok(u64::from(u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]])))
}
