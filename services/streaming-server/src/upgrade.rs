//! The HTTP/1.1 upgrades a streaming URL accepts, and the subprotocol negotiation of each:
//!
//! - SPDY/3.1 (`Connection: Upgrade`, `Upgrade: SPDY/3.1`): the client lists the protocols it
//!   speaks in `X-Stream-Protocol-Version` headers, most preferred first; the first one the
//!   server speaks is answered in the 101. None in common: 403 with the server's list in
//!   `X-Accepted-Stream-Protocol-Versions`. None offered: 400.
//! - WebSocket (`Upgrade: websocket`, RFC 6455): the client lists protocols in
//!   `Sec-WebSocket-Protocol`; the first the server speaks is chosen; none offered means the
//!   plain binary channel protocol (""), as the kubelet's wsstream does.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

pub type Body = Full<Bytes>;

pub const STREAM_PROTOCOL: &str = "x-stream-protocol-version";
pub const ACCEPTED_STREAM_PROTOCOLS: &str = "x-accepted-stream-protocol-versions";

/// A plain response with a text body.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The values of a header that may be repeated or comma-separated, in order.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

pub fn is_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "upgrade") && has_token(headers, header::UPGRADE, "websocket")
}

/// The SPDY handshake: the negotiated protocol and the 101 to answer, or the refusal.
pub fn spdy(headers: &HeaderMap, supported: &[&str]) -> Result<(String, Response<Body>), Box<Response<Body>>> {
    if !has_token(headers, header::CONNECTION, "upgrade") || !has_token(headers, header::UPGRADE, "SPDY/3.1") {
        return Err(Box::new(text(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request")));
    }
    let offered = list(headers, STREAM_PROTOCOL);
    if offered.is_empty() {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {STREAM_PROTOCOL} is required"),
        )));
    }
    let Some(chosen) = offered.iter().find(|p| supported.contains(&p.as_str())) else {
        let mut response = text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
            ),
        );
        for p in supported {
            if let Ok(v) = HeaderValue::from_str(p) {
                response.headers_mut().append(ACCEPTED_STREAM_PROTOCOLS, v);
            }
        }
        return Err(Box::new(response));
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(chosen) {
        h.insert(STREAM_PROTOCOL, v);
    }
    Ok((chosen.clone(), response))
}

/// The WebSocket handshake: the negotiated protocol ("" if the client offered none) and the
/// 101 to answer, or the refusal.
pub fn websocket(headers: &HeaderMap, supported: &[&str]) -> Result<(String, Response<Body>), Box<Response<Body>>> {
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec());
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| version_ok) else {
        return Err(Box::new(text(StatusCode::BAD_REQUEST, "unable to upgrade: not a WebSocket version 13 handshake")));
    };
    let offered = list(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    let chosen = if offered.is_empty() && supported.contains(&"") {
        String::new()
    } else if let Some(p) = offered.iter().find(|p| supported.contains(&p.as_str())) {
        p.clone()
    } else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: none of the WebSocket protocols {offered:?} is supported: {supported:?}"),
        )));
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !chosen.is_empty()
        && let Ok(v) = HeaderValue::from_str(&chosen)
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    Ok((chosen, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const SERVER: &[&str] = &["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"];

    #[test]
    fn spdy_picks_the_clients_first_protocol_the_server_speaks() {
        let h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            (STREAM_PROTOCOL, "v5.channel.k8s.io"),
            (STREAM_PROTOCOL, "v3.channel.k8s.io"),
            (STREAM_PROTOCOL, "v4.channel.k8s.io"),
        ]);
        let (chosen, response) = spdy(&h, SERVER).unwrap();
        assert_eq!(chosen, "v3.channel.k8s.io");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[STREAM_PROTOCOL], "v3.channel.k8s.io");
        assert_eq!(response.headers()[header::UPGRADE], "SPDY/3.1");
    }

    #[test]
    fn spdy_without_a_common_protocol_is_forbidden_and_lists_the_servers() {
        let h = headers(&[("connection", "upgrade"), ("upgrade", "spdy/3.1"), (STREAM_PROTOCOL, "v9.channel.k8s.io")]);
        let response = spdy(&h, SERVER).unwrap_err();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let accepted: Vec<_> = response.headers().get_all(ACCEPTED_STREAM_PROTOCOLS).iter().collect();
        assert_eq!(accepted.len(), 3);
        let no_upgrade = headers(&[(STREAM_PROTOCOL, "v4.channel.k8s.io")]);
        assert_eq!(spdy(&no_upgrade, SERVER).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn websocket_answers_the_rfc_6455_accept_key_and_the_chosen_protocol() {
        // RFC 6455 section 1.3's example key and answer.
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "v5.channel.k8s.io, v4.channel.k8s.io"),
        ]);
        assert!(is_websocket(&h));
        let (chosen, response) = websocket(&h, &["", "v4.channel.k8s.io"]).unwrap();
        assert_eq!(chosen, "v4.channel.k8s.io");
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_PROTOCOL], "v4.channel.k8s.io");
    }
}
