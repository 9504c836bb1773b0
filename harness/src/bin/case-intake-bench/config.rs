//! The workers' settings of a run: the overrides the options make, and the settings loaded through
//! them exactly as a worker loads them.

use std::collections::BTreeMap;

use case_intake::infra::settings::Settings;

use crate::args::Args;
use crate::{Names, Result};

/// The worker settings this run changes, as (section, key, value).
pub fn overrides(
    args: &Args,
    db_url: &str,
    names: &Names,
) -> Result<Vec<(String, String, String)>> {
    let mut o: Vec<(String, String, String)> = Vec::new();
    let mut put = |s: &str, k: &str, v: String| o.push((s.into(), k.into(), v));
    put("database", "url", db_url.to_owned());
    put("database", "create_database", "false".into());
    put("amqp", "url", args.amqp.clone());
    put("amqp", "intake_queue", names.intake.clone());
    put("amqp", "events_exchange", names.events.clone());
    put("log", "filter", "warn".into());
    put("log", "format", "text".into());
    // Several workers on one machine: no health/metrics server (it would fight over a port).
    put("http", "address", String::new());
    if let Some(w) = args.window {
        put("intake", "window_size", w.to_string());
    }
    match (args.prefetch, args.window) {
        (Some(p), _) => put("amqp", "prefetch", p.to_string()),
        // The worker refuses a window larger than the prefetch.
        (None, Some(w)) if w > 400 => put("amqp", "prefetch", w.min(u16::MAX as usize).to_string()),
        _ => {}
    }
    if let Some(c) = args.consumers {
        put("intake", "consumers", c.to_string());
        if args.pool.is_none() && c + 1 > 10 {
            put("database", "max_connections", (c + 2).to_string());
        }
    }
    if let Some(p) = args.pool {
        put("database", "max_connections", p.to_string());
    }
    for s in &args.set {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s}: expected SECTION.KEY=VALUE"))?;
        let (section, key) = path
            .split_once('.')
            .ok_or_else(|| format!("--set {s}: expected SECTION.KEY=VALUE"))?;
        put(section, key, value.to_owned());
    }
    Ok(o)
}

/// The overrides as a TOML file for `Settings::load` (later entries win).
pub fn toml_of(overrides: &[(String, String, String)]) -> String {
    let mut sections: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for (s, k, v) in overrides {
        sections.entry(s).or_default().insert(k, v);
    }
    let mut out = String::new();
    for (section, keys) in sections {
        out.push_str(&format!("[{section}]\n"));
        for (k, v) in keys {
            let raw =
                v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok() || v == "true" || v == "false";
            let value = if raw {
                (*v).to_owned()
            } else {
                serde_json::to_string(v).unwrap_or_default()
            };
            out.push_str(&format!("{k} = {value}\n"));
        }
    }
    out
}

/// The workers' settings as they will load them: through a TOML file of the overrides.
pub fn load_settings(id: &str, overrides: &[(String, String, String)]) -> Result<Settings> {
    let config_path = std::env::temp_dir().join(format!("case-intake-bench-{id}.toml"));
    std::fs::write(&config_path, toml_of(overrides))?;
    let loaded = Settings::load(Some(&config_path));
    let _ = std::fs::remove_file(&config_path);
    Ok(loaded?)
}

pub fn announce(args: &Args, id: &str, names: &Names, settings: &Settings) {
    eprintln!(
        "bench {id}: database {}, queue {}, exchange {}; {} {} worker(s), window {}, prefetch {}, \
         consumers {}, pool {}",
        args.db,
        names.intake,
        names.events,
        args.workers,
        if args.in_process {
            "in-process"
        } else {
            "process"
        },
        settings.intake.window_size,
        settings.amqp.prefetch,
        settings.intake.consumers,
        settings.database.max_connections,
    );
}
