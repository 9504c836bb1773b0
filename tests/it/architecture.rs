//! The structure ARCHITECTURE.md describes, checked on the source: the service crate's files
//! import one another without a cycle, and each top-level folder uses only the layers below
//! it. The check reads `src/` as text (use trees, paths and `pub use` re-exports; comments,
//! strings and `#[cfg(test)]` code left out), so a change that breaks either rule fails here
//! with the imports that broke it. A folder's `mod.rs` is the front of the files under it: its
//! uses of them are not counted, their uses of its items are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may use its own folder and the folders before its own.
const LAYERS: [&str; 8] = [
    "infra", "domain", "store", "outbox", "intake", "admin", "app", "cli",
];

type ModPath = Vec<String>;

/// One file of the crate: its module path and its code without comments, strings and tests.
struct Source {
    file: PathBuf,
    code: String,
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_of(file: &Path) -> ModPath {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "lib.rs" | "mod.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_owned()),
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without comments, string and character literals (their contents could look like
/// paths), keeping everything else.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut hashes = 0;
                let mut j = i + 1;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push_str("\"\"");
                i += 1;
            }
            // A character literal, not a lifetime: 'x', '\n', '\u{..}'.
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push_str("' '");
                i += 1;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// Removes every item marked `#[cfg(test)]` (a braced module or a `mod name;` line).
fn without_tests(code: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_mods = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item_end = match (after.find('{'), after.find(';')) {
            (Some(brace), semi) if semi.is_none_or(|s| brace < s) => {
                let mut depth = 0;
                let mut end = after.len();
                for (k, c) in after.char_indices().skip(brace) {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(semi)) => {
                let item = after[..semi].trim();
                if let Some(name) = item.strip_prefix("mod ") {
                    test_mods.push(name.trim().to_owned());
                }
                semi + 1
            }
            (_, None) => after.len(),
        };
        rest = &after[item_end..];
    }
    out.push_str(rest);
    (out, test_mods)
}

fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(code[i..end].to_owned());
        } else if c == ':' && chars.peek().is_some_and(|&(_, d)| d == ':') {
            chars.next();
            out.push("::".into());
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}

/// The paths of a use tree starting at `tokens[*at]`, each with the name it binds.
fn use_tree(
    tokens: &[String],
    at: &mut usize,
    prefix: &[String],
    out: &mut Vec<(ModPath, String)>,
) {
    let mut path = prefix.to_vec();
    while *at < tokens.len() {
        let t = tokens[*at].as_str();
        match t {
            "::" => *at += 1,
            "{" => {
                *at += 1;
                while *at < tokens.len() && tokens[*at] != "}" {
                    use_tree(tokens, at, &path, out);
                    if tokens.get(*at).is_some_and(|t| t == ",") {
                        *at += 1;
                    }
                }
                *at += 1;
                return;
            }
            "*" => {
                *at += 1;
                out.push((path, "*".into()));
                return;
            }
            "," | "}" | ";" => {
                let name = path.last().cloned().unwrap_or_default();
                out.push((path, name));
                return;
            }
            "as" => {
                let alias = tokens[*at + 1].clone();
                *at += 2;
                out.push((path, alias));
                return;
            }
            _ => {
                path.push(t.to_owned());
                *at += 1;
            }
        }
    }
}

/// Every path a file names: its use trees (with whether each is a `pub use`) and the other
/// paths that start with `crate`, `super` or `self`.
struct Named {
    uses: Vec<(bool, ModPath, String)>,
    paths: Vec<ModPath>,
}

fn named(code: &str) -> Named {
    let t = tokens(code);
    let mut named = Named {
        uses: Vec::new(),
        paths: Vec::new(),
    };
    let mut i = 0;
    while i < t.len() {
        if t[i] == "use" {
            let public = i > 0 && (t[i - 1] == "pub" || t[i - 1] == ")");
            i += 1;
            let mut trees = Vec::new();
            use_tree(&t, &mut i, &[], &mut trees);
            named
                .uses
                .extend(trees.into_iter().map(|(p, n)| (public, p, n)));
            continue;
        }
        let starts_path = matches!(t[i].as_str(), "crate" | "super" | "self")
            && t.get(i + 1).is_some_and(|n| n == "::")
            && (i == 0 || t[i - 1] != "::");
        if starts_path {
            let mut path = vec![t[i].clone()];
            let mut j = i + 1;
            while t.get(j).is_some_and(|n| n == "::")
                && t.get(j + 1)
                    .is_some_and(|n| n.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                path.push(t[j + 1].clone());
                j += 2;
            }
            named.paths.push(path);
            i = j;
            continue;
        }
        i += 1;
    }
    named
}

/// The crate's modules and how their names resolve.
struct Crate {
    sources: BTreeMap<ModPath, Source>,
    named: BTreeMap<ModPath, Named>,
    /// `pub use` re-exports: (module, name) → the path it re-exports.
    reexports: BTreeMap<(ModPath, String), ModPath>,
}

impl Crate {
    fn load() -> Self {
        let mut files = Vec::new();
        rust_files(&src(), &mut files);
        let mut sources = BTreeMap::new();
        let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
        for file in files {
            if file.file_name().is_some_and(|n| n == "main.rs") {
                continue;
            }
            let module = module_of(&file);
            let (code, test_mods) = without_tests(&strip(&std::fs::read_to_string(&file).unwrap()));
            for name in test_mods {
                let mut child = module.clone();
                child.push(name);
                test_only.insert(child);
            }
            sources.insert(module, Source { file, code });
        }
        sources.retain(|m, _| !test_only.iter().any(|t| m.starts_with(t)));
        let named: BTreeMap<ModPath, Named> = sources
            .iter()
            .map(|(m, s)| (m.clone(), named(&s.code)))
            .collect();
        let mut krate = Self {
            sources,
            named,
            reexports: BTreeMap::new(),
        };
        let mut reexports = BTreeMap::new();
        for (module, n) in &krate.named {
            for (public, path, name) in &n.uses {
                if *public
                    && name != "*"
                    && let Some(abs) = krate.absolute(module, path)
                {
                    reexports.insert((module.clone(), name.clone()), abs);
                }
            }
        }
        krate.reexports = reexports;
        krate
    }

