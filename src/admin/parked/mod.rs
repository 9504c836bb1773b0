//! Parked messages for operators: list, drop and re-publish what the delivery-limit chain
//! parked in `<intake>.parked`, through a minimal AMQP 0-9-1 client of our own (lapin cannot
//! parse these messages at all). Never touches the database; never prints a body, a token or
//! an SSN.
//!
//! A parked message has no reliable message_id, so it is named by an id: the first 12 hex
//! digits of the SHA-256 of its content header and body (see [`fingerprint`]).

mod client;
mod render;
mod wire;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use client::{Client, ClientError, MAX_BODY, Message, Target, parse_url};
pub use render::escape;
pub use wire::{
    ContentHeader, FieldValue, Headers, MATERIALISE_DEPTH, Properties, Table, WireError,
    decode_value, encode_content_header, parse_content_header,
};

use rand::seq::SliceRandom;

use crate::infra::endpoints::{Endpoint, Unreachable, first_reachable};
use crate::infra::settings::AmqpSettings;
use crate::outbox::topology::parked_queue;

/// Header values nested deeper than this are replaced when re-publishing: the service refuses
/// deeper headers anyway, and lapin's recursive parser must never see thousands of levels.
pub const REPUBLISH_MAX_DEPTH: usize = MATERIALISE_DEPTH;

/// Headers the broker sets itself on every delivery: left out of the fingerprint (so an id
/// stays the same across `list` runs, which requeue) and of re-published copies.
const BROKER_VOLATILE_HEADERS: &[&[u8]] = &[b"x-delivery-count"];

/// Headers listed per message (a table of thousands of entries would bury the rest).
pub const SHOW_HEADERS: usize = 100;

/// Length of the id shown and accepted (hex digits of the fingerprint).
pub const ID_LEN: usize = 12;

/// Errors of the parked-message commands.
#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Refused(String),
    #[error("stopped after {done} message(s): {source}")]
    Interrupted { done: usize, source: ClientError },
}

/// Where the parked queue is and how long to wait for the broker.
#[derive(Clone)]
pub struct Parked {
    /// The broker endpoints, tried in a shuffled order on every connect.
    urls: Vec<SecretString>,
    intake_queue: String,
    timeout: Duration,
}

/// What to drop or re-publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Messages whose id is this (12 hex digits, any case).
    Id(String),
    All,
}

impl Selection {
    /// Validates an id given on the command line.
    pub fn id(id: &str) -> Result<Selection, ParkedError> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParkedError::Refused(format!(
                "an id is {ID_LEN} hex digits, as `case-intake parked list` prints it"
            )));
        }
        Ok(Selection::Id(id))
    }

    fn matches(&self, id: &str) -> bool {
        match self {
            Selection::Id(want) => want == id,
            Selection::All => true,
        }
    }
}

/// A parked message as listed: everything rendered (escaped, SSNs masked, credentials
/// redacted), the body only as its size and hash.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub id: String,
    pub body_bytes: usize,
    pub body_sha256: String,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    /// Properties other than headers, by AMQP name.
    pub properties: Vec<(String, String)>,
    pub headers: Vec<ListedHeader>,
    /// Headers past the first [`SHOW_HEADERS`], not listed.
    pub headers_omitted: usize,
    /// Why the headers table could not be read, if it could not.
    pub headers_error: Option<String>,
    /// Why the content header could not be read at all, if it could not.
    pub header_error: Option<String>,
    /// Fields that are not valid UTF-8: the likely reason the message was parked.
    pub not_utf8: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListedHeader {
    pub name: String,
    pub value: String,
    pub depth: usize,
}

/// The result of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub queue: String,
    /// Ready messages in the queue (passive Queue.Declare) before listing.
    pub total: u32,
    pub messages: Vec<Listed>,
}

/// The result of `republish`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Republished {
    /// Ids re-published and removed from the parked queue.
    pub republished: Vec<String>,
    /// Ids left parked, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// SHA-256 over the content header (re-encoded without [`BROKER_VOLATILE_HEADERS`]; verbatim
