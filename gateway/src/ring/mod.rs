//! The hash ring: every gateway replica is a member; each trace ID (or any
//! other key, such as a span metrics series) has one owner among them,
//! chosen by rendezvous hashing ([`hashing`]) over the current members
//! ([`membership`]). Members call each other's ring service on `ring.addr`
//! ([`client`], [`server`]).
//!
//! Span metrics use the ring too: [`RingRouter`] sends each series' deltas
//! to the series' owner (the Deltas method), whose generator takes them as
//! the pipeline's [`crate::pipeline::DeltasHandler`].
//!
//! Failure handling: a member that cannot be reached (connection refused or
//! reset, or it says it is leaving) is taken out of this member's view at
//! once, so its keys move to their runner-up owners, and probed every
//! `probe_interval_ms` until it answers again. Members in the view are
//! pinged at the same interval, so a dead one is found without traffic.
//! Static peers start out of the view and join when their first probe
//! answers, so the ring only holds members that were reachable.

pub mod client;
pub mod coalesce;
pub mod hashing;
pub mod membership;
pub mod server;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use client::{ForwardError, Peer};
pub use membership::{Member, Membership, View};

use crate::config;
use crate::metrics::RingMetrics;
use crate::spanmetrics::{self, DeltaRouter, SendFuture};

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring member address {addr:?} is not a valid host:port")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{key}: {addr:?} is not host:port")]
    NotHostPort { key: &'static str, addr: String },
    #[error(
        "ring.advertise is required when ring.addr ({0}) is a wildcard: set it to this member's host:port as the others reach it"
    )]
    NoAdvertise(SocketAddr),
    #[error("ring.peers and ring.service are exclusive: pick one membership source")]
    TwoSources,
    #[error("ring.service is set but no Kubernetes client could be configured")]
    Kubernetes(#[source] kube::Error),
}

/// A member address from the config, checked now rather than at the first
/// forward.
fn host_port(key: &'static str, addr: &str) -> Result<Arc<str>, RingError> {
    let bad = || RingError::NotHostPort {
        key,
        addr: addr.to_owned(),
    };
    let authority: http::uri::Authority = addr.parse().map_err(|_| bad())?;
    if authority.port_u16().is_none() || authority.as_str() != addr || addr.contains('@') {
        return Err(bad());
    }
    Ok(addr.into())
}

/// Who owns a key.
#[derive(Debug, Clone)]
pub enum Owner {
    Local,
    Peer(Peer),
}

pub struct Ring {
    membership: Arc<Membership>,
    peers: Mutex<HashMap<Arc<str>, Peer>>,
    probing: Mutex<HashSet<Arc<str>>>,
    config: config::Ring,
    max_forward_bytes: usize,
    stop: CancellationToken,
}

