//! Forwards to one member, coalesced: the parts of concurrent client
//! requests that the same member owns travel in one ring call. A call goes
//! out at once while fewer than [`IN_FLIGHT`] are under way to that member;
//! parts that come meanwhile wait and leave together when one returns, so
//! nothing waits on a timer, and the busier the member, the fewer (and
//! fuller) the calls. The encoded parts, concatenated, are one encoded
//! request ([`concat_encoded`]). Each part's sender gets the call's
//! outcome, and acknowledges its client only then, as before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tonic::Status;

use super::client::ForwardError;
use crate::otlp::concat_encoded;

/// Calls under way to one member at most: the next forms while one is out.
pub const IN_FLIGHT: usize = 1;

type Answer = oneshot::Sender<Result<(), ForwardError>>;

/// The parts of one call and whom to answer.
#[derive(Debug)]
pub struct Batch {
    parts: Vec<Bytes>,
    answers: Vec<Answer>,
}

impl Batch {
    /// The call's message: the parts, one after the other.
    pub fn body(&self) -> Bytes {
        concat_encoded(&self.parts)
    }

    /// Tells every part's sender how the call went.
    pub fn answer(self, result: &Result<(), ForwardError>) {
        for answer in self.answers {
            // A sender that stopped waiting (its client went away) has no
            // use for the answer.
            let _ = answer.send(result.clone());
        }
    }
}

/// Which parts wait and how many calls are out: the decisions, apart from
/// the sending.
#[derive(Debug)]
pub struct Pending {
    parts: Vec<(Bytes, Answer)>,
    in_flight: usize,
    max_in_flight: usize,
    /// A call is closed at this size (unless its first part alone is
    /// larger): the receiving member's message limit.
    max_bytes: usize,
}

impl Pending {
    pub fn new(max_bytes: usize, max_in_flight: usize) -> Self {
        Pending {
            parts: Vec::new(),
            in_flight: 0,
            max_in_flight,
            max_bytes,
        }
    }

    /// Adds a part; a call to make now if a slot is free.
    pub fn push(&mut self, part: Bytes, answer: Answer) -> Option<Batch> {
        self.parts.push((part, answer));
        self.next()
    }

    /// A call returned: the next one to make, if parts wait.
    pub fn returned(&mut self) -> Option<Batch> {
        self.in_flight -= 1;
        self.next()
    }

    fn next(&mut self) -> Option<Batch> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        // A sender that stopped waiting (timed out behind a slow call, or
        // its client went away) told its client to retry: sending its part
        // now would only deliver it twice.
        self.parts.retain(|(_, answer)| !answer.is_closed());
        if self.parts.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let take = self
            .parts
            .iter()
            .take_while(|(part, _)| {
                bytes += part.len();
                bytes == part.len() || bytes <= self.max_bytes
            })
            .count();
        let (parts, answers) = self.parts.drain(..take).unzip();
        self.in_flight += 1;
        Some(Batch { parts, answers })
    }
}

/// The coalescing of one member's forwards, shared by every caller.
pub struct Coalescer {
    pending: Mutex<Pending>,
}

impl Coalescer {
    pub fn new(max_bytes: usize) -> Self {
        Coalescer {
            pending: Mutex::new(Pending::new(max_bytes, IN_FLIGHT)),
        }
    }

