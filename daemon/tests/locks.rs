//! Push locks against the real S3-compatible test server: atomic stale
//! takeover, and the heartbeat that keeps a long push's lock fresh.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::collections::HashMap;
use std::time::Duration;

use git_s3_daemon::s3::clients::{ClientSpec, S3Clients};
use git_s3_daemon::s3::store::{PutOptions, S3Store};
use git_s3_daemon::storage::bundles::locks::{self, LockError};

async fn store(env: &testkit::TestEnv) -> S3Store {
    let vars: HashMap<String, String> =
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", testkit::endpoint())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let clients = S3Clients::default();
    let warm = clients.get(ClientSpec::from_env(&vars, None)).await;
    S3Store::new(warm.client.clone(), &env.bucket, "test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_long_push_lock_fresh() {
    let env = testkit::TestEnv::new();
    let s = store(&env).await;
    let ttl = Duration::from_secs(3);
    let mut lock = locks::acquire(&s, "p", "refs/heads/main", ttl, Duration::ZERO).await.unwrap();
    let first_etag = lock.etag.clone();
    let s2 = s.clone();
    // Work that outlives the TTL; meanwhile, at 4.5 s, another client tries
    // to take the lock over as stale. The heartbeat must have kept it fresh.
    let work = async move {
        tokio::time::sleep(Duration::from_millis(4500)).await;
        locks::acquire(&s2, "p", "refs/heads/main", ttl, Duration::ZERO).await
    };
    let competitor = locks::hold_while(&s, &mut lock, ttl, work).await.expect("lock kept");
    assert!(matches!(competitor, Err(LockError::Held { .. })), "the competitor must not get the lock: {competitor:?}");
    assert_ne!(lock.etag, first_etag, "the lock was refreshed");
    locks::release(&s, lock).await.unwrap();
    assert!(s.head("p/refs/heads/main/LOCK#.lock").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_over_is_detected_and_not_released_by_its_old_owner() {
    let env = testkit::TestEnv::new();
    let s = store(&env).await;
    let ttl = Duration::from_secs(3);
    let mut lock = locks::acquire(&s, "p", "refs/heads/x", ttl, Duration::ZERO).await.unwrap();
    // Someone else replaces the lock (as a takeover would).
    s.put_bytes("p/refs/heads/x/LOCK#.lock", b"other".to_vec(), PutOptions::default()).await.unwrap();
    let work = tokio::time::sleep(Duration::from_secs(5));
    let r = locks::hold_while(&s, &mut lock, ttl, work).await;
    assert!(matches!(r, Err(LockError::Lost { .. })), "{r:?}");
    // Releasing leaves the other owner's lock alone.
    locks::release(&s, lock).await.unwrap();
    assert!(s.head("p/refs/heads/x/LOCK#.lock").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_of_many_stale_takeovers_wins() {
    let env = testkit::TestEnv::new();
    let s = store(&env).await;
    let ttl = Duration::from_secs(2);
    // A lock left by a crashed client, older than the TTL.
    s.put_bytes("p/refs/heads/y/LOCK#.lock", Vec::new(), PutOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    // Eight clients see it stale at once; each tries a conditional takeover
    // on the stale version. The winner's new lock is fresh, so the others
    // must fail: delete-then-create (0.4.2) would let several win.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { locks::acquire(&s, "p", "refs/heads/y", ttl, Duration::ZERO).await })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => winners += 1,
            Err(LockError::Held { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners, 1);
}
