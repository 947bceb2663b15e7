//! The listeners: the admin Unix socket, the read-only socket and the TCP
//! listener (TLS, or plain HTTP on loopback). One connection server for all
//! three, with a cap on open connections per listener, a header-read
//! timeout, a body-read timeout and an idle keep-alive timeout, so slow or
//! idle clients cannot hold the daemon's descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::ServiceExt;

use super::access::{Caller, Peer, Transport};
use super::error::ApiError;
use crate::config::ConnectionLimits;
use crate::sync::lock;

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

impl From<&ConnectionLimits> for Timeouts {
    fn from(c: &ConnectionLimits) -> Self {
        Timeouts {
            header: Duration::from_secs(c.header_timeout_secs),
            body: Duration::from_secs(c.body_timeout_secs),
            idle: Duration::from_secs(c.idle_timeout_secs),
        }
    }
}

/// One listener and how its peers are identified.
pub enum Listener {
    /// The admin socket: root and `group` are admins; they get in even when
    /// the listener is full.
    Admin {
        listener: UnixListener,
        group: Option<nix::unistd::Gid>,
    },
    /// The read-only socket: every peer may read.
    ReadOnly(UnixListener),
    /// TCP, with TLS unless `tls` is none (plain HTTP on loopback).
    Tcp {
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    },
}

/// Serves `app` on every listener until `shutdown` resolves, then lets the
/// requests in flight finish (up to 10 s).
pub async fn serve(
    listeners: Vec<Listener>,
    app: Router,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut loops = Vec::new();
    for l in listeners {
        let server = Server {
            app: app.clone(),
            timeouts: limits.into(),
            slots: Arc::new(Semaphore::new(limits.max_per_listener)),
            tracker: tracker.clone(),
            stop: stop_rx.clone(),
        };
        let mut stop = stop_rx.clone();
        loops.push(tokio::spawn(async move {
            tokio::select! {
                _ = async move { let _ = stop.wait_for(|s| *s).await; } => {}
                _ = server.run(l) => {}
            }
        }));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after 10 s; leaving them");
    }
}

/// What each accepted connection needs, one per listener.
#[derive(Clone)]
struct Server {
    app: Router,
    timeouts: Timeouts,
    slots: Arc<Semaphore>,
    /// Connections, so shutdown can wait for them.
    tracker: tokio_util::task::TaskTracker,
    /// Becomes true at shutdown: connections finish their request and close.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Server {
    async fn run(self, listener: Listener) {
        match listener {
            Listener::Admin { listener, group } => loop {
                let Some(stream) = accept_unix(&listener).await else {
                    continue;
                };
                let caller = match stream.peer_cred() {
                    Ok(cred) => super::access::socket_caller(&cred, group),
                    Err(_) => Caller::nobody(Transport::Socket),
                };
                // Root and the socket's group always get in: the operator
                // must be able to look at a daemon under a flood.
                let slot = match self.slots.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) if caller.role.is_some() => None,
                    Err(_) => {
                        refuse_full("socket");
                        continue;
                    }
                };
                let peer = Peer {
                    transport: Transport::Socket,
                    addr: None,
                };
                self.spawn(stream, peer, Some(caller), slot);
            },
            Listener::ReadOnly(listener) => loop {
                let Some(stream) = accept_unix(&listener).await else {
                    continue;
                };
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    refuse_full("read-only socket");
                    continue;
                };
                let caller = match stream.peer_cred() {
                    Ok(cred) => Caller::reader(cred.uid()),
                    Err(_) => Caller::nobody(Transport::ReadOnlySocket),
                };
                let peer = Peer {
                    transport: Transport::ReadOnlySocket,
                    addr: None,
                };
                self.spawn(stream, peer, Some(caller), Some(slot));
            },
            Listener::Tcp { listener, tls } => loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                };
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    refuse_full("tcp");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let peer = Peer {
                    transport: Transport::Tcp,
                    addr: Some(addr),
                };
                match &tls {
                    None => self.spawn(stream, peer, None, Some(slot)),
                    Some(acceptor) => {
                        let (acceptor, server) = (acceptor.clone(), self.clone());
                        tokio::spawn(async move {
                            let handshake = acceptor.accept(stream);
                            match tokio::time::timeout(server.timeouts.header, handshake).await {
                                Ok(Ok(tls)) => server.spawn(tls, peer, None, Some(slot)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%addr, error = %e, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            },
        }
    }

    /// Serves one connection; `caller` is known up front on the sockets.
    fn spawn<IO>(
        &self,
        io: IO,
        peer: Peer,
        caller: Option<Caller>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let clock = Arc::new(ConnClock::new());
        let io = Timed::new(io, clock.clone(), self.timeouts);
        let (app, body_timeout) = (self.app.clone(), self.timeouts.body);
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (app, peer, caller, clock) =
                (app.clone(), peer.clone(), caller.clone(), clock.clone());
            async move {
                clock.request_started();
                let timed_out = Arc::new(AtomicBool::new(false));
                let mut req = req.map(|b| {
                    axum::body::Body::new(TimedBody::new(b, body_timeout, timed_out.clone()))
                });
                req.extensions_mut().insert(peer);
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                let mut resp = app.oneshot(req).await.into_response();
                if timed_out.load(Ordering::Relaxed) {
                    resp = body_timed_out(body_timeout);
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    clock.upgraded();
                }
                let (parts, body) = resp.into_parts();
                let body = Finished {
                    inner: body,
                    clock: Some(clock),
                };
                Ok::<_, Infallible>(hyper::Response::from_parts(parts, body))
            }
        });
        let mut stop = self.stop.clone();
        self.tracker.spawn(async move {
            let _slot = slot;
            // HTTP/1.1 with upgrades (the event stream is a WebSocket).
            let builder =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn accept_unix(l: &UnixListener) -> Option<tokio::net::UnixStream> {
    match l.accept().await {
        Ok((s, _)) => Some(s),
        Err(e) => {
            accept_failed(e).await;
            None
        }
    }
}

async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "accept failed");
    // Out of descriptors: give the connections that are closing a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn refuse_full(listener: &str) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = lock(&LAST);
    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
        *last = Some(Instant::now());
        tracing::warn!(
            listener,
            "connection limit reached: refusing new connections"
        );
    }
}

fn body_timed_out(after: Duration) -> axum::response::Response {
    let mut resp = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "The request body stalled: no byte arrived for {} s.",
            after.as_secs()
        ),
    )
    .into_response();
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

