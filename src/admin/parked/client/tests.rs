//! The unit tests of `admin::parked::client`, kept beside it so that the module reads as its rules.

use super::*;
use tokio::net::TcpListener;

/// A fake broker: reads the protocol header, writes `reply`, then keeps the socket open
/// without a word more.
async fn fake_broker(reply: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        let _ = sock.read_exact(&mut header).await;
        let _ = sock.write_all(&reply).await;
        let mut sink = [0u8; 1024];
        while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test]
async fn a_silent_broker_times_out() {
    let url = fake_broker(Vec::new()).await;
    let e = Client::connect(&url, Duration::from_millis(300))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClientError::Timeout(..)), "{e}");
}

#[tokio::test]
async fn hostile_brokers_are_protocol_errors() {
    // An HTTP server, a frame claiming 4 GiB, a frame without its end octet, a method
    // whose arguments are cut short.
    let mut huge = vec![wire::FRAME_METHOD, 0, 0];
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut no_end = Vec::new();
    wire::encode_frame(&mut no_end, wire::FRAME_METHOD, 0, &[0, 10, 0, 10]);
    *no_end.last_mut().unwrap() = 0;
    let mut short = Vec::new();
    wire::encode_frame(
        &mut short,
        wire::FRAME_METHOD,
        0,
        &[0, 10, 0, 10, 0, 9, 0, 0],
    );
    for reply in [
        b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        huge,
        no_end,
        short,
    ] {
        let url = fake_broker(reply).await;
        let e = Client::connect(&url, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
    }
}

#[test]
fn urls() {
    let t = parse_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
    assert_eq!(t.host, "127.0.0.1");
    assert_eq!(t.port, 5672);
    assert_eq!(
        (t.user.as_slice(), t.password.as_slice()),
        (&b"guest"[..], &b"guest"[..])
    );
    assert_eq!(t.vhost, b"/");
    let t = parse_url("amqp://u%40x:p%3Aw@[::1]:5673/prod%20a?heartbeat=10").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("::1", 5673));
    assert_eq!(
        (t.user.as_slice(), t.password.as_slice()),
        (&b"u@x"[..], &b"p:w"[..])
    );
    assert_eq!(t.vhost, b"prod a");
    let t = parse_url("amqp://rabbit").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.vhost.as_slice()),
        ("rabbit", 5672, &b"/"[..])
    );
    assert!(matches!(
        parse_url("amqps://h/"),
        Err(ClientError::TlsUnsupported)
    ));
    assert!(parse_url("http://h/").is_err());
    assert!(parse_url("amqp://h:port/").is_err());
    let e = parse_url("amqp://u:secret@h/%zz").unwrap_err().to_string();
    assert!(!e.contains("secret"));
}
