//! ListContainers: "lists all containers by filters." Filters: id (or a unique prefix of one),
//! state, pod sandbox id (or a unique prefix), label selector; every one set must match.
//! Answered from the lifecycle's index of containers ([`super::index`]), not by reading every
//! record from containerd.
//!
//! A List with an empty filter (the kubelet's PLEG makes one every second) is answered by
//! [`UnfilteredList`], in front of the generated server, with the bytes the index encoded at
//! its last change: the same answer as the handler's, without building and encoding every
//! container again. Any other List, and one it cannot answer, goes to the handler.

use super::{ContainerError, Containers};
use bytes::{BufMut, Bytes, BytesMut};
use crisp_proto::cri::{Container, ContainerFilter, ListContainersRequest};
use futures::future::{BoxFuture, Either};
use http_body_util::BodyExt;
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::server::NamedService;

/// Whether `container` passes `filter` (the pod id already resolved to a full one).
fn matches(container: &Container, filter: &ContainerFilter, pod: Option<&str>) -> bool {
    (filter.id.is_empty() || container.id.starts_with(&filter.id))
        && pod.is_none_or(|pod| container.pod_sandbox_id == pod)
        && filter.state.as_ref().is_none_or(|s| container.state == s.state)
        && filter.label_selector.iter().all(|(k, v)| container.labels.get(k) == Some(v))
}

pub async fn list(containers: &Containers, filter: Option<ContainerFilter>) -> Result<Vec<Container>, ContainerError> {
    let filter = filter.unwrap_or_default();
    // A pod id may be a prefix: resolve it to the pod's full id.
    let pod = match filter.pod_sandbox_id.as_str() {
        "" => None,
        full if full.len() == 64 => Some(full.to_string()),
        prefix => match crate::sandbox::find_record(&containers.containerd, prefix).await {
            Ok(Some(found)) => Some(found.sandbox.id),
            Ok(None) | Err(_) => return Ok(vec![]),
        },
    };
    // The index's snapshot is newest first already.
    containers.indexed_where(|c| matches(c, &filter, pod.as_deref())).await
}

/// The gRPC path [`UnfilteredList`] answers.
const LIST_PATH: &str = "/runtime.v1.RuntimeService/ListContainers";
/// The gRPC message frame's header: a compressed flag byte and the message's length.
const FRAME_HEADER: usize = 5;
/// The largest message sent or read, as the generated server's limits.
const MAX_MESSAGE: usize = crisp_grpc_server::MAX_MESSAGE_BYTES;

/// A `ListContainersResponse` of `containers` as one uncompressed gRPC message frame: the flag
/// byte 0, the message's length (big-endian), the message. A message longer than `u32::MAX`
/// says `u32::MAX` (more than [`MAX_MESSAGE`]: [`UnfilteredList`] never sends it).
pub fn encode_frame(containers: &[Container]) -> Bytes {
    let len = prost::encoding::message::encoded_len_repeated(1, containers);
    let mut frame = BytesMut::with_capacity(FRAME_HEADER + len);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    prost::encoding::message::encode_repeated(1, containers, &mut frame);
    frame.freeze()
}

/// The RuntimeService server `S` with ListContainers' empty-filter calls answered from the
/// index's encoded answer ([`super::index::View::unfiltered_frame`]). Every other call goes to
/// `S` untouched; a List goes to it, its request as read, when its filter is not empty, its
/// request is not one plain message, or the index cannot be read (the handler then answers the
/// error as it does). Layers outside it (the RPC span, the deadline) see both alike.
#[derive(Clone)]
pub struct UnfilteredList<S, L = Containers> {
    inner: S,
    list: L,
}

impl<S, L> UnfilteredList<S, L> {
    pub fn new(inner: S, list: L) -> Self {
        Self { inner, list }
    }
}

impl<S: NamedService, L> NamedService for UnfilteredList<S, L> {
    const NAME: &'static str = S::NAME;
}

/// Where [`UnfilteredList`] takes the encoded answer from: the index (or a test's list).
pub trait EncodedList: Clone + Send + 'static {
    /// [`encode_frame`] of every container, newest first.
    fn unfiltered_frame(&self) -> impl Future<Output = Result<Bytes, ContainerError>> + Send;
}

