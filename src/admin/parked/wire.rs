//! AMQP 0-9-1 wire format for the parked-message client: frames, the method arguments it uses,
//! content headers and field tables, parsed byte by byte with every length checked.
//!
//! Written from the AMQP 0-9-1 specification (with RabbitMQ's field-type errata) rather than
//! reusing amq-protocol, because amq-protocol refuses exactly the messages this client exists
//! for: short strings and field names that are not UTF-8. Short strings therefore stay raw
//! bytes here. Field tables are materialised only [`MATERIALISE_DEPTH`] levels deep; a deeper
//! container is kept verbatim and measured by an iterative scan, so no input (a header may nest
//! 25,000 levels) can exhaust the stack, and nothing is allocated beyond the input's own size.

use std::fmt;

/// Frame types (spec 4.2.3).
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size precede every payload; the end octet follows it.
pub const FRAME_OVERHEAD: u32 = 8;
/// The smallest frame_max a peer may negotiate (spec: frame-min-size).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// The protocol header a client opens with (AMQP 0-9-1).
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Containers nested deeper than this are not turned into [`FieldValue`] trees but kept as
/// [`FieldValue::Deep`]; it equals the depth up to which `republish` keeps header values.
pub const MATERIALISE_DEPTH: usize = 16;

/// Class ids.
pub const CONNECTION: u16 = 10;
pub const CHANNEL: u16 = 20;
pub const QUEUE: u16 = 50;
pub const BASIC: u16 = 60;
pub const CONFIRM: u16 = 85;

/// A malformed or unsupported piece of wire data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn err<T>(msg: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(msg.into()))
}

/// A cursor over a byte slice whose every read checks the remaining length first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return err(format!(
                "truncated {what}: needs {n} bytes, {} left",
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn short_str(&mut self, what: &str) -> Result<Vec<u8>, WireError> {
        let n = self.u8(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }

    fn long_bytes(&mut self, what: &str) -> Result<&'a [u8], WireError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn long_str(&mut self, what: &str) -> Result<Vec<u8>, WireError> {
        Ok(self.long_bytes(what)?.to_vec())
    }

    fn finish(&self, what: &str) -> Result<(), WireError> {
        if self.remaining() != 0 {
            return err(format!(
                "{} unexpected bytes after {what}",
                self.remaining()
            ));
        }
        Ok(())
    }
}

/// A growable output buffer with the AMQP encodings.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// A field value's type tag and its big-endian bytes.
    fn tagged(&mut self, tag: u8, bytes: &[u8]) {
        self.buf.push(tag);
        self.buf.extend_from_slice(bytes);
    }

    fn short_str(&mut self, s: &[u8], what: &str) -> Result<(), WireError> {
        let Ok(n) = u8::try_from(s.len()) else {
            return err(format!(
                "{what} is {} bytes; a short string holds at most 255",
                s.len()
            ));
        };
        self.u8(n);
        self.buf.extend_from_slice(s);
        Ok(())
    }

    fn long_str(&mut self, s: &[u8], what: &str) -> Result<(), WireError> {
        let Ok(n) = u32::try_from(s.len()) else {
            return err(format!("{what} is longer than a long string can be"));
        };
        self.u32(n);
        self.buf.extend_from_slice(s);
        Ok(())
    }

    /// Writes a placeholder length, runs `f`, then fills the length in.
    fn length_prefixed(
        &mut self,
        f: impl FnOnce(&mut Writer) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        let at = self.buf.len();
        self.u32(0);
        f(self)?;
        let Ok(n) = u32::try_from(self.buf.len() - at - 4) else {
            return err("a field table or array is longer than 4 GiB");
        };
        self.buf[at..at + 4].copy_from_slice(&n.to_be_bytes());
        Ok(())
    }
}

/// A field-table value, with RabbitMQ's type tags (which differ from the 0-9-1 grammar for
/// `s`, `l` and `x`; RabbitMQ is the only broker this client talks to).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal {
        scale: u8,
        value: u32,
    },
    /// `S`: a long string, raw bytes (not necessarily UTF-8).
    LongStr(Vec<u8>),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(Table),
    Void,
    /// `x`: a byte array.
    Bytes(Vec<u8>),
    /// An array or table nested beyond [`MATERIALISE_DEPTH`], kept verbatim (type tag included)
    /// so it can be measured, re-encoded byte for byte, or replaced.
    Deep {
        raw: Vec<u8>,
        /// Its own nesting depth (1 for a container of scalars).
        depth: usize,
        /// Whether some string or field name inside it is not UTF-8.
        invalid_utf8: bool,
    },
}

/// A field table: names are short strings kept as raw bytes, in wire order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table(pub Vec<(Vec<u8>, FieldValue)>);

