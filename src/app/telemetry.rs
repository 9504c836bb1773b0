//! One tracing subscriber for the binary: plain text on a terminal, JSON lines otherwise (or
//! as configured). A JSON line is flat: the fields of the spans around an event (an intake's
//! `message_key`, `correlation_id`, `trace_id`) sit beside the event's own, once each, so log
//! pipelines can index them without knowing the span layout. Nothing logged anywhere carries
//! an SSN, a token or a message body.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::infra::settings::LogSettings;

/// Installs the global subscriber; `RUST_LOG` overrides `log.filter`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    if json {
        json_subscriber(filter, std::io::stderr).init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

/// A subscriber writing flat JSON lines to `writer`.
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .finish()
}

/// One JSON object per event: `timestamp`, `level`, `target`, the fields of its spans (outer
/// first, an inner span's field replacing an outer one of the same name), then its own.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), meta.level().as_str().into());
        for span in ctx.event_scope().into_iter().flat_map(|s| s.from_root()) {
            let extensions = span.extensions();
            // Span fields are kept as the JSON object `JsonFields` wrote when the span opened.
            let fields = extensions.get::<FormattedFields<N>>();
            if let Some(Ok(Value::Object(f))) = fields.map(|f| serde_json::from_str(f)) {
                line.extend(f);
            }
        }
        event.record(&mut Fields(&mut line));
        line.insert("target".into(), meta.target().into());
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields into the line's object.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer, to read back what the subscriber wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn lines_of(f: impl FnOnce()) -> Vec<Map<String, Value>> {
        let buffer = Buffer::default();
        let subscriber = json_subscriber(EnvFilter::new("info"), buffer.clone());
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(o)) => o,
                other => panic!("not a JSON object: {l} ({other:?})"),
            })
            .collect()
    }

    #[test]
    fn span_fields_are_flat_and_appear_once() {
        let lines = lines_of(|| {
            let span = tracing::info_span!("intake", message_key = "k-1", trace_id = "ab");
            let _entered = span.enter();
            tracing::info!(case_id = 7, code = "x", "case created");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["message_key"], "k-1");
        assert_eq!(line["trace_id"], "ab");
        assert_eq!(line["case_id"], 7);
        assert_eq!(line["message"], "case created");
        assert_eq!(line["level"], "INFO");
        assert!(line.contains_key("timestamp") && line.contains_key("target"));
        assert!(
            !line.contains_key("span") && !line.contains_key("spans"),
            "{line:?}"
        );
        assert!(!line.contains_key("fields"), "{line:?}");
        let text = serde_json::to_string(line).unwrap();
        assert_eq!(text.matches("message_key").count(), 1, "{text}");
    }

    #[test]
    fn an_event_outside_spans_has_only_its_fields() {
        let lines = lines_of(|| tracing::warn!(window = 3, "window failed"));
        let keys: Vec<&str> = lines[0].keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
        assert_eq!(lines[0]["window"], 3);
        assert_eq!(lines[0]["level"], "WARN");
    }
}
