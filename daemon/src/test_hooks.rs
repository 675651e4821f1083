//! Test hooks: `GIT_S3_TEST_…` variables in a caller's environment that make
//! the daemon crash or wait at chosen points, so the end-to-end tests can
//! check what a crash leaves behind. Compiled only with the `test-hooks`
//! feature (scripts/test.sh builds with it; `git s3 status --json` lists it
//! under `daemon.features`): the release binary has none of this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit the daemon after uploading a pack, before the manifest write.
pub(crate) const CRASH_BEFORE_MANIFEST: &str = "GIT_S3_TEST_CRASH_BEFORE_MANIFEST";
/// A file the background `.idx` upload waits for (at most a minute) before
/// it starts: the test decides when the upload may happen, no timing.
pub(crate) const IDX_UPLOAD_GATE: &str = "GIT_S3_TEST_IDX_UPLOAD_GATE";
/// A file the background gc started by a push waits for (at most a minute)
/// before it starts: the test pushes again while one runs.
pub(crate) const BACKGROUND_GC_GATE: &str = "GIT_S3_TEST_BACKGROUND_GC_GATE";
/// A file a bundles push waits for (at most a minute) after its checks and
/// before it takes the ref's lock: the test pushes from elsewhere meanwhile.
pub(crate) const PUSH_LOCK_GATE: &str = "GIT_S3_TEST_PUSH_LOCK_GATE";
/// A file a bundles push waits for (at most a minute) under the ref's lock,
/// after its checks and before its upload.
pub(crate) const PUSH_UPLOAD_GATE: &str = "GIT_S3_TEST_PUSH_UPLOAD_GATE";
/// A file the views a push has the daemon write in the background wait
/// for (at most a minute), uploaded, before their manifest write.
pub(crate) const VIEWS_WRITE_GATE: &str = "GIT_S3_TEST_VIEWS_WRITE_GATE";
/// A file a lazy fetch's ranged reads wait for (at most a minute), their
/// packs' `.idx` read, before the first range is read: the test runs gc
/// meanwhile.
pub(crate) const RANGED_READ_GATE: &str = "GIT_S3_TEST_RANGED_READ_GATE";
/// The migration exits the daemon half-way (`to-packs`: after the manifest
/// write and the first bundle deletion; `to-packs-before-head`: after every
/// bundle's deletion, before the HEAD object's; `to-bundles`: after the freeze and
/// the first bundle write; `to-bundles-manifest-deleted`: after the manifest
/// deletion, before the packs'; `encrypt-copied` / `decrypt-copied`: after
/// the first pack or `.idx` copied into the new form, before the switch;
/// `encrypt-switched` / `decrypt-switched`: after the manifest's switch,
/// before the old form's deletion), to test that a rerun finishes it.
pub(crate) const CRASH_DURING_MIGRATE: &str = "GIT_S3_TEST_CRASH_DURING_MIGRATE";

/// A file `git s3 migrate --encrypt-to` / `--decrypt` waits for (at most a
/// minute) after its first copy, before its first switch attempt: the test
/// pushes meanwhile, so the switch finds the manifest changed.
pub(crate) const MIGRATE_SWITCH_GATE: &str = "GIT_S3_TEST_MIGRATE_SWITCH_GATE";

/// A file the encryption of a push's pack (a multipart upload's) waits for
/// (at most a minute) once it has handed its first part to the upload: the
/// test sees that part uploaded while the rest is not encrypted yet.
pub(crate) const ENCRYPT_PART_GATE: &str = "GIT_S3_TEST_ENCRYPT_PART_GATE";

/// A push, between its pack upload and its manifest write.
pub(crate) fn crash_before_manifest(env: &HashMap<String, String>) {
    if env.get(CRASH_BEFORE_MANIFEST).map(String::as_str) == Some("1") {
        tracing::error!("{CRASH_BEFORE_MANIFEST}=1: exiting before the manifest write");
        std::process::exit(70);
    }
}

/// The gate of a push's background `.idx` upload, when the test set one.
pub(crate) fn idx_upload_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(IDX_UPLOAD_GATE).map(PathBuf::from)
}

