//! The S3 store through the field server: 409 ConditionalRequestConflict on
//! conditional writes and on CompleteMultipartUpload, and a bucket that
//! lives in another region than the client's.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::collections::HashMap;
use std::sync::Arc;

use git_s3_daemon::s3::clients::{BucketRegions, ClientSpec, S3Clients, DEFAULT_MAX_ATTEMPTS};
use git_s3_daemon::s3::store::{PutOptions, S3Store, WriteCondition, CONFLICT_ATTEMPTS, MULTIPART_THRESHOLD, TEMPORARY_REDIRECT_ATTEMPTS};
use testkit::field::{Fault, FaultAction, RequestKind};
use testkit::FieldServer;

async fn store(env: &testkit::TestEnv, field: &FieldServer) -> S3Store {
    store_with(env, field, &[]).await
}

async fn store_with(env: &testkit::TestEnv, field: &FieldServer, extra: &[(&str, &str)]) -> S3Store {
    let mut vars: HashMap<String, String> =
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", field.url.as_str())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let clients = Arc::new(S3Clients::default());
    let spec = ClientSpec::from_env(&vars, None);
    let warm = clients.get(spec.clone()).await;
    let regions = BucketRegions { clients: clients.clone(), spec, bucket: env.bucket.clone() };
    S3Store::new(warm.client.clone(), &env.bucket, "test").with_region_switch(Arc::new(regions))
}

fn create_only() -> PutOptions {
    PutOptions { condition: WriteCondition::IfAbsent, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_write_is_tried_again_after_409_and_412_still_means_lost() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store(&env, &field).await;
    field.set_faults(1, vec![Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut], 1.0).times(3)]);
    s.put_bytes("p/lock", b"mine".to_vec(), create_only()).await.expect("written after three conflicts");
    assert_eq!(field.counts().of(RequestKind::ConditionalPut), 4);
    assert_eq!(s.get_small("p/lock").await.unwrap().as_deref(), Some(&b"mine"[..]));
    // The object exists now: the condition fails (412), at once, no retry.
    field.reset_counts();
    let lost = s.put_bytes("p/lock", b"theirs".to_vec(), create_only()).await.unwrap_err();
    assert!(lost.is_precondition_failed(), "{lost}");
    assert_eq!(field.counts().of(RequestKind::ConditionalPut), 1);
    // Conflicts that never clear end, with one line that says so.
    field.set_faults(1, vec![Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut], 1.0)]);
    field.reset_counts();
    let err = s.put_bytes("p/other", b"x".to_vec(), create_only()).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(field.counts().of(RequestKind::ConditionalPut), CONFLICT_ATTEMPTS as u64);
    let line = err.to_string();
    assert!(line.contains("409 ConditionalRequestConflict") && line.contains("p/other") && !line.contains('\n'), "{line}");
    assert!(s.head("p/other").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_whose_completion_conflicts_is_uploaded_again() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store(&env, &field).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let len = MULTIPART_THRESHOLD + 1000;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    field.set_faults(2, vec![Fault::new(FaultAction::Conflict, &[RequestKind::Complete], 1.0).times(1)]);
    s.put_file("p/big", &path, create_only(), |_| {}).await.expect("uploaded again after the conflict");
    let c = field.counts();
    assert_eq!((c.of(RequestKind::CreateMultipart), c.of(RequestKind::Complete), c.of(RequestKind::Abort)), (2, 2, 1), "{c:?}");
    let back = dir.path().join("back");
    s.get_to_file("p/big", &back, |_| {}).await.unwrap();
    assert!(std::fs::read(&back).unwrap() == data, "content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_its_bucket_to_its_region_once() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    field.set_bucket_region(&env.bucket, "eu-west-1");
    let s = store(&env, &field).await;
    s.put_bytes("p/a", b"a".to_vec(), PutOptions::default()).await.expect("put after the redirect");
    assert_eq!(field.counts().region_answers, 1);
    // Its clones too, for every kind of request.
    let clone = s.clone();
    assert_eq!(clone.list("p/").await.unwrap().len(), 1);
    assert!(clone.head("p/a").await.unwrap().is_some());
    assert!(clone.head("p/missing").await.unwrap().is_none());
    assert_eq!(clone.get_small("p/a").await.unwrap().as_deref(), Some(&b"a"[..]));
    clone.delete("p/a").await.unwrap();
    assert_eq!(field.counts().region_answers, 1, "{:?}", field.counts());
}

/// A file just past the multipart threshold, and its content.
fn big_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("big");
    let len = MULTIPART_THRESHOLD + 1000;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// S3 sends `200 OK` for CompleteMultipartUpload before it completes; a
/// failure then comes as an `<Error>` in that 200's body. The SDK makes it
/// an error and retries it (checked here: it is never taken for success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_200_completion_is_retried_never_taken_for_success() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store(&env, &field).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = big_file(dir.path());
    field.set_faults(3, vec![Fault::new(FaultAction::ErrorIn200, &[RequestKind::Complete], 1.0).times(2)]);
    s.put_file("p/big", &path, PutOptions::default(), |_| {}).await.expect("completed on the third try");
    let c = field.counts();
    assert_eq!((c.of(RequestKind::CreateMultipart), c.of(RequestKind::Complete), c.of(RequestKind::Abort)), (1, 3, 0), "{c:?}");
    let back = dir.path().join("back");
    s.get_to_file("p/big", &back, |_| {}).await.unwrap();
    assert!(std::fs::read(&back).unwrap() == data, "content differs");

    // Always an error in the 200: a clear error, the upload aborted, no object.
    field.set_faults(3, vec![Fault::new(FaultAction::ErrorIn200, &[RequestKind::Complete], 1.0)]);
    field.reset_counts();
    let err = s.put_file("p/never", &path, PutOptions::default(), |_| {}).await.unwrap_err();
    let line = err.to_string();
    assert!(line.contains("s3://") && line.contains("p/never") && line.contains("InternalError") && !line.contains('\n'), "{line}");
    let c = field.counts();
    assert_eq!((c.of(RequestKind::Complete), c.of(RequestKind::Abort)), (DEFAULT_MAX_ATTEMPTS as u64, 1), "{c:?}");
    field.clear_faults();
    assert!(s.head("p/never").await.unwrap().is_none(), "a failed completion left an object");
}

