//! The fan-out driver: runs a [`Verification`]'s reads concurrently, bounded by a shared
//! semaphore (`max_in_flight`), each under its own deadline, and feeds the replies back.
//! One tokio task per read in flight, never a thread; a span per device so the log reads
//! like the seed's sequence diagrams. Per-device detail is at `debug` (span, read, outcome):
//! a 10 000-member group at the default `info` writes one line per decision (the caller's),
//! not one per device, and costs no formatting per device.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::DeviceConfig;
use crate::verifier::{AclReading, Outcome, Principal, ReadFailure, Verification};

/// Reads the ACL that governs `uri` on a device, for a question `on_behalf` a server asks
/// (a registered device is read over that server's account if it has one there).
/// Implemented by [`crate::south::South`] over real sockets; tests may supply their own.
pub trait AclReader: Send + Sync + 'static {
    fn read_acl(
        &self,
        device: &DeviceConfig,
        on_behalf: &Principal,
        uri: &str,
    ) -> impl Future<Output = Result<AclReading, ReadFailure>> + Send;
}

/// Drives every read of `verification` to an outcome. Returns when all have one; the
/// decision is then `verification.poll_decision()`.
pub async fn run<R: AclReader>(
    reader: Arc<R>,
    verification: &mut Verification<Arc<DeviceConfig>>,
    in_flight: Arc<Semaphore>,
    deadline: Duration,
) {
    let mut tasks = JoinSet::new();
    let mut index_of_task = HashMap::new();
    let principal = verification.principal().clone();
    while let Some(query) = verification.poll_query() {
        let reader = reader.clone();
        let principal = principal.clone();
        let in_flight = in_flight.clone();
        let span = tracing::debug_span!("device", id = %query.device.id, uri = %query.uri);
        let index = query.index;
        let handle = tasks.spawn(
            async move {
                // The semaphore is never closed; a closed one would mean shutdown.
                let _permit = in_flight.acquire_owned().await;
                tracing::debug!("reading ACL");
                let reply = match tokio::time::timeout(
                    deadline,
                    reader.read_acl(&query.device, &principal, &query.uri),
                )
                .await
                {
                    Ok(reply) => reply,
                    Err(_) => Err(ReadFailure::Unreachable(format!(
                        "no answer within {} ms",
                        deadline.as_millis()
                    ))),
                };
                (query.index, query.device, query.uri, reply)
            }
            .instrument(span),
        );
        index_of_task.insert(handle.id(), index);
    }
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, (index, device, uri, reply))) => {
                if let Some(outcome) = verification.handle_reply(index, reply) {
                    match outcome {
                        Outcome::Allowed => tracing::debug!(device = %device.id, %uri, "allowed"),
                        Outcome::Failed { reason, detail } => {
                            tracing::debug!(device = %device.id, %uri, %reason, %detail, "failed")
                        }
                    }
                }
            }
            Err(e) => {
                // Our own fault, not the device's: still give the read an outcome so the
                // verification ends (and rejects).
                tracing::error!("device read task failed: {e}");
                if let Some(index) = index_of_task.get(&e.id()) {
                    verification.handle_reply(
                        *index,
                        Err(ReadFailure::BadAnswer(format!("internal error: {e}"))),
                    );
                }
            }
        }
    }
}