    fn is_module(&self, m: &[String]) -> bool {
        self.sources.contains_key(m)
    }

    /// `path` as named in `module`, from the crate root; `None` for another crate's path.
    fn absolute(&self, module: &ModPath, path: &[String]) -> Option<ModPath> {
        let mut abs: ModPath = match path.first()?.as_str() {
            "crate" => Vec::new(),
            "super" | "self" => module.clone(),
            first => {
                let mut child = module.clone();
                child.push(first.to_owned());
                if !self.is_module(&child) {
                    return None;
                }
                module.clone()
            }
        };
        let mut rest = path;
        if rest[0] == "crate" || rest[0] == "self" {
            rest = &rest[1..];
        }
        while rest.first().is_some_and(|s| s == "super") {
            abs.pop();
            rest = &rest[1..];
        }
        abs.extend(rest.iter().cloned());
        Some(abs)
    }

    /// The file a crate path leads to: the deepest module it names, then through re-exports
    /// (`depth` of them followed so far; 8 follows none).
    fn target(&self, abs: &[String], depth: usize) -> ModPath {
        let mut module: ModPath = Vec::new();
        let mut i = 0;
        while i < abs.len() {
            let mut child = module.clone();
            child.push(abs[i].clone());
            if self.is_module(&child) {
                module = child;
                i += 1;
            } else {
                break;
            }
        }
        if let Some(name) = abs.get(i)
            && depth < 8
            && let Some(to) = self.reexports.get(&(module.clone(), name.clone()))
        {
            let mut next = to.clone();
            next.extend(abs[i + 1..].iter().cloned());
            return self.target(&next, depth + 1);
        }
        module
    }

