//! Turns on `TCP_NODELAY` for the process's PostgreSQL sockets, which sqlx 0.9.0 no longer does.
//!
//! Without it, every statement whose bind message spans more than one TCP segment (the window's
//! set-based `INSERT`s bind arrays of hundreds of rows) waits for the server's delayed ACK
//! (~40 ms on Linux) before its last segment leaves: Nagle's algorithm. Upstream this is
//! transact-rs/sqlx#4335, fixed by transact-rs/sqlx#4336 but not in a release yet; sqlx offers no
//! hook to reach its socket, so after each new connection we look the socket up among the
//! process's file descriptors by its peer port. Remove this module once a sqlx release sets
//! `TCP_NODELAY` itself (docs/benchmarks.md measures the difference).
#![allow(unsafe_code)]

/// Sets `TCP_NODELAY` on every connected TCP socket of this process whose peer port is `port`
/// and which does not have it yet; returns how many it changed. Setting it on a socket that
/// is not sqlx's (another client of the same port) is harmless: it only sends small writes
/// sooner.
pub fn apply(port: u16) -> usize {
    let mut changed = 0;
    each_tcp_socket_to(port, |socket| {
        if socket.tcp_nodelay().is_ok_and(|on| !on) && socket.set_tcp_nodelay(true).is_ok() {
            changed += 1;
        }
    });
    changed
}

/// How many connected TCP sockets of this process to `port` have `TCP_NODELAY`, and how many
/// lack it: `(with, without)` (a check for tests and diagnostics).
pub fn census(port: u16) -> (usize, usize) {
    let (mut with, mut without) = (0, 0);
    each_tcp_socket_to(port, |socket| match socket.tcp_nodelay() {
        Ok(true) => with += 1,
        Ok(false) => without += 1,
        Err(_) => {}
    });
    (with, without)
}

#[cfg(target_os = "linux")]
fn each_tcp_socket_to(port: u16, mut visit: impl FnMut(socket2::SockRef<'_>)) {
    use std::os::fd::{BorrowedFd, RawFd};

    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        // Only sockets: their link reads `socket:[inode]`; files and pipes are skipped cheaply.
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:")
        });
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor was open when listed. Another thread may close it meanwhile;
        // then the calls below fail with EBADF, or reach whatever reused the number, and they
        // only read socket options and set TCP_NODELAY on a TCP socket of the same peer port.
        // The borrow never closes the descriptor.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let to_port = socket
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .is_some_and(|addr| addr.port() == port);
        if to_port && socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM) {
            visit(socket);
        }
    }
}

/// Elsewhere there is no `/proc/self/fd` to look in: nothing is visited.
#[cfg(not(target_os = "linux"))]
fn each_tcp_socket_to(_port: u16, _visit: impl FnMut(socket2::SockRef<'_>)) {}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    #[test]
    #[cfg(target_os = "linux")]
    fn sets_nodelay_on_sockets_to_the_port_only() {
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let to_target = TcpStream::connect(target.local_addr().unwrap()).unwrap();
        let to_other = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_target.nodelay().unwrap());
        assert_eq!(super::census(target.local_addr().unwrap().port()), (0, 1));

        let changed = super::apply(target.local_addr().unwrap().port());

        assert!(changed >= 1);
        assert!(to_target.nodelay().unwrap());
        assert!(!to_other.nodelay().unwrap());
        assert_eq!(super::census(target.local_addr().unwrap().port()), (1, 0));
        assert_eq!(super::census(other.local_addr().unwrap().port()), (0, 1));
    }
}
