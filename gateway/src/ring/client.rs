//! Calls to another member's ring service. Each member has one lazily
//! connected HTTP/2 channel, shared by every call to it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::RingError;
use super::coalesce::Coalescer;
use crate::exporter::PreEncoded;

/// The ring service every member serves on `ring.addr`; each method takes
/// its message as the request body and answers an empty message.
pub const SERVICE: &str = "vispyr.ring.v1.Ring";
/// An `ExportTraceServiceRequest` whose spans the callee owns; answered once
/// the callee's exporter delivered them, so nothing it acknowledged dies
/// with it.
pub const SPANS: &str = "/vispyr.ring.v1.Ring/Spans";
/// Series deltas for span metrics: opaque bytes for the handler the callee's
/// pipeline registered.
pub const DELTAS: &str = "/vispyr.ring.v1.Ring/Deltas";
/// Empty; OK while the callee is a member, UNAVAILABLE once it is leaving.
pub const PING: &str = "/vispyr.ring.v1.Ring/Ping";

/// Another member, as a client.
#[derive(Clone)]
pub struct Peer {
    addr: Arc<str>,
    client: tonic::client::Grpc<Channel>,
    /// Its forwards of spans, coalesced.
    spans: Arc<Coalescer>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Peer").field(&self.addr).finish()
    }
}

impl Peer {
    /// `max_forward_bytes`: spans forwarded to it in one call at most (one
    /// larger part still goes, alone).
    pub fn new(
        addr: Arc<str>,
        connect_timeout: Duration,
        max_forward_bytes: usize,
    ) -> Result<Peer, RingError> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| RingError::Address {
                addr: addr.to_string(),
                source,
            })?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Peer {
            addr,
            client: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(1 << 20)
                .max_encoding_message_size(usize::MAX),
            spans: Arc::new(Coalescer::new(max_forward_bytes)),
        })
    }

    pub fn spans(&self) -> &Arc<Coalescer> {
        &self.spans
    }

    pub fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    /// One unary call of the ring service with `body` as the message.
    pub async fn call(
        &self,
        path: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), ForwardError> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(body);
        request.set_timeout(timeout);
        let call = async {
            client
                .ready()
                .await
                .map_err(|e| Status::unavailable(format!("not reachable: {e}")))?;
            client
                .unary(
                    request,
                    http::uri::PathAndQuery::from_static(path),
                    PreEncoded::<()>::new(),
                )
                .await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(ForwardError::new(self.addr.clone(), status)),
            Err(_) => Err(ForwardError::new(
                self.addr.clone(),
                Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            )),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// The member is gone or leaving: take it out of the ring and send
    /// what it owned to the new owners.
    #[error("ring member {peer} is unreachable: {}", .status.message())]
    Unreachable { peer: Arc<str>, status: Status },
    /// The member answered with an error of its own (its queue is full, the
    /// call timed out, ...): the client gets it, retryable or not.
    #[error("ring member {peer} refused: {}", .status.message())]
    Refused { peer: Arc<str>, status: Status },
}

impl ForwardError {
    /// UNAVAILABLE is a connection that failed or a member leaving; UNKNOWN,
    /// CANCELLED and INTERNAL are what tonic reports when a connection or
    /// stream dies mid-call (a killed member). A member never answers any of
    /// these on purpose; its own answers (a full queue, a failed export, a
    /// bad message) are other codes, and so is a call that timed out.
    fn new(peer: Arc<str>, status: Status) -> ForwardError {
        match status.code() {
            Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::DataLoss => ForwardError::Unreachable { peer, status },
            _ => ForwardError::Refused { peer, status },
        }
    }

    pub fn status(&self) -> &Status {
        match self {
            ForwardError::Unreachable { status, .. } | ForwardError::Refused { status, .. } => {
                status
            }
        }
    }
}
