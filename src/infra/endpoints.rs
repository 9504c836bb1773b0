//! The broker endpoints (`amqp.urls`, or `amqp.url` as the one-element form) and the one way
//! every broker client of the service connects: each attempt walks the endpoints in a fresh
//! shuffled order, each try bounded by `amqp.endpoint_timeout_ms`, and the first that answers
//! wins, so that the loss of one cluster node moves clients to the others instead of leaving
//! them knocking on the dead one.

use std::future::Future;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use rand::seq::SliceRandom;
use secrecy::{ExposeSecret, SecretString};

use crate::infra::settings::AmqpSettings;

/// One broker endpoint: the URL to connect with (heartbeat and frame size added) and the
/// label logs and metrics show, `host:port/vhost`, which never holds the user or password.
#[derive(Clone)]
pub struct Endpoint {
    url: SecretString,
    label: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

impl Endpoint {
    /// An endpoint from a connection URL.
    pub fn new(url: &str) -> Self {
        Endpoint {
            label: label(url),
            url: url.to_owned().into(),
        }
    }

    /// `host:port/vhost`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The full URL, credentials included: hand it to a client, never to a log.
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

/// `host:port/vhost` of an `amqp://` or `amqps://` URL (port defaulted by scheme, vhost
/// as written, `%2f` when absent). Text that is not such a URL gives `unparsable endpoint`
/// rather than an echo of itself, since it may hold a password.
pub fn label(url: &str) -> String {
    let (rest, port) = if let Some(r) = url.strip_prefix("amqp://") {
        (r, 5672)
    } else if let Some(r) = url.strip_prefix("amqps://") {
        (r, 5671)
    } else {
        return "unparsable endpoint".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_port = if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:{port}")
    };
    // The vhost as URLs write it (`%2f` for `/`), so that a label reads like the URL it
    // came from.
    let vhost = if path.is_empty() { "%2f" } else { path };
    format!(
        "{host_port}/{}",
        crate::infra::redact::escape_controls(vhost)
    )
}

/// The endpoints in a fresh random order: clients spread over the nodes, and a client whose
/// node died does not try it first every time.
pub fn shuffled(amqp: &AmqpSettings) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = amqp
        .connection_urls()
        .iter()
        .map(|u| Endpoint::new(u))
        .collect();
    endpoints.shuffle(&mut rand::rng());
    endpoints
}

/// Why no endpoint could be reached: the last endpoint's failure.
#[derive(Debug)]
pub enum Unreachable<E> {
    /// The last endpoint tried did not answer within `amqp.endpoint_timeout_ms`.
    Timeout(String),
    /// The last endpoint tried refused or failed.
    Failed(String, E),
}

impl<E: std::fmt::Display> std::fmt::Display for Unreachable<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::Timeout(at) => {
                write!(f, "no broker endpoint answered (last: {at} timed out)")
            }
            Unreachable::Failed(at, e) => {
                write!(f, "no broker endpoint answered (last: {at}: {e})")
            }
        }
    }
}

/// Tries `attempt` on each endpoint of `order` in turn, each bounded by `per_endpoint`; the
/// first success and its endpoint, or the last failure.
pub async fn first_reachable<T, E, F, Fut>(
    order: &[Endpoint],
    per_endpoint: Duration,
    mut attempt: F,
) -> Result<(T, Endpoint), Unreachable<E>>
where
    F: FnMut(Endpoint) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut last = Unreachable::Timeout("none configured".into());
    for endpoint in order {
        match tokio::time::timeout(per_endpoint, attempt(endpoint.clone())).await {
            Ok(Ok(value)) => return Ok((value, endpoint.clone())),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = endpoint.label(), error = %e, "broker endpoint refused");
                last = Unreachable::Failed(endpoint.label().to_owned(), e);
            }
            Err(_) => {
                tracing::debug!(endpoint = endpoint.label(), "broker endpoint timed out");
                last = Unreachable::Timeout(endpoint.label().to_owned());
            }
        }
    }
    Err(last)
}

/// A lapin connection named `name` to the first endpoint that answers, in a shuffled order.
pub async fn connect(
    amqp: &AmqpSettings,
    name: &str,
) -> Result<(Connection, Endpoint), Unreachable<lapin::Error>> {
    let order = shuffled(amqp);
    first_reachable(&order, amqp.endpoint_timeout(), |e| {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        async move { Connection::connect(e.url(), props).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_show_host_port_and_vhost_but_no_credentials() {
        for (url, want) in [
            (
                "amqp://guest:secret@127.0.0.1:5672/%2f",
                "127.0.0.1:5672/%2f",
            ),
            (
                "amqp://u:p@rabbit-1/intake?heartbeat=10",
                "rabbit-1:5672/intake",
            ),
            (
                "amqps://u:p@rabbit.example:5671/",
                "rabbit.example:5671/%2f",
            ),
            ("amqps://host", "host:5671/%2f"),
            ("amqp://[::1]:5673/v", "[::1]:5673/v"),
            ("http://u:secret@x", "unparsable endpoint"),
        ] {
            let got = label(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("secret"));
        }
    }
}
