//! `s4c serve`: an OpenAI-compatible HTTP server (axum on tokio) that answers with the engine.
//!
//! Requests are checked, then queued to the engine workers ([`ServerConfig::workers`] threads,
//! each with its own engine); a full queue answers 429 with `Retry-After`. Answers stream as
//! Server-Sent Events or come whole, each with `usage` and llama.cpp-style `timings` (draft
//! tokens and accepted ones). A client that disconnects cancels its generation. Bad requests get
//! OpenAI's error object and never stop the server. On shutdown, requests in flight finish and
//! new ones get 503.
//!
//! ```no_run
//! # async fn run() -> Result<(), s4c::EngineError> {
//! use s4c::server::{serve, ServerConfig};
//! let config = ServerConfig::new(s4c::EngineBuilder::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! serve(listener, config, std::future::pending()).await
//! # }
//! ```

mod metrics;
mod openai;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::EngineBuilder;
use crate::error::EngineError;
use crate::BackendKind;
use metrics::Metrics;
use openai::{parse, ApiError, Endpoint, Envelope};
use workers::{Event, Job, Refused, Workers};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The engine every worker builds.
    pub engine: EngineBuilder,
    /// Its backend.
    pub backend: BackendKind,
    /// The model's name in the API (`model` of requests and `/v1/models`).
    pub model_id: String,
    /// Requests must carry `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Engine workers: requests generated at the same time (each worker loads the engine; a
    /// GGUF file's weights are mapped once and shared).
    pub workers: usize,
    /// Requests that may wait for a worker; past that, 429.
    pub queue: usize,
    /// Requests an engine decodes together when several are waiting (1: one at a time). A
    /// request alone is answered with S4C; concurrent ones share each forward with plain steps,
    /// which on a CPU gives more tokens per second overall than separate trees.
    pub max_batch: usize,
    /// Largest request body in bytes.
    pub body_limit: usize,
}

impl ServerConfig {
    /// One worker, a queue of 64, a 4 MiB body limit, no API key; the model's name is its file
    /// name without the extension.
    pub fn new(engine: EngineBuilder) -> Self {
        ServerConfig {
            model_id: model_id(engine.model_path()),
            engine,
            backend: BackendKind::default(),
            api_key: None,
            workers: 1,
            queue: 64,
            max_batch: 16,
            body_limit: 4 << 20,
        }
    }
}

/// The API name of the model at `path`: its file or folder name without a `.gguf` extension.
fn model_id(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(name)
}

/// What the handlers share.
struct Shared {
    workers: Workers,
    metrics: Arc<Metrics>,
    model_id: String,
    api_key: Option<String>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    started: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads the engines, then serves on `listener` until `shutdown` completes; requests in flight
/// finish before it returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EngineError> {
    Server::start(config).await?.serve(listener, shutdown).await
}

/// A server whose engines are loaded, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    body_limit: usize,
}

impl Server {
    /// Starts the engine workers (loading the model in each).
    pub async fn start(config: ServerConfig) -> Result<Self, EngineError> {
        let metrics = Arc::new(Metrics::default());
        let c = config.clone();
        let m = metrics.clone();
        let workers = tokio::task::spawn_blocking(move || {
            Workers::start(&c.engine, c.backend, c.workers, c.queue, c.max_batch, m)
        })
        .await
        .map_err(|e| EngineError::InvalidOption(format!("engine start-up failed: {e}")))??;
        Ok(Server {
            shared: Arc::new(Shared {
                workers,
                metrics,
                model_id: config.model_id,
                api_key: config.api_key,
                stopping: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                started: now(),
            }),
            body_limit: config.body_limit,
        })
    }

    /// What the engines run.
    pub fn info(&self) -> &crate::EngineInfo {
        &self.shared.workers.info
    }

    /// Serves on `listener` until `shutdown` completes; requests in flight finish, new ones get
    /// 503, then the workers end.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EngineError> {
        let shared = self.shared;
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(metrics_text))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(self.body_limit))
            .with_state(shared.clone());
        let flag = shared.clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                flag.stopping.store(true, Ordering::SeqCst);
            })
            .await;
        // Every connection is closed: the workers finish what is queued and end.
        if let Ok(shared) = Arc::try_unwrap(shared) {
            let _ = tokio::task::spawn_blocking(move || shared.workers.stop()).await;
        }
        served.map_err(|e| EngineError::Io {
            path: "listener".into(),
            source: e,
        })
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

type AppState = State<Arc<Shared>>;

/// Refuses requests while stopping (503) and without the API key (401).
fn admit(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    if s.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ));
    }
    if let Some(key) = &s.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong API key (send `Authorization: Bearer <key>`)".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            });
        }
    }
    Ok(())
}

async fn chat(
    State(s): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, headers, body, Endpoint::Chat).await
}

async fn completions(
    State(s): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, headers, body, Endpoint::Completion).await
}

/// Both generation endpoints: check, queue, answer (whole or streamed).
async fn generate(
    s: Arc<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let answer = answer(&s, headers, body, endpoint).await;
    if let Err(e) = &answer {
        s.metrics.errors.fetch_add(1, Ordering::Relaxed);
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            s.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return (e.status, [(header::RETRY_AFTER, "1")], Json(e.body())).into_response();
        }
    }
    answer.unwrap_or_else(IntoResponse::into_response)
}

