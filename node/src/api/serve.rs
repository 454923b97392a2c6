//! The API's HTTP/1.1 server: an accept loop over hyper, so that the limits axum's `serve` does
//! not expose are set: a deadline for each request head (a client that opens a connection and
//! sends nothing, or a header a byte at a time, is dropped), a bound on the head's size and
//! header count, and a bound on connections served at once (more wait in the listen backlog).
//! Each request carries its peer address ([`ConnectInfo`]) for the access guard.
//!
//! At the stop it accepts no more connections, lets the ones open finish their requests for at
//! most `drain`, then returns (connections still open are dropped with the runtime).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::auth::guard::MAX_HEADERS;

/// hyper's read buffer: above the guard's bounds on a head (8 KiB target, 32 KiB of headers), so
/// that those are answered with the JSON error body; a head beyond this is refused by hyper
/// itself, with a bare 431.
const MAX_HEAD_BUFFER: usize = 64 * 1024;

/// The server's limits (from `[api]`).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop`, then drains for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    stop: CancellationToken,
    drain: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most often: wait for connections to end.
                    warn!(%error, "API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: hyper::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            },
        ));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BUFFER)
            .max_headers(2 * MAX_HEADERS)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, %peer, "API connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(limit = ?drain, "API requests still running at the stop; dropped");
    }
}