impl Table {
    pub fn get(&self, name: &[u8]) -> Option<&FieldValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl FieldValue {
    /// Nesting depth: 0 for a scalar, 1 for a container of scalars. Recursion is bounded by
    /// [`MATERIALISE_DEPTH`] for parsed values, since deeper parts are [`FieldValue::Deep`].
    pub fn depth(&self) -> usize {
        match self {
            FieldValue::Array(items) => 1 + items.iter().map(FieldValue::depth).max().unwrap_or(0),
            FieldValue::Table(t) => 1 + t.0.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            FieldValue::Deep { depth, .. } => *depth,
            _ => 0,
        }
    }
}

/// Reads a field table (its u32 length prefix included). `budget` is how many more container
/// levels may be materialised below this table.
fn read_table(r: &mut Reader<'_>, budget: usize) -> Result<Table, WireError> {
    let content = r.long_bytes("field table")?;
    parse_table_content(content, budget)
}

fn parse_table_content(content: &[u8], budget: usize) -> Result<Table, WireError> {
    let mut r = Reader::new(content);
    let mut fields = Vec::new();
    while r.remaining() > 0 {
        let name = r.short_str("field name")?;
        let value = read_value(&mut r, budget)?;
        fields.push((name, value));
    }
    Ok(Table(fields))
}

fn read_value(r: &mut Reader<'_>, budget: usize) -> Result<FieldValue, WireError> {
    let start = r.pos;
    let tag = r.u8("field type")?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8("boolean")? != 0),
        b'b' => FieldValue::I8(r.u8("short-short int")? as i8),
        b'B' => FieldValue::U8(r.u8("short-short uint")?),
        b's' => FieldValue::I16(r.u16("short int")? as i16),
        b'u' => FieldValue::U16(r.u16("short uint")?),
        b'I' => FieldValue::I32(r.u32("long int")? as i32),
        b'i' => FieldValue::U32(r.u32("long uint")?),
        b'l' => FieldValue::I64(r.u64("long-long int")? as i64),
        b'f' => FieldValue::F32(f32::from_bits(r.u32("float")?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64("double")?)),
        b'D' => FieldValue::Decimal {
            scale: r.u8("decimal scale")?,
            value: r.u32("decimal value")?,
        },
        b'S' => FieldValue::LongStr(r.long_str("long string")?),
        b'x' => FieldValue::Bytes(r.long_str("byte array")?),
        b'T' => FieldValue::Timestamp(r.u64("timestamp")?),
        b'V' => FieldValue::Void,
        b'A' | b'F' if budget == 0 => {
            r.long_bytes("nested container")?;
            let raw = &r.buf[start..r.pos];
            let scan = scan_container(raw)?;
            FieldValue::Deep {
                raw: raw.to_vec(),
                depth: scan.depth,
                invalid_utf8: scan.invalid_utf8,
            }
        }
        b'A' => {
            let content = r.long_bytes("array")?;
            let mut items = Reader::new(content);
            let mut values = Vec::new();
            while items.remaining() > 0 {
                values.push(read_value(&mut items, budget - 1)?);
            }
            FieldValue::Array(values)
        }
        b'F' => FieldValue::Table(read_table(r, budget - 1)?),
        other => return err(format!("unknown field type 0x{other:02x}")),
    })
}

/// What an iterative scan of a verbatim container found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub depth: usize,
    pub invalid_utf8: bool,
}

/// Validates an encoded array or table (`A`/`F` tag, length, content) without recursion: an
/// explicit stack holds the end offset of every open container. The stack grows by one entry
/// per 5 bytes of input at most, so memory stays proportional to the input.
pub fn scan_container(raw: &[u8]) -> Result<Scan, WireError> {
    let mut r = Reader::new(raw);
    let tag = r.u8("field type")?;
    if tag != b'A' && tag != b'F' {
        return err("not an array or table");
    }
    let len = r.u32("container length")? as usize;
    if r.remaining() != len {
        return err("container length does not match its bytes");
    }
    // (end offset, is a table)
    let mut stack: Vec<(usize, bool)> = vec![(raw.len(), tag == b'F')];
    let mut depth = 1;
    let mut invalid_utf8 = false;
    while let Some(&(end, is_table)) = stack.last() {
        if r.pos == end {
            stack.pop();
            continue;
        }
        // Reads inside this container must not run past its end.
        let mut inner = Reader::new(&raw[..end]);
        inner.pos = r.pos;
        if is_table {
            let name = inner.short_str("field name")?;
            invalid_utf8 |= std::str::from_utf8(&name).is_err();
        }
        let tag = inner.u8("field type")?;
        let fixed = match tag {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => {
                let s = inner.long_bytes("string")?;
                invalid_utf8 |= tag == b'S' && std::str::from_utf8(s).is_err();
                0
            }
            b'A' | b'F' => {
                let n = inner.u32("container length")? as usize;
                if inner.remaining() < n {
                    return err("truncated nested container");
                }
                stack.push((inner.pos + n, tag == b'F'));
                depth = depth.max(stack.len());
                0
            }
            other => return err(format!("unknown field type 0x{other:02x}")),
        };
        inner.take(fixed, "field value")?;
        r.pos = inner.pos;
    }
    Ok(Scan {
        depth,
        invalid_utf8,
    })
}

