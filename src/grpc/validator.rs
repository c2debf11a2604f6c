//! `navis.auth.v1.Validator` over gRPC: unary and pipelined streaming validation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{kind_to_pb, validate_status};
use crate::challenge::{Challenges, Reason};
use crate::metrics::{Method, Metrics};
use crate::pb::{self, validator_server};
use crate::validator::{self as core, Decision, Fast, ValidateError, Validator, Verdict};

/// How many answers a stream may have queued or in flight.
const STREAM_WINDOW: usize = 1024;

/// The gRPC face of the [`Validator`].
#[derive(Clone, Debug)]
pub struct ValidatorService {
    core: Arc<Validator>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
}

impl ValidatorService {
    /// Serves `core`, building challenges with `challenges`, counting in `metrics`.
    pub fn new(core: Arc<Validator>, challenges: Challenges, metrics: Arc<Metrics>) -> Self {
        ValidatorService {
            core,
            challenges: Arc::new(challenges),
            metrics,
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> validator_server::ValidatorServer<Self> {
        validator_server::ValidatorServer::new(self)
    }
}

fn request(req: &pb::ValidateRequest) -> core::Request<'_> {
    core::Request {
        credential: &req.token,
        required_scopes: &req.required_scopes,
        resource: &req.resource,
    }
}

/// Builds the answer for a verdict.
pub fn response(
    challenges: &Challenges,
    req: &pb::ValidateRequest,
    v: &Verdict,
) -> pb::ValidateResponse {
    let decision = match v.decision {
        Decision::Allow => pb::Decision::Allow,
        Decision::Unauthenticated => pb::Decision::Unauthenticated,
        Decision::Forbidden => pb::Decision::Forbidden,
    };
    let mut out = pb::ValidateResponse {
        decision: decision as i32,
        request_id: req.request_id.clone(),
        ..Default::default()
    };
    if let Some(rec) = &v.record {
        out.subject = rec.subject().to_owned();
        out.scopes = rec.scopes().map(str::to_owned).collect();
        out.kind = kind_to_pb(rec.kind()) as i32;
        out.token_id = rec.token_id().to_owned();
        out.client_id = rec.client_id().to_owned();
        out.expires_at = rec.expires_at();
        out.resource = rec.resource().to_owned();
    }
    if v.reason != Reason::Ok {
        out.error = v.reason.error_code().to_owned();
        out.error_description = v.reason.description().to_owned();
        out.www_authenticate = challenges.www_authenticate(v.reason, &req.required_scopes);
    }
    out
}

/// Counts and builds one streaming answer.
fn answer(
    metrics: &Metrics,
    challenges: &Challenges,
    req: &pb::ValidateRequest,
    r: Result<Verdict, ValidateError>,
) -> pb::ValidateResponse {
    match r {
        Ok(v) => {
            metrics.decision(&v);
            response(challenges, req, &v)
        }
        Err(e) => {
            metrics.validate_error(matches!(e, ValidateError::Unavailable(_)));
            stream_error(req, &e)
        }
    }
}

/// A streaming answer for a request that unary `Validate` would fail with a status.
fn stream_error(req: &pb::ValidateRequest, e: &ValidateError) -> pb::ValidateResponse {
    let status = validate_status(e);
    pb::ValidateResponse {
        decision: pb::Decision::Unspecified as i32,
        request_id: req.request_id.clone(),
        status_code: status.code() as i32,
        error: match e {
            ValidateError::InvalidArgument(_) => "invalid_request",
            ValidateError::Unavailable(_) => "temporarily_unavailable",
        }
        .to_owned(),
        error_description: status.message().to_owned(),
        ..Default::default()
    }
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<pb::ValidateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl validator_server::Validator for ValidatorService {
    async fn validate(
        &self,
        req: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let outcome = self.core.validate(request(&req)).await;
        self.metrics.lookup(started.elapsed());
        let answer = match outcome {
            Ok(v) => {
                self.metrics.decision(&v);
                Ok(Response::new(response(&self.challenges, &req, &v)))
            }
            Err(e) => {
                self.metrics
                    .validate_error(matches!(e, ValidateError::Unavailable(_)));
                Err(validate_status(&e))
            }
        };
        self.metrics.rpc(Method::Validate, started.elapsed());
        answer
    }

    type ValidateStreamStream = AnswerStream;

    async fn validate_stream(
        &self,
        req: Request<Streaming<pb::ValidateRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        let core = Arc::clone(&self.core);
        let challenges = Arc::clone(&self.challenges);
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            while let Some(item) = inbound.next().await {
                let req = match item {
                    Ok(r) => r,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                // Cache hits and format rejects are answered inline, in order; misses go to
                // their own task so one slow lookup never holds up the answers behind it.
                let started = Instant::now();
                match core.fast(request(&req)) {
                    Fast::Done(r) => {
                        metrics.lookup(started.elapsed());
                        let answer = answer(&metrics, &challenges, &req, r);
                        metrics.rpc(Method::ValidateStream, started.elapsed());
                        if tx.send(Ok(answer)).await.is_err() {
                            break;
                        }
                    }
                    Fast::Lookup(hash) => {
                        let (core, challenges, metrics, tx) = (
                            Arc::clone(&core),
                            Arc::clone(&challenges),
                            Arc::clone(&metrics),
                            tx.clone(),
                        );
                        // Bounded: wait for room before taking on more work.
                        let Ok(permit) = tx.reserve_owned().await else {
                            break;
                        };
                        tokio::spawn(async move {
                            let r = core.lookup(hash, request(&req)).await;
                            metrics.lookup(started.elapsed());
                            let answer = answer(&metrics, &challenges, &req, r);
                            metrics.rpc(Method::ValidateStream, started.elapsed());
                            permit.send(Ok(answer));
                        });
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
