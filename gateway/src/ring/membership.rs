//! Who is in the ring: the members a source lists (a static peer list, or the
//! ready endpoints of a headless Service's EndpointSlices), minus the ones
//! this member found unreachable (they come back when a probe answers), minus
//! itself once it is leaving. Every change publishes a new [`View`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::hashing;
use crate::metrics::RingMetrics;

/// One member, named by the address its ring service listens on (`ip:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub addr: Arc<str>,
    hash: u64,
}

/// A snapshot of the ring, the same on every member that sees the same
/// members (the order of `members` does not matter to ownership).
#[derive(Debug, Default)]
pub struct View {
    members: Vec<Member>,
    hashes: Vec<u64>,
    /// This member's index, when it is in the ring.
    local: Option<usize>,
}

impl View {
    fn new(addrs: &BTreeSet<Arc<str>>, local: &str) -> View {
        let members: Vec<Member> = addrs
            .iter()
            .map(|a| Member {
                addr: a.clone(),
                hash: hashing::hash64(a.as_bytes()),
            })
            .collect();
        View {
            hashes: members.iter().map(|m| m.hash).collect(),
            local: members.iter().position(|m| &*m.addr == local),
            members,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The owner of `key`: `None` means this member (also when the ring is
    /// empty: with nobody to hand it to, a member keeps what it received).
    pub fn owner(&self, key: &[u8]) -> Option<&Member> {
        self.owner_index(key).map(|i| &self.members[i])
    }

    /// Like [`Self::owner`], as an index into [`Self::members`].
    pub fn owner_index(&self, key: &[u8]) -> Option<usize> {
        let i = hashing::owner(&self.hashes, hashing::hash64(key))?;
        (Some(i) != self.local).then_some(i)
    }
}

#[derive(Default)]
struct State {
    /// What the source lists.
    listed: BTreeSet<Arc<str>>,
    /// Listed members this one could not reach (or that said they are leaving).
    down: BTreeSet<Arc<str>>,
    leaving: bool,
}

pub struct Membership {
    local: Arc<str>,
    state: Mutex<State>,
    view: watch::Sender<Arc<View>>,
    metrics: RingMetrics,
}

impl Membership {
    pub fn new(local: &str, metrics: RingMetrics) -> Membership {
        Membership {
            local: local.into(),
            state: Mutex::new(State::default()),
            view: watch::Sender::new(Arc::new(View::default())),
            metrics,
        }
    }

    pub fn local(&self) -> &Arc<str> {
        &self.local
    }

    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.view.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the listed members. `start_down` lists the ones to leave out
    /// until a probe reaches them (static peers, which may not be up yet).
    pub fn set_listed(&self, listed: BTreeSet<Arc<str>>, start_down: bool) {
        let mut state = self.lock();
        if start_down {
            let new: Vec<_> = listed
                .iter()
                .filter(|a| !state.listed.contains(*a) && **a != self.local)
                .cloned()
                .collect();
            state.down.extend(new);
        }
        state.listed = listed;
        let listed = &state.listed;
        let down: BTreeSet<_> = state.down.intersection(listed).cloned().collect();
        state.down = down;
        self.publish(&state);
    }

    /// Takes `addr` out of the ring until [`Self::mark_up`]; `false` if it
    /// already was out (or is not listed).
    pub fn mark_down(&self, addr: &Arc<str>) -> bool {
        let mut state = self.lock();
        if !state.listed.contains(addr) || **addr == *self.local || !state.down.insert(addr.clone())
        {
            return false;
        }
        self.publish(&state);
        true
    }

    pub fn mark_up(&self, addr: &Arc<str>) {
        let mut state = self.lock();
        if state.down.remove(addr) {
            self.publish(&state);
        }
    }

    /// Whether `addr` is listed and marked down: what a prober keeps probing.
    pub fn is_down(&self, addr: &Arc<str>) -> bool {
        self.lock().down.contains(addr)
    }

    /// The addresses marked down now.
    pub fn down(&self) -> Vec<Arc<str>> {
        self.lock().down.iter().cloned().collect()
    }

    /// This member leaves the ring: it no longer owns anything.
    pub fn leave(&self) {
        let mut state = self.lock();
        state.leaving = true;
        self.publish(&state);
    }

    pub fn leaving(&self) -> bool {
        self.lock().leaving
    }

    /// The ring without down members (and without this one once leaving),
    /// published only when it changed.
    fn publish(&self, state: &State) {
        let members: BTreeSet<Arc<str>> = state
            .listed
            .difference(&state.down)
            .filter(|a| !(state.leaving && **a == self.local))
            .cloned()
            .collect();
        let changed = self.view.send_if_modified(|view| {
            let same = view.members.len() == members.len()
                && view.members.iter().zip(&members).all(|(m, a)| m.addr == *a);
            if !same {
                *view = Arc::new(View::new(&members, &self.local));
            }
            !same
        });
        if changed {
            self.metrics.members.set(members.len() as i64);
            self.metrics.changes.inc();
            tracing::info!(
                members = ?members.iter().map(|a| &**a).collect::<Vec<_>>(),
                "ring membership changed"
            );
        }
    }
}

/// `ip:port`, bracketing IPv6 addresses.
pub fn member_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The ring members one EndpointSlice lists: its ready endpoints that are not
/// terminating (`ready` unset counts as ready, as the API says), on the
/// slice's port named `port_name`, else on `default_port`.
pub fn ready_members(slice: &EndpointSlice, port_name: &str, default_port: u16) -> Vec<String> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port_name))
        .and_then(|p| u16::try_from(p.port?).ok())
        .unwrap_or(default_port);
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .filter_map(|e| e.addresses.first())
        .map(|ip| member_addr(ip, port))
        .collect()
}

