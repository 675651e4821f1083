//! The field server against the test S3 server, through a minimal HTTP/1.1
//! client (plain, TLS, and TLS inside a CONNECT tunnel).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::*;

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The connection ended with an error (reset) rather than a clean EOF.
    broken: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn signed_for(region: &str) -> String {
    format!("Authorization: AWS4-HMAC-SHA256 Credential=test/20261202/{region}/s3/aws4_request, SignedHeaders=host, Signature=00\r\n")
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str, body: &[u8]) -> Answer {
    s.write_all(request.as_bytes()).await.expect("send the request");
    s.write_all(body).await.expect("send the body");
    s.flush().await.expect("flush");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    let mut broken = false;
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head, body: buf[split..].to_vec(), broken }
}

/// One request on a new connection (`Connection: close`).
fn request(field: &FieldServer, method: &str, path: &str, headers: &str, body: &[u8]) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            field.authority(),
            body.len()
        );
        let tcp = tokio::net::TcpStream::connect(field.authority()).await.expect("connect");
        match field.ca() {
            Some(ca) => {
                let tls = tokio_rustls::TlsConnector::from(ca.client_config());
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                exchange(tls.connect(name, tcp).await.expect("TLS handshake"), &raw, body).await
            }
            None => exchange(tcp, &raw, body).await,
        }
    })
}

fn bucket(name: &str) -> String {
    let b = format!("field-{}-{name}", std::process::id());
    crate::s3tool(&["create-bucket", &b], None);
    b
}

#[test]
fn a_request_signed_for_another_region_gets_s3s_answers() {
    let field = FieldServer::start();
    let b = bucket("regions");
    field.set_bucket_region(&b, "eu-west-1");
    let list = format!("/{b}?list-type=2");

    let r = request(&field, "GET", &list, &signed_for("us-east-1"), b"");
    assert_eq!(r.status, 301, "{}", r.head);
    assert_eq!(r.header("x-amz-bucket-region").as_deref(), Some("eu-west-1"));
    assert!(r.text().contains("<Code>PermanentRedirect</Code>"), "{}", r.text());

    let r = request(&field, "HEAD", &format!("/{b}/k"), &signed_for("us-east-1"), b"");
    assert_eq!((r.status, r.body.len()), (301, 0));
    assert_eq!(r.header("x-amz-bucket-region").as_deref(), Some("eu-west-1"));

    field.set_region_answer(RegionAnswer::AuthorizationHeaderMalformed);
    let r = request(&field, "GET", &list, &signed_for("ap-southeast-2"), b"");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("<Region>eu-west-1</Region>") && r.text().contains("'ap-southeast-2' is wrong"), "{}", r.text());
    assert_eq!(r.header("x-amz-bucket-region").as_deref(), Some("eu-west-1"));

    // Signed for the bucket's region: the store answers.
    let r = request(&field, "GET", &list, &signed_for("eu-west-1"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("ListBucketResult"));
    let c = field.counts();
    assert_eq!((c.region_answers, c.of(RequestKind::List), c.of(RequestKind::Head)), (3, 3, 1));
}

#[test]
fn faults_answer_a_chosen_share_of_chosen_requests() {
    let field = FieldServer::start();
    let b = bucket("faults");
    let auth = signed_for("us-east-1");
    field.set_faults(
        1,
        vec![
            Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut], 1.0),
            Fault::new(FaultAction::SlowDown, &[RequestKind::List], 1.0),
            Fault::new(FaultAction::InternalError, &[RequestKind::Head], 1.0),
        ],
    );
    let r = request(&field, "PUT", &format!("/{b}/lock"), &format!("{auth}If-None-Match: *\r\n"), b"mine");
    assert_eq!(r.status, 409);
    assert!(r.text().contains("<Code>ConditionalRequestConflict</Code>"));
    // The conflict did not write.
    let r = request(&field, "GET", &format!("/{b}/lock"), &auth, b"");
    assert_eq!(r.status, 404);
    // An unconditional write is no conditional write: it passes.
    let r = request(&field, "PUT", &format!("/{b}/plain"), &auth, b"data");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(&field, "GET", &format!("/{b}?list-type=2"), &auth, b"");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("<Code>SlowDown</Code>"));
    let r = request(&field, "HEAD", &format!("/{b}/plain"), &auth, b"");
    assert_eq!(r.status, 500);
    let c = field.counts();
    assert_eq!(c.faults, 3);
    assert_eq!((c.of(RequestKind::ConditionalPut), c.of(RequestKind::Put), c.of(RequestKind::Get)), (1, 1, 1));
    assert_eq!(c.bytes_up, 8, "both request bodies were read");

    // A share of 30 % with a fixed seed: the same requests fail each time.
    let outcomes = |seed| {
        field.set_faults(seed, vec![Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut], 0.3)]);
        (0..20).map(|i| request(&field, "PUT", &format!("/{b}/c{seed}-{i}"), &format!("{auth}If-None-Match: *\r\n"), b"x").status).collect::<Vec<_>>()
    };
    let first = outcomes(42);
    assert!(first.contains(&409) && first.contains(&200), "{first:?}");
    field.set_faults(42, vec![Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut], 0.3)]);
    let again: Vec<u16> =
        (0..20).map(|i| request(&field, "PUT", &format!("/{b}/d-{i}"), &format!("{auth}If-None-Match: *\r\n"), b"x").status).collect();
    assert_eq!(first, again);
}

