//! The engines behind the server: each worker thread owns one engine and answers queued jobs
//! one at a time; a job's events go back to its request as the answer is generated.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::engine::{BatchJob, Completion, EngineBuilder, EngineInfo, Request};
use crate::error::{EngineError, Result};
use crate::BackendKind;

/// What a worker sends back while answering a job.
#[derive(Debug)]
pub(crate) enum Event {
    /// More text of the answer.
    Text(String),
    /// The answer is complete.
    Done(Box<Completion>),
    /// The request could not be answered: the engine's error.
    Failed(EngineError),
}

/// One queued request.
pub(crate) struct Job {
    pub request: Request,
    pub events: UnboundedSender<Event>,
}

/// Why a job was not queued.
pub(crate) enum Refused {
    /// Every worker is busy and the queue is full.
    Full,
    /// The workers have stopped.
    Closed,
}

/// The worker threads and the queue in front of them.
pub(crate) struct Workers {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// What the engines run (all alike).
    pub info: EngineInfo,
}

impl Workers {
    /// Starts `count` workers, each loading its own engine from `builder` on `backend`, with
    /// room for `queue` waiting jobs; returns when every engine is ready (or the first error).
    pub fn start(
        builder: &EngineBuilder,
        backend: BackendKind,
        count: usize,
        queue: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = vec![];
        for i in 0..count.max(1) {
            let (builder, rx, ready, metrics) = (
                builder.clone(),
                rx.clone(),
                ready_tx.clone(),
                metrics.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("s4c-engine-{i}"))
                .spawn(move || match builder.open(backend) {
                    Ok(engine) => {
                        let _ = ready.send(Ok(engine.info().clone()));
                        work(engine.as_ref(), &rx, &metrics, max_batch.max(1));
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                });
            threads.push(spawned.map_err(|e| {
                EngineError::InvalidOption(format!("cannot start an engine thread: {e}"))
            })?);
        }
        drop(ready_tx);
        let mut info = None;
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(i)) => info = Some(i),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(EngineError::InvalidOption(
                        "an engine thread ended while loading the model".into(),
                    ))
                }
            }
        }
        let info = info.ok_or_else(|| EngineError::InvalidOption("no engine started".into()))?;
        Ok(Workers {
            jobs: Some(jobs),
            threads,
            info,
        })
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Refused> {
        let jobs = self.jobs.as_ref().ok_or(Refused::Closed)?;
        match jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Closed),
        }
    }

    /// Lets the workers finish the queued jobs, then waits for them to end.
    pub fn stop(mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A worker's loop: answer jobs until the queue closes. Up to `max_batch` run together, each in
/// its own mode, every step of all of them in one forward ([`crate::Engine::generate_batch`]);
/// queued jobs join as others finish.
fn work(
    engine: &dyn crate::TextEngine,
    rx: &Mutex<Receiver<Job>>,
    metrics: &Arc<Metrics>,
    max_batch: usize,
) {
    // The next queued job whose client is still there.
    let next = |wait: bool| -> Option<Job> {
        loop {
            let job = {
                let rx = rx.lock().ok()?;
                if wait {
                    rx.recv().ok()?
                } else {
                    rx.try_recv().ok()?
                }
            };
            metrics.queued.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                // The client left while the job waited.
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            return Some(job);
        }
    };
    while let Some(first) = next(true) {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match next(false) {
                Some(j) => jobs.push(j),
                None => break,
            }
        }
        let batch: Vec<BatchJob> = jobs.into_iter().map(|j| batch_job(j, metrics)).collect();
        engine.generate_batch(batch, max_batch, &mut |room| {
            (0..room)
                .map_while(|_| next(false))
                .map(|j| batch_job(j, metrics))
                .collect()
        });
    }
}

/// A queued job as the engine's batch takes it.
fn batch_job(job: Job, metrics: &Arc<Metrics>) -> BatchJob {
    metrics.running.fetch_add(1, Ordering::Relaxed);
    let (text, done) = (job.events.clone(), job.events);
    let metrics = metrics.clone();
    BatchJob {
        request: job.request,
        on_text: Box::new(
            move |piece| match text.send(Event::Text(piece.to_string())) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            },
        ),
        done: Box::new(move |answer| {
            metrics.running.fetch_sub(1, Ordering::Relaxed);
            finish(&done, &metrics, answer);
        }),
    }
}

/// Records a finished job and sends its last event.
fn finish(events: &UnboundedSender<Event>, metrics: &Metrics, answer: Result<Completion>) {
    let event = match answer {
        Ok(c) => {
            metrics.record(&c);
            Event::Done(Box::new(c))
        }
        Err(e) => Event::Failed(e),
    };
    let _ = events.send(event);
}