/// Decodes one encoded field value (type tag first), materialising [`MATERIALISE_DEPTH`]
/// levels. Used by tests to build values too deep to construct as trees.
pub fn decode_value(bytes: &[u8]) -> Result<FieldValue, WireError> {
    let mut r = Reader::new(bytes);
    let v = read_value(&mut r, MATERIALISE_DEPTH)?;
    r.finish("field value")?;
    Ok(v)
}

/// Encodes a field table; `budget` bounds the recursion over caller-built trees.
fn write_table(w: &mut Writer, t: &Table, budget: usize) -> Result<(), WireError> {
    w.length_prefixed(|w| {
        for (name, value) in &t.0 {
            w.short_str(name, "a field name")?;
            write_value(w, value, budget)?;
        }
        Ok(())
    })
}

/// Deeper trees than this are refused when encoding (parsed values never are that deep).
const ENCODE_DEPTH: usize = 64;

fn write_value(w: &mut Writer, v: &FieldValue, budget: usize) -> Result<(), WireError> {
    match v {
        FieldValue::Bool(b) => w.tagged(b't', &[u8::from(*b)]),
        FieldValue::I8(x) => w.tagged(b'b', &x.to_be_bytes()),
        FieldValue::U8(x) => w.tagged(b'B', &[*x]),
        FieldValue::I16(x) => w.tagged(b's', &x.to_be_bytes()),
        FieldValue::U16(x) => w.tagged(b'u', &x.to_be_bytes()),
        FieldValue::I32(x) => w.tagged(b'I', &x.to_be_bytes()),
        FieldValue::U32(x) => w.tagged(b'i', &x.to_be_bytes()),
        FieldValue::I64(x) => w.tagged(b'l', &x.to_be_bytes()),
        FieldValue::F32(x) => w.tagged(b'f', &x.to_be_bytes()),
        FieldValue::F64(x) => w.tagged(b'd', &x.to_be_bytes()),
        FieldValue::Decimal { scale, value } => {
            w.tagged(b'D', &[*scale]);
            w.u32(*value);
        }
        FieldValue::LongStr(s) => {
            w.u8(b'S');
            w.long_str(s, "a long string")?;
        }
        FieldValue::Bytes(s) => {
            w.u8(b'x');
            w.long_str(s, "a byte array")?;
        }
        FieldValue::Timestamp(t) => w.tagged(b'T', &t.to_be_bytes()),
        FieldValue::Void => w.u8(b'V'),
        FieldValue::Deep { raw, .. } => {
            // Only verbatim bytes that scan as one container are written.
            scan_container(raw)?;
            w.buf.extend_from_slice(raw);
        }
        FieldValue::Array(_) | FieldValue::Table(_) if budget == 0 => {
            return err("a header value is nested too deep to encode");
        }
        FieldValue::Array(items) => {
            w.u8(b'A');
            w.length_prefixed(|w| {
                for item in items {
                    write_value(w, item, budget - 1)?;
                }
                Ok(())
            })?;
        }
        FieldValue::Table(t) => {
            w.u8(b'F');
            write_table(w, t, budget - 1)?;
        }
    }
    Ok(())
}

/// The `headers` property: a table, or the reason it could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum Headers {
    Parsed(Table),
    /// Kept verbatim (without its length prefix) for the fingerprint and the listing.
    Unparseable {
        raw: Vec<u8>,
        reason: String,
    },
}

/// Basic content properties (spec class basic), short strings as raw bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    pub content_type: Option<Vec<u8>>,
    pub content_encoding: Option<Vec<u8>>,
    pub headers: Option<Headers>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<Vec<u8>>,
    pub reply_to: Option<Vec<u8>>,
    pub expiration: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
    pub timestamp: Option<u64>,
    pub kind: Option<Vec<u8>>,
    pub user_id: Option<Vec<u8>>,
    pub app_id: Option<Vec<u8>>,
    pub cluster_id: Option<Vec<u8>>,
}

/// Property flag bits, most significant first (spec: basic properties in declaration order).
const P_CONTENT_TYPE: u16 = 1 << 15;
const P_CONTENT_ENCODING: u16 = 1 << 14;
const P_HEADERS: u16 = 1 << 13;
const P_DELIVERY_MODE: u16 = 1 << 12;
const P_PRIORITY: u16 = 1 << 11;
const P_CORRELATION_ID: u16 = 1 << 10;
const P_REPLY_TO: u16 = 1 << 9;
const P_EXPIRATION: u16 = 1 << 8;
const P_MESSAGE_ID: u16 = 1 << 7;
const P_TIMESTAMP: u16 = 1 << 6;
const P_TYPE: u16 = 1 << 5;
const P_USER_ID: u16 = 1 << 4;
const P_APP_ID: u16 = 1 << 3;
const P_CLUSTER_ID: u16 = 1 << 2;
/// Bit 0: another flag word follows.
const P_CONTINUATION: u16 = 1;

