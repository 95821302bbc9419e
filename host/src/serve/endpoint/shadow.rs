//! The serving side of shadow replay ([`crate::shadow`]): a request the
//! candidate shadows runs on the serving version with its calls recorded
//! and its body copied; once that run has ended, the candidate runs on the
//! copy, off the client's path, and the slot hears how the two compared.

use crate::body::ResponseBody;
use crate::capabilities::Tape;
use crate::runtime::GuestFailure;
use crate::shadow::compare::{self, Observed};
use crate::shadow::copy::{self, RequestCopy};
use crate::shadow::replay::Replay;
use crate::versions::candidate::{Candidate, Stage};
use crate::versions::slot::{ComponentSlot, Version};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};

/// Shadow runs at once: one. A shadow is a sample; under load it is the
/// first thing given up, never a client's request.
pub(super) fn runs() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(1))
}

/// How long a shadow run waits for the one before it to end before it is
/// given up (`shed`): long enough for back-to-back requests from one
/// client, short enough that waiting runs cannot pile up.
const RUN_WAIT: Duration = Duration::from_millis(250);

/// The largest answer body a shadow run reads.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Serves `request` on `version` with its calls recorded, and, once it has
/// ended, has `candidate` run on a copy. `hold` is what the serving run
/// keeps until it ends (the request's admission permit, its record).
pub(super) async fn serve<B>(
    slot: &Arc<ComponentSlot>,
    version: &Version,
    candidate: Arc<Candidate>,
    runs: Arc<Semaphore>,
    request: hyper::Request<B>,
    hold: impl Send + 'static,
) -> Result<hyper::Response<ResponseBody>, GuestFailure>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (request, copy) = copy::tee(request);
    let tape = Arc::new(Tape::default());
    // Dropped with `hold`, when the serving run has ended (its answer body
    // written): the tape and the body copy are whole then.
    let (ended, has_ended) = oneshot::channel::<()>();
    let answer = version
        .plugin
        .handle_recorded(request, (hold, ended), tape.clone())
        .await;
    let observed_head = match &answer {
        Ok(response) => Some(head_of(response)),
        Err(_) => None,
    };
    let slot = slot.clone();
    let deadline = slot.limits().request_timeout + Duration::from_secs(1);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(deadline, has_ended).await;
        let Some((status, cors)) = observed_head else {
            // The serving version failed: nothing to compare with.
            slot.metrics().shadowed("unusable");
            return;
        };
        let Ok(Ok(_run)) = tokio::time::timeout(RUN_WAIT, runs.acquire()).await else {
            candidate.shed();
            slot.metrics().shadowed("shed");
            return;
        };
        let serving = Observed {
            status,
            cors,
            calls: tape.calls().into_iter().map(|(call, _)| call).collect(),
        };
        let replay = Arc::new(Replay::new(tape.calls(), slot.capabilities().clone()));
        let shadow = run_candidate(&candidate, &copy, replay).await;
        judge(&slot, &candidate, &copy, &serving, shadow).await;
    });
    answer
}

/// The status and CORS presence of an answer's head.
fn head_of(response: &hyper::Response<ResponseBody>) -> (u16, bool) {
    (
        response.status().as_u16(),
        response
            .headers()
            .contains_key("access-control-allow-origin"),
    )
}

/// The candidate's run on the copy: what it did, or why it gave nothing.
async fn run_candidate(
    candidate: &Candidate,
    copy: &RequestCopy,
    replay: Arc<Replay>,
) -> Result<Observed, String> {
    let response = candidate
        .version
        .plugin
        .rehearse(copy.request(), replay.clone())
        .await
        .map_err(|failure| match failure {
            GuestFailure::OutOfTime(why) => why,
            GuestFailure::Failed(err) => format!("{err:#}"),
            GuestFailure::BodyTimeout => "it did not read its body in time".to_owned(),
        })?;
    let (head, body) = response.into_parts();
    // The body is read (bounded) so the guest runs to its end.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(body, MAX_ANSWER_BYTES).collect(),
    )
    .await;
    Ok(Observed::of(&head, replay.calls()))
}

/// Compares, counts, and tells the slot when the candidate is decided.
async fn judge(
    slot: &Arc<ComponentSlot>,
    candidate: &Arc<Candidate>,
    copy: &RequestCopy,
    serving: &Observed,
    shadow: Result<Observed, String>,
) {
    let shape = compare::shape(copy.head(), &copy.body());
    let divergence = match &shadow {
        Ok(observed) => compare::divergence(serving, observed),
        Err(failure) => Some(format!(
            "the serving version answered {}, the candidate gave no answer: {failure}",
            serving.status
        )),
    };
    match divergence {
        Some(divergence) => {
            slot.metrics().shadowed("diverged");
            let why = format!(
                "it diverged from the serving version on a request ({shape}): {divergence}"
            );
            slot.refuse(candidate, Stage::Shadow, &why).await;
        }
        None => {
            slot.metrics().shadowed("agreed");
            if candidate.agreed() {
                let agreed = candidate.agreements();
                slot.passed(
                    candidate,
                    Stage::Shadow,
                    &format!("it agreed with the serving version on {agreed} requests"),
                )
                .await;
            }
        }
    }
}
