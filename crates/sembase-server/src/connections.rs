//! The accept loop: HTTP/1 connections with a header-read deadline, and a shutdown that
//! drains requests in flight for a bounded time.
//!
//! `axum::serve` offers neither: a client that sends its headers a byte every few seconds
//! would hold a connection (and a task) forever, and a graceful shutdown would wait for it
//! without end.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Deadlines of the connection layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSettings {
    /// A connection that has not sent a request's headers within this is closed.
    pub header_timeout: Duration,
    /// After a shutdown signal, how long requests in flight may take to finish.
    pub drain_timeout: Duration,
}

/// How long to back off when accepting fails (out of file descriptors, usually).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits
/// up to the drain deadline for the connections still open.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ConnectionSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(target: "sembase::server", "accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small JSON answers go out at once rather than waiting for Nagle's timer.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "sembase::server", %peer, "connection closed: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!(
        target: "sembase::server",
        "shutting down: no new connections; waiting up to {} s for requests in flight",
        settings.drain_timeout.as_secs_f64()
    );
    match tokio::time::timeout(settings.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!(target: "sembase::server", "every connection closed"),
        Err(_) => tracing::warn!(
            target: "sembase::server",
            "the drain deadline passed with connections still open; closing them"
        ),
    }
}
