//! Checks every file of deploy/ against the service's real defaults: queue and exchange names,
//! the intake queue arguments, `CASE_INTAKE__*` variable names and values, the config file of
//! the ConfigMap, probes, ports, shutdown timing, encryption keys, and the wiring between the
//! manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use case_intake::infra::settings::{ENV_PREFIX, Settings};
use case_intake::outbox::topology;
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use serde_json::{Value, json};

/// The built-in defaults, as the binary compiles them in.
const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Where the workers' HTTP server listens when `http.address` is not configured.
const DEFAULT_HTTP_PORT: u16 = 9090;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, as JSON values (aliases resolved).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(path: &str) -> Value {
    let mut docs = yaml_documents(&deploy().join(path));
    assert_eq!(docs.len(), 1, "{path} should hold one document");
    docs.remove(0)
}

fn json_file(path: &str) -> Value {
    let full = deploy().join(path);
    serde_json::from_str(&read(&full)).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The Kubernetes object of `kind` among the YAML documents of deploy/k8s/.
fn k8s(kind: &str) -> Value {
    let mut found = Vec::new();
    for path in files_under(&deploy().join("k8s")) {
        for doc in yaml_documents(&path) {
            if doc["kind"] == kind {
                found.push(doc);
            }
        }
    }
    assert_eq!(found.len(), 1, "exactly one {kind} in deploy/k8s");
    found.remove(0)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn defaults() -> Settings {
    Settings::load(None).expect("the built-in defaults load")
}

/// config/default.toml as a JSON tree: section → key → value.
fn default_table() -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .expect("config/default.toml parses")
}

/// The settings a process gets from the defaults, an optional TOML file and its environment,
/// built the way `Settings::load` builds them.
fn effective_settings(file: Option<&str>, env: &BTreeMap<String, String>) -> Settings {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
    if let Some(text) = file {
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    let vars: config::Map<String, String> =
        env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    builder
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        )
        .build()
        .and_then(|c| c.try_deserialize::<Settings>())
        .unwrap_or_else(|e| panic!("settings from {env:?}: {e}"))
}

/// Asserts that a `CASE_INTAKE__SECTION__KEY` name addresses a key of config/default.toml.
fn assert_config_key(name: &str, table: &Value, origin: &str) {
    let prefix = format!("{ENV_PREFIX}__");
    let path = name
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{origin}: {name} lacks the {prefix} prefix"));
    let mut node = table;
    for part in path.split("__") {
        assert_eq!(
            part,
            part.to_ascii_uppercase(),
            "{origin}: {name} should be upper case"
        );
        node = node
            .get(part.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("{origin}: {name} names no key of config/default.toml"));
    }
    assert!(
        !node.is_object(),
        "{origin}: {name} names a section, not a key"
    );
}

/// The broker's JSON form of a lapin argument table.
fn field_table_json(table: &FieldTable) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in table.inner() {
        let v = match value {
            AMQPValue::LongString(s) => {
                Value::String(String::from_utf8(s.as_bytes().to_vec()).expect("UTF-8 argument"))
            }
            AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
            AMQPValue::LongLongInt(i) => json!(*i),
            AMQPValue::LongInt(i) => json!(*i),
            AMQPValue::LongUInt(i) => json!(*i),
            AMQPValue::ShortInt(i) => json!(*i),
            AMQPValue::Boolean(b) => json!(*b),
            other => panic!("argument {name} has a type definitions cannot express: {other:?}"),
        };
        out.insert(name.as_str().to_owned(), v);
    }
    Value::Object(out)
}

/// `name=value` list or `name: value` map, as compose allows for `environment`.
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let s = i.as_str().expect("environment entries are strings");
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment should be a list or a map: {other}"),
    }
}

/// The environment of a Kubernetes container, with secret references resolved through
/// secret.example.yaml.
fn container_env(container: &Value, secret: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = var.get("value") {
            v.as_str()
                .expect("env values are strings (quote them)")
                .to_owned()
        } else {
            let r = &var["valueFrom"]["secretKeyRef"];
            assert_eq!(
                r["name"], secret["metadata"]["name"],
                "{name} comes from the Secret"
            );
            let key = r["key"].as_str().expect("secret key");
            secret["stringData"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: secret.example.yaml has no {key}"))
                .to_owned()
        };
        out.insert(name, value);
    }
    out
}