impl Properties {
    /// The short-string properties by their AMQP names, for listing and sanitising.
    pub fn short_strings(&self) -> [(&'static str, Option<&Vec<u8>>); 10] {
        [
            ("content_type", self.content_type.as_ref()),
            ("content_encoding", self.content_encoding.as_ref()),
            ("correlation_id", self.correlation_id.as_ref()),
            ("reply_to", self.reply_to.as_ref()),
            ("expiration", self.expiration.as_ref()),
            ("message_id", self.message_id.as_ref()),
            ("type", self.kind.as_ref()),
            ("user_id", self.user_id.as_ref()),
            ("app_id", self.app_id.as_ref()),
            ("cluster_id", self.cluster_id.as_ref()),
        ]
    }

    /// Mutable access to the same short strings.
    pub fn short_strings_mut(&mut self) -> [&mut Option<Vec<u8>>; 10] {
        [
            &mut self.content_type,
            &mut self.content_encoding,
            &mut self.correlation_id,
            &mut self.reply_to,
            &mut self.expiration,
            &mut self.message_id,
            &mut self.kind,
            &mut self.user_id,
            &mut self.app_id,
            &mut self.cluster_id,
        ]
    }
}

/// A parsed content header frame payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class: u16,
    pub body_size: u64,
    pub properties: Properties,
}

/// Parses a content header payload. A headers table that cannot be read does not fail the
/// whole header (its length prefix still delimits it): it becomes [`Headers::Unparseable`].
pub fn parse_content_header(payload: &[u8]) -> Result<ContentHeader, WireError> {
    let mut r = Reader::new(payload);
    let class = r.u16("content class")?;
    let _weight = r.u16("content weight")?;
    let body_size = r.u64("body size")?;
    let flags = r.u16("property flags")?;
    let mut more = flags & P_CONTINUATION != 0;
    while more {
        // Basic defines 14 properties, all in the first flag word: later words must be empty.
        let extra = r.u16("property flags")?;
        if extra & !P_CONTINUATION != 0 {
            return err("property flags name properties basic does not have");
        }
        more = extra & P_CONTINUATION != 0;
    }
    if flags & 0b10 != 0 {
        return err("property flag bit 1 is reserved");
    }
    let mut p = Properties::default();
    let short = |r: &mut Reader<'_>, bit: u16, what: &str| -> Result<Option<Vec<u8>>, WireError> {
        if flags & bit != 0 {
            r.short_str(what).map(Some)
        } else {
            Ok(None)
        }
    };
    p.content_type = short(&mut r, P_CONTENT_TYPE, "content_type")?;
    p.content_encoding = short(&mut r, P_CONTENT_ENCODING, "content_encoding")?;
    if flags & P_HEADERS != 0 {
        let raw = r.long_bytes("headers")?;
        p.headers = Some(match parse_table_content(raw, MATERIALISE_DEPTH) {
            Ok(t) => Headers::Parsed(t),
            Err(e) => Headers::Unparseable {
                raw: raw.to_vec(),
                reason: e.0,
            },
        });
    }
    if flags & P_DELIVERY_MODE != 0 {
        p.delivery_mode = Some(r.u8("delivery_mode")?);
    }
    if flags & P_PRIORITY != 0 {
        p.priority = Some(r.u8("priority")?);
    }
    p.correlation_id = short(&mut r, P_CORRELATION_ID, "correlation_id")?;
    p.reply_to = short(&mut r, P_REPLY_TO, "reply_to")?;
    p.expiration = short(&mut r, P_EXPIRATION, "expiration")?;
    p.message_id = short(&mut r, P_MESSAGE_ID, "message_id")?;
    if flags & P_TIMESTAMP != 0 {
        p.timestamp = Some(r.u64("timestamp")?);
    }
    p.kind = short(&mut r, P_TYPE, "type")?;
    p.user_id = short(&mut r, P_USER_ID, "user_id")?;
    p.app_id = short(&mut r, P_APP_ID, "app_id")?;
    p.cluster_id = short(&mut r, P_CLUSTER_ID, "cluster_id")?;
    r.finish("the properties")?;
    Ok(ContentHeader {
        class,
        body_size,
        properties: p,
    })
}