/// Where a connection is between requests, for its read deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for a request's first byte since this instant.
    Idle(Instant),
    /// A request's headers started arriving at this instant.
    Head(Instant),
    /// Requests being answered.
    Busy(usize),
    /// Handed over to another protocol (WebSocket): its own rules apply.
    Upgraded,
}

struct ConnClock {
    phase: Mutex<Phase>,
}

impl ConnClock {
    fn new() -> ConnClock {
        ConnClock {
            phase: Mutex::new(Phase::Idle(Instant::now())),
        }
    }
    fn read_bytes(&self) {
        let mut p = lock(&self.phase);
        if let Phase::Idle(_) = *p {
            *p = Phase::Head(Instant::now());
        }
    }
    fn request_started(&self) {
        let mut p = lock(&self.phase);
        *p = match *p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Upgraded => Phase::Upgraded,
            _ => Phase::Busy(1),
        };
    }
    fn request_finished(&self) {
        let mut p = lock(&self.phase);
        if let Phase::Busy(n) = *p {
            *p = if n > 1 {
                Phase::Busy(n - 1)
            } else {
                Phase::Idle(Instant::now())
            };
        }
    }
    fn upgraded(&self) {
        *lock(&self.phase) = Phase::Upgraded;
    }
    /// When a read that finds nothing must give up.
    fn read_deadline(&self, t: &Timeouts) -> Option<Instant> {
        match *lock(&self.phase) {
            Phase::Idle(since) => Some(since + t.idle),
            Phase::Head(since) => Some(since + t.header),
            Phase::Busy(_) | Phase::Upgraded => None,
        }
    }
}

/// A connection's byte stream with its deadlines: reads give up when the
/// next request does not come (idle) or its headers do not finish (header);
/// a write the client does not take for the idle timeout gives up too.
struct Timed<IO> {
    io: IO,
    clock: Arc<ConnClock>,
    timeouts: Timeouts,
    read_timer: Option<(Instant, Pin<Box<Sleep>>)>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<IO> Timed<IO> {
    fn new(io: IO, clock: Arc<ConnClock>, timeouts: Timeouts) -> Self {
        Timed {
            io,
            clock,
            timeouts,
            read_timer: None,
            write_timer: None,
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

impl<IO: AsyncRead + Unpin> AsyncRead for Timed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.clock.read_bytes();
                }
                this.read_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(deadline) = this.clock.read_deadline(&this.timeouts) else {
                    this.read_timer = None;
                    return Poll::Pending;
                };
                let timer = match &mut this.read_timer {
                    Some((at, t)) if *at == deadline => t,
                    slot => {
                        let t = Box::pin(tokio::time::sleep_until(deadline.into()));
                        &mut slot.insert((deadline, t)).1
                    }
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("reading the request"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> Timed<IO> {
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let idle = self.timeouts.idle;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(timed_out("writing the response")),
            Poll::Pending => Poll::Pending,
        }
    }

    fn written<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.write_stalled(cx).map(Err),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Timed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.written(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.written(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that fails when no byte arrives for `timeout`, and says
/// so through `timed_out` (the answer becomes a 408).
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration, timed_out: Arc<AtomicBool>) -> Self {
        TimedBody {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            timed_out,
        }
    }
}

impl Body for TimedBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.timeout;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.timed_out.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(timed_out("reading the request body").into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the connection when it is done (dropped):
/// from then on the connection is idle.
struct Finished {
    inner: axum::body::Body,
    clock: Option<Arc<ConnClock>>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(c) = self.clock.take() {
            c.request_finished();
        }
    }
}

impl Body for Finished {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Descriptors the daemon asks for at start (root may raise its hard limit
/// up to the kernel's `nr_open`).
const WANTED_NOFILE: u64 = 65_536;

/// Raises the descriptor limit, so the caps on connections, not the
/// kernel, decide who gets in: to `WANTED_NOFILE` where allowed, otherwise
/// to the hard limit. Returns the limit in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let want = WANTED_NOFILE.min(nr_open).max(soft);
    if want > hard && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
        }
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_phase() {
        let t = Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        };
        let c = ConnClock::new();
        let Phase::Idle(since) = *lock(&c.phase) else {
            panic!("a new connection is idle")
        };
        assert_eq!(c.read_deadline(&t), Some(since + t.idle));
        c.read_bytes();
        let Phase::Head(head) = *lock(&c.phase) else {
            panic!("bytes start a head")
        };
        assert_eq!(c.read_deadline(&t), Some(head + t.header));
        // More bytes of the same head do not move the deadline.
        c.read_bytes();
        assert_eq!(c.read_deadline(&t), Some(head + t.header));
        c.request_started();
        c.request_started();
        assert_eq!(c.read_deadline(&t), None);
        c.request_finished();
        assert_eq!(c.read_deadline(&t), None);
        c.request_finished();
        assert!(matches!(*lock(&c.phase), Phase::Idle(_)));
        c.upgraded();
        c.request_finished();
        assert_eq!(c.read_deadline(&t), None);
    }
}
