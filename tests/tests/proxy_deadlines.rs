//! A deadline that expires is the caller's: the call ends `DEADLINE_EXCEEDED` and the image
//! service replica it went to stays in the rotation.

mod proxy_support;

use crisp_testkit::{Stack, StackOptions};
use proxy_support::{RawClient, frame};
use std::time::Duration;
use tonic::Code;

const LIST_IMAGES: &str = "/runtime.v1.ImageService/ListImages";

#[tokio::test]
async fn short_deadlines_beside_normal_calls_cost_no_replica() {
    let mut stack = Stack::start_with(StackOptions { image_replicas: 2, ..StackOptions::default() }).await.unwrap();
    let socket = stack.proxy_socket().to_path_buf();

    // A steady stream of normal calls, each on its own client connection.
    let steady = {
        let client = RawClient::connect(&socket).await.unwrap();
        tokio::spawn(async move {
            let mut ended = Vec::new();
            for _ in 0..300 {
                ended.push(client.call(LIST_IMAGES, frame(&[]), Some("10S")).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ended
        })
    };
    // Beside it, bursts of calls with 1-2 ms deadlines.
    let mut bursts = Vec::new();
    for burst in 0..10 {
        let client = RawClient::connect(&socket).await.unwrap();
        bursts.push(tokio::spawn(async move {
            let calls = (0..40).map(|i| {
                let client = client.clone();
                let timeout = if (burst + i) % 2 == 0 { "1m" } else { "2m" };
                async move { client.call(LIST_IMAGES, frame(&[]), Some(timeout)).await }
            });
            futures_join(calls.collect()).await
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    let mut short = (0, 0);
    for burst in bursts {
        for ended in burst.await.unwrap() {
            let ended = ended.expect("a short call failed without a gRPC status");
            match Code::from(ended.code) {
                Code::DeadlineExceeded => short.0 += 1,
                Code::Ok => short.1 += 1,
                other => panic!("a short-deadline call ended {other:?}: {}", ended.message),
            }
        }
    }
    for ended in steady.await.unwrap() {
        let ended = ended.expect("a normal call failed without a gRPC status");
        assert_eq!(Code::from(ended.code), Code::Ok, "a normal call failed: {}", ended.message);
    }
    assert!(short.0 > 0, "no short call ran out of time ({} succeeded): the test shows nothing", short.1);

    // Let a health check or two pass, then: no replica ever left the rotation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = stack.service_log("proxy").unwrap();
    assert!(!log.contains("taken out of rotation"), "a replica left the rotation:\n{log}");
}

/// Runs all `calls` at once.
async fn futures_join<T: Send + 'static>(calls: Vec<impl std::future::Future<Output = T> + Send + 'static>) -> Vec<T> {
    let tasks: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}