impl EncodedList for Containers {
    fn unfiltered_frame(&self) -> impl Future<Output = Result<Bytes, ContainerError>> + Send {
        Containers::unfiltered_frame(self)
    }
}

type HttpResult = Result<http::Response<Body>, Infallible>;

impl<S, L: EncodedList> tower::Service<http::Request<Body>> for UnfilteredList<S, L>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, HttpResult>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != LIST_PATH {
            return Either::Left(self.inner.call(request));
        }
        // The service made ready takes the call; its clone waits for the next one.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(answer_list(ready, self.list.clone(), request)))
    }
}

async fn answer_list<S, L: EncodedList>(mut inner: S, list: L, request: http::Request<Body>) -> HttpResult
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let (head, body) = request.into_parts();
    let message = match http_body_util::Limited::new(body, FRAME_HEADER + MAX_MESSAGE).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return Ok(tonic::Status::from_error(err).into_http()),
    };
    if is_unfiltered(&message)
        && let Ok(frame) = list.unfiltered_frame().await
        && frame.len() <= FRAME_HEADER + MAX_MESSAGE
    {
        return Ok(grpc_answer(frame));
    }
    inner.call(http::Request::from_parts(head, Body::new(http_body_util::Full::new(message)))).await
}

/// Whether `body` is one uncompressed ListContainersRequest whose filter is empty (none, or
/// one with no field set: the kubelet's).
fn is_unfiltered(body: &[u8]) -> bool {
    let Some((&[0, a, b, c, d], message)) = body.split_first_chunk::<FRAME_HEADER>() else {
        return false;
    };
    if usize::try_from(u32::from_be_bytes([a, b, c, d])).ok() != Some(message.len()) {
        return false;
    }
    ListContainersRequest::decode(message).is_ok_and(|r| r.filter.unwrap_or_default() == ContainerFilter::default())
}