/// Encodes a basic content header payload.
pub fn encode_content_header(body_size: u64, p: &Properties) -> Result<Vec<u8>, WireError> {
    let mut w = Writer::default();
    w.u16(BASIC);
    w.u16(0);
    w.u64(body_size);
    let mut flags = 0u16;
    let mut props = Writer::default();
    let mut short = |v: &Option<Vec<u8>>, bit: u16, what: &str, w: &mut Writer| {
        if let Some(s) = v {
            flags |= bit;
            w.short_str(s, what)?;
        }
        Ok::<(), WireError>(())
    };
    short(&p.content_type, P_CONTENT_TYPE, "content_type", &mut props)?;
    short(
        &p.content_encoding,
        P_CONTENT_ENCODING,
        "content_encoding",
        &mut props,
    )?;
    let mut fixed_flags = 0u16;
    match &p.headers {
        Some(Headers::Parsed(t)) => {
            fixed_flags |= P_HEADERS;
            write_table(&mut props, t, ENCODE_DEPTH)?;
        }
        Some(Headers::Unparseable { raw, .. }) => {
            fixed_flags |= P_HEADERS;
            props.long_str(raw, "the headers")?;
        }
        None => {}
    }
    if let Some(m) = p.delivery_mode {
        fixed_flags |= P_DELIVERY_MODE;
        props.u8(m);
    }
    if let Some(m) = p.priority {
        fixed_flags |= P_PRIORITY;
        props.u8(m);
    }
    short(
        &p.correlation_id,
        P_CORRELATION_ID,
        "correlation_id",
        &mut props,
    )?;
    short(&p.reply_to, P_REPLY_TO, "reply_to", &mut props)?;
    short(&p.expiration, P_EXPIRATION, "expiration", &mut props)?;
    short(&p.message_id, P_MESSAGE_ID, "message_id", &mut props)?;
    if let Some(t) = p.timestamp {
        fixed_flags |= P_TIMESTAMP;
        props.u64(t);
    }
    short(&p.kind, P_TYPE, "type", &mut props)?;
    short(&p.user_id, P_USER_ID, "user_id", &mut props)?;
    short(&p.app_id, P_APP_ID, "app_id", &mut props)?;
    short(&p.cluster_id, P_CLUSTER_ID, "cluster_id", &mut props)?;
    w.u16(flags | fixed_flags);
    w.buf.extend_from_slice(&props.buf);
    Ok(w.buf)
}

/// One frame as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed, the
/// frame and the bytes it used otherwise. A frame larger than `frame_max` is refused as soon
/// as its header is seen, before anything is buffered for it.
pub fn decode_frame(buf: &[u8], frame_max: u32) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() >= 4 && &buf[..4] == b"AMQP" {
        return err("the broker answered with a protocol header: it does not speak AMQP 0-9-1");
    }
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return err(format!("unknown frame type {kind}"));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if u64::from(size) + u64::from(FRAME_OVERHEAD) > u64::from(frame_max) {
        return err(format!(
            "frame of {size} bytes exceeds the negotiated frame_max {frame_max}"
        ));
    }
    let total = 7 + size as usize + 1;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return err("frame does not end with 0xCE");
    }
    Ok(Some((
        Frame {
            kind,
            channel,
            payload: buf[7..total - 1].to_vec(),
        },
        total,
    )))
}

/// Encodes one frame.
pub fn encode_frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    // Callers split payloads at frame_max, far below u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
}

/// The methods this client receives; anything else is [`Method::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    ConnectionStart {
        mechanisms: Vec<u8>,
        locales: Vec<u8>,
    },
    ConnectionSecure,
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpenOk,
    ConnectionClose {
        code: u16,
        text: Vec<u8>,
        class: u16,
        method: u16,
    },
    ConnectionCloseOk,
    ChannelOpenOk,
    ChannelClose {
        code: u16,
        text: Vec<u8>,
        class: u16,
        method: u16,
    },
    ChannelCloseOk,
    QueueDeclareOk {
        message_count: u32,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    BasicGetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: Vec<u8>,
        routing_key: Vec<u8>,
        message_count: u32,
    },
    BasicGetEmpty,
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReturn {
        code: u16,
        text: Vec<u8>,
    },
    ConfirmSelectOk,
    Other {
        class: u16,
        method: u16,
    },
}

impl Method {
    /// The method's name, without its arguments (for error messages).
    pub fn name(&self) -> String {
        match self {
            Method::ConnectionStart { .. } => "Connection.Start".into(),
            Method::ConnectionSecure => "Connection.Secure".into(),
            Method::ConnectionTune { .. } => "Connection.Tune".into(),
            Method::ConnectionOpenOk => "Connection.OpenOk".into(),
            Method::ConnectionClose { .. } => "Connection.Close".into(),
            Method::ConnectionCloseOk => "Connection.CloseOk".into(),
            Method::ChannelOpenOk => "Channel.OpenOk".into(),
            Method::ChannelClose { .. } => "Channel.Close".into(),
            Method::ChannelCloseOk => "Channel.CloseOk".into(),
            Method::QueueDeclareOk { .. } => "Queue.DeclareOk".into(),
            Method::QueueDeleteOk { .. } => "Queue.DeleteOk".into(),
            Method::BasicGetOk { .. } => "Basic.GetOk".into(),
            Method::BasicGetEmpty => "Basic.GetEmpty".into(),
            Method::BasicAck { .. } => "Basic.Ack".into(),
            Method::BasicNack { .. } => "Basic.Nack".into(),
            Method::BasicReturn { .. } => "Basic.Return".into(),
            Method::ConfirmSelectOk => "Confirm.SelectOk".into(),
            Method::Other { class, method } => format!("method {class}.{method}"),
        }
    }
}