/// Seconds of a compose duration such as `45s` or `1m30s`.
fn compose_seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let n: u64 = number.parse().expect("a number before the unit");
            number.clear();
            total += match c {
                'h' => n * 3600,
                'm' => n * 60,
                's' => n,
                _ => panic!("unsupported duration unit in {text}"),
            };
        }
    }
    assert!(number.is_empty(), "{text} lacks a unit");
    total
}

/// The port the workers' HTTP server listens on, per config/default.toml when it has one.
fn http_port() -> u16 {
    match default_table()["http"]["address"].as_str() {
        Some(address) => address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("http.address {address} has no port")),
        None => DEFAULT_HTTP_PORT,
    }
}

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn containers(deployment: &Value) -> Vec<&Value> {
    let spec = pod_spec(deployment);
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .collect()
}

fn worker_container(deployment: &Value) -> &Value {
    let list = pod_spec(deployment)["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(list.len(), 1, "one container per worker pod");
    &list[0]
}

/// The container port a probe targets, resolving a named port.
fn probe_port(container: &Value, probe: &str) -> u64 {
    let port = &container[probe]["httpGet"]["port"];
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("{probe} has a port"));
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("{probe}: no container port named {name}"))
}

/// The TOML of the ConfigMap, and the path it is mounted at in the worker.
fn configmap_toml() -> (String, String) {
    let cm = k8s("ConfigMap");
    let data = cm["data"].as_object().expect("ConfigMap data");
    assert_eq!(data.len(), 1, "the ConfigMap holds one config file");
    let (file, text) = data.iter().next().unwrap();
    (file.clone(), text.as_str().expect("file text").to_owned())
}

