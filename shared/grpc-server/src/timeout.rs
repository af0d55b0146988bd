//! What a gRPC server reads off a request about time: the caller's `grpc-timeout`.
//!
//! The header is up to eight ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as the gRPC
//! over HTTP/2 protocol defines it. A value that is not that is no deadline at all (the call is
//! served as if it had none), as grpc-go's server treats it.

use std::time::Duration;

/// The header's name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value: `None` for anything that is not a valid one.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Eight digits at most: the sum cannot overflow.
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's timeout from a request's headers (or tonic metadata's `into_headers` view).
pub fn from_headers(headers: &http::HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get(GRPC_TIMEOUT)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_grpc_timeout(b"99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        assert_eq!(parse_grpc_timeout(b"0m"), Some(Duration::ZERO));
    }

    #[test]
    fn malformed_values_are_no_deadline() {
        for bad in [&b""[..], b"S", b"123456789S", b"10x", b"-1S", b"+1S", b"1.5S", b" 1S", b"1s", b"\xff1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn read_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        headers.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("250m"));
        assert_eq!(from_headers(&headers), Some(Duration::from_millis(250)));
    }
}