#[test]
fn a_response_is_reset_mid_body_or_stalls_first() {
    let field = FieldServer::start();
    let b = bucket("reset");
    let auth = signed_for("us-east-1");
    let data = vec![7u8; 100_000];
    assert_eq!(request(&field, "PUT", &format!("/{b}/big"), &auth, &data).status, 200);
    field.set_faults(3, vec![Fault::new(FaultAction::ResetMidBody, &[RequestKind::Get], 1.0)]);
    let r = request(&field, "GET", &format!("/{b}/big"), &auth, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("100000"));
    // Cut at half; what was still buffered is lost with the connection.
    assert!(r.body.len() <= 50_000, "cut short: {}", r.body.len());
    // A ranged GET is another kind: untouched.
    let r = request(&field, "GET", &format!("/{b}/big"), &format!("{auth}Range: bytes=0-999\r\n"), b"");
    assert_eq!((r.status, r.body.len(), r.broken), (206, 1000, false));
    field.set_faults(3, vec![Fault::new(FaultAction::Stall(Duration::from_millis(200)), &[RequestKind::RangedGet], 1.0)]);
    let r = request(&field, "GET", &format!("/{b}/big"), &format!("{auth}Range: bytes=0-999\r\n"), b"");
    assert_eq!(r.status, 206);
    // Half the range flowed (and was flushed while the response stalled).
    assert_eq!(r.body.len(), 500);
    field.clear_faults();
    // Latency and a bandwidth cap change nothing but time.
    field.set_latency(Duration::from_millis(5), Duration::from_millis(5));
    field.set_bandwidth(Some(1 << 20));
    field.reset_counts();
    let r = request(&field, "GET", &format!("/{b}/big"), &auth, b"");
    assert_eq!((r.status, r.body, r.broken), (200, data, false));
    let c = field.counts();
    assert_eq!((c.bytes_down, c.of(RequestKind::Get), c.connections), (100_000, 1, 1));
}

#[test]
fn tls_with_the_test_ca_directly_and_through_connect() {
    let field = FieldServer::start_tls();
    assert!(field.url.starts_with("https://127.0.0.1:"));
    let pem = std::fs::read_to_string(field.ca_bundle().unwrap()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let b = bucket("tls");
    let r = request(&field, "GET", &format!("/{b}?list-type=2"), &signed_for("us-east-1"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(field.counts().tls_handshakes, 1);

    // As a forward proxy: CONNECT to the TLS endpoint, then TLS inside.
    let ca = field.ca().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tunnelled = rt.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(field.authority()).await.unwrap();
        let connect = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", field.authority());
        tcp.write_all(connect.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "proxy closed");
            head.push(byte[0]);
        }
        assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        let tls = tokio_rustls::TlsConnector::from(ca.client_config());
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = tls.connect(name, tcp).await.expect("TLS through the tunnel");
        let raw = format!("GET /{b}?list-type=2 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{}\r\n", field.authority(), signed_for("us-east-1"));
        exchange(stream, &raw, b"").await
    });
    assert_eq!(tunnelled.status, 200);
    let c = field.counts();
    assert_eq!((c.connects, c.tls_handshakes, c.of(RequestKind::List)), (1, 2, 2));

    // A proxy that refuses.
    field.set_refuse_proxy(true);
    let refused = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(field.authority()).await.unwrap();
        exchange(tcp, &format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n", field.authority()), b"").await
    });
    assert_eq!(refused.status, 403);
}

