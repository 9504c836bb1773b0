//! Broker endpoints: the two forms of the setting (`amqp.url`, `amqp.urls`, the environment's
//! comma-separated list), what is refused, and the connect that walks past endpoints that
//! refuse or never answer to one that works (real sockets and the local broker).

use std::time::Duration;

use case_intake::infra::endpoints::{self, Endpoint, first_reachable};
use case_intake::infra::settings::Settings;
use case_intake_harness::broker::LOCAL_BROKER;
use secrecy::ExposeSecret;

fn load(toml: &str) -> Result<Settings, String> {
    load_with(toml, &[])
}

/// Loads `toml` as the settings file with `env` as the whole environment: the tests share one
/// process, so none of them changes its real environment.
fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
    let dir = std::env::temp_dir().join(format!(
        "case-intake-endpoints-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("endpoints.toml");
    std::fs::write(&file, toml).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let loaded = Settings::load_with_env(Some(&file), Some(&env)).map_err(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    loaded
}

fn urls(s: &Settings) -> Vec<String> {
    s.amqp
        .endpoint_urls()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn url_alone_is_the_one_endpoint_form() {
    let s = load("[amqp]\nurl = \"amqp://u:p@one:5672/%2f\"\n").unwrap();
    assert_eq!(urls(&s), ["amqp://u:p@one:5672/%2f"]);
    let s = load("").unwrap();
    assert_eq!(urls(&s), [LOCAL_BROKER]);
}

#[test]
fn urls_lists_every_endpoint() {
    let s =
        load("[amqp]\nurls = [\"amqp://u:p@a:5672/%2f\", \"amqp://u:p@b:5673/%2f\"]\n").unwrap();
    assert_eq!(urls(&s), ["amqp://u:p@a:5672/%2f", "amqp://u:p@b:5673/%2f"]);
    // Each gets the session parameters of the single-URL form.
    for u in s.amqp.connection_urls() {
        assert!(
            u.contains("heartbeat=10") && u.contains("frame_max="),
            "{u}"
        );
    }
}

#[test]
fn the_environment_form_is_a_comma_separated_list() {
    let env = [(
        "CASE_INTAKE__AMQP__URLS",
        "amqp://u:p@a:5672/%2f, amqp://u:p@b:5672/%2f,amqp://u:p@c:5672/%2f",
    )];
    let loaded = load_with("", &env);
    let both = load_with("[amqp]\nurl = \"amqp://u:p@one:5672/%2f\"\n", &env);
    assert_eq!(
        urls(&loaded.unwrap()),
        [
            "amqp://u:p@a:5672/%2f",
            "amqp://u:p@b:5672/%2f",
            "amqp://u:p@c:5672/%2f"
        ]
    );
    let err = both.unwrap_err();
    assert!(
        err.contains("amqp.url") && err.contains("amqp.urls"),
        "{err}"
    );
}

#[test]
fn both_forms_together_are_refused_naming_both_keys() {
    let err =
        load("[amqp]\nurl = \"amqp://u:p@one/%2f\"\nurls = [\"amqp://u:p@a/%2f\"]\n").unwrap_err();
    assert!(
        err.contains("amqp.url (or amqp.url_file) and amqp.urls are both set"),
        "{err}"
    );
}

#[test]
fn an_empty_list_is_refused() {
    for toml in [
        "[amqp]\nurls = []\n",
        "[amqp]\nurls = \"\"\n",
        "[amqp]\nurls = \" , \"\n",
    ] {
        let err = load(toml).unwrap_err();
        assert!(
            err.contains("amqp.urls must list at least one endpoint"),
            "{toml}: {err}"
        );
    }
}

#[test]
fn a_bad_url_in_the_list_is_refused_without_echoing_it() {
    let err = load("[amqp]\nurls = [\"amqp://u:p@a/%2f\", \"http://u:hunter2@b\"]\n").unwrap_err();
    assert!(
        err.contains("amqp.urls must start with amqp:// or amqps://"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let err = load("[amqp]\nurls = [\"amqp://u:p@a/%2f?frame_max=999999999\"]\n").unwrap_err();
    assert!(err.contains("amqp.urls frame_max must be between"), "{err}");
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn local_url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test]
async fn a_refused_endpoint_is_passed_over_for_the_next() {
    let order = [
        Endpoint::new(&local_url(closed_port())),
        Endpoint::new(LOCAL_BROKER),
    ];
    let (conn, on) = first_reachable(&order, Duration::from_secs(5), |e| async move {
        lapin::Connection::connect(e.url(), Default::default()).await
    })
    .await
    .unwrap();
    assert_eq!(on.label(), "127.0.0.1:5672/%2f");
    assert!(conn.status().connected());
    conn.close(200, "OK".into()).await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_never_answers_is_given_up_after_its_timeout() {
    // Accepts TCP (the kernel's backlog) but never speaks AMQP: only the per-endpoint bound
    // gets the connect past it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut s = load("").unwrap();
    s.amqp.urls = Some(vec![
        local_url(port).into(),
        local_url(closed_port()).into(),
        LOCAL_BROKER.to_owned().into(),
    ]);
    s.amqp.endpoint_timeout_ms = 500;
    // The order is shuffled on every connect; whichever comes first, the broker is reached.
    for _ in 0..4 {
        let (conn, on) = endpoints::connect(&s.amqp, "endpoints test").await.unwrap();
        assert_eq!(on.label(), "127.0.0.1:5672/%2f");
        conn.close(200, "OK".into()).await.unwrap();
    }
    drop(silent);
}

#[tokio::test]
async fn no_reachable_endpoint_is_an_error_naming_the_last_without_credentials() {
    let mut s = load("").unwrap();
    s.amqp.urls = Some(vec![
        local_url(closed_port()).into(),
        local_url(closed_port()).into(),
    ]);
    let err = endpoints::connect(&s.amqp, "endpoints test")
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no broker endpoint answered"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");
    assert!(s.amqp.url.expose_secret().contains("guest"));
}
