//! Reading the worker logs: their WARN and ERROR lines counted by message and error class.

use std::collections::HashMap;
use std::path::PathBuf;

/// Removes ANSI colour sequences (the worker's text logs may carry them).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Counts the worker logs' WARN and ERROR lines by level, target, message and error class.
pub fn summarize_logs(paths: &[PathBuf]) -> Vec<(usize, String)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().map(strip_ansi) {
            let mut words = line.split_whitespace().skip(1);
            let Some(level) = words.next() else { continue };
            if level != "WARN" && level != "ERROR" {
                continue;
            }
            // The message runs up to the first field; `error=` is shown in short.
            let words: Vec<&str> = words.collect();
            let fields = words
                .iter()
                .position(|w| w.contains('='))
                .unwrap_or(words.len());
            let mut key = vec![level.to_owned()];
            key.extend(words[..fields].iter().map(|w| (*w).to_owned()));
            let mut in_error = 0;
            for w in &words[fields..] {
                if let Some(rest) = w.strip_prefix("error=") {
                    key.push(format!("| {rest}"));
                    in_error = 1;
                } else if w.starts_with("class=") {
                    key.push(format!("| {w}"));
                    in_error = 0;
                } else if w.contains('=') {
                    in_error = 0;
                } else if in_error > 0 && in_error < 8 {
                    key.push((*w).to_owned());
                    in_error += 1;
                }
            }
            *counts.entry(key.join(" ")).or_insert(0) += 1;
        }
    }
    let mut v: Vec<(usize, String)> = counts.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v
}