/// Parses a method frame payload.
pub fn parse_method(payload: &[u8]) -> Result<Method, WireError> {
    let mut r = Reader::new(payload);
    let class = r.u16("class id")?;
    let method = r.u16("method id")?;
    let parsed = match class {
        CONNECTION => connection_method(method, &mut r)?,
        CHANNEL => channel_method(method, &mut r)?,
        QUEUE => queue_method(method, &mut r)?,
        BASIC => basic_method(method, &mut r)?,
        CONFIRM if method == 11 => Some(Method::ConfirmSelectOk),
        _ => None,
    };
    // Arguments of methods this client does not use are not checked.
    let Some(m) = parsed else {
        return Ok(Method::Other { class, method });
    };
    r.finish("the method arguments")?;
    Ok(m)
}

fn connection_method(method: u16, r: &mut Reader) -> Result<Option<Method>, WireError> {
    Ok(Some(match method {
        10 => {
            let _major = r.u8("version")?;
            let _minor = r.u8("version")?;
            // Server properties are not needed; the length prefix lets them be skipped.
            r.long_bytes("server properties")?;
            let mechanisms = r.long_str("mechanisms")?;
            let locales = r.long_str("locales")?;
            Method::ConnectionStart {
                mechanisms,
                locales,
            }
        }
        20 => {
            r.long_bytes("challenge")?;
            Method::ConnectionSecure
        }
        30 => Method::ConnectionTune {
            channel_max: r.u16("channel_max")?,
            frame_max: r.u32("frame_max")?,
            heartbeat: r.u16("heartbeat")?,
        },
        41 => {
            r.short_str("known hosts")?;
            Method::ConnectionOpenOk
        }
        50 => {
            let (code, text, class, method) = close_arguments(r)?;
            Method::ConnectionClose {
                code,
                text,
                class,
                method,
            }
        }
        51 => Method::ConnectionCloseOk,
        _ => return Ok(None),
    }))
}

fn channel_method(method: u16, r: &mut Reader) -> Result<Option<Method>, WireError> {
    Ok(Some(match method {
        11 => {
            r.long_bytes("channel id")?;
            Method::ChannelOpenOk
        }
        40 => {
            let (code, text, class, method) = close_arguments(r)?;
            Method::ChannelClose {
                code,
                text,
                class,
                method,
            }
        }
        41 => Method::ChannelCloseOk,
        _ => return Ok(None),
    }))
}

/// The arguments of Connection.Close and Channel.Close: reply code and text, and the method
/// that caused the close.
fn close_arguments(r: &mut Reader) -> Result<(u16, Vec<u8>, u16, u16), WireError> {
    Ok((
        r.u16("reply code")?,
        r.short_str("reply text")?,
        r.u16("class id")?,
        r.u16("method id")?,
    ))
}

fn queue_method(method: u16, r: &mut Reader) -> Result<Option<Method>, WireError> {
    Ok(Some(match method {
        11 => {
            r.short_str("queue")?;
            let message_count = r.u32("message count")?;
            r.u32("consumer count")?;
            Method::QueueDeclareOk { message_count }
        }
        41 => Method::QueueDeleteOk {
            message_count: r.u32("message count")?,
        },
        _ => return Ok(None),
    }))
}

fn basic_method(method: u16, r: &mut Reader) -> Result<Option<Method>, WireError> {
    Ok(Some(match method {
        71 => Method::BasicGetOk {
            delivery_tag: r.u64("delivery tag")?,
            redelivered: r.u8("redelivered")? & 1 != 0,
            exchange: r.short_str("exchange")?,
            routing_key: r.short_str("routing key")?,
            message_count: r.u32("message count")?,
        },
        72 => {
            r.short_str("cluster id")?;
            Method::BasicGetEmpty
        }
        80 => Method::BasicAck {
            delivery_tag: r.u64("delivery tag")?,
            multiple: r.u8("multiple")? & 1 != 0,
        },
        120 => Method::BasicNack {
            delivery_tag: r.u64("delivery tag")?,
            multiple: r.u8("bits")? & 1 != 0,
        },
        50 => {
            let code = r.u16("reply code")?;
            let text = r.short_str("reply text")?;
            r.short_str("exchange")?;
            r.short_str("routing key")?;
            Method::BasicReturn { code, text }
        }
        _ => return Ok(None),
    }))
}

/// Builders of the method frames this client sends.
pub mod out {
    use super::*;

    fn method(class: u16, method: u16) -> Writer {
        let mut w = Writer::default();
        w.u16(class);
        w.u16(method);
        w
    }