    /// Sends `part` with whatever else waits for this member, through
    /// `send` (one ring call); the outcome of the call that carried it,
    /// or DEADLINE_EXCEEDED after `timeout`.
    pub async fn forward<F, Fut>(
        self: &Arc<Self>,
        peer: &Arc<str>,
        part: Bytes,
        timeout: Duration,
        send: F,
    ) -> Result<(), ForwardError>
    where
        F: Fn(Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ForwardError>> + Send + 'static,
    {
        let (answer, outcome) = oneshot::channel();
        if let Some(batch) = self.lock().push(part, answer) {
            tokio::spawn(self.clone().send(batch, send));
        }
        let gone = || {
            Err(ForwardError::Refused {
                peer: peer.clone(),
                status: Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            })
        };
        match tokio::time::timeout(timeout, outcome).await {
            Ok(Ok(result)) => result,
            // The call was dropped unanswered (the runtime is shutting down).
            Ok(Err(_)) | Err(_) => gone(),
        }
    }

    /// Makes calls until no part waits.
    async fn send<F, Fut>(self: Arc<Self>, mut batch: Batch, send: F)
    where
        F: Fn(Bytes) -> Fut,
        Fut: Future<Output = Result<(), ForwardError>>,
    {
        loop {
            let result = send(batch.body()).await;
            batch.answer(&result);
            match self.lock().returned() {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    fn part(n: u8) -> (Bytes, oneshot::Receiver<Result<(), ForwardError>>, Answer) {
        let (tx, rx) = oneshot::channel();
        (Bytes::from(vec![n; usize::from(n)]), rx, tx)
    }

    #[test]
    fn parts_wait_while_the_member_has_its_calls_and_leave_together() {
        let mut pending = Pending::new(100, 2);
        let (a, _ra, ta) = part(1);
        let (b, _rb, tb) = part(2);
        let (c, _rc, tc) = part(3);
        let (d, _rd, td) = part(4);
        // Free slots: each part leaves at once, alone.
        assert_eq!(pending.push(a, ta).unwrap().body(), [1][..]);
        assert_eq!(pending.push(b, tb).unwrap().body(), [2, 2][..]);
        // Both slots taken: parts wait.
        assert!(pending.push(c, tc).is_none());
        assert!(pending.push(d, td).is_none());
        // A call returns: the waiting parts go in one call, in order.
        let batch = pending.returned().unwrap();
        assert_eq!(batch.parts.len(), 2);
        assert_eq!(batch.body(), [3, 3, 3, 4, 4, 4, 4][..]);
        assert!(pending.returned().is_none());
        assert!(pending.returned().is_none());
        assert_eq!(pending.in_flight, 0);
    }

    #[test]
    fn a_call_stops_at_the_size_limit_but_carries_a_larger_part_alone() {
        let mut pending = Pending::new(5, 1);
        pending.in_flight = 1;
        let mut receivers = Vec::new();
        for n in [9, 2, 3, 1] {
            let (p, rx, tx) = part(n);
            receivers.push(rx);
            assert!(pending.push(p, tx).is_none());
        }
        let sizes = |b: Batch| b.parts.iter().map(Bytes::len).collect::<Vec<_>>();
        assert_eq!(sizes(pending.returned().unwrap()), [9]);
        assert_eq!(sizes(pending.returned().unwrap()), [2, 3]);
        assert_eq!(sizes(pending.returned().unwrap()), [1]);
        assert!(pending.parts.is_empty());
    }

    #[test]
    fn parts_whose_sender_stopped_waiting_are_not_sent() {
        let mut pending = Pending::new(100, 1);
        pending.in_flight = 1;
        let (a, ra, ta) = part(1);
        let (b, _rb, tb) = part(2);
        pending.push(a, ta);
        pending.push(b, tb);
        drop(ra);
        let batch = pending.returned().unwrap();
        assert_eq!(batch.body(), [2, 2][..]);
        // Nobody waits any more: no call at all.
        let (c, rc, tc) = part(3);
        assert!(pending.push(c, tc).is_none());
        drop(rc);
        assert!(pending.returned().is_none());
        assert_eq!(pending.in_flight, 0);
    }

    #[tokio::test]
    async fn every_part_gets_the_outcome_of_its_call() {
        let mut pending = Pending::new(100, 1);
        pending.in_flight = 1;
        let (a, ra, ta) = part(1);
        let (b, rb, tb) = part(2);
        pending.push(a, ta);
        pending.push(b, tb);
        let batch = pending.returned().unwrap();
        let refused = Err(ForwardError::Refused {
            peer: "m".into(),
            status: Status::resource_exhausted("queue full"),
        });
        batch.answer(&refused);
        for rx in [ra, rb] {
            let got = rx.await.unwrap().unwrap_err();
            assert_eq!(got.status().code(), tonic::Code::ResourceExhausted);
        }
    }

    #[test]
    fn concatenated_parts_decode_as_one_request_of_all_their_spans() {
        let request = |name: &str| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: name.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (tx, _rx) = oneshot::channel();
        let (ty, _ry) = oneshot::channel();
        let batch = Batch {
            parts: vec![
                request("a").encode_to_vec().into(),
                request("b").encode_to_vec().into(),
            ],
            answers: vec![tx, ty],
        };
        let merged = ExportTraceServiceRequest::decode(batch.body()).unwrap();
        let mut expected = request("a");
        expected.resource_spans.extend(request("b").resource_spans);
        assert_eq!(merged, expected);
    }
}
