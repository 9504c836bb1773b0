//! A minimal AMQP 0-9-1 client over one TCP connection and one channel: just enough to
//! inspect, acknowledge, reject and re-publish messages that lapin cannot parse.
//!
//! Every wait (connect, handshake, each reply, each write) is bounded by the client's timeout,
//! frames larger than the negotiated frame_max are refused before they are buffered, and a
//! message body is accepted only up to [`MAX_BODY`].

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::wire::{
    self, ContentHeader, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE,
    FRAME_OVERHEAD, Frame, Method, Properties, Table, WireError, out,
};

/// Our own frame_max ceiling: RabbitMQ's default, and the size of the largest frame this client
/// ever buffers (a server offering more, or no limit, is answered with this).
const OUR_FRAME_MAX: u32 = 131_072;
/// Largest body accepted: RabbitMQ's own ceiling (`max_message_size`, 128 MiB by default up to
/// 3.x; 4.x lowered it to 16 MiB). A larger body-size in a content header is refused unread.
pub const MAX_BODY: u64 = 128 * 1024 * 1024;
/// The one channel this client opens.
const CHANNEL: u16 = 1;

/// Errors of the parked-message client. None of them carries the URL, a password or a body.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid AMQP URL: {0}")]
    Url(String),
    #[error(
        "amqps:// URLs are not supported by `case-intake parked` (its own minimal client has no \
         TLS); run it where the broker's plain amqp:// port is reachable, e.g. through \
         `kubectl port-forward`"
    )]
    TlsUnsupported,
    #[error("broker I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("AMQP protocol error: {0}")]
    Protocol(String),
    #[error("the broker closed the connection: {code} {text}")]
    ConnectionClosed { code: u16, text: String },
    #[error("the broker closed the channel: {code} {text}")]
    ChannelClosed { code: u16, text: String },
    #[error("the broker returned the message as unroutable: {code} {text}")]
    Returned { code: u16, text: String },
    #[error("the broker refused the message (publisher nack)")]
    Nacked,
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Protocol(e.0)
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// Broker texts are shown to operators: escape them like every other broker-supplied string.
fn reply_text(text: &[u8]) -> String {
    super::render::escape(text)
}

/// What an `amqp://` URL says (RabbitMQ's URI spec: user, password, host, port, vhost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: Vec<u8>,
    pub password: Vec<u8>,
    pub vhost: Vec<u8>,
}

