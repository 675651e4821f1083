//! Passing requests on: to the store behind the field server (moto), and,
//! as a forward proxy, to the origin a client names (`CONNECT` tunnels and
//! `GET http://…`), loopback only.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::BoxError;

pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type Upstream = Client<HttpConnector, Body>;

pub(crate) fn upstream_client() -> Upstream {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "expect"];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Sends `req` to `authority` (`host:port`, plain HTTP), keeping its path,
/// query, headers and body.
pub(crate) async fn send(client: &Upstream, authority: &str, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = format!("http://{authority}{path}").parse()?;
    strip_hop_by_hop(&mut parts.headers);
    let mut resp = client.request(Request::from_parts(parts, body)).await?;
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

/// True for `127.x.y.z:port`, `localhost:port` and `[::1]:port`.
pub(crate) fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// Joins the upgraded client connection to a TCP connection to `target`
/// until either side closes.
pub(crate) async fn tunnel(req: Request<Incoming>, target: String) {
    let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
    let mut client = TokioIo::new(upgraded);
    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_only() {
        assert!(super::is_loopback("127.0.0.1:9000"));
        assert!(super::is_loopback("127.1.2.3:1"));
        assert!(super::is_loopback("localhost:443"));
        assert!(super::is_loopback("[::1]:443"));
        assert!(!super::is_loopback("s3.amazonaws.com:443"));
        assert!(!super::is_loopback("10.0.0.1:443"));
    }
}
