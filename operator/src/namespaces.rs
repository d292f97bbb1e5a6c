//! Namespaces as the webhook and the controller read them: from the shared
//! cache, or from the API when the cache has not seen one yet.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};

pub async fn get(
    client: &Client,
    cache: &Store<Namespace>,
    name: &str,
) -> Result<Arc<Namespace>, kube::Error> {
    if let Some(ns) = cache.get(&ObjectRef::new(name)) {
        return Ok(ns);
    }
    Api::<Namespace>::all(client.clone())
        .get(name)
        .await
        .map(Arc::new)
}
