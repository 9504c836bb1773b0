//! Prometheus metrics of one worker process, in a registry of its own (so that several workers
//! in one test process do not share counters), and the consumer state read by `/readyz`.
//! Names follow the Prometheus guidelines: no empty label values, states as a `state` label,
//! a `case_intake_build_info` metric and the standard `process_*` metrics.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::process::ProcessCollector;

type Labels = Vec<(String, String)>;

/// What the consumers are doing; `/readyz` is ready only in `Consuming`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConsumerState {
    Starting = 0,
    Consuming = 1,
    /// PostgreSQL is unreachable: windows are held or intake is paused.
    DatabaseOutage = 2,
    /// The broker session is being rebuilt.
    Reconnecting = 3,
    ShuttingDown = 4,
}

impl ConsumerState {
    const ALL: [ConsumerState; 5] = [
        ConsumerState::Starting,
        ConsumerState::Consuming,
        ConsumerState::DatabaseOutage,
        ConsumerState::Reconnecting,
        ConsumerState::ShuttingDown,
    ];

    /// The value of the `state` label of `case_intake_consumer_state`.
    pub fn label(self) -> &'static str {
        match self {
            ConsumerState::Starting => "starting",
            ConsumerState::Consuming => "consuming",
            ConsumerState::DatabaseOutage => "database_outage",
            ConsumerState::Reconnecting => "reconnecting",
            ConsumerState::ShuttingDown => "shutting_down",
        }
    }
}

/// Every metric of the worker.
pub struct Metrics {
    registry: Mutex<Registry>,
    intakes: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    retries: Counter,
    dead_lettered: Counter,
    reconnects: Counter,
    events_published: Counter,
    window_seconds: Histogram,
    window_size: Histogram,
    outbox_backlog: Gauge,
    outbox_oldest_seconds: Gauge,
    consumer_state_gauge: Family<Labels, Gauge>,
    broker_endpoint: Family<Labels, Gauge>,
    /// Connection name → endpoint label it is on now.
    endpoints: Mutex<std::collections::BTreeMap<String, String>>,
    unparseable: Counter,
    parked: Gauge,
    intake_waiting: Gauge,
    state: AtomicU8,
    /// When the process started: the origin of the two instants below, kept as milliseconds.
    started: Instant,
    /// Milliseconds after `started` of the last completed intake window.
    last_progress_ms: AtomicI64,
    /// Messages ready in the intake queue at the last check; -1 while unknown.
    waiting: AtomicI64,
}

/// Registers each metric under its name and hands it back for the worker to keep.
struct Registrar<'a>(&'a mut Registry);