/// if it cannot be parsed) and the body, each length-prefixed, as hex.
pub fn fingerprint(
    header_raw: &[u8],
    header: Result<&ContentHeader, &WireError>,
    body: &[u8],
) -> String {
    let canonical = header.ok().and_then(|h| {
        let mut p = h.properties.clone();
        if let Some(Headers::Parsed(t)) = &mut p.headers {
            t.0.retain(|(name, _)| !BROKER_VOLATILE_HEADERS.contains(&name.as_slice()));
        }
        encode_content_header(h.body_size, &p).ok()
    });
    let header_bytes = canonical.as_deref().unwrap_or(header_raw);
    let mut h = Sha256::new();
    h.update((header_bytes.len() as u64).to_be_bytes());
    h.update(header_bytes);
    h.update((body.len() as u64).to_be_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

/// The id of a message got from the broker.
pub fn id_of(m: &Message) -> String {
    fingerprint(&m.header_raw, m.header.as_ref(), &m.body)[..ID_LEN].to_owned()
}

fn describe(m: &Message) -> Listed {
    let mut listed = Listed {
        id: id_of(m),
        body_bytes: m.body.len(),
        body_sha256: hex::encode(Sha256::digest(&m.body)),
        redelivered: m.redelivered,
        exchange: render::show(&m.exchange),
        routing_key: render::show(&m.routing_key),
        properties: Vec::new(),
        headers: Vec::new(),
        headers_omitted: 0,
        headers_error: None,
        header_error: None,
        not_utf8: Vec::new(),
    };
    for (name, bytes) in [("exchange", &m.exchange), ("routing key", &m.routing_key)] {
        if std::str::from_utf8(bytes).is_err() {
            listed.not_utf8.push(name.to_owned());
        }
    }
    match &m.header {
        Ok(h) => {
            let p = &h.properties;
            listed.properties = render::properties(p)
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect();
            match &p.headers {
                Some(Headers::Parsed(t)) => {
                    listed.headers_omitted = t.0.len().saturating_sub(SHOW_HEADERS);
                    let shown = Table(t.0.iter().take(SHOW_HEADERS).cloned().collect());
                    listed.headers = render::headers(&shown)
                        .into_iter()
                        .map(|h| ListedHeader {
                            name: h.name,
                            value: h.value,
                            depth: h.depth,
                        })
                        .collect();
                }
                Some(Headers::Unparseable { reason, .. }) => {
                    listed.headers_error = Some(reason.clone());
                }
                None => {}
            }
            listed.not_utf8.extend(render::invalid_utf8(p));
        }
        Err(e) => listed.header_error = Some(e.0.clone()),
    }
    listed
}

/// Converts bytes to UTF-8 (invalid sequences become U+FFFD), cut at a character boundary to
/// fit a short string: replacement characters take 3 bytes where the bad byte took 1.
fn lossy_short(bytes: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(bytes);
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.as_bytes()[..end].to_vec()
}

fn sanitize_value(v: &FieldValue) -> FieldValue {
    match v {
        FieldValue::LongStr(s) => {
            FieldValue::LongStr(String::from_utf8_lossy(s).into_owned().into_bytes())
        }
        FieldValue::Array(items) => FieldValue::Array(items.iter().map(sanitize_value).collect()),
        FieldValue::Table(t) => FieldValue::Table(Table(
            t.0.iter()
                .map(|(n, v)| (lossy_short(n), sanitize_value(v)))
                .collect(),
        )),
        other => other.clone(),
    }
}

/// The properties a re-published copy carries: short strings, header names and string values
/// made valid UTF-8 (lossily), header values nested deeper than [`REPUBLISH_MAX_DEPTH`]
/// replaced by a string noting their depth, broker-set delivery counts left out, and an
/// unreadable headers table replaced by one header saying so. The body is not touched.
pub fn sanitize(p: &Properties) -> Properties {
    let mut out = p.clone();
    for v in out.short_strings_mut().into_iter().flatten() {
        *v = lossy_short(v);
    }
    out.headers = match &p.headers {
        None => None,
        Some(Headers::Parsed(t)) => Some(Headers::Parsed(Table(
            t.0.iter()
                .filter(|(name, _)| !BROKER_VOLATILE_HEADERS.contains(&name.as_slice()))
                .map(|(name, v)| {
                    let depth = v.depth();
                    let v = if depth > REPUBLISH_MAX_DEPTH {
                        FieldValue::LongStr(
                            format!(
                                "[removed by case-intake parked republish: nested {depth} levels deep]"
                            )
                            .into_bytes(),
                        )
                    } else {
                        sanitize_value(v)
                    };
                    (lossy_short(name), v)
                })
                .collect(),
        ))),
        Some(Headers::Unparseable { .. }) => Some(Headers::Parsed(Table(vec![(
            b"x-case-intake-parked".to_vec(),
            FieldValue::LongStr(b"the original headers could not be read and were removed".to_vec()),
        )]))),
    };
    out
}

impl Parked {
    pub fn new(
        urls: Vec<SecretString>,
        intake_queue: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Parked {
            urls,
            intake_queue: intake_queue.into(),
            timeout,
        }
    }

    /// `amqp.urls` (or `amqp.url`), `amqp.intake_queue`, and `amqp.connect_timeout_ms` as the
    /// bound of every wait.
    pub fn from_settings(amqp: &AmqpSettings) -> Self {
        Parked::new(
            amqp.endpoint_urls()
                .into_iter()
                .map(|u| SecretString::from(u.to_owned()))
                .collect(),
            amqp.intake_queue.clone(),
            Duration::from_millis(amqp.connect_timeout_ms),
        )
    }

    /// The parked queue's name.
    pub fn queue(&self) -> String {
        parked_queue(&self.intake_queue)
    }

    /// The first endpoint that answers, in a shuffled order (src/infra/endpoints.rs).
    async fn connect(&self) -> Result<Client, ClientError> {
        let mut order: Vec<Endpoint> = self
            .urls
            .iter()
            .map(|u| Endpoint::new(u.expose_secret()))
            .collect();
        order.shuffle(&mut rand::rng());
        let timeout = self.timeout;
        match first_reachable(&order, timeout, |e| async move {
            Client::connect(e.url(), timeout).await
        })
        .await
        {
            Ok((client, _)) => Ok(client),
            Err(Unreachable::Failed(_, e)) => Err(e),
            Err(Unreachable::Timeout(_)) => {
                Err(ClientError::Timeout(timeout, "the broker connection"))
            }
        }
    }

    /// Ready messages in the parked queue.
    pub async fn count(&self) -> Result<u32, ParkedError> {
        let mut c = self.connect().await?;
        let n = c.message_count(&self.queue()).await?;
        c.close().await;
        Ok(n)
    }

    /// Gets up to `limit` messages without acking them, describes them, then requeues them
    /// all (Basic.Reject with requeue): listing removes nothing.
    pub async fn list(&self, limit: usize) -> Result<Listing, ParkedError> {
        let queue = self.queue();
        let mut c = self.connect().await?;
        let total = c.message_count(&queue).await?;
        let mut messages = Vec::new();
        let mut tags = Vec::new();
        let result = async {
            while messages.len() < limit {
                let Some(m) = c.get(&queue).await? else { break };
                tags.push(m.delivery_tag);
                messages.push(describe(&m));
            }
            Ok::<(), ClientError>(())
        }
        .await;
        // Requeue explicitly; if that fails, closing the connection requeues them anyway.
        for tag in tags {
            if c.reject(tag, true).await.is_err() {
                break;
            }
        }
        c.close().await;
        result?;
        Ok(Listing {
            queue,
            // The count is a snapshot (a quorum queue's requeues settle through its log): never
            // report fewer than were shown.
            total: total.max(messages.len() as u32),
            messages,
        })
    }

    /// Walks the whole queue once (every message held unacked, so each is seen once), calling
    /// `act` on the selected ones; `act` says whether it consumed the message (acked it) or
    /// it must be requeued. The walk stops at the first error, after requeuing what it holds.
    async fn walk<F>(
        &self,
        c: &mut Client,
        select: &Selection,
        mut act: F,
    ) -> Result<usize, ParkedError>
    where
        F: AsyncFnMut(&mut Client, Message, String) -> Result<bool, ClientError>,
    {
        let queue = self.queue();
        let total = c.message_count(&queue).await?;
        // `--all` means what was parked when the command started. An id is looked for a little
        // further (requeues of other tools may race us), but a queue that keeps filling cannot
        // keep the command running.
        let bound = match select {
            Selection::All => u64::from(total),
            Selection::Id(_) => u64::from(total) + 1_000,
        };
        let mut held = Vec::new();
        let mut done = 0usize;
        let mut seen = 0u64;
        let mut outcome = Ok(());
        while seen < bound {
            let m = match c.get(&queue).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            seen += 1;
            let id = id_of(&m);
            let tag = m.delivery_tag;
            if !select.matches(&id) {
                held.push(tag);
                continue;
            }
            match act(c, m, id).await {
                Ok(true) => done += 1,
                Ok(false) => held.push(tag),
                Err(e) => {
                    held.push(tag);
                    outcome = Err(e);
                    break;
                }
            }
        }
        for tag in held {
            if c.reject(tag, true).await.is_err() {
                break;
            }
        }
        match outcome {
            Ok(()) => Ok(done),
            Err(source) if done > 0 => Err(ParkedError::Interrupted { done, source }),
            Err(e) => Err(e.into()),
        }
    }

    /// Acks (removes) the selected messages; the others are requeued. Returns how many.
    pub async fn drop(&self, select: &Selection) -> Result<usize, ParkedError> {
        let mut c = self.connect().await?;
        let r = self
            .walk(
                &mut c,
                select,
                async |c: &mut Client, m: Message, _id: String| {
                    c.ack(m.delivery_tag).await.map(|()| true)
                },
            )
            .await;
        c.close().await;
        r
    }

    /// Re-publishes a sanitized copy of each selected message to the intake queue (default
    /// exchange, mandatory, publisher confirms) and acks the parked original only once the
    /// broker has confirmed the copy. A message whose content header cannot be read stays
    /// parked (listed in `skipped`).
    pub async fn republish(&self, select: &Selection) -> Result<Republished, ParkedError> {
        let mut c = self.connect().await?;
        let mut report = Republished::default();
        let intake = self.intake_queue.clone();
        let r = async {
            // A missing intake queue is a clear 404 here rather than a returned message later.
            c.message_count(&intake).await?;
            c.confirm_select().await?;
            let report = &mut report;
            self.walk(
                &mut c,
                select,
                async |c: &mut Client, m: Message, id: String| {
                    let header = match &m.header {
                        Ok(h) => h,
                        Err(e) => {
                            report
                                .skipped
                                .push((id, format!("unreadable content header: {e}")));
                            return Ok(false);
                        }
                    };
                    let props = sanitize(&header.properties);
                    c.publish("", &intake, true, &props, &m.body).await?;
                    c.ack(m.delivery_tag).await?;
                    report.republished.push(id);
                    Ok(true)
                },
            )
            .await
        }
        .await;
        c.close().await;
        r?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_converts_and_replaces() {
        let deep = {
            let mut raw = Vec::new();
            for level in 0..40usize {
                raw.push(b'A');
                raw.extend_from_slice(&((5 * (40 - 1 - level)) as u32).to_be_bytes());
            }
            decode_value(&raw).unwrap()
        };
        let p = Properties {
            message_id: Some(vec![0xff, 0xfe, b'A']),
            correlation_id: Some(vec![0xff; 200]),
            headers: Some(Headers::Parsed(Table(vec![
                (vec![b'k', 0xff], FieldValue::LongStr(vec![b'v', 0xc3])),
                (b"deep".to_vec(), deep),
                (b"x-delivery-count".to_vec(), FieldValue::I64(3)),
                (b"n".to_vec(), FieldValue::I32(7)),
            ]))),
            ..Properties::default()
        };
        let s = sanitize(&p);
        assert_eq!(
            s.message_id.as_deref(),
            Some("\u{fffd}\u{fffd}A".as_bytes())
        );
        let cid = s.correlation_id.unwrap();
        assert!(cid.len() <= 255 && std::str::from_utf8(&cid).is_ok());
        let Some(Headers::Parsed(t)) = s.headers else {
            panic!("headers")
        };
        assert_eq!(t.0.len(), 3);
        assert_eq!(t.0[0].0, "k\u{fffd}".as_bytes());
        assert_eq!(
            t.0[0].1,
            FieldValue::LongStr("v\u{fffd}".as_bytes().to_vec())
        );
        assert_eq!(
            t.0[1].1,
            FieldValue::LongStr(
                b"[removed by case-intake parked republish: nested 40 levels deep]".to_vec()
            )
        );
        assert_eq!(t.0[2], (b"n".to_vec(), FieldValue::I32(7)));
        assert!(encode_content_header(0, &sanitize(&p)).is_ok());
    }

    #[test]
    fn ids_ignore_the_delivery_count() {
        let mut p = Properties {
            message_id: Some(b"m".to_vec()),
            headers: Some(Headers::Parsed(Table(vec![(
                b"a".to_vec(),
                FieldValue::I8(1),
            )]))),
            ..Properties::default()
        };
        let raw = encode_content_header(2, &p).unwrap();
        let first = fingerprint(&raw, parse_content_header(&raw).as_ref(), b"hi");
        if let Some(Headers::Parsed(t)) = &mut p.headers {
            t.0.push((b"x-delivery-count".to_vec(), FieldValue::I64(4)));
        }
        let raw = encode_content_header(2, &p).unwrap();
        let again = fingerprint(&raw, parse_content_header(&raw).as_ref(), b"hi");
        assert_eq!(first, again);
        let other = fingerprint(&raw, parse_content_header(&raw).as_ref(), b"ho");
        assert_ne!(first, other);
    }

    #[test]
    fn ids_are_validated() {
        assert_eq!(
            Selection::id("ABCDEF012345").unwrap(),
            Selection::Id("abcdef012345".into())
        );
        assert!(Selection::id("abc").is_err());
        assert!(Selection::id("abcdef01234g").is_err());
    }
}