    /// Each module's dependencies on other modules of the crate, with a path as evidence.
    fn edges(&self) -> BTreeMap<ModPath, BTreeMap<ModPath, String>> {
        let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, String>> = BTreeMap::new();
        for (module, n) in &self.named {
            let paths = n
                .uses
                .iter()
                .map(|(_, p, _)| p.clone())
                .chain(n.paths.iter().cloned());
            for path in paths {
                let Some(abs) = self.absolute(module, &path) else {
                    continue;
                };
                // The module a path names and, through re-exports, the one that defines what
                // it names: a file depends on both (naming `intake::validate::CaseInput` from
                // the store is an upward use even though `domain` defines it).
                for to in [self.target(&abs, 8), self.target(&abs, 0)] {
                    // A module's own items are no dependency, and a folder's front (its
                    // `mod.rs` declaring, re-exporting and dispatching to its own files) owns
                    // what is under it: only a file's use of its parent's items counts.
                    if to.starts_with(module) {
                        continue;
                    }
                    edges
                        .entry(module.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| path.join("::"));
                }
            }
        }
        edges
    }
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Every cycle of the graph, each as the modules on it (one per strongly connected set).
fn cycles(edges: &BTreeMap<ModPath, BTreeMap<ModPath, String>>) -> Vec<Vec<ModPath>> {
    // Tarjan's algorithm, iteratively small enough to write recursively for a crate's size.
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeMap<ModPath, String>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(out) = s.edges.get(v) {
            for w in out.keys() {
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut set = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                set.push(w.clone());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                s.found.push(set);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn layer(m: &ModPath) -> Option<usize> {
    LAYERS
        .iter()
        .position(|l| m.first().is_some_and(|f| f == l))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let krate = Crate::load();
    let edges = krate.edges();
    let found = cycles(&edges);
    let described: Vec<String> = found
        .iter()
        .map(|set| {
            let members: BTreeSet<&ModPath> = set.iter().collect();
            let inside: Vec<String> = set
                .iter()
                .flat_map(|from| {
                    edges[from]
                        .iter()
                        .filter(|(to, _)| members.contains(to))
                        .map(move |(to, via)| format!("{} → {} ({via})", name(from), name(to)))
                })
                .collect();
            inside.join("; ")
        })
        .collect();
    assert!(
        described.is_empty(),
        "cycles between files:\n{}",
        described.join("\n")
    );
}

#[test]
fn each_folder_uses_only_the_layers_below_it() {
    let krate = Crate::load();
    let mut upward: BTreeMap<(String, String), String> = BTreeMap::new();
    for (from, out) in krate.edges() {
        for (to, via) in out {
            let (Some(a), Some(b)) = (layer(&from), layer(&to)) else {
                continue;
            };
            if a < b {
                let file = krate.sources[&from].file.display().to_string();
                upward
                    .entry((name(&from), name(&to)))
                    .or_insert(format!("{file}: {via}"));
            }
        }
    }
    let found: Vec<String> = upward
        .iter()
        .map(|((from, to), via)| format!("{from} uses {to} ({via})"))
        .collect();
    assert!(
        found.is_empty(),
        "dependencies upward:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_the_crate() {
    // The reader finds the modules and the edges it is to judge: a parser that found nothing
    // would pass both checks above.
    let krate = Crate::load();
    let edges = krate.edges();
    let window: ModPath = vec!["intake".into(), "window".into()];
    let store: ModPath = vec!["store".into()];
    assert!(krate.is_module(&window) && krate.sources.len() > 80);
    assert!(edges[&window].keys().any(|m| m.starts_with(&store)));
    // Through the re-export in window/mod.rs, `window::Outcome` is window/outcome.rs.
    let consumer: ModPath = vec!["intake".into(), "consumer".into()];
    let outcome: ModPath = vec!["intake".into(), "window".into(), "outcome".into()];
    assert!(
        edges[&consumer].contains_key(&outcome),
        "{:?}",
        edges[&consumer]
    );
}