impl Registrar<'_> {
    fn add<M: prometheus_client::registry::Metric + Clone>(
        &mut self,
        name: &str,
        help: &str,
        metric: M,
    ) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    fn counter(&mut self, name: &str, help: &str) -> Counter {
        self.add(name, help, Counter::default())
    }

    fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.add(name, help, Gauge::default())
    }

    fn counters(&mut self, name: &str, help: &str) -> Family<Labels, Counter> {
        self.add(name, help, Family::default())
    }

    fn gauges(&mut self, name: &str, help: &str) -> Family<Labels, Gauge> {
        self.add(name, help, Family::default())
    }

    /// `<prefix>_build_info{version="…"} 1`: which build runs, for dashboards and alerts.
    fn build_info(&mut self) {
        let labels = vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())];
        self.0
            .register("build", "The running build: its version", Info::new(labels));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // The process metrics have standard names without the service's prefix.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let mut r = Registrar(root.sub_registry_with_prefix("case_intake"));
        r.build_info();
        let m = Self {
            intakes: r.counters(
                "intakes",
                "Intakes processed, by outcome (created, failed, duplicate, matched)",
            ),
            failures: r.counters("intake_failures", "Failed intakes, by error code"),
            retries: r.counter(
                "retries",
                "Intakes sent through the delayed retry queue after transient errors",
            ),
            dead_lettered: r.counter(
                "dead_lettered",
                "Dead-lettered deliveries recorded from the dead-letter queue",
            ),
            reconnects: r.counter("broker_reconnects", "Broker sessions rebuilt after a fault"),
            events_published: r.counter("events_published", "Events confirmed by the broker"),
            window_seconds: r.add(
                "window_seconds",
                "Time to process one window (transaction included)",
                Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            ),
            window_size: r.add(
                "window_size",
                "Deliveries per window",
                Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            ),
            outbox_backlog: r.gauge(
                "outbox_backlog",
                "Events waiting in the outbox (read at scrape time)",
            ),
            outbox_oldest_seconds: r.gauge(
                "outbox_oldest_age_seconds",
                "Age of the oldest unpublished event (read at scrape time)",
            ),
            consumer_state_gauge: r.gauges(
                "consumer_state",
                "1 for the state the consumers are in, 0 for the others",
            ),
            broker_endpoint: r.gauges(
                "broker_endpoint",
                "1 for the broker endpoint (host:port/vhost) each connection is on, 0 for \
                 endpoints it was on before",
            ),
            endpoints: Mutex::new(std::collections::BTreeMap::new()),
            unparseable: r.counter(
                "unparseable_deliveries",
                "Broker sessions ended by a delivery the AMQP client could not parse (such a \
                 message is parked after its delivery limits)",
            ),
            parked: r.gauge(
                "parked_messages",
                "Messages in the parking queue (read every health check)",
            ),
            intake_waiting: r.gauge(
                "intake_queue_ready",
                "Messages ready in the intake queue (read every health check)",
            ),
            registry: Mutex::new(root),
            state: AtomicU8::new(ConsumerState::Starting as u8),
            started: Instant::now(),
            last_progress_ms: AtomicI64::new(0),
            waiting: AtomicI64::new(-1),
        };
        m.set_state(ConsumerState::Starting);
        m
    }

    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// Counts one outcome: `kind` is `created`, `failed`, `duplicate` or `matched`; `code` the error code
    /// of a failure, counted in a family of its own so that no series has an empty label.
    pub fn record_outcome(&self, kind: &str, code: Option<&str>) {
        if code == Some("dead_lettered") {
            self.dead_lettered.inc();
        }
        self.intakes
            .get_or_create(&vec![("outcome".to_owned(), kind.to_owned())])
            .inc();
        if let Some(code) = code {
            self.failures
                .get_or_create(&vec![("code".to_owned(), code.to_owned())])
                .inc();
        }
    }

    pub fn record_window(&self, size: usize, seconds: f64) {
        self.window_size.observe(size as f64);
        self.window_seconds.observe(seconds);
        self.record_progress();
    }

    /// Notes that intake moved forward now (a window committed or the queue was seen empty).
    pub fn record_progress(&self) {
        let ms = self.started.elapsed().as_millis() as i64;
        self.last_progress_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn record_unparseable(&self) {
        self.unparseable.inc();
    }

    /// Records what the health check read off the broker: messages ready in the intake queue
    /// and messages parked. An empty intake queue counts as progress: nothing waits.
    pub fn set_queues(&self, intake_ready: u32, parked: u32) {
        self.intake_waiting.set(intake_ready.into());
        self.parked.set(parked.into());
        self.waiting.store(intake_ready.into(), Ordering::Relaxed);
        if intake_ready == 0 {
            self.record_progress();
        }
    }

    /// Forgets the queue depths when a broker session ends: while there is none (the broker
    /// is away, the topology refused), whether messages wait is unknown, and a restart would
    /// not help.
    pub fn forget_queues(&self) {
        self.waiting.store(-1, Ordering::Relaxed);
    }

    /// True when messages wait in the intake queue and no window has completed for longer
    /// than `limit`, outside a database outage (where intake is paused on purpose and
    /// `/readyz` says so): the worker is stuck and a restart is the remedy.
    pub fn stalled(&self, limit: Duration) -> bool {
        if self.waiting.load(Ordering::Relaxed) <= 0
            || self.state() == ConsumerState::DatabaseOutage
        {
            return false;
        }
        let now = self.started.elapsed().as_millis() as i64;
        let idle = now - self.last_progress_ms.load(Ordering::Relaxed);
        idle > limit.as_millis() as i64
    }

    pub fn record_retry(&self) {
        self.retries.inc();
    }

    pub fn record_reconnect(&self) {
        self.reconnects.inc();
    }

    pub fn record_published(&self, n: usize) {
        self.events_published.inc_by(n as u64);
    }

    /// Moves the consumers to `state`: its series goes to 1 and every other to 0, under the
    /// registry's lock so that a scrape never sees two states at 1 or none.
    pub fn set_state(&self, state: ConsumerState) {
        let _scrape = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.state.swap(state as u8, Ordering::Relaxed);
        if previous != state as u8 {
            tracing::info!(
                from = Self::state_of(previous).label(),
                to = state.label(),
                "consumer state changed"
            );
        }
        for s in ConsumerState::ALL {
            self.consumer_state_gauge
                .get_or_create(&vec![("state".to_owned(), s.label().to_owned())])
                .set(i64::from(s == state));
        }
    }

    /// Records that connection `name` is now on `endpoint`; returns the endpoint it was on
    /// before when that differs (the caller logs the change).
    pub fn set_endpoint(&self, name: &str, endpoint: &str) -> Option<String> {
        let _scrape = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut on = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let labels = |e: &str| {
            vec![
                ("connection".to_owned(), name.to_owned()),
                ("endpoint".to_owned(), e.to_owned()),
            ]
        };
        let before = on.insert(name.to_owned(), endpoint.to_owned());
        if let Some(old) = before.as_deref().filter(|old| *old != endpoint) {
            self.broker_endpoint.get_or_create(&labels(old)).set(0);
        }
        self.broker_endpoint.get_or_create(&labels(endpoint)).set(1);
        before.filter(|old| old != endpoint)
    }

    pub fn state(&self) -> ConsumerState {
        Self::state_of(self.state.load(Ordering::Relaxed))
    }

    fn state_of(value: u8) -> ConsumerState {
        match value {
            1 => ConsumerState::Consuming,
            2 => ConsumerState::DatabaseOutage,
            3 => ConsumerState::Reconnecting,
            4 => ConsumerState::ShuttingDown,
            _ => ConsumerState::Starting,
        }
    }

    pub fn set_outbox(&self, backlog: i64, oldest_seconds: i64) {
        self.outbox_backlog.set(backlog);
        self.outbox_oldest_seconds.set(oldest_seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gauge_follows_each_connection() {
        let m = Metrics::new();
        assert_eq!(m.set_endpoint("consumer", "a:5672/%2f"), None);
        assert_eq!(m.set_endpoint("consumer", "a:5672/%2f"), None);
        assert_eq!(
            m.set_endpoint("consumer", "b:5672/%2f").as_deref(),
            Some("a:5672/%2f")
        );
        let text = m.render();
        for series in [
            r#"case_intake_broker_endpoint{connection="consumer",endpoint="a:5672/%2f"} 0"#,
            r#"case_intake_broker_endpoint{connection="consumer",endpoint="b:5672/%2f"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing: {text}"
            );
        }
    }

    #[test]
    fn renders_outcomes_without_empty_labels() {
        let m = Metrics::new();
        m.record_outcome("failed", Some("unauthorized"));
        m.record_outcome("created", None);
        let text = m.render();
        for series in [
            r#"case_intake_intakes_total{outcome="failed"} 1"#,
            r#"case_intake_intakes_total{outcome="created"} 1"#,
            r#"case_intake_intake_failures_total{code="unauthorized"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing: {text}"
            );
        }
        assert!(!text.contains(r#"="""#), "an empty label value: {text}");
    }

    #[test]
    fn consumer_state_is_one_hot() {
        let m = Metrics::new();
        let at_one = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("case_intake_consumer_state{") && l.ends_with(" 1"))
                .map(str::to_owned)
                .collect()
        };
        let text = m.render();
        assert_eq!(
            at_one(&text),
            [r#"case_intake_consumer_state{state="starting"} 1"#]
        );
        m.set_state(ConsumerState::Consuming);
        let text = m.render();
        assert_eq!(
            at_one(&text),
            [r#"case_intake_consumer_state{state="consuming"} 1"#]
        );
        for state in ConsumerState::ALL {
            let series = format!(r#"case_intake_consumer_state{{state="{}"}}"#, state.label());
            assert!(text.contains(&series), "{series} missing: {text}");
        }
        assert!(text.contains(r#"case_intake_consumer_state{state="reconnecting"} 0"#));
        assert_eq!(m.state(), ConsumerState::Consuming);
    }

    #[test]
    fn renders_build_info_and_process_metrics() {
        let text = Metrics::new().render();
        let build = format!(
            r#"case_intake_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(
                    text.lines().any(|l| l.starts_with(name)),
                    "{name} missing: {text}"
                );
            }
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn stalled_only_when_messages_wait_without_progress() {
        let m = Metrics::new();
        // Nothing known about the queue: not stalled.
        assert!(!m.stalled(Duration::ZERO));
        // Messages wait and no window ever completed.
        m.set_queues(5, 2);
        std::thread::sleep(Duration::from_millis(5));
        assert!(m.stalled(Duration::from_millis(1)));
        assert!(!m.stalled(Duration::from_secs(3600)));
        // A database outage pauses intake on purpose.
        m.set_state(ConsumerState::DatabaseOutage);
        assert!(!m.stalled(Duration::from_millis(1)));
        m.set_state(ConsumerState::Consuming);
        // An empty queue is progress.
        m.set_queues(0, 2);
        assert!(!m.stalled(Duration::ZERO));
        // Without a session nothing is known.
        m.set_queues(5, 2);
        m.forget_queues();
        assert!(!m.stalled(Duration::ZERO));
        let text = m.render();
        assert!(text.contains("case_intake_parked_messages 2"), "{text}");
    }
}