/// The gate of a push's background gc, when the test set one.
pub(crate) fn background_gc_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(BACKGROUND_GC_GATE).map(PathBuf::from)
}

/// The gate a bundles push waits at before its lock, when the test set one.
pub(crate) fn push_lock_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(PUSH_LOCK_GATE).map(PathBuf::from)
}

/// The gate a bundles push waits at under its lock, before its upload, when the test set one.
pub(crate) fn push_upload_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(PUSH_UPLOAD_GATE).map(PathBuf::from)
}

/// The gate before an encryption migration's first switch, when the test set one.
pub(crate) fn migrate_switch_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(MIGRATE_SWITCH_GATE).map(PathBuf::from)
}

/// The gate of a push's background views write, when the test set one.
pub(crate) fn views_write_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(VIEWS_WRITE_GATE).map(PathBuf::from)
}

/// The gate of a lazy fetch's ranged reads, when the test set one.
pub(crate) fn ranged_read_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(RANGED_READ_GATE).map(PathBuf::from)
}

/// Waits until `gate` exists (at most a minute). It first creates
/// `<gate>.waiting`, so the test knows the daemon has reached the gate.
pub(crate) async fn wait_for_gate(gate: &Path) {
    let mut waiting = gate.as_os_str().to_owned();
    waiting.push(".waiting");
    if let Err(e) = std::fs::write(&waiting, b"") {
        tracing::warn!(error = %e, "could not mark the test gate as reached");
    }
    for _ in 0..3000 {
        if gate.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(gate = %gate.display(), "test gate never opened");
}

/// What the encryption of a push's pack runs after its first part, when
/// the test set [`ENCRYPT_PART_GATE`]: [`wait_for_gate`], on its blocking
/// thread; `<gate>.timed-out` written when the gate never opened.
pub(crate) fn encrypt_part_gate(env: &HashMap<String, String>) -> Option<Box<dyn FnOnce() + Send>> {
    let gate = PathBuf::from(env.get(ENCRYPT_PART_GATE)?);
    Some(Box::new(move || {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.block_on(wait_for_gate(&gate));
        }
        if !gate.exists() {
            // The test tells a gate that was never opened from one that was.
            let mut timed_out = gate.into_os_string();
            timed_out.push(".timed-out");
            let _ = std::fs::write(timed_out, b"");
        }
    }))
}

/// A migration at `point` (see [`CRASH_DURING_MIGRATE`]).
pub(crate) fn crash_during_migrate(env: &HashMap<String, String>, point: &str) {
    if env.get(CRASH_DURING_MIGRATE).map(String::as_str) == Some(point) {
        tracing::error!("{CRASH_DURING_MIGRATE}={point}: exiting half-way through the migration");
        std::process::exit(70);
    }
}

/// `git s3 access revoke --reencrypt` exits the daemon after the manifest
/// swap, before any old object's deletion (`1`), to test that a rerun finishes.
pub(crate) const CRASH_DURING_REENCRYPT: &str = "GIT_S3_TEST_CRASH_DURING_REENCRYPT";

/// A re-encryption, between its manifest swap and its deletions.
pub(crate) fn crash_during_reencrypt(env: &HashMap<String, String>) {
    if env.get(CRASH_DURING_REENCRYPT).map(String::as_str) == Some("1") {
        tracing::error!("{CRASH_DURING_REENCRYPT}=1: exiting after the manifest swap");
        std::process::exit(70);
    }
}

/// A file `git s3 access grant` or `revoke` waits for (at most a minute)
/// between its keyring read and its conditional write: the test edits the
/// keyring from elsewhere meanwhile, so the held edit's write loses the
/// race and must re-read.
pub(crate) const KEYRING_WRITE_GATE: &str = "GIT_S3_TEST_KEYRING_WRITE_GATE";

/// The gate of a grant's or revoke's keyring write, when the test set one.
pub(crate) fn keyring_write_gate(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get(KEYRING_WRITE_GATE).map(PathBuf::from)
}