impl Ring {
    /// Checks the config and starts the membership source (a watch of the
    /// Service's EndpointSlices, or probes of the static peers).
    /// `max_forward_bytes`: the spans forwarded to a member in one call, at
    /// most (coalesced parts of client requests; one larger part goes alone).
    pub async fn start(
        config: &config::Ring,
        max_forward_bytes: usize,
        metrics: RingMetrics,
    ) -> Result<Arc<Ring>, RingError> {
        if !config.peers.is_empty() && config.service.is_some() {
            return Err(RingError::TwoSources);
        }
        let local = match &config.advertise {
            Some(a) => host_port("ring.advertise", a)?,
            None if !config.addr.ip().is_unspecified() => config.addr.to_string().into(),
            None => return Err(RingError::NoAdvertise(config.addr)),
        };
        let mut listed = BTreeSet::from([local.clone()]);
        for p in &config.peers {
            listed.insert(host_port("ring.peers", p)?);
        }
        let ring = Arc::new(Ring {
            membership: Arc::new(Membership::new(&local, metrics)),
            peers: Mutex::new(HashMap::new()),
            probing: Mutex::new(HashSet::new()),
            config: config.clone(),
            max_forward_bytes,
            stop: CancellationToken::new(),
        });
        tokio::spawn(ring.clone().heartbeat());
        match &config.service {
            None => {
                ring.membership.set_listed(listed, true);
                for addr in ring.membership.down() {
                    ring.clone().spawn_probe(addr);
                }
            }
            Some(service) => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(RingError::Kubernetes)?;
                let namespace = config
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned());
                let (service, membership, stop) =
                    (service.clone(), ring.membership.clone(), ring.stop.clone());
                let port = config.addr.port();
                tokio::spawn(async move {
                    tokio::select! {
                        () = membership::watch_endpoint_slices(
                            client, &namespace, &service, "ring", port, membership,
                        ) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        }
        tracing::info!(local = %local, peers = ?config.peers, service = ?config.service, "ring started");
        Ok(ring)
    }

    pub fn local(&self) -> &Arc<str> {
        self.membership.local()
    }

    /// The current members.
    pub fn view(&self) -> Arc<View> {
        self.membership.view()
    }

    /// The owner of `key` (a trace ID, a series key, ...) in the current view.
    pub fn owner(&self, key: &[u8]) -> Owner {
        self.owner_in(&self.view(), key)
    }

    /// The owner of `key` in `view`: route a whole request with one view.
    pub fn owner_in(&self, view: &View, key: &[u8]) -> Owner {
        match view.owner(key) {
            None => Owner::Local,
            Some(m) => Owner::Peer(self.peer(&m.addr)),
        }
    }

    /// The client of a member (made once, then shared).
    pub fn peer(&self, addr: &Arc<str>) -> Peer {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .entry(addr.clone())
            .or_insert_with(|| {
                // Members come from the config (checked at start) or from
                // EndpointSlice IPs, so the address is valid.
                Peer::new(addr.clone(), self.connect_timeout(), self.max_forward_bytes)
                    .expect("member addresses are valid")
            })
            .clone()
    }

    /// How long a forward (and the routing of one request) may take.
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.config.forward_timeout_ms)
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.connect_timeout_ms)
    }

    /// Sends spans `peer` owns (an encoded `ExportTraceServiceRequest`),
    /// in one call with the other spans waiting for it; `Ok` once the owner
    /// exported them.
    pub async fn forward_spans(
        self: &Arc<Self>,
        peer: &Peer,
        body: Bytes,
    ) -> Result<(), ForwardError> {
        let timeout = self.forward_timeout();
        let (ring, callee) = (self.clone(), peer.clone());
        let send = move |batch| {
            let (ring, callee) = (ring.clone(), callee.clone());
            async move { ring.checked(callee.call(client::SPANS, batch, timeout).await) }
        };
        peer.spans().forward(peer.addr(), body, timeout, send).await
    }

    /// Sends series deltas (opaque bytes for the owner's deltas handler).
    pub async fn send_deltas(
        self: &Arc<Self>,
        peer: &Peer,
        body: Bytes,
    ) -> Result<(), ForwardError> {
        self.checked(
            peer.call(client::DELTAS, body, self.forward_timeout())
                .await,
        )
    }

    /// An unreachable member leaves this member's view until a probe answers.
    fn checked(self: &Arc<Self>, result: Result<(), ForwardError>) -> Result<(), ForwardError> {
        if let Err(e @ ForwardError::Unreachable { .. }) = &result {
            self.take_out(e);
        }
        result
    }

    fn take_out(self: &Arc<Self>, error: &ForwardError) {
        let (ForwardError::Unreachable { peer, status } | ForwardError::Refused { peer, status }) =
            error;
        if self.membership.mark_down(peer) {
            tracing::warn!(peer = %peer, error = status.message(), "ring member unreachable, its keys move to the others");
            self.clone().spawn_probe(peer.clone());
        }
    }

    /// Pings every other member each `probe_interval_ms`, so one that died
    /// or left is out of the ring before traffic has to find out.
    async fn heartbeat(self: Arc<Self>) {
        let interval = self.probe_interval();
        let timeout = interval.max(self.connect_timeout());
        loop {
            let view = self.view();
            let pings = view
                .members()
                .iter()
                .filter(|m| m.addr != *self.local())
                .map(|m| {
                    let peer = self.peer(&m.addr);
                    async move { peer.call(client::PING, Bytes::new(), timeout).await }
                });
            // A ping has no error of its own to answer: one that fails in
            // any way, a timeout included (a hung member), takes the member
            // out until a probe answers.
            for error in futures::future::join_all(pings)
                .await
                .iter()
                .flat_map(|r| r.as_ref().err())
            {
                self.take_out(error);
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.config.probe_interval_ms.max(10))
    }

    fn spawn_probe(self: Arc<Self>, addr: Arc<str>) {
        if !self.probing().insert(addr.clone()) {
            return;
        }
        tokio::spawn(async move {
            let peer = self.peer(&addr);
            let interval = self.probe_interval();
            // A probe waits no longer than the interval: a member that is
            // slow to answer a ping is not ready to own keys either.
            let timeout = interval.max(self.connect_timeout());
            loop {
                while self.membership.is_down(&addr) && !self.stop.is_cancelled() {
                    match peer.call(client::PING, Bytes::new(), timeout).await {
                        Ok(()) => {
                            tracing::info!(peer = %addr, "ring member reachable");
                            self.membership.mark_up(&addr);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "probe");
                            tokio::select! {
                                () = tokio::time::sleep(interval) => {}
                                () = self.stop.cancelled() => {}
                            }
                        }
                    }
                }
                self.probing().remove(&addr);
                // Marked down again after the loop's last check, while this
                // probe still counted as running: nobody else would probe it.
                if !self.membership.is_down(&addr)
                    || self.stop.is_cancelled()
                    || !self.probing().insert(addr.clone())
                {
                    break;
                }
            }
        });
    }

    fn probing(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.probing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves the ring: this member owns nothing any more, and tells callers
    /// so (they route around it).
    pub fn leave(&self) {
        self.membership.leave();
    }

    pub fn leaving(&self) -> bool {
        self.membership.leaving()
    }

    /// Stops the membership watch and the probes.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Span metrics deltas routed over the ring: each series to its owner,
/// sent with the Deltas method.
pub struct RingRouter(Arc<Ring>);

impl RingRouter {
    pub fn new(ring: Arc<Ring>) -> Self {
        RingRouter(ring)
    }
}

impl DeltaRouter for RingRouter {
    fn owner(&self, series_key: &[u8]) -> spanmetrics::Owner {
        match self.0.owner(series_key) {
            Owner::Local => spanmetrics::Owner::Local,
            Owner::Peer(peer) => spanmetrics::Owner::Remote(peer.addr().clone()),
        }
    }

    fn send(&self, member: &str, batch: Bytes) -> SendFuture {
        let ring = self.0.clone();
        let peer = ring.peer(&Arc::from(member));
        Box::pin(async move { Ok(ring.send_deltas(&peer, batch).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_addresses_must_be_host_and_port() {
        assert_eq!(&*host_port("k", "10.0.0.1:4319").unwrap(), "10.0.0.1:4319");
        assert_eq!(
            &*host_port("k", "[fd00::1]:4319").unwrap(),
            "[fd00::1]:4319"
        );
        assert_eq!(&*host_port("k", "gw-0.gw:4319").unwrap(), "gw-0.gw:4319");
        for bad in ["10.0.0.1", "gw:", "http://gw:4319", "a b:1", "u@gw:1", ""] {
            let err = host_port("ring.peers", bad).unwrap_err().to_string();
            assert_eq!(err, format!("ring.peers: {bad:?} is not host:port"));
        }
    }
}
