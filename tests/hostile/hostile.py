#!/usr/bin/env python3
"""Hostile-input suite for case-intake.

Acts as a hostile publisher through the real RabbitMQ broker against a release build of the
worker (target/release/case-intake) and checks, for every input:

  * its outcome: the expected `case.failed` code (matched by the event's `subject` = message
    key, or by the AMQP correlation id the worker echoes), `case.created`, or its parking
    (the message counted in `<intake_queue>.parked` with a passive queue_declare);
  * exactly one outcome (distinct event ids) or parking;
  * that the worker process is alive, that the intake queue has a consumer again, that
    GET /healthz answers 200, and that a valid intake published right after it gets its
    `case.created`.

Every run has its own database, intake queue and events exchange, and removes them at the end
(also on failure). See tests/hostile/README.md. Run it through tests/hostile/run.sh.

Nothing secret is printed: tokens and SSNs are masked in every line this script writes.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Callable, Optional

import pika
from pika import spec
from pika.exceptions import AMQPChannelError, AMQPConnectionError, AMQPError

sys.setrecursionlimit(200_000)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRAME_MAX = 131072
# Headers nested deeper than this are refused by the worker (invalid_envelope).
MAX_HEADER_DEPTH = 16

# --------------------------------------------------------------------------------------------
# Output with secrets masked
# --------------------------------------------------------------------------------------------

SECRETS: list[tuple[str, str]] = []  # (secret text, replacement)


def mask(text: str) -> str:
    for secret, repl in SECRETS:
        if secret:
            text = text.replace(secret, repl)
    # Anything that still looks like an SSN or a 64-hex token.
    text = re.sub(r"\b\d{3}-\d{2}-\d{4}\b", "***-**-****", text)
    text = re.sub(r"\b[0-9a-f]{64}\b", "<token>", text)
    return text


def say(*parts: object) -> None:
    print(mask(" ".join(str(p) for p in parts)), flush=True)


def printable(value: object, limit: int = 80) -> str:
    """A short, escaped rendering of a hostile value for the report."""
    if isinstance(value, (bytes, bytearray)):
        r = repr(bytes(value))
    else:
        r = ascii(value)
    return r if len(r) <= limit else r[: limit - 12] + f"...({len(r)} chars)"


# --------------------------------------------------------------------------------------------
# A raw AMQP field-table encoder: full control over types, names and bytes
# --------------------------------------------------------------------------------------------


class Raw:
    """An already-encoded field value (type octet included)."""

    def __init__(self, encoded: bytes):
        self.encoded = encoded


def lstr(b: bytes) -> Raw:
    """A long string ('S') holding arbitrary bytes."""
    return Raw(b"S" + struct.pack(">I", len(b)) + b)


def fixed(type_octet: bytes, fmt: str) -> Callable[..., Raw]:
    """An encoder of one fixed-size field value: the type octet, then the value(s) packed
    big-endian by `fmt` (one struct format: the value's size and signedness)."""
    return lambda *values: Raw(type_octet + struct.pack(fmt, *values))


i8 = fixed(b"b", ">b")
u8 = fixed(b"B", ">B")
i16 = fixed(b"s", ">h")
u16 = fixed(b"u", ">H")
i32 = fixed(b"I", ">i")
u32 = fixed(b"i", ">I")
i64 = fixed(b"l", ">q")
f32 = fixed(b"f", ">f")
f64 = fixed(b"d", ">d")
dec = fixed(b"D", ">Bi")  # dec(scale, value)
ts = fixed(b"T", ">Q")


def bytearr(b: bytes) -> Raw:
    return Raw(b"x" + struct.pack(">I", len(b)) + b)


def deep_array(depth: int) -> Raw:
    """`depth` arrays nested in each other (5 bytes a level), built without recursion."""
    parts = [b"A" + struct.pack(">I", 5 * (depth - 1 - i)) for i in range(depth)]
    return Raw(b"".join(parts))


def deep_table(depth: int) -> Raw:
    """`depth` tables nested in each other through empty field names (6 bytes a level)."""
    parts = [b"F" + struct.pack(">I", 6 * (depth - 1 - i)) + (b"\x00" if i < depth - 1 else b"")
             for i in range(depth)]
    return Raw(b"".join(parts))


def encode_value(v) -> bytes:
    if isinstance(v, Raw):
        return v.encoded
    if isinstance(v, bool):
        return b"t" + struct.pack(">B", int(v))
    if isinstance(v, int):
        if -(2 ** 31) <= v < 2 ** 31:
            return b"I" + struct.pack(">i", v)
        return b"l" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        return b"S" + struct.pack(">I", len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        return b"S" + struct.pack(">I", len(v)) + bytes(v)
    if v is None:
        return b"V"
    if isinstance(v, (dict, list)) and isinstance(v, list):
        inner = b"".join(encode_value(x) for x in v)
        return b"A" + struct.pack(">I", len(inner)) + inner
    if isinstance(v, (dict, Table)):
        return b"F" + encode_table(v)
    raise TypeError(f"cannot encode {type(v)}")


class Table:
    """A field table as a list of (name, value) pairs: names may repeat or be raw bytes."""

    def __init__(self, pairs):
        self.pairs = list(pairs)


def short(b) -> bytes:
    if isinstance(b, str):
        b = b.encode("utf-8")
    if len(b) > 255:
        raise ValueError("short string longer than 255 bytes")
    return struct.pack(">B", len(b)) + b


def encode_table(t) -> bytes:
    pairs = t.pairs if isinstance(t, Table) else list(t.items())
    inner = b"".join(short(k) + encode_value(v) for k, v in pairs)
    return struct.pack(">I", len(inner)) + inner


PROPERTY_ORDER = [
    # (name, flag, kind)
    ("content_type", 1 << 15, "short"),
    ("content_encoding", 1 << 14, "short"),
    ("headers", 1 << 13, "table"),
    ("delivery_mode", 1 << 12, "octet"),
    ("priority", 1 << 11, "octet"),
    ("correlation_id", 1 << 10, "short"),
    ("reply_to", 1 << 9, "short"),
    ("expiration", 1 << 8, "short"),
    ("message_id", 1 << 7, "short"),
    ("timestamp", 1 << 6, "u64"),
    ("type", 1 << 5, "short"),
    ("user_id", 1 << 4, "short"),
    ("app_id", 1 << 3, "short"),
    ("cluster_id", 1 << 2, "short"),
]


class RawProperties(spec.BasicProperties):
    """BasicProperties whose content header is encoded by this script: short strings may hold
    any bytes (invalid UTF-8, NUL), headers use the raw field encoder above."""

    def __init__(self, props: dict):
        super().__init__()
        self.raw = props
        self.message_id = props.get("message_id")
        self.correlation_id = props.get("correlation_id")
        self.headers = None

    def encode(self):
        flags = 0
        pieces = []
        for name, flag, kind in PROPERTY_ORDER:
            if name not in self.raw or self.raw[name] is None:
                continue
            value = self.raw[name]
            flags |= flag
            if kind == "short":
                pieces.append(short(value))
            elif kind == "table":
                pieces.append(encode_table(value))
            elif kind == "octet":
                pieces.append(struct.pack(">B", value))
            elif kind == "u64":
                pieces.append(struct.pack(">Q", value))
        return [struct.pack(">H", flags)] + pieces

    def size(self) -> int:
        return sum(len(p) for p in self.encode())


# --------------------------------------------------------------------------------------------
# Environment: config, database, worker process
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(db: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1",
         "-c", sql],
        capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


@dataclass
class Env:
    binary: str
    run_id: str
    workdir: str
    db_name: str
    intake_queue: str
    events_exchange: str
    http_port: int
    max_body_bytes: int = 65536
    config_path: str = ""
    worker: Optional[subprocess.Popen] = None
    worker_log: Optional[object] = None
    worker_starts: int = 0

    @property
    def queues(self) -> list[str]:
        q = self.intake_queue
        return [q, q + ".dead", q + ".retry", q + ".parked"]

    @property
    def parked_queue(self) -> str:
        return self.intake_queue + ".parked"

    def write_config(self) -> None:
        self.config_path = os.path.join(self.workdir, "config.toml")
        with open(self.config_path, "w") as f:
            f.write(f"""# hostile-suite run {self.run_id}
[database]
url = "postgres://postgres@127.0.0.1:5432/{self.db_name}"
create_database = true

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
intake_queue = "{self.intake_queue}"
events_exchange = "{self.events_exchange}"
retry_delay_ms = 1000

[log]
format = "json"
filter = "info"

[http]
address = "127.0.0.1:{self.http_port}"
""")

    def child_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASE_INTAKE")}
        env["CASE_INTAKE_CONFIG"] = self.config_path
        env.pop("RUST_LOG", None)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, "--config", self.config_path, *args],
                              capture_output=True, timeout=timeout, env=self.child_env())

    def read_limits(self) -> None:
        """intake.max_body_bytes: the run's config does not set it, so it is the binary's
        default (config/default.toml) unless CASE_INTAKE__INTAKE__MAX_BODY_BYTES says otherwise
        (that variable is not passed to the worker; the config file is the only source)."""
        path = os.path.join(ROOT, "config", "default.toml")
        section = None
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line.startswith("["):
                    section = line.strip("[]")
                elif section == "intake" and line.startswith("max_body_bytes"):
                    self.max_body_bytes = int(line.split("=", 1)[1].strip())

    def start_worker(self) -> None:
        self.worker_starts += 1
        if self.worker_log is None:
            self.worker_log = open(os.path.join(self.workdir, "worker.log"), "ab")
        self.worker_log.write(f"--- worker start {self.worker_starts} ---\n".encode())
        self.worker_log.flush()
        self.worker = subprocess.Popen([self.binary, "--config", self.config_path, "run"],
                                       stdout=self.worker_log, stderr=subprocess.STDOUT,
                                       env=self.child_env(), start_new_session=True)

    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    def stop_worker(self, timeout: float = 40) -> Optional[int]:
        if self.worker is None:
            return None
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)
        rc = self.worker.returncode
        self.worker = None
        return rc

    def healthz(self) -> Optional[int]:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
            c.request("GET", "/healthz")
            status = c.getresponse().status
            c.close()
            return status
        except OSError:
            return None


