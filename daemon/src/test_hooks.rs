//! Test hooks: `GIT_S3_TEST_…` variables in a caller's environment that make
//! the daemon crash or wait at chosen points, so the end-to-end tests can
//! check what a crash leaves behind. Compiled only with the `test-hooks`
//! feature (scripts/test.sh builds with it; `git s3 status --json` lists it
//! under `daemon.features`): the release binary has none of this.

use std::collections::HashMap;
use std::time::Duration;

/// Exit the daemon after uploading a pack, before the manifest write.
pub const CRASH_BEFORE_MANIFEST: &str = "GIT_S3_TEST_CRASH_BEFORE_MANIFEST";
/// Milliseconds the background `.idx` upload waits first.
pub const IDX_UPLOAD_DELAY_MS: &str = "GIT_S3_TEST_IDX_UPLOAD_DELAY_MS";
/// The migration exits the daemon half-way (`to-packs`: after the manifest
/// write and the first bundle deletion; `to-bundles`: after the freeze and
/// the first bundle write), to test that a rerun finishes it.
pub const CRASH_DURING_MIGRATE: &str = "GIT_S3_TEST_CRASH_DURING_MIGRATE";

/// A push, between its pack upload and its manifest write.
pub fn crash_before_manifest(env: &HashMap<String, String>) {
    if env.get(CRASH_BEFORE_MANIFEST).map(String::as_str) == Some("1") {
        tracing::error!("{CRASH_BEFORE_MANIFEST}=1: exiting before the manifest write");
        std::process::exit(70);
    }
}

/// How long a push's background `.idx` upload waits before it starts.
pub fn idx_upload_delay(env: &HashMap<String, String>) -> Option<Duration> {
    env.get(IDX_UPLOAD_DELAY_MS).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis)
}

/// A migration at `point` (`to-packs` or `to-bundles`).
pub fn crash_during_migrate(env: &HashMap<String, String>, point: &str) {
    if env.get(CRASH_DURING_MIGRATE).map(String::as_str) == Some(point) {
        tracing::error!("{CRASH_DURING_MIGRATE}={point}: exiting half-way through the migration");
        std::process::exit(70);
    }
}
