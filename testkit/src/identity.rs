//! Loopback identity services for the credential-chain tests: a container
//! credentials endpoint (ECS, CodeBuild, EKS Pod Identity), an EC2
//! instance metadata service (IMDSv2) and an AWS SSO portal
//! (`GetRoleCredentials`), each handing out temporary credentials with
//! their own access key ids (so a test tells which source signed a request
//! at the field server) and recording every request it got.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A request an identity service got.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// Which service a server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Container,
    Imds,
    SsoPortal,
}

struct State {
    role: Role,
    /// How long each credential handed out is valid.
    lifetime: Mutex<Duration>,
    prefix: String,
    issued: Mutex<u32>,
    seen: Mutex<Vec<SeenRequest>>,
    /// The token a container endpoint or the SSO portal requires.
    token: Option<String>,
}

/// A loopback identity service (stopped when dropped).
pub struct IdentityServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The name of the role an [`IdentityServer::imds`] serves.
pub const IMDS_ROLE: &str = "git-s3-test-role";
/// The IMDSv2 session token an [`IdentityServer::imds`] hands out.
const IMDS_TOKEN: &str = "imds-session-token";

impl IdentityServer {
    /// A container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`
    /// = [`IdentityServer::url`] + any path) that answers only requests
    /// whose `Authorization` is `token`. Access keys `ASIACONTAINER0001`, …
    pub fn container(token: &str) -> IdentityServer {
        IdentityServer::start(Role::Container, "ASIACONTAINER", Some(token.to_string()))
    }

    /// An IMDSv2 service (`AWS_EC2_METADATA_SERVICE_ENDPOINT`): a session
    /// token from `PUT /latest/api/token`, then the role [`IMDS_ROLE`] and its
    /// credentials, only with that token. Access keys `ASIAIMDS0001`, …
    pub fn imds() -> IdentityServer {
        IdentityServer::start(Role::Imds, "ASIAIMDS", None)
    }

    /// An SSO portal (`AWS_ENDPOINT_URL_SSO`) serving `GetRoleCredentials`
    /// (`GET /federation/credentials`) to the bearer of `access_token`.
    /// Access keys `ASIASSO0001`, …
    pub fn sso_portal(access_token: &str) -> IdentityServer {
        IdentityServer::start(Role::SsoPortal, "ASIASSO", Some(access_token.to_string()))
    }

