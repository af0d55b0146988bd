//! The metrics endpoint: `GET /metrics` (and `HEAD`) over HTTP/1.1 answers the registry in the
//! Prometheus text format (version 0.0.4), encoded at each scrape. Any other path is 404, any
//! other method 405. One task per connection; a connection that fails is dropped quietly.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The path Prometheus scrapes.
pub const PATH: &str = "/metrics";

/// Serves `registry` on `listener` for as long as the task runs.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "metrics endpoint: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&request, &registry)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "metrics connection ended with an error");
            }
        });
    }
}

fn plain(status: http::StatusCode, text: &'static str) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The answer to one request.
pub fn answer<B>(request: &http::Request<B>, registry: &Registry) -> http::Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return plain(http::StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n");
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return plain(http::StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
    }
    let mut text = String::with_capacity(16 << 10);
    if let Err(err) = prometheus_text::encode(&mut text, registry) {
        tracing::warn!(error = %err, "cannot encode the metrics");
        return plain(http::StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n");
    }
    let mut response = http::Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(prometheus_text::CONTENT_TYPE));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(path).body(()).unwrap()
    }

    #[test]
    fn metrics_path_answers_the_text_format_with_process_metrics() {
        let counter: Counter = Counter::default();
        let registry = crate::registry(|r| r.register("widgets", "Widgets made", counter.clone()));
        counter.inc_by(3);
        let response = answer(&get("/metrics"), &registry);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], prometheus_text::CONTENT_TYPE);
        let text = String::from_utf8(futures_body(response)).unwrap();
        assert!(text.contains("# TYPE crisp_widgets_total counter"), "{text}");
        assert!(text.contains("\ncrisp_widgets_total 3\n"), "{text}");
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(&format!("\n{name}")), "no {name} in {text}");
        }
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let registry = crate::registry(|_| {});
        assert_eq!(answer(&get("/"), &registry).status(), 404);
        let post = http::Request::post("/metrics").body(()).unwrap();
        assert_eq!(answer(&post, &registry).status(), 405);
    }

    fn futures_body(response: http::Response<Full<Bytes>>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async { response.into_body().collect().await.unwrap().to_bytes().to_vec() })
    }

    #[tokio::test]
    async fn busy_address_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let err = crate::start(Some(address), |_| {}).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&address.to_string()) && message.contains("in use"), "{message}");
        assert!(crate::start(None, |_| {}).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn endpoint_serves_a_scrape_over_tcp_until_dropped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let counter: Counter = Counter::default();
        let endpoint =
            crate::start(Some("127.0.0.1:0".parse().unwrap()), |r| r.register("scrapes", "Scrapes", counter.clone()))
                .await
                .unwrap()
                .unwrap();
        counter.inc();
        let mut stream = tokio::net::TcpStream::connect(endpoint.address()).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("\ncrisp_scrapes_total 1\n"), "{text}");
        let address = endpoint.address();
        drop(endpoint);
        tokio::task::yield_now().await;
        assert!(tokio::net::TcpStream::connect(address).await.is_err(), "still serving after the drop");
    }
}