# --------------------------------------------------------------------------------------------
# Broker side: publisher, event tap, queue counts
# --------------------------------------------------------------------------------------------

PARAMS = pika.ConnectionParameters(host="127.0.0.1", port=5672,
                                   credentials=pika.PlainCredentials("guest", "guest"),
                                   heartbeat=60, blocked_connection_timeout=60,
                                   frame_max=FRAME_MAX)


class Broker:
    """A publishing connection (confirm mode) and an admin channel, reopened after the broker
    closes them (a refused publish closes the channel, a framing error the connection)."""

    def __init__(self):
        self.conn = None
        self.pub = None
        self.admin = None

    def ensure(self):
        if self.conn is None or self.conn.is_closed:
            self.conn = pika.BlockingConnection(PARAMS)
            self.pub = None
            self.admin = None
        if self.pub is None or self.pub.is_closed:
            self.pub = self.conn.channel()
            self.pub.confirm_delivery()
        if self.admin is None or self.admin.is_closed:
            self.admin = self.conn.channel()

    def close(self):
        try:
            if self.conn is not None and self.conn.is_open:
                self.conn.close()
        except AMQPError:
            pass

    def publish(self, queue: str, body: bytes, props: spec.BasicProperties) -> Optional[str]:
        """Publishes with confirms; None when the broker took it, else why it was refused."""
        try:
            self.ensure()
            self.pub.basic_publish("", queue, body, props, mandatory=True)
            return None
        except pika.exceptions.UnroutableError:
            return "returned as unroutable"
        except pika.exceptions.NackError:
            return "nacked by the broker"
        except AMQPChannelError as e:
            self.pub = None
            return f"channel closed by the broker: {e!r}"
        except AMQPConnectionError as e:
            self.conn = None
            return f"connection closed by the broker: {e!r}"

    def queue_counts(self, queue: str) -> Optional[tuple[int, int]]:
        """(messages, consumers) of a queue with a passive declare; None when it is absent."""
        for _ in range(3):
            try:
                self.ensure()
                ok = self.admin.queue_declare(queue, passive=True)
                return ok.method.message_count, ok.method.consumer_count
            except AMQPChannelError:
                self.admin = None
                return None
            except AMQPConnectionError:
                self.conn = None
        return None

    def process(self):
        try:
            self.ensure()
            self.conn.process_data_events(0)
        except AMQPError:
            self.conn = None


@dataclass
class Event:
    received: float
    routing_key: str
    event_id: Optional[str]
    correlation_id: Optional[str]
    body_text: str
    body: dict


class Tap:
    """A queue of this run bound to the events exchange with `#`; events kept in arrival order."""

    def __init__(self, exchange: str, name: str):
        self.exchange = exchange
        self.name = name
        self.events: list[Event] = []
        self.conn = pika.BlockingConnection(PARAMS)
        self.ch = self.conn.channel()
        self.ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        self.ch.queue_declare(name, durable=False, exclusive=True, auto_delete=False)
        self.ch.queue_bind(name, exchange, routing_key="#")
        self.ch.basic_consume(name, self._on_message, auto_ack=True)

    def _on_message(self, ch, method, props, body):
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {}
        self.events.append(Event(time.monotonic(), method.routing_key, props.message_id,
                                 props.correlation_id, text, parsed))

    def pump(self, seconds: float = 0.05):
        try:
            self.conn.process_data_events(time_limit=seconds)
        except AMQPError:
            # Reconnect: an exclusive queue is gone with its connection; declare it again.
            time.sleep(0.5)
            self.__init__(self.exchange, self.name)

    def matching(self, key: Optional[str], corr: Optional[str]) -> list[Event]:
        out = []
        for e in self.events:
            subject = e.body.get("subject") if isinstance(e.body, dict) else None
            data = e.body.get("data") if isinstance(e.body, dict) else None
            mkey = data.get("message_key") if isinstance(data, dict) else None
            if (key is not None and (subject == key or mkey == key)) or \
                    (corr is not None and e.correlation_id == corr):
                out.append(e)
        return out

    def close(self):
        try:
            self.ch.queue_delete(self.name)
            self.conn.close()
        except AMQPError:
            pass


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

CREATED = "created"
PARKED = "parked"
ANY = "any"            # contract silent: exactly one outcome or parking
REFUSED = "refused"    # the broker must refuse the publish; only the worker is checked


@dataclass
class Case:
    name: str
    group: str
    expect: str                       # CREATED, PARKED, ANY, REFUSED, or a case.failed code
    build: Callable[["Ctx"], tuple[dict, bytes]]   # -> (raw properties, body)
    quick: bool = False
    # Match by key (subject) and/or correlation id; a hostile key or correlation id that the
    # worker may not echo is left out of matching.
    match_key: bool = True
    match_corr: bool = True
    broker_may_refuse: bool = False   # a refusal by the broker is then reported, not failed
    extra: Optional[Callable[["Ctx", "Result"], list[str]]] = None  # further checks
    # Valid intakes published in the same burst, half before and half after the input: each
    # must be created (one bad message must not hold back or roll back its neighbours).
    companions: int = 0
    parking_last: bool = False