async fn answer(
    s: &Arc<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    admit(s, &headers)?;
    let bytes = body.map_err(|e| ApiError {
        status: e.status(),
        message: format!("the request body could not be read: {}", e.body_text()),
        kind: "invalid_request_error",
        param: None,
        code: None,
    })?;
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let seed = now() ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let parsed = parse(&bytes, endpoint, &s.model_id, s.workers.info.context, seed)?;
    let (tx, mut rx) = unbounded_channel();
    s.metrics.queued.fetch_add(1, Ordering::Relaxed);
    let queued = s.workers.submit(Job {
        request: parsed.request,
        events: tx,
    });
    if let Err(refused) = queued {
        s.metrics.queued.fetch_sub(1, Ordering::Relaxed);
        return Err(match refused {
            Refused::Full => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "every engine is busy and the queue is full; retry shortly",
            ),
            Refused::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            ),
        });
    }
    let envelope = Envelope {
        id: format!(
            "{}-{n}",
            if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            }
        ),
        created: now(),
        model: &s.model_id,
        endpoint,
    };
    // The first event tells a failed request (an error status) from an answer.
    let first = rx.recv().await.ok_or_else(worker_gone)?;
    if let Event::Failed(e) = first {
        return Err(engine_error(e));
    }
    if !parsed.stream {
        let mut event = first;
        loop {
            match event {
                Event::Text(_) => {}
                Event::Done(c) => return Ok(Json(envelope.answer(&c)).into_response()),
                Event::Failed(e) => return Err(engine_error(e)),
            }
            event = rx.recv().await.ok_or_else(worker_gone)?;
        }
    }
    Ok(stream(
        s.model_id.clone(),
        n,
        endpoint,
        parsed.include_usage,
        first,
        rx,
    ))
}

/// The answer as Server-Sent Events: a role chunk, text chunks, the final chunk with the finish
/// reason and timings, the usage chunk if asked for, and `[DONE]`.
fn stream(
    model: String,
    n: u64,
    endpoint: Endpoint,
    include_usage: bool,
    first: Event,
    rx: UnboundedReceiver<Event>,
) -> Response {
    struct St {
        rx: UnboundedReceiver<Event>,
        pending: Vec<SseEvent>,
        first: Option<Event>,
        done: bool,
    }
    let created = now();
    let id = format!(
        "{}-{n}",
        if endpoint == Endpoint::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }
    );
    let data = |v: serde_json::Value| SseEvent::default().data(v.to_string());
    let start = {
        let e = Envelope {
            id: id.clone(),
            created,
            model: &model,
            endpoint,
        };
        (endpoint == Endpoint::Chat).then(|| data(e.chunk(None, None)))
    };
    let state = St {
        rx,
        pending: start.into_iter().collect(),
        first: Some(first),
        done: false,
    };
    let events = futures_util::stream::unfold(state, move |mut st| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            loop {
                if !st.pending.is_empty() {
                    let e = st.pending.remove(0);
                    return Some((Ok::<_, Infallible>(e), st));
                }
                if st.done {
                    return None;
                }
                let event = match st.first.take() {
                    Some(e) => Some(e),
                    None => st.rx.recv().await,
                };
                let e = Envelope {
                    id: id.clone(),
                    created,
                    model: &model,
                    endpoint,
                };
                match event {
                    Some(Event::Text(t)) => st.pending.push(data(e.chunk(Some(&t), None))),
                    Some(Event::Done(c)) => {
                        st.pending.push(data(e.chunk(None, Some(&c))));
                        if include_usage {
                            st.pending.push(data(e.usage_chunk(&c)));
                        }
                        st.pending.push(SseEvent::default().data("[DONE]"));
                        st.done = true;
                    }
                    Some(Event::Failed(err)) => {
                        st.pending.push(data(engine_error(err).body()));
                        st.pending.push(SseEvent::default().data("[DONE]"));
                        st.done = true;
                    }
                    None => return None,
                }
            }
        }
    });
    Sse::new(events).into_response()
}

fn worker_gone() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the engine stopped before answering",
    )
}

/// An engine error as an API error: bad options are the client's (400), the rest the server's.
fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::InvalidOption(m) => ApiError {
            code: m.contains("context").then_some("context_length_exceeded"),
            ..ApiError::invalid(None, m)
        },
        e => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        ),
    }
}

async fn models(State(s): AppState, headers: HeaderMap) -> Response {
    if let Err(e) = admit(&s, &headers) {
        return e.into_response();
    }
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.model_id,
            "object": "model",
            "created": s.started,
            "owned_by": "s4c",
            "meta": s.workers.info,
        }],
    }))
    .into_response()
}

async fn health(State(s): AppState) -> Response {
    if s.stopping.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopping"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics_text(State(s): AppState, headers: HeaderMap) -> Response {
    if let Err(e) = admit(&s, &headers) {
        return e.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint; see /v1/chat/completions, /v1/completions, /v1/models, \
                  /health, /metrics"
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
    .into_response()
}
