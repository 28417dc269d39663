//! The background tasks that keep the pod cache current: a watch on the pods of this node (list,
//! then watch; re-list on watch expiry; back off and retry while the API is away) and a resolver
//! that asks the API which CronJob owns a Job. Lookups never wait on either.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher as pod_watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::SharedCache;
use super::cache::{JobKey, PodIndex};
use super::pods::{PodInfo, controller_of};

/// Job owner lookups that may wait in the queue; more are counted and retried on a later event.
pub const JOB_LOOKUP_QUEUE: usize = 256;

/// Deadline for one Job lookup.
const JOB_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Field selector for the pods scheduled on `node_name`.
pub fn node_field_selector(node_name: &str) -> String {
    format!("spec.nodeName={node_name}")
}

/// Watches the pods of the cache's node forever, applying events to the cache.
pub(crate) async fn watch_pods(
    client: Client,
    shared: Arc<SharedCache>,
    job_lookups: mpsc::Sender<JobKey>,
    backoff: Box<dyn Backoff>,
) {
    let config = watcher::Config::default().fields(&node_field_selector(&shared.node_name));
    let mut events = pod_watcher(Api::<Pod>::all(client), config)
        .backoff(backoff)
        .boxed();
    // Pods of a re-list in progress: swapped in whole when the list is done, so pods deleted
    // while the watch was down disappear and lookups keep the old view meanwhile.
    let mut relisting: Option<PodIndex> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => {
                shared.counters.relists.fetch_add(1, Ordering::Relaxed);
                debug!("pod watch: listing pods");
                relisting = Some(PodIndex::default());
            }
            Ok(Event::InitApply(pod)) => {
                let Some(info) = PodInfo::from_pod(&pod) else {
                    continue;
                };
                request_job_owner(&shared, &job_lookups, &info);
                match relisting.as_mut() {
                    Some(index) => {
                        index.upsert(info);
                    }
                    None => {
                        shared.with_index(|index| index.upsert(info));
                    }
                }
            }
            Ok(Event::InitDone) => {
                let fresh = relisting.take().unwrap_or_default();
                let pods = fresh.len();
                if shared.finish_list(fresh) {
                    info!(pods, node = %shared.node_name, "pod metadata synced");
                } else {
                    debug!(pods, "pod watch: re-listed");
                }
            }
            Ok(Event::Apply(pod)) => {
                let Some(info) = PodInfo::from_pod(&pod) else {
                    continue;
                };
                request_job_owner(&shared, &job_lookups, &info);
                shared.with_index(|index| index.upsert(info));
            }
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    shared.with_index(|index| index.remove(uid));
                }
            }
            Err(error) => {
                let errors = shared.counters.watch_errors.fetch_add(1, Ordering::Relaxed) + 1;
                // The first few at warn, then at debug: an API outage should not flood the log.
                if errors <= 5 || errors.is_power_of_two() {
                    warn!(%error, errors, "pod watch failed; retrying with backoff");
                } else {
                    debug!(%error, errors, "pod watch failed; retrying with backoff");
                }
            }
        }
    }
    warn!("pod watch stream ended");
}

/// Queues a lookup of the CronJob owning the pod's Job, if it is not known or pending.
fn request_job_owner(shared: &SharedCache, job_lookups: &mpsc::Sender<JobKey>, pod: &PodInfo) {
    let Some(key) = pod.controlling_job() else {
        return;
    };
    if !shared.with_job_owners(|owners| owners.begin_lookup(&key)) {
        return;
    }
    if job_lookups.try_send(key.clone()).is_err() {
        shared
            .counters
            .job_lookups_dropped
            .fetch_add(1, Ordering::Relaxed);
        shared.with_job_owners(|owners| owners.abandon_lookup(&key));
    }
}

/// Answers queued Job owner lookups one at a time.
pub(crate) async fn resolve_job_owners(
    client: Client,
    shared: Arc<SharedCache>,
    mut job_lookups: mpsc::Receiver<JobKey>,
) {
    while let Some(key) = job_lookups.recv().await {
        let (namespace, name) = &key;
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        match tokio::time::timeout(JOB_LOOKUP_TIMEOUT, jobs.get_opt(name)).await {
            Ok(Ok(job)) => {
                let cronjob = job
                    .and_then(|job| job.metadata.owner_references)
                    .and_then(|owners| controller_of(&owners))
                    .filter(|owner| owner.kind == "CronJob")
                    .map(|owner| owner.name);
                debug!(namespace, job = name, ?cronjob, "job owner resolved");
                shared.with_job_owners(|owners| owners.record(key.clone(), cronjob));
                shared.bump_generation();
            }
            Ok(Err(error)) => {
                shared
                    .counters
                    .job_lookup_failures
                    .fetch_add(1, Ordering::Relaxed);
                debug!(namespace, job = name, %error, "job owner lookup failed");
                shared.with_job_owners(|owners| owners.abandon_lookup(&key));
            }
            Err(_elapsed) => {
                shared
                    .counters
                    .job_lookup_failures
                    .fetch_add(1, Ordering::Relaxed);
                debug!(namespace, job = name, "job owner lookup timed out");
                shared.with_job_owners(|owners| owners.abandon_lookup(&key));
            }
        }
    }
}