@dataclass
class Result:
    case: Case
    key: Optional[str] = None
    corr: Optional[str] = None
    outcome: Optional[str] = None     # created / failed:<code> / parked / refused / none
    outcome_seconds: Optional[float] = None
    events: int = 0
    refused: Optional[str] = None
    worker_died: bool = False
    worker_rc: Optional[int] = None
    consumer_back: Optional[bool] = None
    healthz: Optional[int] = None
    followup_seconds: Optional[float] = None
    stalled: bool = False
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class Ctx:
    def __init__(self, run_id: str, token: str, token2: str, county: int, ssn: str,
                 max_body: int):
        self.run_id = run_id
        self.token = token
        self.token2 = token2
        self.county = county
        self.ssn = ssn
        self.max_body = max_body
        self.n = 0
        self.key = ""
        self.corr = ""

    def next_ids(self, name: str):
        self.n += 1
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
        self.key = f"hx-{self.run_id}-{self.n:03d}-{slug}"
        self.corr = f"hc-{self.run_id}-{self.n:03d}"

    def body(self, **overrides) -> dict:
        b = {
            "first_name": "John",
            "last_name": "Smith",
            "date_of_birth": "1950-12-03",
            "email": "john.smith@example.org",
            "mailing_state": "NY",
            "mailing_zip_code": "12345",
            "street_county": self.county,
            "yearly_income": 15350,
        }
        for k, v in overrides.items():
            if v is None:
                b.pop(k, None)
            else:
                b[k] = v
        return b

    def valid_body(self, **overrides) -> bytes:
        return json.dumps(self.body(**overrides)).encode()

    def auth(self, token: Optional[str] = None) -> dict:
        return {"authorization": f"Token {token or self.token}"}

    def props(self, headers=None, **kw) -> dict:
        """Standard properties: key, correlation id, persistent, authorization header."""
        p = {"message_id": self.key, "correlation_id": self.corr, "delivery_mode": 2,
             "content_type": "application/json",
             "headers": self.auth() if headers is None else headers}
        for k, v in kw.items():
            p[k] = v
        return p


def valid(ctx: Ctx, **kw):
    return ctx.props(**kw), ctx.valid_body()


def ssn_checks(ctx: Ctx, r: Result) -> list[str]:
    """The case.failed event and `failed show` print no SSN digits."""
    problems = []
    forms = ssn_forms(ctx.ssn)
    for e in TAP.matching(r.key, r.corr):
        if any(f in e.body_text for f in forms):
            problems.append("the outcome event contains the SSN digits")
    if r.key:
        out = ENV.cli("failed", "show", r.key)
        text = out.stdout.decode("utf-8", "replace")
        if out.returncode != 0:
            problems.append(f"`failed show` exited {out.returncode}: "
                            f"{out.stderr.decode('utf-8', 'replace').strip()[-200:]}")
        elif any(f in text for f in forms):
            problems.append("`failed show` output contains the SSN digits")
    return problems


def ssn_forms(ssn: str) -> list[str]:
    digits = ssn.replace("-", "")
    return [ssn, digits, digits[:5], ssn[:6], f"{digits[:3]} {digits[3:5]} {digits[5:]}"]


def stored_payload_bounded(ctx: Ctx, r: Result) -> list[str]:
    rows = psql(ENV.db_name,
                "SELECT coalesce(max(length(payload_sealed)), -1), count(*) FROM failed_intakes "
                f"WHERE message_key = '{r.key}'")
    longest, count = (int(x) for x in rows.split("|"))
    if count == 0:
        return ["no failed_intakes row for the key"]
    bound = ctx.max_body + 4096
    if longest > bound:
        return [f"failed_intakes holds a payload of {longest} bytes (bound {bound})"]
    r.notes.append(f"stored payload {longest} bytes")
    return []