fn percent_decode(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ClientError::Url("bad percent-escape".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Parses `amqp://user:pass@host:port/vhost` (percent-decoded; an empty path is vhost `/`,
/// `/%2f` is `/` too). Errors never repeat the URL, which may hold a password.
pub fn parse_url(url: &str) -> Result<Target> {
    let rest = if let Some(rest) = url.strip_prefix("amqp://") {
        rest
    } else if url.starts_with("amqps://") {
        return Err(ClientError::TlsUnsupported);
    } else {
        return Err(ClientError::Url("the scheme must be amqp://".into()));
    };
    // Query parameters (heartbeat, frame_max, ...) are lapin's business, not this client's.
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.find(':') {
            Some(i) => (percent_decode(&u[..i])?, percent_decode(&u[i + 1..])?),
            None => (percent_decode(u)?, b"guest".to_vec()),
        },
        None => (b"guest".to_vec(), b"guest".to_vec()),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| ClientError::Url("unclosed [ in the host".into()))?;
        let port = v6[end + 1..].strip_prefix(':');
        (v6[..end].to_owned(), port)
    } else {
        match hostport.rfind(':') {
            Some(i) => (hostport[..i].to_owned(), Some(&hostport[i + 1..])),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() => p
            .parse()
            .map_err(|_| ClientError::Url("the port is not a number".into()))?,
        _ => 5672,
    };
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    let vhost = match path {
        None | Some("") => b"/".to_vec(),
        Some(p) => percent_decode(p)?,
    };
    Ok(Target {
        host,
        port,
        user,
        password,
        vhost,
    })
}

/// A message got with Basic.Get.
#[derive(Debug, Clone)]
pub struct Message {
    pub delivery_tag: u64,
    pub redelivered: bool,
    /// Exchange and routing key it was last published with (raw bytes).
    pub exchange: Vec<u8>,
    pub routing_key: Vec<u8>,
    /// The content header payload exactly as received.
    pub header_raw: Vec<u8>,
    /// The parsed content header, or why it could not be parsed.
    pub header: std::result::Result<ContentHeader, WireError>,
    pub body: Vec<u8>,
}

/// One connection with one open channel.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    frame_max: u32,
    timeout: Duration,
    /// Publish sequence number of the next publish once confirms are on.
    next_seq: u64,
    confirms: bool,
    /// Set once the broker closed the channel or the connection: nothing more can be sent.
    dead: bool,
}

impl Client {
    /// Connects, authenticates (PLAIN), negotiates limits (heartbeats off: every exchange is
    /// short and bounded by `timeout`) and opens channel 1, all within `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Client> {
        let target = parse_url(url)?;
        tokio::time::timeout(timeout, Self::handshake(target, timeout))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "the broker connection"))?
    }

    async fn handshake(t: Target, timeout: Duration) -> Result<Client> {
        let stream = TcpStream::connect((t.host.as_str(), t.port)).await?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            buf: Vec::new(),
            // Until Tune, frames up to our ceiling are accepted (Start is well below it).
            frame_max: OUR_FRAME_MAX,
            timeout,
            next_seq: 1,
            confirms: false,
            dead: false,
        };
        c.write(wire::PROTOCOL_HEADER).await?;
        let locale = c.await_start().await?;
        c.send_method(0, &out::start_ok(&t.user, &t.password, &locale)?)
            .await?;
        let (channel_max, frame_max) = c.await_tune().await?;
        let frame_max = negotiate(channel_max, frame_max)?;
        c.send_method(0, &out::tune_ok(channel_max, frame_max, 0))
            .await?;
        c.frame_max = frame_max;
        c.send_method(0, &out::connection_open(&t.vhost)?).await?;
        match c.wait(0, "Connection.OpenOk").await? {
            Method::ConnectionOpenOk => {}
            m => return Err(unexpected(&m, "Connection.OpenOk")),
        }
        c.send_method(CHANNEL, &out::channel_open()).await?;
        match c.wait(CHANNEL, "Channel.OpenOk").await? {
            Method::ChannelOpenOk => {}
            m => return Err(unexpected(&m, "Channel.OpenOk")),
        }
        Ok(c)
    }

    /// Waits for Connection.Start; returns the locale to answer with (the broker's first).
    async fn await_start(&mut self) -> Result<Vec<u8>> {
        match self.wait(0, "Connection.Start").await? {
            Method::ConnectionStart {
                mechanisms,
                locales,
            } => {
                if !mechanisms.split(|b| *b == b' ').any(|m| m == b"PLAIN") {
                    return Err(ClientError::Protocol(
                        "the broker does not offer PLAIN authentication".into(),
                    ));
                }
                Ok(locales
                    .split(|b| *b == b' ')
                    .next()
                    .filter(|l| !l.is_empty())
                    .unwrap_or(b"en_US")
                    .to_vec())
            }
            m => Err(unexpected(&m, "Connection.Start")),
        }
    }

    /// Waits for Connection.Tune (the answer to our login); returns the broker's channel_max
    /// and frame_max.
    async fn await_tune(&mut self) -> Result<(u16, u32)> {
        match self.wait(0, "Connection.Tune").await {
            Ok(Method::ConnectionTune {
                channel_max,
                frame_max,
                ..
            }) => Ok((channel_max, frame_max)),
            Ok(Method::ConnectionSecure) => Err(ClientError::Protocol(
                "the broker asked for a SASL challenge; only PLAIN is supported".into(),
            )),
            Ok(m) => Err(unexpected(&m, "Connection.Tune")),
            // RabbitMQ closes the socket after a failed login (with a Close first when
            // authentication_failure_close is on).
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(ClientError::Protocol(
                    "the broker closed the connection during login (wrong user or password?)"
                        .into(),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// The negotiated frame_max.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.dead {
            return Err(ClientError::Protocol(
                "the channel or connection is closed".into(),
            ));
        }
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout, "the broker to take our frames"))??;
        Ok(())
    }

    async fn send_method(&mut self, channel: u16, payload: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        wire::encode_frame(&mut frame, FRAME_METHOD, channel, payload);
        self.write(&frame).await
    }

    /// Reads the next frame, by `deadline`.
    async fn read_frame(&mut self, deadline: Instant, what: &'static str) -> Result<Frame> {
        let timeout = self.timeout;
        tokio::time::timeout_at(deadline, async {
            loop {
                if let Some((frame, used)) = wire::decode_frame(&self.buf, self.frame_max)? {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(timeout, what))?
    }

    /// Waits for the next method on `channel`, answering the broker's Close (and turning it
    /// into an error with its reply code and text) and skipping heartbeats.
    async fn wait(&mut self, channel: u16, what: &'static str) -> Result<Method> {
        // One deadline for the whole wait: frames that are not the answer do not extend it.
        let deadline = Instant::now() + self.timeout;
        loop {
            let frame = self.read_frame(deadline, what).await?;
            match frame.kind {
                FRAME_HEARTBEAT => continue,
                FRAME_METHOD => {}
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected frame type {other} while waiting for {what}"
                    )));
                }
            }
            let method = wire::parse_method(&frame.payload)?;
            match method {
                Method::ConnectionClose { code, text, .. } => {
                    // Best effort: the broker closes the socket anyway.
                    let _ = self.send_method(0, &out::connection_close_ok()).await;
                    self.dead = true;
                    return Err(ClientError::ConnectionClosed {
                        code,
                        text: reply_text(&text),
                    });
                }
                Method::ChannelClose { code, text, .. } if frame.channel == CHANNEL => {
                    let _ = self.send_method(CHANNEL, &out::channel_close_ok()).await;
                    self.dead = true;
                    return Err(ClientError::ChannelClosed {
                        code,
                        text: reply_text(&text),
                    });
                }
                m if frame.channel == channel => return Ok(m),
                m => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} on channel {} while waiting for {what}",
                        m.name(),
                        frame.channel
                    )));
                }
            }
        }
    }

    /// Reads the content header and body frames that follow a content-bearing method.
    async fn read_content(
        &mut self,
    ) -> Result<(
        Vec<u8>,
        std::result::Result<ContentHeader, WireError>,
        Vec<u8>,
    )> {
        let frame = self
            .read_frame(Instant::now() + self.timeout, "a content header")
            .await?;
        expect_content(&frame, FRAME_HEADER, "a content header")?;
        let header_raw = frame.payload;
        // The body size is read on its own so that a header whose properties are unreadable
        // still lets the body be consumed (and the message be listed and requeued).
        let body_size = header_raw
            .get(4..12)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| ClientError::Protocol("truncated content header".into()))?;
        if body_size > MAX_BODY {
            return Err(ClientError::Protocol(format!(
                "a message body of {body_size} bytes exceeds the {MAX_BODY}-byte limit"
            )));
        }
        let header = wire::parse_content_header(&header_raw);
        // Grows with the frames actually received, not with the announced size.
        let mut body = Vec::new();
        while (body.len() as u64) < body_size {
            // Each body frame gets the full timeout: a large body on a slow link is progress.
            let frame = self
                .read_frame(Instant::now() + self.timeout, "a content body")
                .await?;
            expect_content(&frame, FRAME_BODY, "a body frame")?;
            if body.len() as u64 + frame.payload.len() as u64 > body_size {
                return Err(ClientError::Protocol(
                    "body frames exceed the announced body size".into(),
                ));
            }
            body.extend_from_slice(&frame.payload);
        }
        Ok((header_raw, header, body))
    }

    /// Passively declares `queue`: its ready-message count, or the broker's 404 as an error.
    pub async fn message_count(&mut self, queue: &str) -> Result<u32> {
        self.declare(queue, true, false, &Table::default()).await
    }

    /// Declares a queue (tests and tools); returns its message count.
    pub async fn declare(
        &mut self,
        queue: &str,
        passive: bool,
        durable: bool,
        arguments: &Table,
    ) -> Result<u32> {
        self.send_method(
            CHANNEL,
            &out::queue_declare(queue.as_bytes(), passive, durable, arguments)?,
        )
        .await?;
        match self.wait(CHANNEL, "Queue.DeclareOk").await? {
            Method::QueueDeclareOk { message_count } => Ok(message_count),
            m => Err(unexpected(&m, "Queue.DeclareOk")),
        }
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn delete_queue(&mut self, queue: &str) -> Result<u32> {
        self.send_method(CHANNEL, &out::queue_delete(queue.as_bytes())?)
            .await?;
        match self.wait(CHANNEL, "Queue.DeleteOk").await? {
            Method::QueueDeleteOk { message_count } => Ok(message_count),
            m => Err(unexpected(&m, "Queue.DeleteOk")),
        }
    }

    /// Basic.Get without auto-ack: `None` when the queue has no ready message.
    pub async fn get(&mut self, queue: &str) -> Result<Option<Message>> {
        self.send_method(CHANNEL, &out::basic_get(queue.as_bytes())?)
            .await?;
        match self.wait(CHANNEL, "Basic.GetOk").await? {
            Method::BasicGetEmpty => Ok(None),
            Method::BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                ..
            } => {
                let (header_raw, header, body) = self.read_content().await?;
                Ok(Some(Message {
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                    header_raw,
                    header,
                    body,
                }))
            }
            m => Err(unexpected(&m, "Basic.GetOk")),
        }
    }

    /// Acknowledges a message (the broker forgets it). Basic.Ack has no reply; a broker that
    /// refuses the tag closes the channel, which the next wait reports.
    pub async fn ack(&mut self, delivery_tag: u64) -> Result<()> {
        self.send_method(CHANNEL, &out::basic_ack(delivery_tag))
            .await
    }

    /// Rejects a message; with `requeue` it goes back to the queue.
    pub async fn reject(&mut self, delivery_tag: u64, requeue: bool) -> Result<()> {
        self.send_method(CHANNEL, &out::basic_reject(delivery_tag, requeue))
            .await
    }

    /// Turns publisher confirms on for the channel.
    pub async fn confirm_select(&mut self) -> Result<()> {
        self.send_method(CHANNEL, &out::confirm_select()).await?;
        match self.wait(CHANNEL, "Confirm.SelectOk").await? {
            Method::ConfirmSelectOk => {
                self.confirms = true;
                Ok(())
            }
            m => Err(unexpected(&m, "Confirm.SelectOk")),
        }
    }

    /// Publishes one message (body split at frame_max) and, with confirms on, waits for the
    /// broker's ack. With `mandatory`, an unroutable message is an error, not a silent drop.
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &Properties,
        body: &[u8],
    ) -> Result<()> {
        let header = wire::encode_content_header(body.len() as u64, properties)?;
        let max_payload = (self.frame_max - FRAME_OVERHEAD) as usize;
        if header.len() > max_payload {
            return Err(ClientError::Protocol(format!(
                "the properties take {} bytes, more than one frame ({max_payload}) can carry",
                header.len()
            )));
        }
        let method = out::basic_publish(exchange.as_bytes(), routing_key.as_bytes(), mandatory)?;
        let mut frames = Vec::with_capacity(body.len() + header.len() + 64);
        wire::encode_frame(&mut frames, FRAME_METHOD, CHANNEL, &method);
        wire::encode_frame(&mut frames, FRAME_HEADER, CHANNEL, &header);
        for chunk in body.chunks(max_payload) {
            wire::encode_frame(&mut frames, FRAME_BODY, CHANNEL, chunk);
        }
        self.write(&frames).await?;
        if !self.confirms {
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut returned = None;
        loop {
            match self.wait(CHANNEL, "the publisher confirm").await? {
                Method::BasicReturn { code, text } => {
                    // The returned copy's content follows; it is read and discarded.
                    let _returned_copy = self.read_content().await?;
                    returned = Some((code, reply_text(&text)));
                }
                Method::BasicAck {
                    delivery_tag,
                    multiple,
                } if delivery_tag == seq || (multiple && delivery_tag >= seq) => {
                    return match returned {
                        Some((code, text)) => Err(ClientError::Returned { code, text }),
                        None => Ok(()),
                    };
                }
                Method::BasicNack {
                    delivery_tag,
                    multiple,
                } if delivery_tag == seq || (multiple && delivery_tag >= seq) => {
                    return Err(ClientError::Nacked);
                }
                m => return Err(unexpected(&m, "the publisher confirm")),
            }
        }
    }

    /// Closes the connection politely (unacked messages go back to their queues). Errors are
    /// ignored: the socket is dropped either way, which the broker treats the same.
    pub async fn close(mut self) {
        if self.dead {
            return;
        }
        if let Ok(close) = out::connection_close(200, b"bye")
            && self.send_method(0, &close).await.is_ok()
        {
            let _ = self.wait(0, "Connection.CloseOk").await;
        }
    }
}