    /// Connection.StartOk with PLAIN credentials.
    pub fn start_ok(user: &[u8], password: &[u8], locale: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut w = method(CONNECTION, 11);
        let mut props = Table::default();
        props.0.push((
            b"product".to_vec(),
            FieldValue::LongStr(b"case-intake parked".to_vec()),
        ));
        props.0.push((
            b"version".to_vec(),
            FieldValue::LongStr(env!("CARGO_PKG_VERSION").as_bytes().to_vec()),
        ));
        write_table(&mut w, &props, 1)?;
        w.short_str(b"PLAIN", "mechanism")?;
        let mut response = Vec::with_capacity(user.len() + password.len() + 2);
        response.push(0);
        response.extend_from_slice(user);
        response.push(0);
        response.extend_from_slice(password);
        w.long_str(&response, "credentials")?;
        w.short_str(locale, "locale")?;
        Ok(w.buf)
    }

    pub fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> Vec<u8> {
        let mut w = method(CONNECTION, 31);
        w.u16(channel_max);
        w.u32(frame_max);
        w.u16(heartbeat);
        w.buf
    }

    pub fn connection_open(vhost: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut w = method(CONNECTION, 40);
        w.short_str(vhost, "the virtual host")?;
        w.short_str(b"", "capabilities")?;
        w.u8(0);
        Ok(w.buf)
    }

    pub fn connection_close(code: u16, text: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut w = method(CONNECTION, 50);
        w.u16(code);
        w.short_str(text, "reply text")?;
        w.u16(0);
        w.u16(0);
        Ok(w.buf)
    }

    pub fn connection_close_ok() -> Vec<u8> {
        method(CONNECTION, 51).buf
    }

    pub fn channel_open() -> Vec<u8> {
        let mut w = method(CHANNEL, 10);
        w.u8(0);
        w.buf
    }

    pub fn channel_close_ok() -> Vec<u8> {
        method(CHANNEL, 41).buf
    }

    /// Queue.Declare; `passive` only checks that the queue exists.
    pub fn queue_declare(
        queue: &[u8],
        passive: bool,
        durable: bool,
        arguments: &Table,
    ) -> Result<Vec<u8>, WireError> {
        let mut w = method(QUEUE, 10);
        w.u16(0);
        w.short_str(queue, "the queue name")?;
        w.u8(u8::from(passive) | u8::from(durable) << 1);
        write_table(&mut w, arguments, ENCODE_DEPTH)?;
        Ok(w.buf)
    }

    pub fn queue_delete(queue: &[u8]) -> Result<Vec<u8>, WireError> {
        on_queue(QUEUE, 40, queue)
    }

    /// Basic.Get without auto-ack: the message stays the broker's until acked or rejected.
    pub fn basic_get(queue: &[u8]) -> Result<Vec<u8>, WireError> {
        on_queue(BASIC, 70, queue)
    }

    /// A method whose arguments are a reserved short, a queue name and one octet of flags,
    /// all off (Queue.Delete without if-unused/if-empty, Basic.Get without no-ack).
    fn on_queue(class: u16, id: u16, queue: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut w = method(class, id);
        w.u16(0);
        w.short_str(queue, "the queue name")?;
        w.u8(0);
        Ok(w.buf)
    }

    pub fn basic_ack(delivery_tag: u64) -> Vec<u8> {
        let mut w = method(BASIC, 80);
        w.u64(delivery_tag);
        w.u8(0);
        w.buf
    }

    pub fn basic_reject(delivery_tag: u64, requeue: bool) -> Vec<u8> {
        let mut w = method(BASIC, 90);
        w.u64(delivery_tag);
        w.u8(u8::from(requeue));
        w.buf
    }

    pub fn basic_publish(
        exchange: &[u8],
        routing_key: &[u8],
        mandatory: bool,
    ) -> Result<Vec<u8>, WireError> {
        let mut w = method(BASIC, 40);
        w.u16(0);
        w.short_str(exchange, "the exchange name")?;
        w.short_str(routing_key, "the routing key")?;
        w.u8(u8::from(mandatory));
        Ok(w.buf)
    }