    fn start(role: Role, prefix: &str, token: Option<String>) -> IdentityServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an identity server");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("identity server address");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("identity server runtime");
        let state = Arc::new(State {
            role,
            lifetime: Mutex::new(Duration::from_secs(3600)),
            prefix: prefix.to_string(),
            issued: Mutex::new(0),
            seen: Mutex::new(Vec::new()),
            token,
        });
        let s = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        IdentityServer { url: format!("http://{addr}"), state, runtime: Some(runtime) }
    }

    /// Credentials handed out from now on expire after `lifetime`.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.state.lifetime.lock().unwrap_or_else(|p| p.into_inner()) = lifetime;
    }

    /// How many credentials were handed out.
    pub fn issued(&self) -> u32 {
        *self.state.issued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The access key id of the `n`th credentials (from 1).
    pub fn access_key(&self, n: u32) -> String {
        format!("{}{n:04}", self.state.prefix)
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn rfc3339(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t).fmt(aws_smithy_types::date_time::Format::DateTime).expect("a formattable time")
}

impl State {
    /// The next credentials: (access key id, expiry).
    fn issue(&self) -> (String, SystemTime) {
        let mut n = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        let lifetime = *self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        (format!("{}{:04}", self.prefix, *n), SystemTime::now() + lifetime)
    }
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let seen = SeenRequest {
        method: req.method().to_string(),
        path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: req.headers().iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
    };
    state.seen.lock().unwrap_or_else(|p| p.into_inner()).push(seen.clone());
    let path = req.uri().path().to_string();
    Ok(match state.role {
        Role::Container => {
            if seen.header("authorization") != state.token.as_deref() {
                return Ok(respond(StatusCode::FORBIDDEN, "{\"Code\":\"AccessDenied\",\"Message\":\"bad token\"}".to_string()));
            }
            let (key, expiry) = state.issue();
            let body = format!(
                "{{\"AccessKeyId\":\"{key}\",\"SecretAccessKey\":\"secret-{key}\",\"Token\":\"token-{key}\",\"Expiration\":\"{}\",\"RoleArn\":\"arn:aws:iam::123456789012:role/container\"}}",
                rfc3339(expiry)
            );
            respond(StatusCode::OK, body)
        }
        Role::Imds => {
            if req.method() == http::Method::PUT && path == "/latest/api/token" {
                let mut r = respond(StatusCode::OK, IMDS_TOKEN.to_string());
                r.headers_mut().insert("x-aws-ec2-metadata-token-ttl-seconds", http::HeaderValue::from_static("21600"));
                return Ok(r);
            }
            if seen.header("x-aws-ec2-metadata-token") != Some(IMDS_TOKEN) {
                return Ok(respond(StatusCode::UNAUTHORIZED, String::new()));
            }
            match path.as_str() {
                "/latest/meta-data/iam/security-credentials/" | "/latest/meta-data/iam/security-credentials" => {
                    respond(StatusCode::OK, IMDS_ROLE.to_string())
                }
                p if p == format!("/latest/meta-data/iam/security-credentials/{IMDS_ROLE}") => {
                    let (key, expiry) = state.issue();
                    let body = format!(
                        "{{\"Code\":\"Success\",\"LastUpdated\":\"{}\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"{key}\",\"SecretAccessKey\":\"secret-{key}\",\"Token\":\"token-{key}\",\"Expiration\":\"{}\"}}",
                        rfc3339(SystemTime::now()),
                        rfc3339(expiry)
                    );
                    respond(StatusCode::OK, body)
                }
                _ => respond(StatusCode::NOT_FOUND, String::new()),
            }
        }
        Role::SsoPortal => {
            if path != "/federation/credentials" || seen.header("x-amz-sso_bearer_token") != state.token.as_deref() {
                let body = "{\"message\":\"Session token not found or invalid\"}".to_string();
                let mut r = respond(StatusCode::UNAUTHORIZED, body);
                r.headers_mut().insert("x-amzn-errortype", http::HeaderValue::from_static("UnauthorizedException"));
                return Ok(r);
            }
            let (key, expiry) = state.issue();
            let millis = expiry.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            let body = format!(
                "{{\"roleCredentials\":{{\"accessKeyId\":\"{key}\",\"secretAccessKey\":\"secret-{key}\",\"sessionToken\":\"token-{key}\",\"expiration\":{millis}}}}}"
            );
            let mut r = respond(StatusCode::OK, body);
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
    })
}

/// An SSO token cache entry for `sso_session` (the file name is the SHA-1
/// of the session name, as the AWS CLI writes it) under `home`, valid
/// until `expires_at`.
pub fn write_sso_token(home: &std::path::Path, session_name: &str, access_token: &str, expires_at: SystemTime) {
    let dir = home.join(".aws/sso/cache");
    std::fs::create_dir_all(&dir).expect("create the SSO cache");
    let name = format!("{}.json", sha1_hex(session_name.as_bytes()));
    let body = format!(
        "{{\"accessToken\":\"{access_token}\",\"expiresAt\":\"{}\",\"region\":\"us-east-1\",\"startUrl\":\"https://example.awsapps.com/start\"}}",
        rfc3339(expires_at)
    );
    std::fs::write(dir.join(name), body).expect("write the SSO token");
}

/// SHA-1 (the SSO cache's file names), small and local: testkit has no
/// hashing crate.
fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha1_of_known_strings() {
        assert_eq!(super::sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(super::sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }
}