/// A successful unary gRPC answer of one encoded message frame.
fn grpc_answer(frame: Bytes) -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(frame).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
    use crisp_proto::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
    use crisp_proto::cri::{ContainerMetadata, ContainerState, ContainerStateValue, ListContainersResponse};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn containers() -> Vec<Container> {
        (0..3)
            .map(|i| Container {
                id: format!("{i}{}", "c".repeat(63)),
                pod_sandbox_id: "p".repeat(64),
                metadata: Some(ContainerMetadata { name: format!("c{i}"), attempt: i }),
                state: i as i32,
                created_at: 100 - i64::from(i),
                labels: [("app".to_string(), format!("a{i}"))].into(),
                ..Default::default()
            })
            .collect()
    }

    /// A RuntimeService whose ListContainers handler filters `0` and counts its calls.
    struct Handler(Vec<Container>, Arc<AtomicUsize>);

    #[tonic::async_trait]
    impl RuntimeService for Handler {
        async fn list_containers(
            &self,
            request: tonic::Request<ListContainersRequest>,
        ) -> Result<tonic::Response<ListContainersResponse>, tonic::Status> {
            self.1.fetch_add(1, Ordering::Relaxed);
            let filter = request.into_inner().filter.unwrap_or_default();
            let containers = self.0.iter().filter(|c| matches(c, &filter, None)).cloned().collect();
            Ok(tonic::Response::new(ListContainersResponse { containers }))
        }
    }

    /// The index's encoded answer, or its failure.
    #[derive(Clone)]
    struct Encoded(Option<Bytes>);

    impl EncodedList for Encoded {
        async fn unfiltered_frame(&self) -> Result<Bytes, ContainerError> {
            self.0.clone().ok_or_else(|| ContainerError::Internal { id: String::new(), reason: "unloaded".into() })
        }
    }

    fn client(
        encoded: Option<Bytes>,
    ) -> (RuntimeServiceClient<UnfilteredList<RuntimeServiceServer<Handler>, Encoded>>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = RuntimeServiceServer::new(Handler(containers(), calls.clone()));
        (RuntimeServiceClient::new(UnfilteredList::new(server, Encoded(encoded))), calls)
    }

    #[test]
    fn the_encoded_frame_is_the_response_message_framed() {
        let frame = encode_frame(&containers());
        let message = ListContainersResponse { containers: containers() }.encode_to_vec();
        assert_eq!(frame[0], 0);
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, message.len());
        assert_eq!(&frame[5..], &message[..]);
        assert_eq!(&encode_frame(&[])[..], &[0, 0, 0, 0, 0]);
    }

    #[test]
    fn only_a_plain_list_request_with_an_empty_filter_is_unfiltered() {
        let framed = |request: ListContainersRequest| {
            let message = request.encode_to_vec();
            let mut body = vec![0];
            body.extend((message.len() as u32).to_be_bytes());
            body.extend(message);
            body
        };
        assert!(is_unfiltered(&framed(ListContainersRequest { filter: None })));
        assert!(is_unfiltered(&framed(ListContainersRequest { filter: Some(ContainerFilter::default()) })));
        let by_id = ContainerFilter { id: "abc".into(), ..Default::default() };
        assert!(!is_unfiltered(&framed(ListContainersRequest { filter: Some(by_id) })));
        let mut compressed = framed(ListContainersRequest { filter: None });
        compressed[0] = 1;
        assert!(!is_unfiltered(&compressed));
        let mut two = framed(ListContainersRequest { filter: None });
        two.extend(framed(ListContainersRequest { filter: None }));
        assert!(!is_unfiltered(&two));
        assert!(!is_unfiltered(&[0, 0, 0]));
    }

    #[tokio::test]
    async fn an_empty_filter_is_answered_from_the_encoded_list_and_others_by_the_handler() {
        let (mut client, handled) = client(Some(encode_frame(&containers())));
        for filter in [None, Some(ContainerFilter::default())] {
            let listed = client.list_containers(ListContainersRequest { filter }).await.unwrap().into_inner();
            assert_eq!(listed.containers, containers());
        }
        assert_eq!(handled.load(Ordering::Relaxed), 0);

        let by_label = ContainerFilter { label_selector: [("app".into(), "a1".into())].into(), ..Default::default() };
        let listed = client.list_containers(ListContainersRequest { filter: Some(by_label) }).await.unwrap();
        assert_eq!(listed.into_inner().containers, vec![containers()[1].clone()]);
        assert_eq!(handled.load(Ordering::Relaxed), 1);

        // Every other call reaches the server untouched.
        let version = client.version(crisp_proto::cri::VersionRequest::default()).await.unwrap_err();
        assert_eq!(version.code(), tonic::Code::Unimplemented);
    }

    #[tokio::test]
    async fn a_list_the_index_cannot_answer_goes_to_the_handler() {
        let (mut client, handled) = client(None);
        let listed = client.list_containers(ListContainersRequest { filter: None }).await.unwrap().into_inner();
        assert_eq!(listed.containers, containers());
        assert_eq!(handled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_filter_matches_by_id_prefix_pod_state_and_labels() {
        let container = Container {
            id: "abcdef".into(),
            pod_sandbox_id: "pod1".into(),
            state: ContainerState::ContainerRunning as i32,
            labels: [("app".to_string(), "web".to_string()), ("tier".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        assert!(matches(&container, &ContainerFilter::default(), None));
        let by_id = ContainerFilter { id: "abc".into(), ..Default::default() };
        assert!(matches(&container, &by_id, None));
        assert!(!matches(&container, &ContainerFilter { id: "abd".into(), ..Default::default() }, None));
        assert!(matches(&container, &ContainerFilter::default(), Some("pod1")));
        assert!(!matches(&container, &ContainerFilter::default(), Some("pod2")));
        let exited = ContainerFilter {
            state: Some(ContainerStateValue { state: ContainerState::ContainerExited as i32 }),
            ..Default::default()
        };
        assert!(!matches(&container, &exited, None));
        let labelled = ContainerFilter { label_selector: [("app".into(), "web".into())].into(), ..Default::default() };
        assert!(matches(&container, &labelled, None));
        let other = ContainerFilter { label_selector: [("app".into(), "db".into())].into(), ..Default::default() };
        assert!(!matches(&container, &other, None));
    }
}