/// The message TTL of the retry queue in the definitions: the `amqp.retry_delay_ms` that every
/// deployment which imports them must run with.
fn definitions_retry_delay_ms() -> u64 {
    let retry = topology::retry_queue(&defaults().amqp.intake_queue);
    json_file("rabbitmq/definitions.json")["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == retry.as_str())
        .and_then(|q| q["arguments"]["x-message-ttl"].as_u64())
        .expect("the retry queue has a message TTL")
}

/// The replicas the definitions give the intake queue: the `amqp.quorum_initial_group_size`
/// every deployment which imports them must run with (a worker that declares the queues
/// itself, e.g. after a broker reset, sizes them the same).
fn definitions_group_size() -> u16 {
    let intake = defaults().amqp.intake_queue;
    json_file("rabbitmq/definitions.json")["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == intake.as_str())
        .and_then(|q| q["arguments"]["x-quorum-initial-group-size"].as_u64())
        .expect("the intake queue has an initial group size") as u16
}

/// The uid the image runs as, from the Dockerfile's last USER line.
fn dockerfile_uid() -> u64 {
    let text = read(&deploy().join("Dockerfile"));
    let user = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile sets a USER");
    let uid = user.split(':').next().unwrap().trim();
    uid.parse()
        .unwrap_or_else(|_| panic!("USER {user} should be numeric for runAsNonRoot"))
}

/// A numeric setting of deploy/rabbitmq/rabbitmq.conf.
fn broker_conf(key: &str) -> u64 {
    read(&deploy().join("rabbitmq/rabbitmq.conf"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("rabbitmq.conf sets {key} as a number"))
}

/// A Kubernetes quantity in Mi or Gi, in bytes.
fn mebibytes(quantity: &str) -> u64 {
    if let Some(n) = quantity.strip_suffix("Mi") {
        n.parse::<u64>().unwrap() << 20
    } else if let Some(n) = quantity.strip_suffix("Gi") {
        n.parse::<u64>().unwrap() << 30
    } else {
        panic!("{quantity}: a memory quantity in Mi or Gi")
    }
}

#[test]
fn the_broker_config_bounds_messages_and_frames_as_the_service_needs() {
    let settings = defaults();
    let compose = read(&deploy().join("compose.yaml"));
    assert!(compose.contains("./rabbitmq/rabbitmq.conf:/etc/rabbitmq/conf.d/"));
    // Bodies a little over the service's limit reach it and get a payload_too_large outcome.
    assert!(broker_conf("max_message_size") > settings.intake.max_body_bytes as u64);
    // The frames the io thread's stack is sized for.
    assert_eq!(
        broker_conf("frame_max"),
        u64::from(case_intake::infra::stack::FRAME_MAX)
    );
}

#[test]
fn every_file_in_deploy_parses() {
    let files = files_under(&deploy());
    assert!(!files.is_empty());
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                let docs = yaml_documents(&path);
                assert!(!docs.is_empty(), "{name} is empty");
                for doc in &docs {
                    assert!(doc.is_object(), "{name}: a document is not a mapping");
                }
            }
            Some("json") => {
                serde_json::from_str::<Value>(&read(&path))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            Some("conf") => {
                let text = read(&path);
                let settings: Vec<_> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect();
                assert!(!settings.is_empty(), "{name} sets nothing");
                for line in settings {
                    let (key, value) = line
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{name}: `{line}` is not key = value"));
                    assert!(
                        !key.trim().is_empty() && !value.trim().is_empty(),
                        "{name}: {line}"
                    );
                }
            }
            Some("dockerignore") => assert!(read(&path).lines().any(|l| l.trim() == "target")),
            _ if name == "Dockerfile" => {}
            _ => panic!("{name}: a file type this test does not check; add a check for it"),
        }
    }
}

/// The bindings of the definitions file: in this project, only queues bound to the events
/// exchange (the service publishes its own queues through the default exchange).
fn events_bindings(defs: &Value) -> &Vec<Value> {
    defs["bindings"].as_array().expect("bindings")
}

/// The queues of the definitions file, by name.
fn queues_by_name(defs: &Value) -> BTreeMap<&str, &Value> {
    defs["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| (q["name"].as_str().expect("queue name"), q))
        .collect()
}

/// Whether an AMQP topic binding key matches a routing key, word by word: `*` stands for one
/// word, `#` for zero or more.
fn topic_matches(pattern: &[&str], key: &[&str]) -> bool {
    match (pattern.split_first(), key.split_first()) {
        (None, None) => true,
        (Some((&"#", rest)), _) => {
            topic_matches(rest, key) || (!key.is_empty() && topic_matches(pattern, &key[1..]))
        }
        (Some((word, rest)), Some((first, tail))) => {
            (*word == "*" || word == first) && topic_matches(rest, tail)
        }
        _ => false,
    }
}

#[test]
fn definitions_declare_exactly_the_service_topology() {
    let settings = defaults();
    let intake = settings.amqp.intake_queue.as_str();
    let dead = topology::dead_letter_queue(intake);
    let retry = topology::retry_queue(intake);
    let parked = topology::parked_queue(intake);
    let defs = json_file("rabbitmq/definitions.json");

    let vhosts: Vec<&str> = defs["vhosts"]
        .as_array()
        .expect("vhosts")
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vhosts, ["/"]);

    let queues = queues_by_name(&defs);
    let names: BTreeSet<&str> = queues.keys().copied().collect();
    let service = BTreeSet::from([intake, dead.as_str(), retry.as_str(), parked.as_str()]);
    let events: BTreeSet<&str> = events_bindings(&defs)
        .iter()
        .map(|b| b["destination"].as_str().expect("binding destination"))
        .collect();
    assert!(
        service.is_disjoint(&events),
        "a queue bound to the events exchange is none of the service's own queues"
    );
    assert_eq!(
        names,
        &service | &events,
        "every queue is the service's own or an events queue bound to the events exchange"
    );
    for q in queues.values() {
        assert_eq!(q["vhost"], "/", "{q}");
        assert_eq!(q["durable"], true, "{q}");
        assert_eq!(q["auto_delete"], false, "{q}");
    }
    let group = settings.amqp.quorum_initial_group_size;
    assert_eq!(
        queues[intake]["arguments"],
        field_table_json(&topology::intake_queue_arguments(intake, group)),
        "the intake queue's arguments must equal topology::intake_queue_arguments"
    );
    assert_eq!(
        queues[intake]["arguments"]["x-delivery-limit"],
        json!(topology::DELIVERY_LIMIT)
    );
    assert_eq!(
        queues[dead.as_str()]["arguments"],
        field_table_json(&topology::dead_letter_queue_arguments(intake, group)),
        "the dead-letter queue's arguments must equal topology::dead_letter_queue_arguments"
    );
    assert_eq!(
        queues[parked.as_str()]["arguments"],
        field_table_json(&topology::quorum(group)),
        "the parked queue's arguments must equal topology::quorum"
    );
    // Replicated on every node of a three-node cluster, and the setting's default agrees.
    assert_eq!(group, 3);
    for q in queues.values() {
        assert_eq!(q["arguments"]["x-quorum-initial-group-size"], 3, "{q}");
    }
    assert_eq!(
        queues[retry.as_str()]["arguments"],
        field_table_json(&topology::retry_queue_arguments(
            intake,
            settings.amqp.retry_delay_ms,
            group
        )),
        "the retry queue's arguments must equal topology::retry_queue_arguments"
    );

    let exchanges = defs["exchanges"].as_array().expect("exchanges");
    assert_eq!(exchanges.len(), 1);
    let ex = &exchanges[0];
    assert_eq!(ex["name"], settings.amqp.events_exchange.as_str());
    assert_eq!(ex["vhost"], "/");
    assert_eq!(ex["type"], "topic");
    assert_eq!(ex["durable"], true);
    assert_eq!(ex["auto_delete"], false);
    assert_eq!(ex["internal"], false);
}

/// deploy/rabbitmq shows how to receive the events: a queue bound to the events exchange that
/// gets both outcome events (without one, the relay keeps retrying unroutable events).
#[test]
fn definitions_bind_an_events_queue_that_receives_every_event() {
    let amqp = defaults().amqp;
    let defs = json_file("rabbitmq/definitions.json");
    let queues = queues_by_name(&defs);
    let bindings = events_bindings(&defs);
    assert!(!bindings.is_empty(), "the definitions bind an events queue");
    for b in bindings {
        assert_eq!(b["source"], amqp.events_exchange.as_str(), "{b}");
        assert_eq!(b["vhost"], "/", "{b}");
        assert_eq!(b["destination_type"], "queue", "{b}");
        let queue = queues
            .get(b["destination"].as_str().expect("binding destination"))
            .unwrap_or_else(|| panic!("{b} binds a queue the definitions do not declare"));
        assert_eq!(queue["arguments"]["x-queue-type"], "quorum", "{queue}");
    }
    for key in [&amqp.created_routing_key, &amqp.failed_routing_key] {
        let words: Vec<&str> = key.split('.').collect();
        assert!(
            bindings.iter().any(|b| {
                let pattern: Vec<&str> = b["routing_key"].as_str().unwrap().split('.').collect();
                topic_matches(&pattern, &words)
            }),
            "no events queue receives {key}"
        );
    }
    // The matcher itself: a key that names other events must not count as a binding for these.
    assert!(!topic_matches(&["case", "created"], &["case", "failed"]));
    assert!(!topic_matches(&["*"], &["case", "created"]));
    assert!(topic_matches(&["case", "#"], &["case", "created"]));
}

#[test]
fn every_case_intake_variable_names_a_config_key_and_parses() {
    let table = default_table();
    let secret = k8s("Secret");
    let mut checked = 0;

    let compose = yaml("compose.yaml");
    for (name, service) in compose["services"].as_object().expect("services") {
        let env = compose_env(service);
        for var in env
            .keys()
            .filter(|k| k.starts_with(&format!("{ENV_PREFIX}__")))
        {
            assert_config_key(var, &table, &format!("compose {name}"));
            checked += 1;
        }
        effective_settings(None, &env);
    }

    let deployment = k8s("Deployment");
    let (_, file) = configmap_toml();
    for c in containers(&deployment) {
        let env = container_env(c, &secret);
        for var in env
            .keys()
            .filter(|k| k.starts_with(&format!("{ENV_PREFIX}__")))
        {
            assert_config_key(var, &table, &format!("k8s container {}", c["name"]));
            checked += 1;
        }
        effective_settings(Some(&file), &env);
    }

    for line in read(&deploy().join("Dockerfile")).lines() {
        if let Some(rest) = line.trim().strip_prefix("ENV ") {
            let (name, value) = rest.split_once('=').expect("ENV NAME=value");
            assert_config_key(name, &table, "Dockerfile");
            effective_settings(None, &BTreeMap::from([(name.into(), value.into())]));
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} variables found");

    // The check itself rejects a drifted name.
    let caught = std::panic::catch_unwind(|| {
        assert_config_key("CASE_INTAKE__AMQP__INTAKE_QUEUE_NAME", &table, "probe")
    });
    assert!(caught.is_err());
}

#[test]
fn the_configmap_file_loads_and_keeps_the_default_names() {
    let (file_name, text) = configmap_toml();
    let path = std::env::temp_dir().join(format!("case-intake-{}-{file_name}", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let loaded = Settings::load(Some(&path));
    std::fs::remove_file(&path).ok();
    let loaded = loaded.expect("the ConfigMap's config.toml is a valid settings file");

    let d = defaults();
    assert_eq!(loaded.amqp.intake_queue, d.amqp.intake_queue);
    assert_eq!(loaded.amqp.events_exchange, d.amqp.events_exchange);
    assert_eq!(loaded.amqp.created_routing_key, d.amqp.created_routing_key);
    assert_eq!(loaded.amqp.failed_routing_key, d.amqp.failed_routing_key);
    assert_eq!(loaded.events.source, d.events.source);
    assert!(
        !loaded.amqp.declare_topology,
        "the topology comes from definitions"
    );

    // The worker reads it from where the ConfigMap is mounted.
    let deployment = k8s("Deployment");
    let cm_name = k8s("ConfigMap")["metadata"]["name"].clone();
    let volume = pod_spec(&deployment)["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == cm_name)
        .expect("a volume of the ConfigMap");
    let secret = k8s("Secret");
    for c in containers(&deployment) {
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("{} mounts the ConfigMap", c["name"]));
        let expected = format!("{}/{file_name}", mount["mountPath"].as_str().unwrap());
        assert_eq!(
            container_env(c, &secret).get("CASE_INTAKE_CONFIG"),
            Some(&expected),
            "{}",
            c["name"]
        );
    }
}

#[test]
fn the_deployment_probes_sizes_and_stops_the_workers_as_documented() {
    let deployment = k8s("Deployment");
    let secret = k8s("Secret");
    let (_, file) = configmap_toml();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let spec = pod_spec(&deployment);
    let worker = worker_container(&deployment);

    assert_eq!(worker["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(worker["readinessProbe"]["httpGet"]["path"], "/readyz");
    let port = u64::from(http_port());
    assert_eq!(probe_port(worker, "livenessProbe"), port);
    assert_eq!(probe_port(worker, "readinessProbe"), port);
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let resources = &worker["resources"];
    assert_eq!(resources["requests"]["cpu"], "500m");
    assert_eq!(resources["requests"]["memory"], "64Mi");
    // The limit holds the baseline plus the deliveries the broker may buffer in the worker.
    let settings = defaults();
    let buffered = settings.intake.consumers as u64
        * u64::from(settings.amqp.prefetch)
        * broker_conf("max_message_size");
    let limit = mebibytes(resources["limits"]["memory"].as_str().unwrap());
    assert!(
        limit >= (64 << 20) + buffered,
        "a {limit}-byte memory limit does not hold 64 MiB + {buffered} bytes of deliveries"
    );

    let init = spec["initContainers"].as_array().expect("initContainers");
    let migrate = init
        .iter()
        .find(|c| {
            let argv: Vec<&str> = c["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(c["args"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            argv == ["case-intake", "migrate"]
        })
        .expect("an initContainer runs `case-intake migrate`");
    assert_eq!(migrate["image"], worker["image"]);

    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    for c in containers(&deployment) {
        let env = container_env(c, &secret);
        assert_eq!(
            env.get("CASE_INTAKE__AMQP__DECLARE_TOPOLOGY")
                .map(String::as_str),
            Some("false"),
            "{}: definitions are imported",
            c["name"]
        );
        let settings = effective_settings(Some(&file), &env);
        assert!(!settings.amqp.declare_topology);
        assert_eq!(settings.amqp.retry_delay_ms, definitions_retry_delay_ms());
        assert_eq!(
            settings.amqp.quorum_initial_group_size,
            definitions_group_size()
        );
        assert!(
            grace * 1000 > settings.shutdown.timeout_ms,
            "terminationGracePeriodSeconds {grace} must exceed shutdown.timeout_ms {}",
            settings.shutdown.timeout_ms
        );
    }
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], dockerfile_uid());
}

#[test]
fn production_pods_seal_with_their_own_keys_from_the_secret() {
    let deployment = k8s("Deployment");
    let secret = k8s("Secret");
    let (_, file) = configmap_toml();
    let volumes = pod_spec(&deployment)["volumes"]
        .as_array()
        .expect("volumes");
    for c in containers(&deployment) {
        let name = &c["name"];
        let env = container_env(c, &secret);
        let active = env
            .get("CASE_INTAKE__CRYPTO__ACTIVE_KEY")
            .unwrap_or_else(|| panic!("{name}: no active key set"));
        assert_ne!(active, case_intake::store::crypto::DEV_KEY_ID, "{name}");
        let keys_file = env
            .get("CASE_INTAKE__CRYPTO__KEYS_FILE")
            .unwrap_or_else(|| panic!("{name}: no keys file set"));
        let settings = effective_settings(Some(&file), &env);
        assert_eq!(&settings.crypto.keys_file, keys_file);
        assert_eq!(&settings.crypto.active_key, active);

        // The file is an item of the Secret, mounted where the variable says.
        let (dir, file_name) = keys_file.rsplit_once('/').expect("an absolute path");
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{name}: nothing is mounted at {dir}"));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        assert_eq!(volume["secret"]["secretName"], secret["metadata"]["name"]);
        let item = volume["secret"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["path"] == file_name)
            .unwrap_or_else(|| panic!("{name}: the Secret volume has no {file_name}"));
        let text = secret["stringData"][item["key"].as_str().unwrap()]
            .as_str()
            .expect("the keys file is in the Secret");

        // Its shape is what `crypto.keys_file` reads: hmac_key and the active key.
        let keys: Value = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("the keys file is TOML");
        assert!(keys["hmac_key"].is_string(), "{keys}");
        assert!(
            keys["keys"][active].is_string(),
            "{keys} lacks the key {active}"
        );
    }
    // The non-root user reads the mounted Secret through its group.
    assert_eq!(
        pod_spec(&deployment)["securityContext"]["fsGroup"],
        dockerfile_uid()
    );
}

#[test]
fn the_disruption_budget_and_the_autoscaler_target_the_workers() {
    let settings = defaults();
    let deployment = k8s("Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];

    let pdb = k8s("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let selector = pdb["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&pod_labels[k], v, "the PDB selects the worker pods ({k})");
    }

    let scaled = k8s("ScaledObject");
    let spec = &scaled["spec"];
    assert_eq!(
        spec["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(spec["minReplicaCount"], 1);
    assert_eq!(spec["maxReplicaCount"], 8);
    let triggers = spec["triggers"].as_array().expect("triggers");
    assert_eq!(triggers.len(), 1);
    let t = &triggers[0];
    assert_eq!(t["type"], "rabbitmq");
    assert_eq!(
        t["metadata"]["queueName"],
        settings.amqp.intake_queue.as_str()
    );
    assert_eq!(t["metadata"]["mode"], "QueueLength");
    assert_eq!(t["metadata"]["value"], "2000");
    let defs = json_file("rabbitmq/definitions.json");
    assert_eq!(t["metadata"]["vhostName"], defs["queues"][0]["vhost"]);

    // The broker URL reaches KEDA from the same Secret key the workers use.
    let auth = k8s("TriggerAuthentication");
    assert_eq!(t["authenticationRef"]["name"], auth["metadata"]["name"]);
    let host = auth["spec"]["secretTargetRef"]
        .as_array()
        .expect("secretTargetRef")
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("the host parameter comes from a secret");
    let secret = k8s("Secret");
    assert_eq!(host["name"], secret["metadata"]["name"]);
    let worker_url = worker_container(&deployment)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "CASE_INTAKE__AMQP__URL")
        .expect("the workers get the broker URL");
    assert_eq!(host["key"], worker_url["valueFrom"]["secretKeyRef"]["key"]);
}

#[test]
fn compose_migrates_once_then_runs_two_workers() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_object().expect("services");
    assert_eq!(services["postgres"]["image"], "postgres:15");
    assert_eq!(services["rabbitmq"]["image"], "rabbitmq:3.13-management");

    let worker = &services["worker"];
    let migrate = &services["migrate"];
    assert_eq!(worker["deploy"]["replicas"], 2);
    assert_eq!(worker["command"], json!(["run"]));
    assert_eq!(migrate["command"], json!(["migrate"]));
    for s in [worker, migrate] {
        let context = deploy().join(s["build"]["context"].as_str().expect("build context"));
        let dockerfile = context.join(s["build"]["dockerfile"].as_str().expect("dockerfile"));
        assert_eq!(
            dockerfile.canonicalize().unwrap(),
            deploy().join("Dockerfile").canonicalize().unwrap()
        );
        assert!(
            context.join("Cargo.toml").exists(),
            "the context is the crate"
        );
    }
    assert_eq!(
        worker["depends_on"]["migrate"]["condition"],
        "service_completed_successfully"
    );

    // Topology: imported from the definitions file, not declared by the workers.
    let env = compose_env(worker);
    let settings = effective_settings(None, &env);
    assert!(!settings.amqp.declare_topology);
    assert_eq!(settings.amqp.retry_delay_ms, definitions_retry_delay_ms());
    assert_eq!(
        settings.amqp.quorum_initial_group_size,
        definitions_group_size()
    );
    let (importer, _) = services
        .iter()
        .find(|(_, s)| {
            s["volumes"].as_array().into_iter().flatten().any(|v| {
                v.as_str()
                    .is_some_and(|v| v.starts_with("./rabbitmq/definitions.json:"))
            })
        })
        .expect("a service imports deploy/rabbitmq/definitions.json");
    assert_eq!(
        worker["depends_on"][importer]["condition"],
        "service_completed_successfully"
    );

    // The URLs reach the compose services with their credentials.
    use secrecy::ExposeSecret;
    let pg = compose_env(&services["postgres"]);
    let db = format!(
        "postgres://{}:{}@postgres:5432/{}",
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    );
    assert_eq!(settings.database.url.expose_secret(), db);
    let mq = compose_env(&services["rabbitmq"]);
    let amqp = format!(
        "amqp://{}:{}@rabbitmq:5672/%2f",
        mq["RABBITMQ_DEFAULT_USER"], mq["RABBITMQ_DEFAULT_PASS"]
    );
    assert_eq!(settings.amqp.url.expose_secret(), amqp);

    // The healthcheck command reads http.address from the same environment, so it asks the
    // port the worker listens on.
    let health = worker["healthcheck"]["test"].to_string();
    assert_eq!(health, r#"["CMD","case-intake","healthcheck"]"#);
    assert!(
        settings
            .http
            .address
            .ends_with(&format!(":{}", http_port()))
    );
    let grace = compose_seconds(
        worker["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    assert!(grace * 1000 > settings.shutdown.timeout_ms);
}

#[test]
fn the_dockerfile_builds_the_binary_and_runs_it_unprivileged() {
    let text = read(&deploy().join("Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let from: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "a build and a runtime stage");
    assert!(from[0].starts_with("rust:1.95"), "{}", from[0]);
    assert_eq!(from[1], "debian:bookworm-slim");
    assert!(text.contains("cargo build --release --locked --bin case-intake"));
    assert!(lines.contains(&r#"ENTRYPOINT ["case-intake"]"#));
    assert!(lines.contains(&r#"CMD ["run"]"#));
    assert_ne!(dockerfile_uid(), 0);
    assert!(lines.contains(&format!("EXPOSE {}", http_port()).as_str()));
    assert!(lines.contains(&r#"CMD ["case-intake", "healthcheck"]"#));
    assert!(lines.iter().any(|l| l.starts_with("HEALTHCHECK ")));

    // The binary it builds is the crate's.
    let manifest = config::Config::builder()
        .add_source(config::File::from_str(
            &read(&repo().join("Cargo.toml")),
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .expect("Cargo.toml parses");
    assert!(
        manifest["bin"]
            .as_array()
            .expect("[[bin]]")
            .iter()
            .any(|b| b["name"] == "case-intake")
    );
}
