//! The field server's connections and requests: TLS or plain on one port
//! (told apart by the first byte), forward-proxy requests, and S3 requests
//! with the regions, faults, latency and bandwidth of the settings.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::aws::{self, AwsHost, AwsRequest};
use super::faults::FaultAction;
use super::forward::{self, Body};
use super::kinds::{classify, has_param, query_param, RequestKind};
use super::policy;
use super::regions::{signing_region, temporary_location, temporary_redirect_body, wrong_region_answer, RegionAnswer};
use super::shaping::{Cut, Direction, Shaped};
use super::timeline::{ConnectionStart, Finish, Timed};
use super::{BoxError, ConditionalWrites, Shared};

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = connection(tcp, shared, tls).await;
        });
    }
}

async fn connection(tcp: TcpStream, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) -> Result<(), BoxError> {
    shared.counters.connection();
    let conn = Arc::new(ConnectionStart::new());
    let _ = tcp.set_nodelay(true);
    // The TCP handshake: one round trip.
    shared.round_trip().await;
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    match tls {
        Some(acceptor) if n == 1 && first[0] == 0x16 => {
            let stream = acceptor.accept(tcp).await?;
            shared.counters.tls_handshake();
            shared.round_trip().await;
            conn.ready();
            serve_io(stream, shared, conn, false).await
        }
        _ => {
            conn.ready();
            serve_io(tcp, shared, conn, false).await
        }
    }
}

/// Serves HTTP/1.1 on `io`; `tunnelled`: a TLS connection inside a
/// `CONNECT` tunnel to one of S3's host names.
async fn serve_io<I>(io: I, shared: Arc<Shared>, conn: Arc<ConnectionStart>, tunnelled: bool) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), conn.clone(), tunnelled, req));
    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).with_upgrades().await?;
    Ok(())
}

fn full(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r
}

fn xml(status: StatusCode, body: String) -> Response<Body> {
    let len = body.len();
    let mut r = full(status, body);
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    r.headers_mut().insert("x-amz-request-id", http::HeaderValue::from_static("FIELD0000000000"));
    if len == 0 {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    }
    r
}

/// Reads a request body to its end, counting it, keeping nothing.
async fn drain(shared: &Shared, mut body: Incoming) {
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            shared.counters.add_bytes(Direction::Up, d.len() as u64);
        }
    }
}