def build_cases(ctx_for_sizes: Ctx) -> list[Case]:
    cases: list[Case] = []
    max_body = ctx_for_sizes.max_body

    def add(name, group, expect, build, **kw):
        cases.append(Case(name, group, expect, build, **kw))

    # ---- deep header nesting (worker refuses headers nested deeper than 16) -----------------
    for depth in (2000, 2500, 5000, 20000):
        add(f"header array nested {depth} deep", "deep-headers", "invalid_envelope",
            lambda c, d=depth: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                                      ("x-deep", deep_array(d))])),
                                c.valid_body()),
            quick=depth == 20000)
        add(f"header table nested {depth} deep", "deep-headers", "invalid_envelope",
            lambda c, d=depth: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                                      ("x-deep", deep_table(d))])),
                                c.valid_body()),
            quick=depth == 20000)
    add("header array nested 40 deep", "deep-headers", "invalid_envelope",
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-deep", deep_array(40))])), c.valid_body()))
    add("header array nested 8 deep (allowed)", "deep-headers", CREATED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-deep", deep_array(8))])), c.valid_body()))
    add("header table nested 8 deep (allowed)", "deep-headers", CREATED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-deep", deep_table(8))])), c.valid_body()))

    # ---- control characters in message_id / correlation_id ----------------------------------
    for label, ch in [("NUL", b"\x00"), ("ESC", b"\x1b"), ("BEL", b"\x07"), ("DEL", b"\x7f"),
                      ("C1 U+0085", "\u0085".encode()), ("C1 U+009B CSI", "\u009b".encode()),
                      ("TAB", b"\t"), ("newline", b"\n")]:
        add(f"message_id with {label}", "control-chars", "invalid_envelope",
            lambda c, ch=ch: (c.props(message_id=c.key.encode() + ch + b"x"), c.valid_body()),
            match_key=False, quick=label in ("NUL",))
        add(f"correlation_id with {label}", "control-chars", "invalid_envelope",
            lambda c, ch=ch: (c.props(correlation_id=c.corr.encode() + ch + b"x"),
                              c.valid_body()),
            match_corr=False, quick=label in ("ESC",))

    # ---- keys with ESC/BEL: `failed list` must not print raw control bytes -------------------
    def failed_list_clean(c: Ctx, r: Result) -> list[str]:
        out = ENV.cli("failed", "list", "--limit", "10000")
        raw = out.stdout + out.stderr
        bad = [n for n, b in (("ESC", b"\x1b"), ("BEL", b"\x07")) if b in raw]
        if out.returncode != 0:
            return [f"`failed list` exited {out.returncode}"]
        return [f"`failed list` output (all failed intakes of the run) contains a raw {n} byte"
                for n in bad]

    for label, seq in [("ESC (ANSI colour)", b"\x1b[31mred\x1b[0m"), ("BEL", b"\x07\x07"),
                       ("ESC title sequence", b"\x1b]0;pwned\x07")]:
        add(f"key with {label}, failing body: failed list", "control-chars", "invalid_envelope",
            lambda c, seq=seq: (c.props(message_id=c.key.encode() + seq),
                                c.valid_body(mailing_zip_code="ABCDE")),
            match_key=False, extra=failed_list_clean, quick=label == "BEL")

    # ---- invalid UTF-8 in short strings: the client library cannot parse them -> parked -----
    bad = b"\xff\xfeA"
    for prop in ("message_id", "correlation_id", "content_type", "content_encoding", "type",
                 "app_id", "reply_to", "expiration", "cluster_id"):
        add(f"{prop} with invalid UTF-8 (ff fe 41)", "invalid-utf8", PARKED,
            lambda c, p=prop: (c.props(**{p: bad}), c.valid_body()),
            match_key=prop != "message_id", match_corr=prop != "correlation_id",
            broker_may_refuse=prop == "expiration", parking_last=True,
            quick=prop == "message_id")
    add("header name with invalid UTF-8", "invalid-utf8", PARKED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          (b"x-\xff\xfeA", "v")])), c.valid_body()),
        parking_last=True)
    add("nested header name with invalid UTF-8", "invalid-utf8", PARKED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-t", Table([(b"\xff\xfe", 1)]))])),
                   c.valid_body()),
        parking_last=True)

    # ---- body-level hostile input named in the brief ----------------------------------------
    add("unknown body field whose name contains U+0000", "body", "validation_failed",
        lambda c: (c.props(), json.dumps({**c.body(), "bad\u0000field": 1}).encode()),
        quick=True)

    for label, value in [("999", 999), ("string '999'", "999"), ("negative", -5),
                         ("table", {"n": 999}), ("i64 max", i64(2 ** 63 - 1)),
                         ("max_attempts - 1 (4)", 4), ("float", 1e9), ("void", None)]:
        add(f"publisher-set x-case-intake-retries {label}", "retries-header", CREATED,
            lambda c, v=value: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                                       ("x-case-intake-retries", v)])),
                                c.valid_body()),
            quick=label == "999")

    def sized(n: int) -> Callable[[Ctx], tuple[dict, bytes]]:
        def build(c: Ctx):
            b = json.dumps(c.body()).encode()
            pad = n - len(b)
            return c.props(), b[:-1] + b" " * pad + b"}" if pad >= 0 else b
        return build

    for label, n in [("10 MB", 10 * 1024 * 1024), ("1 MB", 1024 * 1024),
                     ("limit + 1", max_body + 1)]:
        add(f"body of {label}", "body-size", "payload_too_large", sized(n),
            extra=stored_payload_bounded, quick=label == "1 MB")
    add("body of exactly the limit (whitespace-padded)", "body-size", CREATED, sized(max_body))

    ssn_cases = [
        ("SSN under `ssn`", lambda c: {**c.body(), "ssn": c.ssn}),
        ("SSN under `SS_Number`", lambda c: {**c.body(), "SS_Number": c.ssn}),
        ("SSN nested in an object", lambda c: {**c.body(), "household": {"ss_number": c.ssn}}),
        ("SSN nested in an array field", lambda c: {**c.body(), "mailing_address": [c.ssn]}),
        ("SSN as a field name", lambda c: {**c.body(), c.ssn: "x"}),
        ("SSN digits as a field name", lambda c: {**c.body(), c.ssn.replace("-", ""): 1}),
        ("ss_number with a trailing letter", lambda c: {**c.body(), "ss_number": c.ssn + "x"}),
        ("ss_number as a number", lambda c: {**c.body(),
                                             "ss_number": int(c.ssn.replace("-", ""))}),
    ]
    for label, mk in ssn_cases:
        add(label, "ssn", "validation_failed",
            lambda c, mk=mk: (c.props(), json.dumps(mk(c)).encode()),
            extra=ssn_checks, quick=label == "SSN under `ssn`")

    # Two authorization headers on one message: (label, expected, first, second, quick), each
    # header a (name, whose token) pair, "A" and "B" being the two networks' valid tokens and
    # "unknown" a well-formed token of no network.
    def two_auth_headers(first, second):
        def build(c):
            tokens = {"A": c.token, "B": c.token2, "unknown": "0" * 64}
            headers = Table([(name, f"Token {tokens[whose]}") for name, whose in (first, second)])
            return c.props(headers=headers), c.valid_body()
        return build

    for label, expect, first, second, quick in [
        ("authorization Token A + Authorize Token B (both valid, different networks)",
         "unauthorized", ("authorization", "A"), ("Authorize", "B"), True),
        ("authorization Token A + Authorize Token B (B unknown)",
         "unauthorized", ("authorization", "A"), ("Authorize", "unknown"), False),
        ("Authorize Token B (unknown) + authorization Token A",
         "unauthorized", ("Authorize", "unknown"), ("authorization", "A"), False),
        ("authorization and Authorize with the same valid token",
         CREATED, ("authorization", "A"), ("Authorize", "A"), False),
        # Known limitation: amq-protocol decodes a header table into a map, so of two fields
        # with one name only the last reaches the service, which cannot see the repetition
        # (README, Hostile envelopes). Asserted: one outcome, worker alive, the next intake
        # created.
        ("authorization twice (same name), different tokens",
         ANY, ("authorization", "A"), ("authorization", "B"), False),
        ("authorization twice (same name), same token",
         ANY, ("authorization", "A"), ("authorization", "A"), False),
        ("AUTHORIZATION + authorization, different tokens",
         "unauthorized", ("AUTHORIZATION", "B"), ("authorization", "A"), False),
    ]:
        add(label, "auth", expect, two_auth_headers(first, second), quick=quick)

    for label, value in [("only a zero-width space", "\u200b"),
                         ("with U+202E (right-to-left override)", "Jo\u202ehn"),
                         ("only U+202E", "\u202e"),
                         ("zero-width spaces around spaces", "\u200b \u200b")]:
        add(f"first_name {label}", "names", "validation_failed",
            lambda c, v=value: (c.props(), json.dumps(c.body(first_name=v)).encode()),
            quick=label == "only a zero-width space")
    add("last_name with U+202E", "names", "validation_failed",
        lambda c: (c.props(), json.dumps(c.body(last_name="Sm\u202eith")).encode()))

    # ---- envelope: basic properties -----------------------------------------------------------
    for ct in ["application/json", "text/plain", "", "application/xml", "x" * 255,
               "application/json; charset=latin1", "日本語/テキスト"]:
        add(f"content_type {printable(ct, 40)}", "properties", CREATED,
            lambda c, ct=ct: valid(c, content_type=ct))
    add("no content_type", "properties", CREATED, lambda c: valid(c, content_type=None))
    for ce in ["identity", "", "gzip (body not compressed)", "x" * 255]:
        add(f"content_encoding {printable(ce, 40)}", "properties", ANY,
            lambda c, ce=ce: valid(c, content_encoding=ce.split(" ")[0]))
    add("gzip body with content_encoding gzip", "body", ANY,
        lambda c: (c.props(content_encoding="gzip"), gzip.compress(c.valid_body())))
    for dm in (0, 1, 2, 255):
        # RabbitMQ refuses delivery modes other than 1 and 2 (PRECONDITION_FAILED).
        add(f"delivery_mode {dm}", "properties", CREATED, lambda c, dm=dm: valid(c, delivery_mode=dm),
            broker_may_refuse=True)
    for pr in (0, 9, 255):
        add(f"priority {pr}", "properties", CREATED, lambda c, pr=pr: valid(c, priority=pr),
            broker_may_refuse=True)
    add("correlation_id of 255 characters", "properties", CREATED,
        lambda c: valid(c, correlation_id=(c.corr + "-" + "c" * 255)[:255]))
    add("correlation_id empty", "properties", CREATED,
        lambda c: valid(c, correlation_id=""), match_corr=False)
    add("correlation_id multibyte", "properties", CREATED,
        lambda c: valid(c, correlation_id=c.corr + "-日本語-😀"), match_corr=False)
    add("correlation_id with U+202E", "properties", ANY,
        lambda c: valid(c, correlation_id=c.corr + "\u202e"), match_corr=False)
    for rt in ["amq.rabbitmq.reply-to", "", "some.queue", "r" * 255]:
        # Direct reply-to without its consumer is refused by the broker (PRECONDITION_FAILED).
        add(f"reply_to {printable(rt, 30)}", "properties", CREATED,
            lambda c, rt=rt: valid(c, reply_to=rt), broker_may_refuse=rt.startswith("amq."))
    add("reply_to with ESC", "properties", ANY, lambda c: valid(c, reply_to="q\x1b[2J"))
    for exp in ["99999999", "0", "1", "", "-1", "abc", "1.5", "9" * 30, " 100"]:
        add(f"expiration {printable(exp, 30)}", "properties", ANY,
            lambda c, exp=exp: valid(c, expiration=exp), broker_may_refuse=True)
    add("message_id absent", "message-id", "missing_message_key",
        lambda c: valid(c, message_id=None), match_key=False, quick=True)
    add("message_id of length 0", "message-id", "missing_message_key",
        lambda c: valid(c, message_id=""), match_key=False)
    add("message_id of length 1", "message-id", CREATED,
        lambda c: valid(c, message_id=secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789")),
        match_key=False)
    add("message_id of length 255", "message-id", CREATED,
        lambda c: valid(c, message_id=(c.key + "-" + "k" * 255)[:255]), match_key=False)
    # A short string holds at most 255 bytes: a 256-character message_id cannot be sent;
    # the nearest is no message_id and a 256-character `message_id` header.
    add("message_id absent, 256-character `message_id` header instead",
        "message-id", "missing_message_key",
        lambda c: valid(c, message_id=None, headers={**c.auth(), "message_id": "k" * 256}),
        match_key=False)
    add("message_id of 137 characters, 254 bytes (two-byte characters)", "message-id", CREATED,
        lambda c: valid(c, message_id=c.key[:20] + "é" * 117), match_key=False)
    add("message_id of 85 three-byte characters (255 bytes)", "message-id", CREATED,
        lambda c: valid(c, message_id="日" * 85), match_key=False)
    add("message_id of emoji (4-byte characters)", "message-id", CREATED,
        lambda c: valid(c, message_id=c.key[:40] + "😀" * 50), match_key=False)
    add("message_id of one space", "message-id", ANY,
        lambda c: valid(c, message_id=" "), match_key=False)
    add("message_id with U+202E", "message-id", ANY,
        lambda c: valid(c, message_id=c.key + "\u202e"), match_key=False)
    add("message_id of a zero-width space", "message-id", ANY,
        lambda c: valid(c, message_id="\u200b" + c.key[-20:]), match_key=False)
    for t in (0, 2 ** 64 - 1, 2 ** 63, int(time.time())):
        add(f"timestamp {t}", "properties", CREATED, lambda c, t=t: valid(c, timestamp=t),
            broker_may_refuse=True)
    for ty in ["case.create", "", "t" * 255, "日本"]:
        add(f"type {printable(ty, 30)}", "properties", CREATED, lambda c, ty=ty: valid(c, type=ty))
    add("user_id of another user", "properties", REFUSED,
        lambda c: valid(c, user_id="not-guest"))
    add("user_id = the connection's user (guest)", "properties", CREATED,
        lambda c: valid(c, user_id="guest"))
    for ap in ["case-intake", "", "a" * 255, "app\x00id"]:
        add(f"app_id {printable(ap, 30)}", "properties", CREATED if "\x00" not in ap else ANY,
            lambda c, ap=ap: valid(c, app_id=ap))
    for cl in ["cluster-1", "", "c" * 255]:
        add(f"cluster_id {printable(cl, 30)}", "properties", CREATED,
            lambda c, cl=cl: valid(c, cluster_id=cl))
    add("every property set at once", "properties", CREATED,
        lambda c: valid(c, content_type="application/json", content_encoding="identity",
                        priority=5, reply_to="rq", expiration="600000", timestamp=1,
                        type="t", user_id="guest", app_id="a", cluster_id="cl"))

    # ---- envelope: header types ---------------------------------------------------------------
    header_values = [
        ("bool true", True), ("bool false", False), ("i8 -128", i8(-128)), ("u8 255", u8(255)),
        ("i16 -32768", i16(-32768)), ("u16 65535", u16(65535)), ("i32 min", i32(-2 ** 31)),
        ("u32 max", u32(2 ** 32 - 1)), ("i64 min", i64(-2 ** 63)), ("float32 NaN", f32(float("nan"))),
        ("float64 inf", f64(float("inf"))), ("float64 -0.0", f64(-0.0)),
        ("decimal scale 2", dec(2, 12345)), ("decimal scale 255", dec(255, -1)),
        ("timestamp 0", ts(0)), ("timestamp max", ts(2 ** 64 - 1)),
        ("byte array", bytearr(b"\x00\xff\xfe")), ("void", None),
        ("long string with invalid UTF-8", lstr(b"\xff\xfeA")),
        ("long string with NUL", lstr(b"a\x00b")),
        ("empty table", Table([])), ("empty array", []),
        ("nested table/array 3 deep", Table([("a", [1, Table([("b", [True, None])])])])),
        ("array of every type", [True, i8(1), u8(1), i16(1), u16(1), i32(1), u32(1), i64(1),
                                 f32(1.5), f64(2.5), dec(1, 5), ts(1), bytearr(b"x"), None,
                                 "s", Table([])]),
    ]
    for label, v in header_values:
        # RabbitMQ cannot decode NaN or infinite floats: it closes the connection (541).
        add(f"extra header: {label}", "header-types", CREATED,
            lambda c, v=v: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                                   ("x-extra", v)])), c.valid_body()),
            broker_may_refuse=label.startswith(("float32 NaN", "float64 inf")))
    add("unknown field type octet in a header", "header-types", ANY,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-odd", Raw(b"Z\x00"))])), c.valid_body()),
        broker_may_refuse=True)
    add("1,000 headers", "header-types", CREATED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}")] +
                                         [(f"x-h{i}", i) for i in range(1000)])),
                   c.valid_body()), quick=True)
    add("100 KB string header value", "header-types", CREATED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-big", "v" * 100_000)])), c.valid_body()))
    add("100 KB authorization value", "auth", "unauthorized",
        lambda c: (c.props(headers={"authorization": "Token " + "t" * 100_000}),
                   c.valid_body()))
    add("empty header name", "header-types", CREATED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"), ("", 1)])),
                   c.valid_body()))
    add("header name of 255 bytes", "header-types", CREATED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("h" * 255, 1)])), c.valid_body()))
    add("header name with NUL and ESC", "header-types", ANY,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x\x00\x1b", 1)])), c.valid_body()))

    # ---- envelope: authorization variants -----------------------------------------------------
    auth_cases = [
        ("authorization absent (no headers)", None, "unauthorized"),
        ("authorization as bytes (byte array)", lambda c: bytearr(f"Token {c.token}".encode()), ANY),
        ("authorization as int", lambda c: 12345, "unauthorized"),
        ("authorization as bool", lambda c: True, "unauthorized"),
        ("authorization as void", lambda c: None, "unauthorized"),
        ("authorization as table", lambda c: Table([("Token", c.token)]), "unauthorized"),
        ("authorization as array", lambda c: [f"Token {c.token}"], ANY),
        ("authorization empty", lambda c: "", "unauthorized"),
        ("authorization `Token` without value", lambda c: "Token", "unauthorized"),
        ("authorization `Token ` with a space only", lambda c: "Token ", "unauthorized"),
        ("authorization with trailing whitespace", lambda c: f"Token {c.token}  \t", ANY),
        ("authorization with leading whitespace", lambda c: f"  Token {c.token}", ANY),
        ("authorization scheme lowercase", lambda c: f"token {c.token}", ANY),
        ("authorization scheme Bearer", lambda c: f"Bearer {c.token}", "unauthorized"),
        ("authorization without scheme", lambda c: c.token, "unauthorized"),
        ("authorization unknown token", lambda c: "Token " + "f" * 64, "unauthorized"),
        ("authorization token + extra word", lambda c: f"Token {c.token} extra", "unauthorized"),
        ("authorization token with NUL", lambda c: f"Token {c.token}\x00", "unauthorized"),
        ("authorization token uppercased", lambda c: f"Token {c.token.upper()}", "unauthorized"),
        ("authorization with invalid UTF-8", lambda c: lstr(b"Token \xff\xfe"), "unauthorized"),
    ]
    def with_auth(mk):
        def build(c: Ctx):
            if mk is None:
                return {**c.props(), "headers": None}, c.valid_body()
            return c.props(headers=Table([("authorization", mk(c))])), c.valid_body()
        return build

    for label, mk, expect in auth_cases:
        add(label, "auth", expect, with_auth(mk), quick=label in ("authorization as int",))
    for name in ("Authorization", "AUTHORIZATION", "Authorize", "authorize", "AuThOrIzAtIoN"):
        add(f"header name {name}", "auth", CREATED,
            lambda c, n=name: (c.props(headers=Table([(n, f"Token {c.token}")])),
                               c.valid_body()))
    add("header name `authorization ` (trailing space)", "auth", "unauthorized",
        lambda c: (c.props(headers=Table([("authorization ", f"Token {c.token}")])),
                   c.valid_body()))

    # ---- bodies -----------------------------------------------------------------------------
    bodies = [
        ("empty", lambda c: b"", "malformed_json"),
        ("whitespace only", lambda c: b" \n\t ", "malformed_json"),
        ("UTF-8 BOM + JSON", lambda c: b"\xef\xbb\xbf" + c.valid_body(), ANY),
        ("UTF-16 LE with BOM", lambda c: c.valid_body().decode().encode("utf-16"), "malformed_json"),
        ("UTF-16 BE without BOM", lambda c: c.valid_body().decode().encode("utf-16-be"),
         "malformed_json"),
        ("gzip without content_encoding", lambda c: gzip.compress(c.valid_body()), "malformed_json"),
        ("JSON array", lambda c: b"[" + c.valid_body() + b"]", "malformed_json"),
        ("JSON null", lambda c: b"null", "malformed_json"),
        ("JSON string", lambda c: b'"x"', "malformed_json"),
        ("invalid UTF-8 in a string", lambda c: c.valid_body().replace(b'"John"', b'"Jo\xffn"'),
         "malformed_json"),
        ("NUL byte after the object", lambda c: c.valid_body() + b"\x00", "malformed_json"),
        ("two objects", lambda c: c.valid_body() + c.valid_body(), "malformed_json"),
        ("duplicated key", lambda c: c.valid_body()[:-1] + b', "first_name": "Jane"}',
         "malformed_json"),
        ("nesting 33 deep", lambda c: c.valid_body()[:-1] + b', "x": ' + b"[" * 32 + b"]" * 32
         + b"}", "malformed_json"),
        ("nesting 100,000 deep", lambda c: b"[" * 100_000 + b"]" * 100_000, "payload_too_large"),
        ("truncated JSON", lambda c: c.valid_body()[:-5], "malformed_json"),
        ("1e999 income", lambda c: c.valid_body().replace(b"15350", b"1e999"), ANY),
        ("lone surrogate escape", lambda c: json.dumps(c.body(first_name="\ud800")).encode(),
         ANY),
    ]
    for label, mk, expect in bodies:
        add(f"body: {label}", "body", expect, lambda c, mk=mk: (c.props(), mk(c)),
            quick=label in ("empty",))

    # ---- more nesting and frame-size shapes ----------------------------------------------------
    def alternating(depth: int) -> Raw:
        """Arrays and tables alternating, `depth` levels, built without recursion. A level
        encodes as its type octet, a 4-byte length and its content: the next level, preceded
        by an empty field name (one byte) in a table."""
        is_table = [i % 2 == 1 for i in range(depth)]
        size_next = [0] * depth          # encoded size of level i+1 (0 for the innermost)
        size = 0
        for i in range(depth - 1, -1, -1):
            size_next[i] = size
            inner = size + (1 if is_table[i] and i < depth - 1 else 0)
            size = 5 + inner
        parts = []
        for i in range(depth):
            key = b"\x00" if is_table[i] and i < depth - 1 else b""
            parts.append((b"F" if is_table[i] else b"A")
                         + struct.pack(">I", size_next[i] + len(key)) + key)
        return Raw(b"".join(parts))

    add("header arrays and tables alternating 20000 deep", "deep-headers", "invalid_envelope",
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-deep", alternating(20000))])), c.valid_body()))
    add("header nested 5000 deep inside a table with 100 other headers", "deep-headers",
        "invalid_envelope",
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}")] +
                                         [(f"x-{i}", "v") for i in range(50)] +
                                         [("x-deep", Table([("a", [deep_table(5000)])]))] +
                                         [(f"y-{i}", i) for i in range(50)])),
                   c.valid_body()))
    add("authorization header itself nested 5000 deep", "deep-headers", ANY,
        lambda c: (c.props(headers=Table([("authorization", deep_array(5000))])),
                   c.valid_body()))
    add("deep header (5000) and NUL in message_id", "deep-headers", "invalid_envelope",
        lambda c: (c.props(message_id=c.key.encode() + b"\x00",
                           headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-deep", deep_array(5000))])), c.valid_body()),
        match_key=False)
    add("headers filling the header frame (130,000-byte string)", "header-types", CREATED,
        lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-fill", "f" * 130_000)])), c.valid_body()))
    add("message_id invalid UTF-8 and a header nested 20000 deep", "invalid-utf8", PARKED,
        lambda c: (c.props(message_id=b"\xff\xfe" + c.key.encode()[:50],
                           headers=Table([("authorization", f"Token {c.token}"),
                                          ("x-deep", deep_table(20000))])), c.valid_body()),
        match_key=False, parking_last=True)

    # ---- bursts: the hostile input among valid intakes of the same window ---------------------
    bursts = [
        ("message_id with invalid UTF-8", PARKED, True,
         lambda c: (c.props(message_id=b"\xff\xfeA" + c.key.encode()[:40]), c.valid_body())),
        ("header name with invalid UTF-8", PARKED, True,
         lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                           (b"\xff", 1)])), c.valid_body())),
        ("header array nested 20000 deep", "invalid_envelope", False,
         lambda c: (c.props(headers=Table([("authorization", f"Token {c.token}"),
                                           ("x-deep", deep_array(20000))])), c.valid_body())),
        ("NUL in message_id", "invalid_envelope", False,
         lambda c: (c.props(message_id=c.key.encode() + b"\x00"), c.valid_body())),
        ("NUL in a body field name", "validation_failed", False,
         lambda c: (c.props(), json.dumps({**c.body(), "a\u0000": 1}).encode())),
        ("body of 10 MB", "payload_too_large", False, sized(10 * 1024 * 1024)),
        ("SSN as a field name", "validation_failed", False,
         lambda c: (c.props(), json.dumps({**c.body(), c.ssn: "x"}).encode())),
    ]
    for label, expect, parked, build in bursts:
        add(f"burst: {label} among 20 valid intakes", "burst", expect, build,
            companions=20, parking_last=parked,
            match_key=label != "message_id with invalid UTF-8" and "NUL in message_id" != label,
            quick=label in ("header array nested 20000 deep",))

    # Parking inputs last: until the parking chain exists they leave the worker in a loop.
    cases.sort(key=lambda k: k.parking_last)
    return cases


