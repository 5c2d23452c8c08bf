//! The one watch per replica: a label-selected watch of session Pods (kube's `watcher`, lists
//! paginated by `limit` + `continue`, resumed from its resourceVersion after a drop and re-listed
//! after 410 Gone) feeding a `reflector` store that [`PodCache`] reads. Errors back off (kube's
//! default: 0.8 s doubling to 30 s) and mark the cache stale until the watch delivers again, so
//! readers fall back to direct API calls meanwhile. Also the paginated LIST those readers use.
use super::cache::{CacheHealth, PodCache};
use super::manifests;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use std::sync::Arc;

/// Pods per LIST page, for the watch's (re)lists and for direct listings (client-go's default).
pub const LIST_PAGE_SIZE: u32 = 500;
/// Pages one direct listing reads at most (with [`LIST_PAGE_SIZE`]: 50,000 Pods); a longer list
/// is an error rather than unbounded memory.
pub const LIST_MAX_PAGES: usize = 100;

/// How long a listing at boot waits for the watch's first list before listing by itself.
pub const FIRST_LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The label selector of session Pods.
pub fn session_selector() -> String {
    format!("{}=1", manifests::SESSION_LABEL)
}

/// Starts watching the session Pods of `pods`' namespace with `page_size` Pods per list page; the
/// task lives as long as the runtime.
pub fn start(pods: Api<Pod>, namespace: &str, page_size: u32) -> PodCache {
    let (reader, writer) = reflector::store::<Pod>();
    let health = Arc::new(CacheHealth::default());
    let cache = PodCache::new(reader, health.clone(), namespace);
    let config = watcher::Config::default()
        .labels(&session_selector())
        .page_size(page_size.max(1));
    let stream = watcher(pods, config)
        .default_backoff()
        // The cache answers questions about sessions; managed fields answer none of them.
        .modify(|pod| pod.managed_fields_mut().clear());
    let stream = reflector(writer, stream);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => health.listed(),
                Ok(_) => health.delivered(),
                Err(err) => {
                    tracing::warn!(%err, "the session Pod watch failed; retrying with backoff, answering from the API meanwhile");
                    health.failed();
                }
            }
        }
    });
    cache
}

/// Every object (session Pods, workspace PVCs) matching `selector`, read in pages of `page_size`
/// (at most [`LIST_MAX_PAGES`]).
pub async fn list_paginated<K>(
    pods: &Api<K>,
    selector: &str,
    page_size: u32,
) -> Result<Vec<K>, kube::Error>
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut params = ListParams::default()
        .labels(selector)
        .limit(page_size.max(1));
    let mut items = Vec::new();
    for _ in 0..LIST_MAX_PAGES {
        let page = pods.list(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
    Err(kube::Error::Service(
        format!(
            "the listing of {selector} has more than {} pages of {page_size}",
            LIST_MAX_PAGES
        )
        .into(),
    ))
}
