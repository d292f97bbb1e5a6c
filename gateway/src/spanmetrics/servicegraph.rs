//! Service graph edges, as Tempo's metrics-generator finds them: a CLIENT
//! (or PRODUCER) span and the SERVER (or CONSUMER) span whose parent it is
//! make one request from the client's service to the server's. Halves wait
//! up to `wait` for each other; an unpaired half then expires (counted), and
//! becomes a "virtual node" edge when there is a name for the other side.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::delta::FastMap;

/// Trace ID and the client span's ID.
pub type EdgeId = ([u8; 16], [u8; 8]);

/// The `connection_type` label values.
pub const UNKNOWN: &str = "";
pub const MESSAGING: &str = "messaging_system";
pub const DATABASE: &str = "database";
pub const VIRTUAL: &str = "virtual_node";

/// A complete request from one service to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub client: String,
    pub server: String,
    pub connection_type: &'static str,
    pub failed: bool,
    pub client_seconds: f64,
    pub server_seconds: f64,
}

/// One span's half of an edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Half {
    pub service: String,
    pub seconds: f64,
    pub failed: bool,
    /// PRODUCER or CONSUMER.
    pub messaging: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Side {
    Client,
    Server,
}

#[derive(Default)]
struct Pending {
    client: Option<Half>,
    server: Option<Half>,
    /// The client span's name for its peer (`peer.service`, ...).
    peer: Option<String>,
    expires: Option<Instant>,
}

/// A half still waiting for its other half, as handed to the trace's new
/// owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub id: EdgeId,
    pub side: Side,
    pub half: Half,
    /// The client span's name for its peer.
    pub peer: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum Upsert {
    Complete(Edge),
    Waiting,
    /// The store is full.
    Dropped,
}

pub struct EdgeStore {
    pending: FastMap<EdgeId, Pending>,
    /// Insertion order, for expiry; entries already paired are skipped.
    order: VecDeque<(Instant, EdgeId)>,
    wait: Duration,
    max: usize,
}

impl EdgeStore {
    pub fn new(wait: Duration, max: usize) -> Self {
        EdgeStore {
            pending: FastMap::default(),
            order: VecDeque::new(),
            wait,
            max,
        }
    }

    /// Adds one half; the edge when the other half was already here.
    pub fn upsert(
        &mut self,
        id: EdgeId,
        side: Side,
        half: Half,
        peer: Option<String>,
        now: Instant,
    ) -> Upsert {
        let known = self.pending.contains_key(&id);
        if !known && self.pending.len() >= self.max {
            return Upsert::Dropped;
        }
        let p = self.pending.entry(id).or_default();
        if p.expires.is_none() {
            let expires = now + self.wait;
            p.expires = Some(expires);
            self.order.push_back((expires, id));
        }
        match side {
            Side::Client => {
                p.client = Some(half);
                p.peer = peer;
            }
            Side::Server => p.server = Some(half),
        }
        if p.client.is_none() || p.server.is_none() {
            return Upsert::Waiting;
        }
        let p = self.pending.remove(&id).expect("just seen");
        let (client, server) = (p.client.expect("paired"), p.server.expect("paired"));
        Upsert::Complete(Edge {
            connection_type: if client.messaging || server.messaging {
                MESSAGING
            } else {
                UNKNOWN
            },
            failed: client.failed || server.failed,
            client_seconds: client.seconds,
            server_seconds: server.seconds,
            client: client.service,
            server: server.service,
        })
    }

    /// Takes every half still waiting, for the new owners of their traces
    /// to pair (this member is leaving the ring).
    pub fn take_waiting(&mut self) -> Vec<Waiting> {
        self.order.clear();
        let mut out = Vec::new();
        for (id, p) in self.pending.drain() {
            if let Some(half) = p.client {
                out.push(Waiting {
                    id,
                    side: Side::Client,
                    half,
                    peer: p.peer,
                });
            }
            if let Some(half) = p.server {
                out.push(Waiting {
                    id,
                    side: Side::Server,
                    half,
                    peer: None,
                });
            }
        }
        out
    }

    /// Removes the halves that waited too long: returns how many, and the
    /// virtual-node edges of clients that named their peer.
    pub fn expire(&mut self, now: Instant) -> (u64, Vec<Edge>) {
        let mut expired = 0;
        let mut edges = Vec::new();
        while let Some((at, id)) = self.order.front().copied() {
            if at > now {
                break;
            }
            self.order.pop_front();
            // Gone (paired) or re-created since: not this entry's turn.
            if self.pending.get(&id).and_then(|p| p.expires) != Some(at) {
                continue;
            }
            let p = self.pending.remove(&id).expect("just seen");
            expired += 1;
            if let (Some(client), Some(peer)) = (p.client, p.peer) {
                edges.push(Edge {
                    server: peer,
                    connection_type: VIRTUAL,
                    failed: client.failed,
                    client_seconds: client.seconds,
                    server_seconds: 0.0,
                    client: client.service,
                });
            }
        }
        (expired, edges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(service: &str, seconds: f64, failed: bool) -> Half {
        Half {
            service: service.into(),
            seconds,
            failed,
            messaging: false,
        }
    }

    #[test]
    fn halves_pair_in_either_order_and_unpaired_ones_expire() {
        let now = Instant::now();
        let mut store = EdgeStore::new(Duration::from_secs(10), 2);
        let a = ([1; 16], [1; 8]);
        let b = ([1; 16], [2; 8]);
        assert_eq!(
            store.upsert(a, Side::Server, half("api", 0.2, true), None, now),
            Upsert::Waiting
        );
        let Upsert::Complete(edge) =
            store.upsert(a, Side::Client, half("web", 0.3, false), None, now)
        else {
            panic!("paired");
        };
        assert_eq!(
            edge,
            Edge {
                client: "web".into(),
                server: "api".into(),
                connection_type: UNKNOWN,
                failed: true,
                client_seconds: 0.3,
                server_seconds: 0.2,
            }
        );
        store.upsert(
            b,
            Side::Client,
            half("web", 1.0, false),
            Some("stripe".into()),
            now,
        );
        store.upsert(
            ([2; 16], [1; 8]),
            Side::Server,
            half("api", 1.0, false),
            None,
            now,
        );
        assert_eq!(
            store.upsert(
                ([3; 16], [1; 8]),
                Side::Server,
                half("x", 1.0, false),
                None,
                now
            ),
            Upsert::Dropped
        );
        assert_eq!(store.expire(now + Duration::from_secs(9)).0, 0);
        let (expired, edges) = store.expire(now + Duration::from_secs(10));
        assert_eq!(expired, 2);
        assert_eq!(edges.len(), 1);
        assert_eq!(
            (edges[0].server.as_str(), edges[0].connection_type),
            ("stripe", VIRTUAL)
        );
        assert_eq!(
            store.expire(now + Duration::from_secs(3600)).0,
            0,
            "nothing left"
        );
    }
}
