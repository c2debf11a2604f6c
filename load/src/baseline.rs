//! `--baseline`: an empty Validator (same proto, no work: a fixed ALLOW answer) served in-process
//! on 127.0.0.1:0 from its own runtime threads, as a separate server process would be, so the
//! report can show navis-auth's cost over the bare gRPC round trip.

use std::net::SocketAddr;
use std::pin::Pin;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use navis_auth::pb::validator_server::{Validator, ValidatorServer};
use navis_auth::pb::{Decision, ValidateRequest, ValidateResponse};
use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// The fixed answer: ALLOW, echoing the request id (stream callers match answers by it).
fn answer(request_id: String) -> ValidateResponse {
    ValidateResponse {
        decision: Decision::Allow as i32,
        request_id,
        ..ValidateResponse::default()
    }
}

struct Empty;

#[tonic::async_trait]
impl Validator for Empty {
    async fn validate(
        &self,
        req: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        Ok(Response::new(answer(req.into_inner().request_id)))
    }

    type ValidateStreamStream =
        Pin<Box<dyn Stream<Item = Result<ValidateResponse, Status>> + Send + 'static>>;

    async fn validate_stream(
        &self,
        req: Request<Streaming<ValidateRequest>>,
    ) -> Result<Response<Self::ValidateStreamStream>, Status> {
        let answers = req.into_inner().map(|r| r.map(|r| answer(r.request_id)));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// A running empty service; dropping it stops it.
pub struct Baseline {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the empty service on 127.0.0.1:0 with as many runtime threads as the machine has cores.
///
/// # Errors
/// When it cannot bind or start its runtime.
pub fn start() -> Result<Baseline> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("baseline: bind")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("empty-rpc")
        .build()
        .context("baseline: runtime")?;
    let (tx, rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("empty-rpc".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                    eprintln!("navis-auth-load: baseline: cannot register the listener");
                    return;
                };
                // TCP_NODELAY must be set on the incoming stream itself: the builder's
                // `tcp_nodelay` is ignored by `serve_with_incoming*`.
                let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
                let served = tonic::transport::Server::builder()
                    .add_service(ValidatorServer::new(Empty))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = served {
                    eprintln!("navis-auth-load: baseline server: {e}");
                }
            });
        })
        .context("baseline: thread")?;
    Ok(Baseline {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