async fn handle(shared: Arc<Shared>, conn: Arc<ConnectionStart>, tunnelled: bool, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let start = conn.request_start();
    if req.method() == Method::CONNECT {
        return Ok(connect(&shared, req));
    }
    // Amazon S3's own names: in a tunnel (the `Host`), or a plain proxy request.
    let absolute = req.uri().scheme().is_some() && req.uri().authority().is_some();
    let host = match req.uri().authority().filter(|_| absolute) {
        Some(a) => Some(a.to_string()),
        None => req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    if let Some((host, name)) = host.and_then(|h| aws::parse_host(&h).map(|a| (h, a))) {
        if absolute {
            shared.counters.proxied();
        }
        return aws_request(shared, req, host, name, tunnelled, start).await;
    }
    if let (Some(_), Some(authority)) = (req.uri().scheme(), req.uri().authority()) {
        // A forward-proxy request (`GET http://host/path`).
        shared.counters.proxied();
        let authority = authority.to_string();
        if authority != shared.self_authority {
            return proxy_plain(&shared, req, &authority).await;
        }
    }
    s3(shared, req, start).await
}

/// The answer, its end recorded in the timeline when its body is done.
fn timed(resp: Response<Body>, finish: Option<Finish>) -> Response<Body> {
    resp.map(|b| Timed::new(b, finish).boxed_unsync())
}

/// `CONNECT host:port`: a tunnel to a loopback target, or to the field
/// server itself as S3 (TLS) for one of S3's names, unless refused.
fn connect(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    shared.counters.connect();
    let target = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    if shared.settings().refuse_connect {
        return full(StatusCode::FORBIDDEN, "the field server refuses this tunnel\n".to_string());
    }
    if aws::parse_host(&target).is_some() {
        let Some(acceptor) = shared.tls.clone() else {
            return full(StatusCode::FORBIDDEN, "the field server answers as S3 over TLS only when started with TLS\n".to_string());
        };
        tokio::spawn(aws_tunnel(req, acceptor, shared.clone()));
        return empty(StatusCode::OK);
    }
    if !forward::is_loopback(&target) {
        return full(StatusCode::FORBIDDEN, "the field server refuses this tunnel\n".to_string());
    }
    tokio::spawn(forward::tunnel(req, target));
    empty(StatusCode::OK)
}

/// A `CONNECT` tunnel to one of S3's names: TLS with the run's CA, then S3.
async fn aws_tunnel(req: Request<Incoming>, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
    let Ok(stream) = acceptor.accept(TokioIo::new(upgraded)).await else { return };
    shared.counters.tls_handshake();
    let conn = Arc::new(ConnectionStart::new());
    conn.ready();
    let _ = serve_io(stream, shared, conn, true).await;
}

/// A request to one of S3's names: recorded, made path style for the store,
/// then served as any S3 request.
async fn aws_request(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    host: String,
    name: AwsHost,
    tunnelled: bool,
    start: std::time::Instant,
) -> Result<Response<Body>, BoxError> {
    let path = aws::path_style(&name, req.uri().path());
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut record = AwsRequest::new(&host, &name, tunnelled, req.method().as_str(), &path_and_query, req.headers());
    let (mut parts, body) = req.into_parts();
    parts.uri = path_and_query.parse()?;
    let resp = s3(shared.clone(), Request::from_parts(parts, body), start).await?;
    record.status = resp.status().as_u16();
    shared.record_aws(record);
    Ok(resp)
}

/// A plain-HTTP proxy request for another origin: passed on untouched.
async fn proxy_plain(shared: &Shared, req: Request<Incoming>, authority: &str) -> Result<Response<Body>, BoxError> {
    if shared.settings().refuse_connect || !forward::is_loopback(authority) {
        return Ok(full(StatusCode::FORBIDDEN, "the field server refuses to proxy this request\n".to_string()));
    }
    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
    match forward::send(&shared.upstream_client, authority, req).await {
        Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
        Err(e) => Ok(full(StatusCode::BAD_GATEWAY, format!("field proxy: {e}\n"))),
    }
}

/// An S3 request: region check, fault draw, then the store's answer,
/// delayed and shaped.
async fn s3(shared: Arc<Shared>, mut req: Request<Incoming>, start: std::time::Instant) -> Result<Response<Body>, BoxError> {
    let settings = shared.settings();
    let query = req.uri().query().unwrap_or("").to_string();
    let request = classify(req.method(), req.uri().path(), &query, req.headers());
    shared.counters.request(request.kind);
    if let Some((service, key)) = signer(req.headers(), &query) {
        shared.counters.signed(service, key);
    }
    // Dropped on an early return (a reset): the request ends there.
    let finish = shared.counters.timeline.begin(request.kind, req.method().as_str(), request.bucket.clone(), request.key.clone(), start);
    let signed_region = signing_region(req.headers(), &query);
    let head = req.method() == Method::HEAD;
    sleep(settings.latency_up).await;

    if let Some(bucket) = &request.bucket {
        if let (Some(actual), Some(signed)) = (settings.regions.get(bucket), signed_region.clone()) {
            if *actual != signed {
                let method = req.method().clone();
                drain(&shared, req.into_body()).await;
                shared.counters.region_answer();
                sleep(settings.latency_down).await;
                let (status, body) = wrong_region_answer(settings.region_answer, &method, bucket, actual, &signed);
                let mut r = xml(status, body);
                r.headers_mut().insert("x-amz-bucket-region", actual.parse()?);
                if settings.region_answer == RegionAnswer::TemporaryRedirect {
                    r.headers_mut().insert(http::header::LOCATION, temporary_location(bucket, actual, &request.path(), &query).parse()?);
                }
                return Ok(timed(r, finish));
            }
        }
    }

    if let Some((status, code, message)) = policy::refusal(&settings.policy, request.kind, req.headers()) {
        drain(&shared, req.into_body()).await;
        sleep(settings.latency_down).await;
        let body = if head {
            String::new()
        } else {
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>FIELD0POLICY0000</RequestId><HostId>field</HostId></Error>")
        };
        return Ok(timed(xml(status, body), finish));
    }

    let fault = shared.draw(&request);
    if let Some(f) = &fault {
        shared.counters.fault();
        if let Some((status, code, message)) = f.error_answer() {
            drain(&shared, req.into_body()).await;
            sleep(settings.latency_down).await;
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>FIELD0FAULT00000</RequestId><HostId>field</HostId></Error>"
            );
            return Ok(timed(xml(status, body), finish));
        }
        match f {
            FaultAction::NoResponse(d) => {
                drain(&shared, req.into_body()).await;
                sleep(*d).await;
                return Err("field server: no response, connection reset".into());
            }
            FaultAction::TemporaryRedirect => {
                drain(&shared, req.into_body()).await;
                sleep(settings.latency_down).await;
                // The bucket's own region (the client signed for it, or S3 knows better).
                let bucket = request.bucket.clone().unwrap_or_default();
                let region = settings.regions.get(&bucket).cloned().or(signed_region).unwrap_or_else(|| "us-east-1".to_string());
                let body = if head { String::new() } else { temporary_redirect_body(&bucket, &region) };
                let mut r = xml(StatusCode::TEMPORARY_REDIRECT, body);
                r.headers_mut().insert("x-amz-bucket-region", region.parse()?);
                r.headers_mut().insert(http::header::LOCATION, temporary_location(&bucket, &region, &request.path(), &query).parse()?);
                return Ok(timed(r, finish));
            }
            FaultAction::ErrorIn200 => {
                drain(&shared, req.into_body()).await;
                sleep(settings.latency_down).await;
                let body = "\n  \n<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message><RequestId>FIELD0ERROR20000</RequestId><HostId>field</HostId></Error>".to_string();
                return Ok(timed(xml(StatusCode::OK, body), finish));
            }
            _ => {}
        }
    }

    // A store that does not do conditional writes: ignores their headers, or says so.
    if request.conditional {
        match settings.conditional_writes {
            ConditionalWrites::Enforced => {}
            ConditionalWrites::Ignored => {
                req.headers_mut().remove(http::header::IF_NONE_MATCH);
                req.headers_mut().remove(http::header::IF_MATCH);
            }
            ConditionalWrites::NotImplemented => {
                let header = if req.headers().contains_key(http::header::IF_NONE_MATCH) { "If-None-Match" } else { "If-Match" };
                drain(&shared, req.into_body()).await;
                sleep(settings.latency_down).await;
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message><Header>{header}</Header><RequestId>FIELD0NOTIMPLMNT</RequestId><HostId>field</HostId></Error>"
                );
                return Ok(timed(xml(StatusCode::NOT_IMPLEMENTED, body), finish));
            }
        }
    }

    // A completed upload is gone in S3: completing it again is `NoSuchUpload`.
    let upload_id = (request.kind == RequestKind::Complete).then(|| query_param(&query, "uploadId")).flatten();
    if let Some(id) = upload_id.as_deref().filter(|id| shared.upload_completed(id)) {
        drain(&shared, req.into_body()).await;
        sleep(settings.latency_down).await;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchUpload</Code><Message>The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.</Message><UploadId>{id}</UploadId><RequestId>FIELD0NOSUCHUPLD</RequestId><HostId>field</HostId></Error>"
        );
        return Ok(timed(xml(StatusCode::NOT_FOUND, body), finish));
    }

    let is_head = req.method() == Method::HEAD;
    let method = req.method().clone();
    // Conditional writes to one key, one at a time (S3's atomic check-and-write).
    let lock = match (&request.bucket, &request.key) {
        (Some(b), Some(k)) if request.conditional => Some(shared.conditional_write_lock(b, k)),
        _ => None,
    };
    let _serialized = match &lock {
        Some(l) => Some(l.lock().await),
        None => None,
    };
    // A server that ignores `encoding-type=url`: the store never sees it.
    let req = if settings.list_ignores_encoding && request.kind == RequestKind::List && has_param(&query, "encoding-type") {
        let (mut parts, body) = req.into_parts();
        let kept: Vec<&str> = query.split('&').filter(|p| p.split('=').next() != Some("encoding-type")).collect();
        let path = parts.uri.path().to_string();
        parts.uri = if kept.is_empty() { path } else { format!("{path}?{}", kept.join("&")) }.parse()?;
        Request::from_parts(parts, body)
    } else {
        req
    };
    // The store sees its own name where the client used a host name: moto
    // reads a bucket from a `Host` with a dot (`s3.example.test`,
    // `bkt.s3.us-east-1.amazonaws.com`). An IP address is passed on as
    // signed: a store that checks signatures (s3s-fs) checks the `Host`.
    let mut req = req;
    if !host_is_ip_address(req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("")) {
        req.headers_mut().insert(http::header::HOST, shared.upstream.parse()?);
    }
    let req = req.map(|b| Shaped::new(b, shared.counters.clone(), Direction::Up, settings.bandwidth, None).boxed_unsync());
    let resp = match forward::send(&shared.upstream_client, &shared.upstream, req).await {
        Ok(r) => r,
        Err(e) => return Ok(timed(full(StatusCode::BAD_GATEWAY, format!("field server: the store did not answer: {e}\n")), finish)),
    };
    if let Some(id) = upload_id.filter(|_| resp.status() == StatusCode::OK) {
        shared.mark_upload_completed(id);
    }
    let resp = resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    // Where moto's answer is not S3's: the times of multipart uploads.
    let list_uploads = method == Method::GET && request.key.is_none() && has_param(&query, "uploads");
    let resp = if request.kind == RequestKind::CreateMultipart && resp.status() == StatusCode::OK {
        shared.upload_times.record(resp).await?
    } else if list_uploads && resp.status() == StatusCode::OK {
        shared.upload_times.fix_listing(resp).await?
    } else {
        resp
    };
    // A body altered on the way, its length kept.
    let resp = if fault == Some(FaultAction::FlipBytes) && resp.status().is_success() && !is_head {
        let (parts, body) = resp.into_parts();
        let data = body.collect().await?.to_bytes();
        let altered = Bytes::from(super::faults::flip_bytes(&data));
        Response::from_parts(parts, Full::new(altered).map_err(|never| match never {}).boxed_unsync())
    } else {
        resp
    };
    let len: u64 = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let cut = match &fault {
        Some(FaultAction::ResetMidBody) => Some(Cut { after: len / 2, stall: None }),
        Some(FaultAction::Stall(d)) => Some(Cut { after: len / 2, stall: Some(*d) }),
        Some(FaultAction::ResetAfter(n)) => Some(Cut { after: (*n).min(len.saturating_sub(1)), stall: None }),
        _ => None,
    };
    if let Some(c) = cut {
        if is_head || len < 2 {
            // No body to cut: the connection breaks before the answer.
            if let Some(d) = c.stall {
                sleep(d).await;
            }
            return Err("field server: connection reset before the response".into());
        }
    }
    sleep(settings.latency_down).await;
    let resp = resp.map(|b| Shaped::new(b, shared.counters.clone(), Direction::Down, settings.bandwidth, cut).boxed_unsync());
    Ok(timed(resp, finish))
}