/// The answer to CompleteMultipartUpload is lost (the connection breaks
/// after S3 completed): the SDK sends it again and S3 answers `404
/// NoSuchUpload`, the upload being gone. The upload landed: the store finds
/// the object with the multipart ETag of its parts and reports success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_completion_answer_is_recognised_as_completed() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store(&env, &field).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = big_file(dir.path());
    for (key, opts) in [("p/plain", PutOptions::default()), ("p/create-only", create_only())] {
        field.set_faults(5, vec![Fault::new(FaultAction::ResetMidBody, &[RequestKind::Complete], 1.0).times(1)]);
        field.reset_counts();
        let etag = s.put_file(key, &path, opts, |_| {}).await.unwrap_or_else(|e| panic!("{key}: the upload landed: {e}"));
        let c = field.counts();
        assert_eq!((c.of(RequestKind::Complete), c.of(RequestKind::Abort)), (2, 0), "{key}: {c:?}");
        let head = s.head(key).await.unwrap().expect("the object");
        assert_eq!(head.etag, etag, "{key}");
        let back = dir.path().join("back");
        s.get_to_file(key, &back, |_| {}).await.unwrap();
        assert!(std::fs::read(&back).unwrap() == data, "{key}: content differs");
    }
    field.clear_faults();
}

/// CopyObject (doctor moves a bundle with it) fails like
/// CompleteMultipartUpload: `200 OK`, then an `<Error>` in the body. It is
/// retried, never taken for success; one that never clears is one line and
/// leaves no copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_200_copy_is_retried_never_taken_for_success() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store(&env, &field).await;
    s.put_bytes("p/src", b"bundle".to_vec(), PutOptions::default()).await.unwrap();
    field.set_faults(6, vec![Fault::new(FaultAction::ErrorIn200, &[RequestKind::Copy], 1.0).times(2)]);
    s.copy("p/src", "p/dst").await.expect("copied on the third try");
    assert_eq!(field.counts().of(RequestKind::Copy), 3, "{:?}", field.counts());
    assert_eq!(s.get_small("p/dst").await.unwrap().as_deref(), Some(&b"bundle"[..]));

    field.set_faults(6, vec![Fault::new(FaultAction::ErrorIn200, &[RequestKind::Copy], 1.0)]);
    field.reset_counts();
    let err = s.copy("p/src", "p/never").await.unwrap_err();
    let line = err.to_string();
    assert!(line.contains("InternalError") && !line.contains('\n'), "{line}");
    assert_eq!(field.counts().of(RequestKind::Copy), DEFAULT_MAX_ATTEMPTS as u64, "{:?}", field.counts());
    field.clear_faults();
    assert!(s.head("p/never").await.unwrap().is_none(), "a failed copy left an object");
}