#[test]
fn concurrent_conditional_writes_to_one_key_have_one_winner() {
    let field = FieldServer::start();
    let b = bucket("race");
    let auth = signed_for("us-east-1");
    let first = request(&field, "PUT", &format!("/{b}/manifest"), &auth, b"v0");
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("an ETag");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (field, b, auth, etag) = (&field, &b, &auth, &etag);
                s.spawn(move || {
                    request(field, "PUT", &format!("/{b}/manifest"), &format!("{auth}If-Match: {etag}\r\n"), format!("w{i}").as_bytes()).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 7, "{statuses:?}");
}

#[test]
fn the_critical_path_counts_requests_waited_for_one_after_the_other() {
    let field = FieldServer::start_tls();
    let b = bucket("waves");
    let auth = signed_for("us-east-1");
    assert_eq!(request(&field, "PUT", &format!("/{b}/x"), &auth, b"x").status, 200);
    // 40 ms each way: a new connection pays the TCP and TLS handshakes too.
    field.set_latency(Duration::from_millis(20), Duration::from_millis(20));
    field.reset_counts();
    // Three at once (each on its own new connection), twice; then one alone.
    for _ in 0..2 {
        std::thread::scope(|s| {
            for path in [format!("/{b}/x"), format!("/{b}?list-type=2"), format!("/{b}/missing")] {
                let (field, auth) = (&field, &auth);
                s.spawn(move || request(field, "GET", &path, auth, b""));
            }
        });
    }
    let r = request(&field, "HEAD", &format!("/{b}/x"), &auth, b"");
    assert_eq!(r.status, 200);
    let c = field.counts();
    assert_eq!((c.total(), c.connections, c.tls_handshakes), (7, 7, 7), "{c:?}");
    assert_eq!(c.critical_path, 3, "{:#?}", field.requests());
    let requests = field.requests();
    assert_eq!(requests.len(), 7);
    assert!(requests.iter().all(|r| r.end.is_some_and(|e| e >= r.start + Duration::from_millis(40))), "{requests:#?}");
    // A part of them: the GETs of the object alone are two steps.
    let gets: Vec<RequestRecord> = requests.into_iter().filter(|r| r.kind == RequestKind::Get && r.key.as_deref() == Some("x")).collect();
    assert_eq!(critical_path(&gets), 2);
    field.reset_counts();
    assert_eq!((field.counts().critical_path, field.requests().len()), (0, 0));
}

#[test]
fn conditional_writes_enforced_ignored_or_not_implemented() {
    let field = FieldServer::start();
    let b = bucket("conditional");
    let auth = signed_for("us-east-1");
    let key = format!("/{b}/k");
    let create = format!("{auth}If-None-Match: *\r\n");
    let stale = format!("{auth}If-Match: \"00000000000000000000000000000000\"\r\n");
    assert_eq!(request(&field, "PUT", &key, &create, b"one").status, 200);
    // S3 (and moto behind the field server) refuses a second create and a stale If-Match.
    assert_eq!(request(&field, "PUT", &key, &create, b"two").status, 412);
    assert_eq!(request(&field, "PUT", &key, &stale, b"two").status, 412);

    // Ignored: the headers never reach the store, which writes.
    field.set_conditional_writes(ConditionalWrites::Ignored);
    assert_eq!(request(&field, "PUT", &key, &create, b"two").status, 200);
    assert_eq!(request(&field, "PUT", &key, &stale, b"three").status, 200);
    assert_eq!(request(&field, "GET", &key, &auth, b"").text(), "three");

    // NotImplemented: 501 with S3's XML error, nothing written; unconditional writes go through.
    field.set_conditional_writes(ConditionalWrites::NotImplemented);
    let r = request(&field, "PUT", &key, &stale, b"four");
    assert_eq!(r.status, 501, "{}", r.head);
    assert!(r.text().contains("<Code>NotImplemented</Code>") && r.text().contains("<Header>If-Match</Header>"), "{}", r.text());
    assert_eq!(request(&field, "GET", &key, &auth, b"").text(), "three");
    assert_eq!(request(&field, "PUT", &key, &auth, b"five").status, 200);
    assert_eq!(c_of(&field, RequestKind::ConditionalPut), 6);
}

fn c_of(field: &FieldServer, kind: RequestKind) -> u64 {
    field.counts().of(kind)
}

/// The access key id and service of a SigV4 signature, from the header or a
/// presigned URL.
#[test]
fn signer_of_a_request() {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        "AWS4-HMAC-SHA256 Credential=ASIAX1/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=ab".parse().unwrap(),
    );
    assert_eq!(server::signer(&h, ""), Some(("s3".to_string(), "ASIAX1".to_string())));
    let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDQ%2F20260101%2Fus-east-1%2Fsts%2Faws4_request&X-Amz-Signature=x";
    assert_eq!(server::signer(&http::HeaderMap::new(), q), Some(("sts".to_string(), "AKIDQ".to_string())));
    assert_eq!(server::signer(&http::HeaderMap::new(), ""), None);
}