/// The (service, access key id) of a SigV4 signature: the `Authorization`
/// header's `Credential=AKID/date/region/service/aws4_request`, or a
/// presigned URL's `X-Amz-Credential`.
pub(crate) fn signer(headers: &http::HeaderMap, query: &str) -> Option<(String, String)> {
    let scope = match headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(auth) => auth.split("Credential=").nth(1)?.split([',', ' ']).next()?.to_string(),
        None => query_param(query, "X-Amz-Credential")?.replace("%2F", "/").replace("%2f", "/"),
    };
    let mut parts = scope.split('/');
    let key = parts.next()?.to_string();
    let service = parts.nth(2)?.to_string();
    (!key.is_empty()).then_some((service, key))
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Whether a `Host` header (`host[:port]`, `[v6]:port`) names an IP address.
fn host_is_ip_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn ip_hosts_are_told_from_names() {
        assert!(super::host_is_ip_address("127.0.0.1:9000"));
        assert!(super::host_is_ip_address("[::1]:9000"));
        assert!(super::host_is_ip_address("127.0.0.1"));
        assert!(!super::host_is_ip_address("s3.git-s3.test:9000"));
        assert!(!super::host_is_ip_address("bkt.s3.us-east-1.amazonaws.com"));
        assert!(!super::host_is_ip_address(""));
    }
}
