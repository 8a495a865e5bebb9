//! The server's counters, served at `GET /metrics` in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::{Completion, FinishReason};

/// Counters and gauges; every field is updated without locks.
#[derive(Default)]
pub(crate) struct Metrics {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub rejected: AtomicU64,
    pub cancelled: AtomicU64,
    pub queued: AtomicU64,
    pub running: AtomicU64,
    pub completed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub draft_tokens: AtomicU64,
    pub draft_accepted: AtomicU64,
}

impl Metrics {
    /// Counts a finished generation.
    pub fn record(&self, c: &Completion) {
        let t = &c.timings;
        let add = |a: &AtomicU64, v: usize| a.fetch_add(v as u64, Ordering::Relaxed);
        add(&self.completed, 1);
        add(&self.prompt_tokens, t.prompt_n);
        add(&self.generated_tokens, t.predicted_n);
        // The prefill's token is a step of its own (τ as `s4c bench` counts it).
        add(&self.steps, t.steps + 1);
        add(&self.draft_tokens, t.draft_n);
        add(&self.draft_accepted, t.draft_n_accepted);
        if c.finish == FinishReason::Cancelled {
            add(&self.cancelled, 1);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
        let rows: [(&str, &str, &str, f64); 12] = [
            (
                "s4c_requests_total",
                "counter",
                "Generation requests received.",
                get(&self.requests),
            ),
            (
                "s4c_request_errors_total",
                "counter",
                "Requests answered with an error (4xx or 5xx).",
                get(&self.errors),
            ),
            (
                "s4c_requests_rejected_total",
                "counter",
                "Requests refused with 429 because the queue was full.",
                get(&self.rejected),
            ),
            (
                "s4c_requests_cancelled_total",
                "counter",
                "Generations stopped because the client disconnected.",
                get(&self.cancelled),
            ),
            (
                "s4c_queue_depth",
                "gauge",
                "Requests waiting for an engine.",
                get(&self.queued),
            ),
            (
                "s4c_requests_running",
                "gauge",
                "Requests being generated.",
                get(&self.running),
            ),
            (
                "s4c_prompt_tokens_total",
                "counter",
                "Prompt tokens of finished generations.",
                get(&self.prompt_tokens),
            ),
            (
                "s4c_generated_tokens_total",
                "counter",
                "New tokens of finished generations.",
                get(&self.generated_tokens),
            ),
            (
                "s4c_draft_tokens_total",
                "counter",
                "Draft tokens verified.",
                get(&self.draft_tokens),
            ),
            (
                "s4c_draft_tokens_accepted_total",
                "counter",
                "Draft tokens the target accepted.",
                get(&self.draft_accepted),
            ),
            (
                "s4c_mean_accepted_length",
                "gauge",
                "Mean new tokens per target forward (tau) over finished generations.",
                ratio(get(&self.generated_tokens), get(&self.steps)),
            ),
            (
                "s4c_draft_acceptance_ratio",
                "gauge",
                "Accepted share of the verified draft tokens.",
                ratio(get(&self.draft_accepted), get(&self.draft_tokens)),
            ),
        ];
        let mut s = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        s
    }
}