/// Keeps `membership` equal to the ready endpoints of the Service's
/// EndpointSlices until the watch stream ends (it retries by itself).
pub async fn watch_endpoint_slices(
    client: kube::Client,
    namespace: &str,
    service: &str,
    port_name: &str,
    default_port: u16,
    membership: Arc<Membership>,
) {
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client, namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut slices: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut initial: Option<BTreeMap<String, Vec<String>>> = None;
    let stream = watcher::watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            Ok(watcher::Event::Init) => initial = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                let members = ready_members(&s, port_name, default_port);
                initial.get_or_insert_default().insert(name(&s), members);
                continue;
            }
            Ok(watcher::Event::InitDone) => slices = initial.take().unwrap_or_default(),
            Ok(watcher::Event::Apply(s)) => {
                slices.insert(name(&s), ready_members(&s, port_name, default_port));
            }
            Ok(watcher::Event::Delete(s)) => {
                slices.remove(&name(&s));
            }
            Err(e) => {
                tracing::warn!(error = %e, service, namespace, "watching the ring's EndpointSlices");
                continue;
            }
        }
        let listed = slices
            .values()
            .flatten()
            .map(|a| Arc::from(a.as_str()))
            .collect();
        membership.set_listed(listed, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<Arc<str>> {
        addrs.iter().map(|a| Arc::from(*a)).collect()
    }

    fn addrs(m: &Membership) -> Vec<String> {
        m.view()
            .members()
            .iter()
            .map(|m| m.addr.to_string())
            .collect()
    }

    #[test]
    fn static_peers_join_when_reached_and_leave_when_down() {
        let m = Membership::new("a:1", RingMetrics::default());
        m.set_listed(set(&["a:1", "b:1", "c:1"]), true);
        // Peers start down: only this member until probes reach them.
        assert_eq!(addrs(&m), ["a:1"]);
        assert_eq!(m.view().owner(b"any"), None);
        m.mark_up(&"b:1".into());
        m.mark_up(&"c:1".into());
        assert_eq!(addrs(&m), ["a:1", "b:1", "c:1"]);
        assert!(m.mark_down(&"c:1".into()));
        assert!(!m.mark_down(&"c:1".into()), "already down");
        assert!(!m.mark_down(&"a:1".into()), "never marks itself down");
        assert!(!m.mark_down(&"x:1".into()), "not a member");
        assert_eq!(addrs(&m), ["a:1", "b:1"]);
        assert_eq!(m.down(), vec![Arc::<str>::from("c:1")]);
        m.leave();
        assert_eq!(addrs(&m), ["b:1"]);
        // Leaving: everything belongs to the others.
        assert!(m.view().owner(b"any").is_some());
        assert_eq!(m.metrics.members.get(), 1);
    }

    #[test]
    fn a_down_member_dropped_by_the_source_is_forgotten() {
        let m = Membership::new("a:1", RingMetrics::default());
        m.set_listed(set(&["a:1", "b:1"]), false);
        assert_eq!(addrs(&m), ["a:1", "b:1"]);
        m.mark_down(&"b:1".into());
        m.set_listed(set(&["a:1"]), false);
        assert!(m.down().is_empty());
        m.set_listed(set(&["a:1", "b:1"]), false);
        assert_eq!(addrs(&m), ["a:1", "b:1"]);
    }

    #[test]
    fn only_ready_endpoints_that_are_not_terminating_are_members() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gw-abc"},
            "addressType": "IPv4",
            "ports": [{"name": "otlp", "port": 4317}, {"name": "ring", "port": 14319}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.4"]},
                {"addresses": ["fd00::5"], "conditions": {}}
            ]
        }))
        .unwrap();
        assert_eq!(
            ready_members(&slice, "ring", 4319),
            ["10.0.0.1:14319", "10.0.0.4:14319", "[fd00::5]:14319"]
        );
        assert_eq!(ready_members(&slice, "other", 4319)[0], "10.0.0.1:4319");
    }
}
