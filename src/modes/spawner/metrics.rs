//! Prometheus metrics of the spawner, served as text on `GET /metrics`.
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric, registered once at boot.
pub struct Metrics {
    registry: Registry,
    /// Sessions in the registry, by state.
    pub sessions: Family<Labels, Gauge>,
    /// Successful session creates.
    pub creates: Counter,
    /// Failed session creates, by reason.
    pub create_failures: Family<Labels, Counter>,
    /// Seconds from create request to runnerd ready.
    pub create_seconds: Histogram,
    /// Execs started through the API.
    pub execs: Counter,
    /// Exec outcomes, by reason (completed, failed, cancelled, timed_out, session_lost).
    pub exec_outcomes: Family<Labels, Counter>,
    /// Output bytes streamed to clients.
    pub bytes_streamed: Counter,
    /// Sessions stopped by the sweep, by cause (ttl, idle).
    pub sweep_stops: Family<Labels, Counter>,
    /// Connections and requests refused at the edge, by reason.
    pub edge_refusals: Family<Labels, Counter>,
    /// Sessions brought back on their kept workspace after their compute was lost.
    pub heals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tale_spawner");
        let sessions = Family::<Labels, Gauge>::default();
        let creates = Counter::default();
        let create_failures = Family::<Labels, Counter>::default();
        let create_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        let execs = Counter::default();
        let exec_outcomes = Family::<Labels, Counter>::default();
        let bytes_streamed = Counter::default();
        let sweep_stops = Family::<Labels, Counter>::default();
        let edge_refusals = Family::<Labels, Counter>::default();
        let heals = Counter::default();
        registry.register(
            "sessions",
            "Sessions in the registry, by state",
            sessions.clone(),
        );
        registry.register(
            "session_creates",
            "Successful session creates",
            creates.clone(),
        );
        registry.register(
            "session_create_failures",
            "Failed session creates, by reason",
            create_failures.clone(),
        );
        registry.register(
            "session_create_seconds",
            "Session create latency to runnerd ready",
            create_seconds.clone(),
        );
        registry.register("execs", "Execs started", execs.clone());
        registry.register(
            "exec_outcomes",
            "Exec outcomes, by reason",
            exec_outcomes.clone(),
        );
        registry.register(
            "streamed_bytes",
            "Exec output bytes streamed to clients",
            bytes_streamed.clone(),
        );
        registry.register(
            "sweep_stops",
            "Sessions stopped by the sweep, by cause",
            sweep_stops.clone(),
        );
        registry.register(
            "edge_refusals",
            "Connections and requests refused before authentication or for want of room, by reason",
            edge_refusals.clone(),
        );
        registry.register(
            "session_heals",
            "Sessions brought back on their workspace after their compute was lost",
            heals.clone(),
        );
        Metrics {
            registry,
            sessions,
            creates,
            create_failures,
            create_seconds,
            execs,
            exec_outcomes,
            bytes_streamed,
            sweep_stops,
            edge_refusals,
            heals,
        }
    }

    pub fn label(key: &str, value: &str) -> Labels {
        vec![(key.to_owned(), value.to_owned())]
    }

    /// Counts one edge refusal.
    pub fn edge_refused(&self, reason: &str) {
        self.edge_refusals
            .get_or_create(&Self::label("reason", reason))
            .inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
impl Metrics {
    /// A fresh set with one sample in every labelled family (an empty family is not rendered).
    /// The destructuring names every field, so a metric added later must be added here too.
    pub fn with_every_family_sampled() -> Metrics {
        let metrics = Metrics::new();
        let Metrics {
            registry: _,
            sessions,
            creates: _,
            create_failures,
            create_seconds: _,
            execs: _,
            exec_outcomes,
            bytes_streamed: _,
            sweep_stops,
            edge_refusals,
            heals: _,
        } = &metrics;
        sessions
            .get_or_create(&Metrics::label("state", "ready"))
            .set(1);
        for (family, key) in [
            (create_failures, "reason"),
            (exec_outcomes, "reason"),
            (sweep_stops, "cause"),
            (edge_refusals, "reason"),
        ] {
            family.get_or_create(&Metrics::label(key, "x")).inc();
        }
        metrics
    }
}
