//! The daemon's localhost JSON HTTP API.
//!
//! | method | path | body → response |
//! |---|---|---|
//! | GET  | /api/v1/node | → identity |
//! | GET  | /api/v1/channels | → [channel summary] |
//! | POST | /api/v1/channels | {name} → channel summary |
//! | GET  | /api/v1/channels/{ch}/messages | → [message] |
//! | POST | /api/v1/channels/{ch}/messages | {text, precedence?, reply_to?} → {id, envelope, channel} |
//! | POST | /api/v1/channels/{ch}/messages/{id}/edit | {text} → posted |
//! | POST | /api/v1/channels/{ch}/messages/{id}/react | {reaction, on} → posted |
//! | POST | /api/v1/channels/{ch}/messages/{id}/redact | {} → posted |
//! | GET  | /api/v1/channels/{ch}/export | → Automerge file |
//! | GET  | /api/v1/bundle?channel= | → bundle file |
//! | POST | /api/v1/bundle | bundle file → import report |
//! | GET  | /api/v1/events | server-sent events: `message` {channel, message} |
//! | POST | /api/v1/channels/{ch}/blobs?name=&mime= | file bytes → attachment reference |
//! | GET  | /api/v1/messages/{id}/attachments/{n} | → verified attachment bytes |
//! | GET  | /api/v1/sync-status | → {peer_id, listen, envelopes, peers: [per-peer counters, backlog]} |
//!
//! Errors are `{"error": "..."}` with 400, 403, 404, 409, 413, 500 or 507.
//! The API has no authentication: it listens on loopback only, and it refuses what a web
//! page could send it. A page the operator opens can reach 127.0.0.1 too: through a name
//! that re-resolves to it (DNS rebinding: its scripts are then same-origin with the API and
//! could read every channel this node holds keys for, post as the node, change access),
//! or with a form or `no-cors` request (raw-body endpoints such as a bundle import). So
//! a request must name a loopback host (`Host`), and one that carries an `Origin` (every
//! browser sends it on such requests; the CLI and scripts do not) is refused (403).

use crate::node::Node;
use crate::ops::{NodeError, Ops, PostRequest};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

type AppState = Arc<Node>;

/// Resolves when the daemon starts shutting down; long-lived responses (the event
/// stream) end then, so that graceful shutdown does not wait for subscribers forever.
#[derive(Clone, Debug)]
pub struct Shutdown(pub tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Runs blocking node work off the async executor.
async fn blocking<T: Send + 'static>(
    node: AppState,
    f: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(move || f(&node))
        .await
        .map_err(|e| NodeError::Internal(format!("worker failed: {e}")))?
}

