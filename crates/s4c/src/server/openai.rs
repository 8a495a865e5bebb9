//! The OpenAI API's shapes: request bodies checked and turned into engine [`Request`]s, answers
//! and stream chunks, and the error object.

use axum::http::StatusCode;
use s4c_models::Message;
use s4c_verify::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{Completion, FinishReason, Mode, Prompt, Request};

/// An error answer: status and OpenAI's `{"error": {...}}` object.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error of `status` and OpenAI `kind`, about no parameter.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// A 400 about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: a string, or a list of parts of which the text parts count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of `/v1/chat/completions` and `/v1/completions` s4c reads; others are ignored.
#[derive(Deserialize)]
struct Body {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    prompt: Option<Value>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    /// s4c's own: `plain` or `s4c` for this request.
    mode: Option<Mode>,
}

/// Which endpoint a body came to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completion,
}

/// A checked request.
pub(crate) struct Parsed {
    pub request: Request,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks a request body and makes the engine request; `context` bounds `max_tokens`' default,
/// `seed` is used when the body names none.
pub(crate) fn parse(
    bytes: &[u8],
    endpoint: Endpoint,
    model_id: &str,
    context: usize,
    seed: u64,
) -> Result<Parsed, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::invalid(None, "the request body is not UTF-8 text"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    }
    let body: Body = serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(None, format!("invalid request: {e}")))?;
    if let Some(m) = &body.model {
        if m != model_id {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("the model `{m}` does not exist; this server serves `{model_id}`"),
                kind: "invalid_request_error",
                param: Some("model"),
                code: Some("model_not_found"),
            });
        }
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(Some("n"), "only n = 1 is supported"));
    }
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(messages(body.messages)?),
        Endpoint::Completion => Prompt::Text(prompt_text(body.prompt)?),
    };
    let max_tokens = match (body.max_completion_tokens, body.max_tokens) {
        (Some(n), _) => Some(("max_completion_tokens", n)),
        (None, Some(n)) => Some(("max_tokens", n)),
        (None, None) => None,
    };
    let max_new_tokens = match max_tokens {
        Some((param, n)) if n <= 0 => {
            return Err(ApiError::invalid(
                Some(param),
                format!("{param} must be at least 1, not {n}"),
            ))
        }
        Some((_, n)) => usize::try_from(n).unwrap_or(usize::MAX).min(context),
        None => context,
    };
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            "temperature must be between 0 and 2",
        ));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            "top_p must be above 0 and at most 1",
        ));
    }
    let stop = match body.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid(Some("stop"), "at most 4 stop strings"));
    }
    let mut request = Request::new(prompt)
        .max_new_tokens(max_new_tokens)
        .sampling(
            SamplingParams {
                temperature,
                top_k: 0,
                top_p,
            },
            body.seed.unwrap_or(seed),
        );
    request.stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
    request.mode = body.mode;
    Ok(Parsed {
        request,
        stream: body.stream,
        include_usage: body.stream_options.is_some_and(|o| o.include_usage),
    })
}

fn messages(messages: Option<Vec<ChatMessage>>) -> Result<Vec<Message>, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid(Some("messages"), "`messages` is required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must not be empty",
        ));
    }
    messages
        .into_iter()
        .map(|m| {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant"
            ) {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("unknown role `{}` (system, user or assistant)", m.role),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join(""),
            };
            let role = if m.role == "developer" {
                "system"
            } else {
                &m.role
            };
            Ok(Message::new(role, &content))
        })
        .collect()
}

fn prompt_text(prompt: Option<Value>) -> Result<String, ApiError> {
    let bad = || ApiError::invalid(Some("prompt"), "`prompt` must be a non-empty string");
    match prompt {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::Array(v)) if v.len() == 1 => match &v[0] {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// `finish_reason` of an answer.
fn finish_reason(c: &Completion) -> &'static str {
    match c.finish {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// `usage` of an answer.
pub(crate) fn usage(c: &Completion) -> Value {
    let (p, n) = (c.timings.prompt_n, c.timings.predicted_n);
    json!({
        "prompt_tokens": p,
        "completion_tokens": n,
        "total_tokens": p + n,
        "prompt_tokens_details": {"cached_tokens": c.timings.cache_n},
    })
}

/// What every answer and chunk of one request shares.
pub(crate) struct Envelope<'a> {
    pub id: String,
    pub created: u64,
    pub model: &'a str,
    pub endpoint: Endpoint,
}

impl Envelope<'_> {
    /// The whole answer (not streamed).
    pub fn answer(&self, c: &Completion) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": finish_reason(c),
                "logprobs": null,
            }),
            Endpoint::Completion => json!({
                "index": 0, "text": c.text, "finish_reason": finish_reason(c), "logprobs": null,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(c),
            "timings": c.timings,
        })
    }

    /// A stream chunk carrying `text` (and, at the end, the finish reason and timings).
    pub fn chunk(&self, text: Option<&str>, done: Option<&Completion>) -> Value {
        let finish = done.map(finish_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None if done.is_none() => json!({"role": "assistant", "content": ""}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            Endpoint::Completion => json!({
                "index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null,
            }),
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let Some(c) = done {
            v["timings"] = json!(c.timings);
        }
        v
    }

    /// The last chunk of `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, c: &Completion) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(c),
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }
}
