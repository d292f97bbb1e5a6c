//! The ring service (`vispyr.ring.v1.Ring`, see [`super::client`]) that
//! other members call: spans this member owns, series deltas, pings.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use tonic::Status;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};

use super::client::{DELTAS, PING, SERVICE, SPANS};
use crate::grpc::RawCodec;
use crate::pipeline::Pipeline;

#[derive(Clone)]
pub struct RingService {
    pipeline: Arc<Pipeline>,
    max_message_bytes: usize,
}

impl RingService {
    pub fn new(pipeline: Arc<Pipeline>, max_message_bytes: usize) -> Self {
        RingService {
            pipeline,
            max_message_bytes,
        }
    }
}

impl NamedService for RingService {
    const NAME: &'static str = SERVICE;
}

#[derive(Clone, Copy)]
enum Method {
    Spans,
    Deltas,
    Ping,
}

impl<B> Service<http::Request<B>> for RingService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = match req.uri().path() {
            SPANS => Some(Method::Spans),
            DELTAS => Some(Method::Deltas),
            PING => Some(Method::Ping),
            _ => None,
        };
        let this = self.clone();
        Box::pin(async move {
            let Some(method) = method else {
                return Ok(Status::unimplemented("unknown method").into_http());
            };
            let mut grpc = Grpc::new(RawCodec::<()>::new())
                .apply_max_message_size_config(Some(this.max_message_bytes), None);
            let handler = Handler {
                pipeline: this.pipeline,
                method,
            };
            Ok(grpc.unary(handler, req).await)
        })
    }
}

struct Handler {
    pipeline: Arc<Pipeline>,
    method: Method,
}

impl UnaryService<Bytes> for Handler {
    type Response = ();
    type Future = BoxFuture<tonic::Response<()>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let pipeline = self.pipeline.clone();
        let method = self.method;
        Box::pin(async move {
            if pipeline.ring().is_some_and(|r| r.leaving()) {
                // Also what PING says: the caller takes this member out of
                // its ring and sends the spans to their new owner.
                return Err(Status::unavailable("this member is leaving the ring"));
            }
            let body = request.into_inner();
            match method {
                Method::Spans => pipeline.accept_forwarded(body).await,
                Method::Deltas => pipeline.accept_deltas(body),
                Method::Ping => Ok(()),
            }
            .map(tonic::Response::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::metrics::Metrics;
    use crate::otlp::Refusal;
    use crate::pipeline::DeltasHandler;
    use crate::ring::{ForwardError, Owner, Ring};

    /// Keeps what it is sent; refuses a body starting with `!`.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Bytes>>);

    impl DeltasHandler for Recorder {
        fn deltas(&self, body: Bytes) -> Result<(), Refusal> {
            if body.starts_with(b"!") {
                return Err(Refusal::Malformed("bad deltas".into()));
            }
            self.0.lock().unwrap().push(body);
            Ok(())
        }
    }

    #[tokio::test]
    async fn deltas_reach_the_handler_the_owner_registered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = crate::config::Ring {
            addr,
            peers: vec![addr.to_string()],
            ..Default::default()
        };
        let ring = Ring::start(&config, 1 << 20, Default::default())
            .await
            .unwrap();
        let recorder = Arc::new(Recorder::default());
        let pipeline = Pipeline::new(Metrics::default(), None)
            .with_ring(ring.clone())
            .with_deltas_handler(recorder.clone());
        let service = RingService::new(Arc::new(pipeline), 1 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        // A ring of one: every key is this member's.
        assert!(matches!(ring.owner(b"series"), Owner::Local));

        let me = ring.peer(ring.local());
        ring.send_deltas(&me, Bytes::from_static(b"delta-1"))
            .await
            .unwrap();
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [Bytes::from_static(b"delta-1")]
        );

        let err = ring
            .send_deltas(&me, Bytes::from_static(b"!"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ForwardError::Refused { status, .. } if status.code() == tonic::Code::InvalidArgument),
            "{err:?}"
        );

        ring.leave();
        let err = ring
            .send_deltas(&me, Bytes::from_static(b"delta-2"))
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Unreachable { .. }), "{err:?}");
        assert_eq!(recorder.0.lock().unwrap().len(), 1);
        ring.stop();
    }
}