/// `307 TemporaryRedirect` (a bucket created moments ago): in another
/// region, the store follows it there; in its own region, the request is
/// sent again until S3 takes it, a bounded number of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_redirects_are_followed_or_sent_again_and_bounded() {
    use testkit::field::RegionAnswer;
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    field.set_bucket_region(&env.bucket, "eu-west-1");
    field.set_region_answer(RegionAnswer::TemporaryRedirect);
    let s = store(&env, &field).await;
    s.put_bytes("p/a", b"a".to_vec(), PutOptions::default()).await.expect("put after the 307");
    assert_eq!(field.counts().region_answers, 1);
    assert!(s.head("p/a").await.unwrap().is_some());
    assert_eq!(field.counts().region_answers, 1, "the region is remembered");

    // In the bucket's own region (eu-west-1 now): sent again.
    field.set_faults(4, vec![Fault::new(FaultAction::TemporaryRedirect, testkit::field::ALL_KINDS, 1.0).times(2)]);
    field.reset_counts();
    assert_eq!(s.get_small("p/a").await.unwrap().as_deref(), Some(&b"a"[..]));
    assert_eq!(field.counts().of(RequestKind::Get), 3, "{:?}", field.counts());

    // A 307 that never clears: bounded, one line.
    field.set_faults(4, vec![Fault::new(FaultAction::TemporaryRedirect, testkit::field::ALL_KINDS, 1.0)]);
    field.reset_counts();
    let err = s.get_small("p/a").await.unwrap_err();
    assert_eq!(field.counts().of(RequestKind::Get), TEMPORARY_REDIRECT_ATTEMPTS as u64, "{:?}", field.counts());
    let line = err.to_string();
    assert!(line.contains("307 TemporaryRedirect") && line.contains(&env.bucket) && line.contains("eu-west-1") && !line.contains('\n'), "{line}");
}

/// `503 SlowDown` on every request: the bounded attempts of the caller's
/// `AWS_MAX_ATTEMPTS`, then one line naming bucket and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_slowdown_ends_after_the_configured_attempts() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store_with(&env, &field, &[("AWS_MAX_ATTEMPTS", "3")]).await;
    field.set_faults(5, vec![Fault::new(FaultAction::SlowDown, testkit::field::ALL_KINDS, 1.0)]);
    let err = s.put_bytes("p/x", b"x".to_vec(), PutOptions::default()).await.unwrap_err();
    assert_eq!(field.counts().total(), 3, "{:?}", field.counts());
    let line = err.to_string();
    assert!(line.contains("throttling") && line.contains(&format!("s3://{}/p/x", env.bucket)) && line.contains("SlowDown"), "{line}");
}

/// A conditional write whose answer is lost after S3 stored it (the
/// connection reset): the SDK sends it again, S3 answers 412 against the
/// first copy. That write is ours, not a lost race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_write_whose_answer_was_lost_is_not_a_lost_race() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store(&env, &field).await;
    field.set_faults(6, vec![Fault::new(FaultAction::ResetMidBody, &[RequestKind::ConditionalPut], 1.0).times(1)]);
    s.put_bytes("p/lock", b"mine-1234".to_vec(), create_only()).await.expect("ours, though its answer was lost");
    assert_eq!(field.counts().of(RequestKind::ConditionalPut), 2, "{:?}", field.counts());
    let etag = s.head("p/lock").await.unwrap().unwrap().etag;
    field.set_faults(6, vec![Fault::new(FaultAction::ResetMidBody, &[RequestKind::ConditionalPut], 1.0).times(1)]);
    let opts = PutOptions { condition: WriteCondition::IfMatch(etag), ..Default::default() };
    s.put_bytes("p/lock", b"mine-5678".to_vec(), opts).await.expect("the replacement is ours too");
    // Someone else's object still means a lost race.
    let lost = s.put_bytes("p/lock", b"theirs".to_vec(), create_only()).await.unwrap_err();
    assert!(lost.is_precondition_failed(), "{lost}");
}

/// No answer at all: `GIT_S3_OPERATION_TIMEOUT_SECONDS` bounds a request
/// with all its attempts, whatever the read timeout; one line names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operation_timeout_bounds_a_request_that_is_never_answered() {
    let env = testkit::TestEnv::new();
    let field = FieldServer::start();
    let s = store_with(&env, &field, &[("GIT_S3_OPERATION_TIMEOUT_SECONDS", "1")]).await;
    field.set_faults(8, vec![Fault::new(FaultAction::NoResponse(std::time::Duration::from_secs(3600)), &[RequestKind::Get], 1.0)]);
    let err = s.get_small("p/x").await.unwrap_err();
    assert_eq!(field.counts().of(RequestKind::Get), 1, "the read timeout (120 s) never came: {:?}", field.counts());
    let line = err.to_string();
    assert!(line.contains("did not answer a request for s3://") && line.contains("p/x") && !line.contains('\n'), "{line}");
}
