//! The `healthcheck` command's probe: one HTTP GET of the worker's own `/readyz` (or
//! `/healthz`) at `http.address`, bounded by a short timeout, for container health checks in
//! images that have no HTTP client. A tiny HTTP/1.1 request over a TCP stream: only the status
//! line of the answer is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Why the worker is not healthy (or could not be asked).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("http.address is empty: the worker serves no probes")]
    NoAddress,
    #[error("http.address {0:?} is not host:port")]
    BadAddress(String),
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("cannot ask {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0} answered {1:?}")]
    Unhealthy(String, String),
}

/// Where to connect for a listening address: a wildcard address (`0.0.0.0`, `::`) is reached
/// on the loopback of the same family.
pub fn probe_address(http_address: &str) -> Result<SocketAddr, HealthError> {
    if http_address.is_empty() {
        return Err(HealthError::NoAddress);
    }
    let mut addr: SocketAddr = http_address
        .parse()
        .map_err(|_| HealthError::BadAddress(http_address.to_owned()))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// GETs `path` on the worker listening at `http_address`; Ok when it answers 200 within
/// `timeout`.
pub async fn check(http_address: &str, path: &str, timeout: Duration) -> Result<(), HealthError> {
    let addr = probe_address(http_address)?;
    let status = tokio::time::timeout(timeout, status_line(addr, path))
        .await
        .map_err(|_| HealthError::Timeout(addr, timeout))?
        .map_err(|e| HealthError::Io(addr, e))?;
    let code = status.split_whitespace().nth(1);
    if status.starts_with("HTTP/1.") && code == Some("200") {
        Ok(())
    } else {
        Err(HealthError::Unhealthy(path.to_owned(), status))
    }
}

/// Sends the request and reads the first line of the answer, without its line ending.
async fn status_line(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut line = String::new();
    // A status line is short; a peer sending more without a line end is not the worker.
    let mut reader = BufReader::new(stream.take(256));
    reader.read_line(&mut line).await?;
    Ok(line.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_asked_on_the_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:9090").unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::]:9090").unwrap(),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            probe_address("10.1.2.3:80").unwrap(),
            "10.1.2.3:80".parse().unwrap()
        );
        assert!(matches!(probe_address(""), Err(HealthError::NoAddress)));
        assert!(matches!(
            probe_address("x"),
            Err(HealthError::BadAddress(_))
        ));
    }
}