fn json<T: serde::Serialize>(r: Result<T, NodeError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn bytes(r: Result<Vec<u8>, NodeError>) -> Response {
    match r {
        Ok(v) => ([("content-type", "application/octet-stream")], v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
    #[serde(default)]
    compartment: Option<String>,
}
#[derive(Deserialize)]
struct TextBody {
    text: String,
}
#[derive(Deserialize)]
struct ReactBody {
    reaction: String,
    #[serde(default = "yes")]
    on: bool,
}
fn yes() -> bool {
    true
}
#[derive(Deserialize)]
struct BlobQuery {
    name: String,
    #[serde(default = "octet")]
    mime: String,
}
fn octet() -> String {
    "application/octet-stream".into()
}
#[derive(Deserialize)]
struct BundleQuery {
    channel: Option<String>,
}

pub fn router(node: Arc<Node>, shutdown: Shutdown) -> Router {
    Router::new()
        .route(
            "/api/v1/channels/{ch}/blobs",
            post(|State(n): State<AppState>, Path(ch): Path<String>, Query(q): Query<BlobQuery>, body: Bytes| async move {
                json(blocking(n, move |n| n.put_blob(&ch, &q.name, &q.mime, &body)).await)
            }),
        )
        .route(
            "/api/v1/messages/{id}/attachments/{n}",
            get(|State(n): State<AppState>, Path((id, i)): Path<(String, usize)>| async move {
                bytes(blocking(n, move |n| n.get_attachment(&id, i)).await)
            }),
        )
        .route(
            "/api/v1/ai",
            post(|State(n): State<AppState>, axum::Json(b): axum::Json<crate::ai::AiRequest>| async move {
                json(blocking(n, move |n| n.ai(&b)).await)
            }),
        )
        .route(
            "/api/v1/access",
            post(|State(n): State<AppState>, axum::Json(b): axum::Json<crate::access::AccessRequest>| async move {
                json(blocking(n, move |n| n.access(&b)).await)
            }),
        )
        .route("/api/v1/sync-status", get(|State(n): State<AppState>| async move { json(blocking(n, |n| n.net()).await) }))
        .route("/api/v1/node", get(|State(n): State<AppState>| async move { json(blocking(n, |n| n.identity()).await) }))
        .route(
            "/api/v1/channels",
            get(|State(n): State<AppState>| async move { json(blocking(n, |n| n.channels()).await) }).post(
                |State(n): State<AppState>, axum::Json(b): axum::Json<NameBody>| async move {
                    json(blocking(n, move |n| n.create_channel(&b.name, b.compartment.as_deref())).await)
                },
            ),
        )
        .route(
            "/api/v1/channels/{ch}/messages",
            get(|State(n): State<AppState>, Path(ch): Path<String>| async move {
                json(blocking(n, move |n| n.read(&ch)).await)
            })
            .post(|State(n): State<AppState>, Path(ch): Path<String>, axum::Json(b): axum::Json<PostRequest>| async move {
                json(blocking(n, move |n| n.post(&ch, &b)).await)
            }),
        )
        .route(
            "/api/v1/channels/{ch}/messages/{id}/edit",
            post(
                |State(n): State<AppState>, Path((ch, id)): Path<(String, String)>, axum::Json(b): axum::Json<TextBody>| async move {
                    json(blocking(n, move |n| n.edit(&ch, &id, &b.text)).await)
                },
            ),
        )
        .route(
            "/api/v1/channels/{ch}/messages/{id}/react",
            post(
                |State(n): State<AppState>, Path((ch, id)): Path<(String, String)>, axum::Json(b): axum::Json<ReactBody>| async move {
                    json(blocking(n, move |n| n.react(&ch, &id, &b.reaction, b.on)).await)
                },
            ),
        )
        .route(
            "/api/v1/channels/{ch}/messages/{id}/redact",
            post(|State(n): State<AppState>, Path((ch, id)): Path<(String, String)>| async move {
                json(blocking(n, move |n| n.redact(&ch, &id)).await)
            }),
        )
        .route(
            "/api/v1/channels/{ch}/export",
            get(|State(n): State<AppState>, Path(ch): Path<String>| async move {
                bytes(blocking(n, move |n| n.export_channel(&ch)).await)
            }),
        )
        .route(
            "/api/v1/bundle",
            get(|State(n): State<AppState>, Query(q): Query<BundleQuery>| async move {
                bytes(blocking(n, move |n| n.export_bundle(q.channel.as_deref())).await)
            })
            .post(|State(n): State<AppState>, body: Bytes| async move {
                json(blocking(n, move |n| n.import_bundle(&body)).await)
            }),
        )
        .route(
            "/api/v1/events",
            get(move |state: State<AppState>| events(state, shutdown.clone())),
        )
        .layer(DefaultBodyLimit::max(
            crate::blob::MAX_BLOB_BYTES as usize + crate::blob::API_BODY_SLACK,
        ))
        .layer(axum::middleware::from_fn(not_from_a_browser))
        .with_state(node)
}

/// Refuses (403) a request that does not name a loopback host, or that a browser sent
/// (see the module documentation).
async fn not_from_a_browser(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match refused(req.headers()) {
        Some(why) => (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": why })),
        )
            .into_response(),
        None => next.run(req).await,
    }
}

/// Why the API refuses a request with these headers, if it does.
fn refused(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    use axum::http::header::{HOST, ORIGIN};
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(is_loopback_host) {
        return Some(
            "the API answers only requests addressed to a loopback host (127.0.0.1, ::1, localhost)",
        );
    }
    if headers.contains_key(ORIGIN) {
        return Some("the API refuses requests from web pages (they carry an Origin)");
    }
    None
}

/// Whether a `Host` header names a loopback address or `localhost` (with or without a
/// port).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, port)) if port.is_empty() || port.starts_with(':') => name,
            _ => return false,
        },
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn events(
    State(n): State<AppState>,
    shutdown: Shutdown,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = BroadcastStream::new(n.subscribe()).map(|item| {
        Ok(match item {
            Ok(ev) => Event::default()
                .event("message")
                .json_data(&ev)
                .unwrap_or_else(|_| Event::default().comment("encode failed")),
            // A slow reader missed events: tell it to re-read instead of silently skipping.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
        })
    });
    Sse::new(futures_util::StreamExt::take_until(stream, shutdown.wait()))
        .keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_loopback_hosts_and_no_web_pages() {
        for ok in [
            "127.0.0.1:7878",
            "127.0.0.1",
            "127.0.0.2:80",
            "localhost:7878",
            "LOCALHOST",
            "[::1]:7878",
            "[::1]",
        ] {
            assert_eq!(refused(&headers(&[("host", ok)])), None, "{ok}");
        }
        for bad in [
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "localhost.evil.example:7878",
            "10.0.0.1:7878",
            "[::1]x",
            "[fe80::1]:7878",
            "",
        ] {
            assert!(refused(&headers(&[("host", bad)])).is_some(), "{bad}");
        }
        assert!(refused(&HeaderMap::new()).is_some(), "no Host");
        assert!(
            refused(&headers(&[
                ("host", "127.0.0.1:7878"),
                ("origin", "http://127.0.0.1:7878")
            ]))
            .is_some(),
            "a page, even one served from loopback"
        );
    }
}
