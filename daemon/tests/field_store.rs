//! The S3 store through the field server: 409 ConditionalRequestConflict on
//! conditional writes and on CompleteMultipartUpload, and a bucket that
//! lives in another region than the client's.

use std::collections::HashMap;
use std::sync::Arc;

use git_s3_daemon::s3::clients::{BucketRegions, ClientSpec, S3Clients};
use git_s3_daemon::s3::store::{PutOptions, S3Store, WriteCondition, CONFLICT_ATTEMPTS, MULTIPART_THRESHOLD};
use testkit::field::{Fault, FaultAction, RequestKind};
use testkit::FieldServer;

async fn store(env: &testkit::TestEnv, field: &FieldServer) -> S3Store {
    let vars: HashMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", field.url.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
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