    pub fn confirm_select() -> Vec<u8> {
        let mut w = method(CONFIRM, 10);
        w.u8(0);
        w.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, kind, channel, payload);
        out
    }

    #[test]
    fn frames_round_trip_and_truncation_asks_for_more() {
        let bytes = frame(FRAME_BODY, 3, b"hello");
        let (f, used) = decode_frame(&bytes, 4096).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            (f.kind, f.channel, f.payload.as_slice()),
            (3, 3, &b"hello"[..])
        );
        for cut in 0..bytes.len() {
            assert_eq!(decode_frame(&bytes[..cut], 4096), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        // Only the 7 header bytes: the size alone refuses it, nothing is buffered.
        let mut header = vec![FRAME_BODY, 0, 1];
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_frame(&header, 131_072).is_err());
        let exact = frame(FRAME_BODY, 1, &[0; 4088]);
        assert!(decode_frame(&exact, 4096).unwrap().is_some());
        let over = frame(FRAME_BODY, 1, &[0; 4089]);
        assert!(decode_frame(&over, 4096).is_err());
    }

    #[test]
    fn garbage_frames_are_errors() {
        assert!(decode_frame(b"HTTP/1.1 400 Bad Request\r\n", 4096).is_err());
        assert!(decode_frame(b"AMQP\x00\x00\x09\x01", 4096).is_err());
        let mut bad_end = frame(FRAME_METHOD, 0, b"abc");
        *bad_end.last_mut().unwrap() = 0;
        assert!(decode_frame(&bad_end, 4096).is_err());
    }

    #[test]
    fn truncated_methods_are_errors() {
        let tune = [0, 10, 0, 30, 0, 5, 0, 2, 0, 0, 0, 0];
        assert_eq!(
            parse_method(&tune).unwrap(),
            Method::ConnectionTune {
                channel_max: 5,
                frame_max: 131_072,
                heartbeat: 0
            }
        );
        for cut in 0..tune.len() {
            assert!(parse_method(&tune[..cut]).is_err(), "cut at {cut}");
        }
        // A short string claiming more bytes than there are.
        assert!(parse_method(&[0, 60, 0, 71, 0, 0, 0, 0, 0, 0, 0, 1, 0, 200, b'x']).is_err());
    }

    fn sample_properties() -> Properties {
        let mut inner = Table::default();
        inner
            .0
            .push((vec![0xff, b'k'], FieldValue::LongStr(vec![0xc3, 0x28])));
        Properties {
            content_type: Some(b"application/json".to_vec()),
            headers: Some(Headers::Parsed(Table(vec![
                (b"a".to_vec(), FieldValue::I64(-5)),
                (b"b".to_vec(), FieldValue::Table(inner)),
                (
                    b"c".to_vec(),
                    FieldValue::Array(vec![FieldValue::Bool(true), FieldValue::Void]),
                ),
                (b"d".to_vec(), FieldValue::Decimal { scale: 2, value: 7 }),
            ]))),
            delivery_mode: Some(2),
            message_id: Some(vec![0xff, 0xfe, 0x41]),
            timestamp: Some(17),
            ..Properties::default()
        }
    }

    #[test]
    fn content_headers_round_trip_and_truncation_is_an_error() {
        let p = sample_properties();
        let bytes = encode_content_header(12, &p).unwrap();
        let h = parse_content_header(&bytes).unwrap();
        assert_eq!((h.class, h.body_size), (BASIC, 12));
        assert_eq!(h.properties, p);
        for cut in 0..bytes.len() {
            // Cutting inside the headers table makes it unparseable or the frame short;
            // either way no panic, and never the original properties.
            if let Ok(h) = parse_content_header(&bytes[..cut]) {
                assert_ne!(h.properties, p);
            }
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(parse_content_header(&trailing).is_err());
    }

    /// An array nested `depth` levels, built linearly (each level's length is known).
    fn nested(depth: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(depth * 5);
        for level in 0..depth {
            out.push(b'A');
            out.extend_from_slice(&((5 * (depth - 1 - level)) as u32).to_be_bytes());
        }
        out
    }

    #[test]
    fn deep_nesting_is_kept_verbatim_and_measured() {
        let raw = nested(25_000);
        let v = decode_value(&raw).unwrap();
        assert_eq!(v.depth(), 25_000);
        let mut w = Writer::default();
        write_value(&mut w, &v, ENCODE_DEPTH).unwrap();
        assert_eq!(w.buf, raw);
        // Shallow enough to be a tree.
        let v = decode_value(&nested(MATERIALISE_DEPTH)).unwrap();
        assert!(matches!(v, FieldValue::Array(_)));
        assert_eq!(v.depth(), MATERIALISE_DEPTH);
        // A lying inner length is caught by the scan.
        let mut bad = nested(100);
        bad[50] = 0xff;
        assert!(decode_value(&bad).is_err());
    }

    #[test]
    fn unknown_field_types_make_headers_unparseable_not_the_message() {
        let mut p = sample_properties();
        p.headers = Some(Headers::Unparseable {
            raw: vec![1, b'k', b'?'],
            reason: String::new(),
        });
        let bytes = encode_content_header(0, &p).unwrap();
        let h = parse_content_header(&bytes).unwrap();
        assert!(matches!(
            h.properties.headers,
            Some(Headers::Unparseable { .. })
        ));
        assert_eq!(h.properties.message_id, p.message_id);
    }

    #[test]
    fn short_strings_longer_than_255_are_refused() {
        let p = Properties {
            message_id: Some(vec![b'a'; 256]),
            ..Properties::default()
        };
        assert!(encode_content_header(0, &p).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_frame(&bytes, 4096);
            let _ = parse_method(&bytes);
            let _ = parse_content_header(&bytes);
            let _ = decode_value(&bytes);
            let _ = scan_container(&bytes);
        }

        #[test]
        fn mutated_headers_never_panic(pos in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut bytes = encode_content_header(3, &sample_properties()).unwrap();
            let at = pos % bytes.len();
            bytes[at] = byte;
            let _ = parse_content_header(&bytes);
        }
    }
}