# --------------------------------------------------------------------------------------------
# Running one input
# --------------------------------------------------------------------------------------------

ENV: Env
TAP: Tap
BROKER: Broker


def wait_until(pred, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        TAP.pump(step)
        v = pred()
        if v or time.monotonic() >= deadline:
            return v


def outcome_label(e: Event) -> str:
    if e.routing_key.endswith("created") or e.body.get("type") == "case.created":
        return CREATED
    data = e.body.get("data") or {}
    code = (data.get("error") or {}).get("code") if isinstance(data, dict) else None
    return f"failed:{code}"


def expected_label(expect: str) -> str:
    return expect if expect in (CREATED, PARKED, ANY, REFUSED) else f"failed:{expect}"


def run_case(ctx: Ctx, case: Case, timeouts: dict) -> Result:
    ctx.next_ids(case.name)
    r = Result(case)
    props, body = case.build(ctx)
    rp = RawProperties(props)
    header_size = rp.size() + 12
    if header_size > FRAME_MAX - 8:
        r.failures.append(f"suite bug: header frame of {header_size} bytes exceeds frame_max")
        return r
    key = props.get("message_id")
    corr = props.get("correlation_id")
    r.key = key if case.match_key and isinstance(key, str) else None
    r.corr = corr if case.match_corr and isinstance(corr, str) and corr else None
    parked_before = (BROKER.queue_counts(ENV.parked_queue) or (0, 0))[0]

    def companion(i: int) -> tuple[str, Optional[str]]:
        saved = ctx.key, ctx.corr
        ctx.key, ctx.corr = f"{saved[0]}-c{i:02d}", f"{saved[1]}-c{i:02d}"
        p, b = ctx.props(), ctx.valid_body()
        ctx.key, ctx.corr = saved
        return p["message_id"], BROKER.publish(ENV.intake_queue, b, RawProperties(p))

    companions = [companion(i) for i in range(case.companions // 2)]
    t0 = time.monotonic()
    refused = BROKER.publish(ENV.intake_queue, body, rp)
    companions += [companion(i) for i in range(case.companions // 2, case.companions)]
    for ck, why in companions:
        if why:
            r.failures.append(f"a valid companion intake was refused by the broker: {why}")
    pending = {ck for ck, why in companions if not why}
    # The valid intake right after it.
    ctx_key, ctx_corr = ctx.key, ctx.corr
    f_key, f_corr = ctx_key + "-next", ctx_corr + "-next"
    ctx.key, ctx.corr = f_key, f_corr
    f_props, f_body = ctx.props(), ctx.valid_body()
    ctx.key, ctx.corr = ctx_key, ctx_corr
    tf = time.monotonic()
    f_refused = BROKER.publish(ENV.intake_queue, f_body, RawProperties(f_props))
    if f_refused:
        r.failures.append(f"the valid follow-up intake was refused by the broker: {f_refused}")

    if refused:
        r.refused = refused
        r.outcome = "refused"
        if case.expect == REFUSED:
            pass
        elif case.broker_may_refuse:
            r.notes.append(f"refused by the broker ({refused.split(':')[0]}): "
                           "nothing reached the worker")
        else:
            r.failures.append(f"publish refused by the broker: {refused}")
    elif case.expect == REFUSED:
        r.failures.append("the broker accepted a publish it should refuse")

    # Wait for the outcome (or parking) and for the follow-up's case.created, together.
    outcome_bound = timeouts["park"] if case.expect == PARKED else timeouts["outcome"]
    stall_bound = timeouts["stall"]
    got_outcome_at = None
    parked_at = None
    followup_at = None
    died_at = None
    last_parked_check = 0.0
    matchable = r.key is not None or r.corr is not None
    while True:
        TAP.pump(0.05)
        now = time.monotonic()
        if not refused and got_outcome_at is None and parked_at is None:
            evs = TAP.matching(r.key, r.corr) if matchable else []
            if evs:
                got_outcome_at = evs[0].received
            elif now - last_parked_check > 0.25:
                last_parked_check = now
                c = BROKER.queue_counts(ENV.parked_queue)
                if c and c[0] > parked_before:
                    parked_at = now
        for ck in list(pending):
            if any(outcome_label(e) == CREATED for e in TAP.matching(ck, None)):
                pending.discard(ck)
        if followup_at is None:
            evs = [e for e in TAP.matching(f_key, None) if outcome_label(e) == CREATED]
            if evs:
                followup_at = evs[0].received
        if died_at is None and not ENV.worker_alive():
            died_at = now
        outcome_done = refused or got_outcome_at or parked_at or now - t0 > outcome_bound
        follow_done = (followup_at or f_refused or now - tf > stall_bound) and \
            (not pending or now - tf > stall_bound)
        if outcome_done and follow_done:
            break
        if died_at is not None and now - died_at > 2:
            break
    # A little grace for duplicates, then count.
    TAP.pump(0.3)

    if not refused:
        evs = TAP.matching(r.key, r.corr) if matchable else []
        ids = {e.event_id for e in evs}
        r.events = len(ids)
        labels = sorted({outcome_label(e) for e in evs})
        if parked_at is not None:
            r.outcome = PARKED
            r.outcome_seconds = parked_at - t0
        elif evs:
            r.outcome = ",".join(labels)
            r.outcome_seconds = got_outcome_at - t0
        else:
            r.outcome = "none"
        exp = case.expect
        if exp == PARKED:
            if parked_at is None:
                r.failures.append(f"not parked in {ENV.parked_queue} within {outcome_bound:.0f} s"
                                  + (f" (got {r.outcome})" if evs else ""))
            if evs:
                r.failures.append(f"parked input also produced events: {r.outcome}")
        elif exp == ANY:
            n = r.events + (1 if parked_at is not None else 0)
            if not matchable:
                r.notes.append("nothing to match its outcome by")
            elif n != 1:
                r.failures.append(f"expected exactly one outcome or parking, got {n} "
                                  f"({r.outcome})")
        elif exp != REFUSED:
            want = expected_label(exp)
            if r.outcome != want:
                r.failures.append(f"expected {want}, got {r.outcome}")
            elif r.events != 1:
                r.failures.append(f"expected one event, got {r.events} distinct event ids")

    if pending:
        r.failures.append(f"{len(pending)} of {len(companions)} valid intakes published in the "
                          "same burst got no case.created")
        for ck in pending:
            got = sorted({outcome_label(e) for e in TAP.matching(ck, None)})
            if got:
                r.failures.append(f"a valid companion intake got {','.join(got)}")
                break
    if followup_at is not None:
        r.followup_seconds = followup_at - tf
    elif not f_refused and died_at is not None:
        r.failures.append("the valid intake published right after it got no case.created "
                          "(the worker died)")
    elif not f_refused:
        r.stalled = True
        r.failures.append("the valid intake published right after it got no case.created "
                          f"within {stall_bound:.0f} s")

    # Worker alive, consumer back, healthz.
    if not ENV.worker_alive():
        r.worker_died = True
        r.worker_rc = ENV.worker.returncode if ENV.worker else None
        how = (f"killed by {signal.Signals(-r.worker_rc).name}"
               if r.worker_rc is not None and r.worker_rc < 0 else f"exit status {r.worker_rc}")
        r.failures.append(f"the worker died ({how})")
    else:
        c = None
        # A stalled worker gets a short look only: the stall is already a failure.
        deadline = time.monotonic() + (5.0 if r.stalled else timeouts["consumer"])
        while time.monotonic() < deadline:
            c = BROKER.queue_counts(ENV.intake_queue)
            if c and c[1] > 0:
                break
            TAP.pump(0.2)
        r.consumer_back = bool(c and c[1] > 0)
        if not r.consumer_back:
            r.failures.append("the intake queue has no consumer")
        r.healthz = ENV.healthz()
        if r.healthz != 200:
            r.failures.append(f"GET /healthz answered {r.healthz}")

    if case.extra is not None and not r.worker_died and not refused:
        try:
            r.failures.extend(case.extra(ctx, r))
        except Exception as e:  # a check that cannot run is a failure, not a crash
            r.failures.append(f"check failed to run: {e!r}")
    return r


def reset_environment(reason: str) -> None:
    """After an input left the worker dead, stuck or with messages in flight: stop the worker,
    delete the run's queues (the worker declares them again) and start a fresh worker, so the
    next input is judged on its own."""
    say(f"    reset: {reason}: restarting the worker with empty queues")
    ENV.stop_worker(timeout=15)
    for q in ENV.queues:
        try:
            BROKER.ensure()
            BROKER.admin.queue_delete(q)
        except AMQPError:
            BROKER.admin = None
    ENV.start_worker()
    wait_ready(60)


def wait_ready(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ENV.worker_alive():
            return False
        c = BROKER.queue_counts(ENV.intake_queue)
        if c and c[1] > 0 and ENV.healthz() == 200:
            return True
        TAP.pump(0.2)
    return False


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def random_ssn() -> str:
    area = secrets.choice([a for a in range(101, 900) if a != 666])
    return f"{area:03d}-{secrets.randbelow(98) + 1:02d}-{secrets.randbelow(9998) + 1:04d}"


def provision(env: Env, network: str, county: str) -> dict:
    out = env.cli("provision", "--network", network, "--county", county, timeout=180)
    if out.returncode != 0:
        raise RuntimeError("provision failed: "
                           + mask(out.stderr.decode("utf-8", "replace"))[-2000:])
    text = out.stdout.decode()
    return json.loads(text[text.index("{"):])


def main() -> int:
    global ENV, TAP, BROKER
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="representative subset for CI")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "case-intake"))
    ap.add_argument("--only", help="run only inputs whose name contains this text")
    ap.add_argument("--group", action="append",
                    help="run only inputs of this group (repeatable; see --list)")
    ap.add_argument("--skip-group", action="append", default=[],
                    help="leave out inputs of this group (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the inputs and exit")
    ap.add_argument("--outcome-timeout", type=float, default=None)
    ap.add_argument("--park-timeout", type=float, default=None)
    ap.add_argument("--stall-timeout", type=float, default=None)
    ap.add_argument("--keep", action="store_true", help="keep database and queues (debugging)")
    args = ap.parse_args()

    timeouts = {"outcome": 30.0, "park": 180.0, "stall": 120.0, "consumer": 30.0}
    if args.quick:
        timeouts.update(outcome=20.0, park=60.0, stall=60.0, consumer=15.0)
    for k in ("outcome", "park", "stall"):
        v = getattr(args, f"{k}_timeout")
        if v is not None:
            timeouts[k] = v

    probe = Ctx("x", "t", "t", 1, "123-45-6789", 65536)
    run_id = secrets.token_hex(4)
    workdir = os.path.join(ROOT, "target", "hostile-runs", run_id)
    ENV = Env(binary=args.binary, run_id=run_id, workdir=workdir,
              db_name=f"hostile_{run_id}", intake_queue=f"hostile.{run_id}.intake",
              events_exchange=f"hostile.{run_id}.events", http_port=free_port())
    ENV.read_limits()
    probe.max_body = ENV.max_body_bytes
    cases = build_cases(probe)
    if args.quick:
        cases = [c for c in cases if c.quick]
    if args.only:
        cases = [c for c in cases if args.only.lower() in c.name.lower()]
    if args.group:
        cases = [c for c in cases if c.group in args.group]
    cases = [c for c in cases if c.group not in args.skip_group]
    if args.list:
        for c in cases:
            print(f"{c.group:14} {expected_label(c.expect):30} {c.name}")
        print(f"{len(cases)} inputs")
        return 0
    if not os.access(ENV.binary, os.X_OK):
        say(f"no worker binary at {ENV.binary}: cargo build --release --bin case-intake")
        return 2

    os.makedirs(workdir, exist_ok=True)
    ENV.write_config()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    say(f"hostile suite run {run_id}: {len(cases)} inputs ({'quick' if args.quick else 'full'}),"
        f" database {ENV.db_name}, intake queue {ENV.intake_queue}, events exchange "
        f"{ENV.events_exchange}, http 127.0.0.1:{ENV.http_port}, max_body_bytes "
        f"{ENV.max_body_bytes}; worker log {workdir}/worker.log")

    results: list[Result] = []
    started = time.monotonic()
    BROKER = Broker()
    TAP = None  # type: ignore[assignment]
    exit_code = 1
    try:
        TAP = Tap(ENV.events_exchange, f"hostile.{run_id}.tap")
        # Only `run` and `migrate` create the database; provisioning needs it first.
        migrated = ENV.cli("migrate", timeout=180)
        if migrated.returncode != 0:
            raise RuntimeError("migrate failed: "
                               + mask(migrated.stderr.decode("utf-8", "replace"))[-2000:])
        p1 = provision(ENV, f"hostile-{run_id}", "Kings")
        p2 = provision(ENV, f"hostile-{run_id}-other", "Queens")
        token, token2 = p1["token"], p2["token"]
        SECRETS.extend([(token, "<token>"), (token2, "<token-2>"),
                        (token.upper(), "<TOKEN>")])
        ssn = random_ssn()
        SECRETS.append((ssn, "<ssn>"))
        SECRETS.append((ssn.replace("-", ""), "<ssn-digits>"))
        ctx = Ctx(run_id, token, token2, p1["county_ids"][0], ssn, ENV.max_body_bytes)
        ENV.start_worker()
        if not wait_ready(90):
            say("the worker did not become ready (consumer on the intake queue, /healthz 200)"
                f" within 90 s; see {workdir}/worker.log")
            return 1
        for i, case in enumerate(cases, 1):
            r = run_case(ctx, case, timeouts)
            results.append(r)
            status = "PASS" if r.ok else "FAIL"
            t = f"{r.outcome_seconds:.2f}s" if r.outcome_seconds is not None else "-"
            say(f"[{i:3}/{len(cases)}] {status} {case.name}: expected "
                f"{expected_label(case.expect)}, got {r.outcome} in {t}"
                + (f"; follow-up created in {r.followup_seconds:.2f}s"
                   if r.followup_seconds is not None else ""))
            for n in r.notes:
                say(f"      note: {n}")
            for f in r.failures:
                say(f"      FAIL: {f}")
            needs_reset = (r.worker_died or r.stalled or r.consumer_back is False
                           or (r.outcome == "none" and not r.refused))
            if needs_reset and i < len(cases):
                reset_environment("worker died" if r.worker_died else
                                  "stalled" if r.stalled else
                                  "no consumer" if r.consumer_back is False else
                                  "input left without outcome")
        exit_code = summarize(results, time.monotonic() - started, args.quick)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump([{"name": r.case.name, "group": r.case.group,
                        "expected": expected_label(r.case.expect), "outcome": r.outcome,
                        "seconds": r.outcome_seconds, "followup_seconds": r.followup_seconds,
                        "worker_died": r.worker_died, "stalled": r.stalled,
                        "failures": [mask(x) for x in r.failures],
                        "notes": [mask(x) for x in r.notes]} for r in results], f, indent=1)
        return exit_code
    finally:
        cleanup(args.keep)


def summarize(results: list[Result], elapsed: float, quick: bool) -> int:
    failed = [r for r in results if not r.ok]
    deaths = sum(r.worker_died for r in results)
    stalls = sum(r.stalled for r in results)
    lost = sum(1 for r in results if r.outcome == "none")
    timed = [r for r in results if r.outcome_seconds is not None]
    longest = max(timed, key=lambda r: r.outcome_seconds, default=None)
    say("")
    say("=" * 78)
    say(f"hostile suite ({'quick' if quick else 'full'}) finished in {elapsed:.0f} s")
    say(f"inputs tried:                      {len(results)}")
    say(f"passed / failed:                   {len(results) - len(failed)} / {len(failed)}")
    say(f"worker deaths:                     {deaths}")
    say(f"stalls (valid intake not created): {stalls}")
    say(f"neither outcome nor parking:       {lost}")
    say(f"refused by the broker:             {sum(1 for r in results if r.refused)}")
    if longest is not None:
        say(f"longest publish -> outcome/parking: {longest.outcome_seconds:.2f} s "
            f"({longest.case.name})")
    if failed:
        say("failed inputs:")
        for r in failed:
            say(f"  - {r.case.name}: " + "; ".join(r.failures))
    say("=" * 78)
    return 1 if failed else 0


def cleanup(keep: bool) -> None:
    try:
        rc = ENV.stop_worker()
        if rc is not None:
            say(f"worker stopped with SIGTERM (exit status {rc})")
    except Exception as e:
        say(f"cleanup: stopping the worker failed: {e!r}")
    if ENV.worker_log is not None:
        ENV.worker_log.close()
    if keep:
        say("--keep: database and queues left in place")
        return
    try:
        if TAP is not None:
            TAP.close()
    except Exception:
        pass
    try:
        conn = pika.BlockingConnection(PARAMS)
        for q in ENV.queues + [f"hostile.{ENV.run_id}.tap"]:
            ch = conn.channel()
            try:
                ch.queue_delete(q)
                ch.close()
            except AMQPChannelError:
                pass
        ch = conn.channel()
        ch.exchange_delete(ENV.events_exchange)
        conn.close()
    except Exception as e:
        say(f"cleanup: deleting queues failed: {e!r}")
    try:
        psql("postgres", f'DROP DATABASE IF EXISTS "{ENV.db_name}" WITH (FORCE)')
    except Exception as e:
        say(f"cleanup: dropping the database failed: {e!r}")
    try:
        BROKER.close()
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
