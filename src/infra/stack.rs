//! Thread stack sizes the process needs to survive hostile AMQP headers.
//!
//! amq-protocol 10.6 (lapin 4.12) parses header field values recursively, with no depth limit,
//! on lapin's `lapin-io-loop` thread, which lapin spawns with the standard library's default
//! stack (2 MiB): a header nested about 2,500 deep overflowed it and aborted the process, and
//! the redelivered message did so again after every restart. The parser cannot be configured,
//! so the depth it may meet is bounded instead: a header frame is at most `frame_max` bytes
//! (pinned to [`FRAME_MAX`] on every connection), and one level of nesting costs at least 5
//! bytes, so no header nests deeper than [`MAX_FRAME_DEPTH`]. The io thread gets a stack that
//! holds that depth with room to spare ([`IO_THREAD_STACK_BYTES`], set through
//! `RUST_MIN_STACK` by the binary before any thread starts, as lapin does not take a stack
//! size), and the runtime's threads, where a delivery's headers are dropped (recursively,
//! too), get [`RUNTIME_THREAD_STACK_BYTES`]. Stacks are reserved, not committed: only the
//! pages a deep header touches count as memory. The service itself refuses any header deeper
//! than 16 levels (`intake::delivery`) before it walks one.

/// The largest frame the service negotiates (RabbitMQ's default `frame_max`).
pub const FRAME_MAX: u32 = 131_072;

/// The deepest header value a frame of [`FRAME_MAX`] bytes can hold: each level of an array
/// costs a type byte and a 4-byte length.
pub const MAX_FRAME_DEPTH: usize = FRAME_MAX as usize / 5;

/// Stack of lapin's io thread. Measured on x86_64 (tests below parse the deepest frame): about
/// 1.9 KB per level in release builds (48 MiB held 26,200 levels), about 16 KB in debug
/// builds; twice the need in release, and enough for tests in debug.
pub const IO_THREAD_STACK_BYTES: usize = if cfg!(debug_assertions) {
    640 << 20
} else {
    96 << 20
};

/// Stack of the runtime's threads, where deliveries are dropped: about 80 bytes per level in
/// release builds and 300 in debug ones for the deepest header.
pub const RUNTIME_THREAD_STACK_BYTES: usize = 32 << 20;
