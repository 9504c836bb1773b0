//! The confirming publisher's shared parts: pacing publishes at a rate, and publishing a list
//! of intakes with pipelined publisher confirms (a bounded number outstanding), counting what
//! was published and confirmed for a progress line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::types::FieldTable;

use crate::broker;

/// Spaces publishes evenly from a start: publish `i` goes out at `start + i / rate`, so that a
/// slow publish is caught up with rather than pushing every later one back.
pub struct Pacer {
    start: tokio::time::Instant,
    /// Publishes per second; none: as fast as possible.
    rate: Option<f64>,
}

impl Pacer {
    /// Starts pacing now.
    pub fn new(rate: Option<f64>) -> Self {
        Pacer {
            start: tokio::time::Instant::now(),
            rate,
        }
    }

    /// Waits until publish `i` is due.
    pub async fn wait(&self, i: usize) {
        if let Some(r) = self.rate {
            tokio::time::sleep_until(self.start + Duration::from_secs_f64(i as f64 / r)).await;
        }
    }
}

/// Publisher progress, read by a progress line while publishing goes on.
#[derive(Default)]
pub struct Progress {
    pub published: AtomicUsize,
    pub confirmed: AtomicUsize,
}

/// One intake to publish: the message key and the body.
pub trait Outgoing {
    fn key(&self) -> &str;
    fn body(&self) -> &[u8];
}

/// Publishes in order with pipelined confirms; any nack, return or lost confirm ends it.
pub struct PipelinedPublisher {
    pub channel: Channel,
    pub queue: String,
    /// The headers of every publish (the caller's token).
    pub headers: FieldTable,
    /// Publishes per second; none: full speed.
    pub rate: Option<f64>,
    /// Confirms outstanding at most.
    pub outstanding: usize,
    pub progress: Arc<Progress>,
}

impl PipelinedPublisher {
    /// Publishes `msgs`; returns when each was handed to the client (in order) once every
    /// confirm arrived.
    pub async fn publish<M: Outgoing>(self, msgs: &[M]) -> Result<Vec<Instant>, String> {
        let mut sent = Vec::with_capacity(msgs.len());
        let mut pending = VecDeque::with_capacity(self.outstanding);
        let pacer = Pacer::new(self.rate);
        for (i, m) in msgs.iter().enumerate() {
            pacer.wait(i).await;
            while pending.len() >= self.outstanding {
                if let Some(c) = pending.pop_front() {
                    self.settle(c.await)?;
                }
            }
            let props = broker::keyed_intake(m.key(), self.headers.clone());
            sent.push(Instant::now());
            let confirm = broker::publish_intake(&self.channel, &self.queue, m.body(), props)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            self.progress.published.fetch_add(1, Ordering::Relaxed);
            pending.push_back(confirm);
        }
        while let Some(c) = pending.pop_front() {
            self.settle(c.await)?;
        }
        Ok(sent)
    }

    /// One confirm: counted when it means "in the queue", else why not.
    fn settle(&self, c: lapin::Result<lapin::Confirmation>) -> Result<(), String> {
        let c = c.map_err(|e| format!("publisher confirm: {e}"))?;
        if let Some(problem) = broker::confirm_problem(c) {
            return Err(problem.into());
        }
        self.progress.confirmed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