/// Names the method only: its arguments (routing keys, texts) are the broker's data.
/// The frame_max to use: the broker's, capped by ours (0 from the broker means "no limit");
/// refused below the protocol minimum, and a broker that allows no channel is refused.
fn negotiate(channel_max: u16, frame_max: u32) -> Result<u32> {
    let frame_max = match frame_max {
        0 => OUR_FRAME_MAX,
        n => n.min(OUR_FRAME_MAX),
    };
    if frame_max < FRAME_MIN_SIZE {
        return Err(ClientError::Protocol(format!(
            "the broker's frame_max {frame_max} is below the protocol minimum 4096"
        )));
    }
    if channel_max != 0 && channel_max < CHANNEL {
        return Err(ClientError::Protocol("the broker allows no channel".into()));
    }
    Ok(frame_max)
}

/// Refuses a frame of another kind or channel than the content that must come next.
fn expect_content(frame: &Frame, kind: u8, what: &str) -> Result<()> {
    if frame.kind != kind || frame.channel != CHANNEL {
        return Err(ClientError::Protocol(format!(
            "expected {what}, got frame type {} on channel {}",
            frame.kind, frame.channel
        )));
    }
    Ok(())
}

fn unexpected(m: &Method, what: &str) -> ClientError {
    ClientError::Protocol(format!("unexpected {} while waiting for {what}", m.name()))
}

#[cfg(test)]
mod tests;
