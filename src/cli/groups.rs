//! `case-intake failed groups`: the open failed intakes per cause, rendered one line per
//! group (or as JSON), with the label to pass back as `--group`.

use crate::admin::groups;
use crate::infra::db;
use crate::infra::settings::Settings;

use super::CliResult;

pub async fn groups(network: Option<i64>, json: bool, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let groups = groups::groups(&pool, network).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
    } else {
        for g in &groups {
            println!("{}", line(g));
        }
    }
    let open: i64 = groups.iter().map(|g| g.count).sum();
    eprintln!("{} group(s), {open} open failed intake(s)", groups.len());
    Ok(())
}

/// `validation_failed · street_county · 312 · network 3 · first … last … · --group …`.
fn line(g: &groups::Group) -> String {
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    format!(
        "{} · {} · {} · network {} · first {} last {} · --group {}",
        g.code,
        if g.fields.is_empty() { "-" } else { &g.fields },
        g.count,
        g.network.map_or("-".into(), |n| n.to_string()),
        time(g.first_seen),
        time(g.last_seen),
        g.label,
    )
}
