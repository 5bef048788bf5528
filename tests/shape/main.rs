//! The source tree keeps the shape its docs describe: no module of a crate depends on a module
//! that depends back on it, and no hand-written source file grows past what a reader takes in
//! at once. Read from the files themselves, so it holds for every crate without a tool to
//! install.
//!
//! A module depends on another when its code (outside `#[cfg(test)] mod tests`) names a path
//! into it: `crate::a::b`, `super::x`, `self::x` or a child module, in `use` trees (braces
//! expanded) and in expressions. A name re-exported by a module (`pub use child::Item`) counts
//! as a dependency of that module on the child; `mod child;` alone does not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longer files are split by concern; generated code is exempt.
const MAX_LINES: usize = 650;

/// Each crate's source root: (name, directory, root file).
const CRATES: &[(&str, &str, &str)] = &[
    ("meshca", "src", "main.rs"),
    ("meshca-pki", "pki/src", "lib.rs"),
    ("meshca-proto", "proto/src", "lib.rs"),
    ("meshca-kube", "kube/src", "lib.rs"),
    ("meshca-ca", "ca/src", "lib.rs"),
    ("meshca-ra", "ra/src", "lib.rs"),
    ("meshca-agent", "agent/src", "lib.rs"),
    ("meshca-tools", "tools/src", "lib.rs"),
];

/// A new workspace member is checked too: every member but this test crate has its sources in
/// `CRATES`.
#[test]
fn every_workspace_crate_is_checked() {
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("a one-line members list");
    let unchecked: Vec<&str> = members
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| *m != "tests")
        .filter(|m| {
            !CRATES
                .iter()
                .any(|(_, dir, _)| dir.split('/').next() == Some(*m))
        })
        .collect();
    assert!(unchecked.is_empty(), "not in CRATES: {unchecked:?}");
}

/// Directories of generated code (prost/tonic output), exempt from the length limit.
const GENERATED: &[&str] = &["proto/src/gen"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn no_module_cycles_in_any_crate() {
    let mut cycles = Vec::new();
    for (name, dir, root) in CRATES {
        let dir = workspace().join(dir);
        if !dir.exists() {
            continue;
        }
        let modules = modules_of(&dir, root);
        let graph = dependency_graph(&modules);
        for component in cyclic_components(&graph) {
            let edges: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| component.contains(to))
                        .map(move |to| format!("{from} → {to}"))
                })
                .collect();
            cycles.push(format!(
                "{name}: {} ({})",
                component.join(" ↔ "),
                edges.join(", ")
            ));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_hand_written_source_file_is_over_the_limit() {
    let mut long = Vec::new();
    let root = workspace();
    for dir in [
        "src",
        "pki",
        "proto/src",
        "kube",
        "ca",
        "ra",
        "agent",
        "tools",
        "tests",
    ] {
        for file in rust_files(&root.join(dir)) {
            let relative = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if GENERATED.iter().any(|g| relative.starts_with(g)) || relative.contains("/target/") {
                continue;
            }
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > MAX_LINES {
                long.push(format!("{relative}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these by concern (limit {MAX_LINES}):\n{}",
        long.join("\n")
    );
}

/// The checker itself: a cycle through a re-export is found; a parent that only declares its
/// children, paths through `super` to a sibling, test modules, and another crate's module
/// re-exported by the root make none.
#[test]
fn the_checker_finds_cycles_and_only_cycles() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = tmp.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "mod a;\nmod b;\nmod c;\nmod tree;\npub use a::Thing;\npub use c::C;\n\
         pub use other_crate::{ext, x509 as certs};\n",
    );
    // Through the root to another crate's module: no dependency on the root.
    write(
        "c.rs",
        "use crate::ext::E;\npub struct C(crate::certs::Cert);\n",
    );
    write("a.rs", "use crate::b::{self, Other};\npub struct Thing;\n");
    write(
        "b.rs",
        "pub struct Other;\nfn f() -> crate::Thing { todo() }\n",
    );
    write(
        "tree/mod.rs",
        "mod leaf;\nmod twig;\nfn f() { twig::g() }\n",
    );
    write("tree/leaf.rs", "use super::twig::Twig;\n");
    write(
        "tree/twig.rs",
        "pub struct Twig;\npub fn g() { super::h() }\n#[cfg(test)]\nmod tests {\n    use super::super::leaf;\n}\n",
    );
    let modules = modules_of(tmp.path(), "lib.rs");
    let cycles = cyclic_components(&dependency_graph(&modules));
    assert_eq!(cycles, [vec!["", "a", "b"], vec!["tree", "tree::twig"]]);
}

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Module path (`""` for the crate root, `store::sql`) → its source without test modules.
fn modules_of(dir: &Path, root: &str) -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    for file in rust_files(dir) {
        let relative = file
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let path = if relative == root {
            String::new()
        } else {
            let trimmed = relative
                .strip_suffix("/mod.rs")
                .or_else(|| relative.strip_suffix(".rs"))
                .unwrap();
            trimmed.replace('/', "::")
        };
        let text = std::fs::read_to_string(&file).unwrap();
        modules.insert(path, without_tests(&text));
    }
    modules
}

/// The text before `#[cfg(test)] mod tests`, which may use anything of its parent.
fn without_tests(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| {
                next.split_whitespace().any(|w| w == "mod") && next.contains("mod tests")
            })
        {
            break;
        }
        // Comments name paths that are not dependencies.
        let code = line.split("//").next().unwrap_or_default();
        kept.push_str(code);
        kept.push('\n');
    }
    kept
}

/// Edges between modules of one crate.
fn dependency_graph(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<&str> = modules.keys().map(String::as_str).collect();
    let external: BTreeMap<&str, BTreeSet<String>> = modules
        .iter()
        .map(|(module, text)| (module.as_str(), external_reexports(module, text, &known)))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, text) in modules {
        let mut targets = BTreeSet::new();
        for path in referenced_paths(text) {
            let Some((target, next)) = resolve(module, &path, &known) else {
                continue;
            };
            // `crate::x509` where the root re-exports another crate's `x509`: that crate's.
            let through_to_external = next.is_some_and(|name| {
                external
                    .get(target.as_str())
                    .is_some_and(|e| e.contains(name))
            });
            if target != *module && !through_to_external {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Names `module` re-exports from other crates (`pub use meshca_pki::{audit, x509}`).
fn external_reexports(module: &str, text: &str, known: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("pub use ") {
        let after = &rest[at + "pub use ".len()..];
        let end = after.find(';').unwrap_or(after.len());
        let mut paths = Vec::new();
        expand_use_tree(Vec::new(), after[..end].trim(), &mut paths);
        for (path, bound) in paths {
            if resolve(module, &path, known).is_none() {
                names.insert(bound);
            }
        }
        rest = &after[end..];
    }
    names
}

/// The module a path lands in (the longest prefix that is a module of this crate) and the
/// segment after it, if any.
fn resolve<'p>(
    module: &str,
    path: &'p [String],
    known: &BTreeSet<&str>,
) -> Option<(String, Option<&'p str>)> {
    let mut segments: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(String::from).collect()
    };
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") | Some("$crate") => {
            segments.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                segments.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A child module named without `self::` (2018 paths); anything else is external
            // or a local item.
            let mut child = segments.clone();
            child.push(first.to_string());
            if !known.contains(child.join("::").as_str()) {
                return None;
            }
        }
        None => return None,
    }
    let mut best = segments.join("::");
    let mut next = rest.first().map(String::as_str);
    for (i, segment) in rest.iter().enumerate() {
        segments.push(segment.clone());
        let candidate = segments.join("::");
        if known.contains(candidate.as_str()) {
            best = candidate;
            next = rest.get(i + 1).map(String::as_str);
        } else {
            break;
        }
    }
    Some((best, next))
}

/// Every path named in `use` trees (expanded) and in the code (`a::b::c` runs).
fn referenced_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = find_use(rest) {
        let after = &rest[at..];
        let end = after.find(';').unwrap_or(after.len());
        let tree = &after[..end];
        let mut expanded = Vec::new();
        expand_use_tree(Vec::new(), tree.trim(), &mut expanded);
        paths.extend(expanded.into_iter().map(|(path, _)| path));
        rest = &after[end..];
    }
    for run in path_runs(text) {
        paths.push(run);
    }
    paths
}

/// The start of the next `use` tree (after `use ` / `pub use ` / `pub(crate) use `).
fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find("use ") {
        let at = from + found;
        let before = text[..at].chars().next_back();
        if before.is_none_or(|c| c.is_whitespace() || c == ')' || c == ';' || c == '{') {
            return Some(at + 4);
        }
        from = at + 4;
    }
    None
}

/// Expands a use tree into its paths, each with the name it is bound to (`as` or the last
/// segment).
fn expand_use_tree(prefix: Vec<String>, tree: &str, out: &mut Vec<(Vec<String>, String)>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let mut base = prefix.clone();
        base.extend(split_path(head));
        let close = tree.rfind('}').filter(|close| *close > open);
        // Not a use tree after all (the word in a string, say).
        let Some(close) = close else { return };
        let inner = &tree[open + 1..close];
        for part in split_top_level(inner) {
            expand_use_tree(base.clone(), part, out);
        }
        return;
    }
    let mut parts = tree.split(" as ");
    let head = parts.next().unwrap_or(tree);
    let alias = parts.next().map(|a| a.trim().to_string());
    let mut path = prefix;
    for segment in split_path(head) {
        if segment != "self" || path.is_empty() {
            path.push(segment);
        }
    }
    if path.last().is_some_and(|s| s == "*") {
        path.pop();
    }
    let bound = alias.or_else(|| path.last().cloned()).unwrap_or_default();
    out.push((path, bound));
}

fn split_path(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `a, b::{c, d}, e` → its top-level parts.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Runs like `crate::store::sql::X`, `super::state::Mode` or `child::item` in code.
fn path_runs(text: &str) -> Vec<Vec<String>> {
    let mut runs = Vec::new();
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    let mut i = 0;
    while i < bytes.len() {
        if is_ident(bytes[i]) && (i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':') {
            let start = i;
            let mut end = i;
            loop {
                while end < bytes.len() && is_ident(bytes[end]) {
                    end += 1;
                }
                if text[end..].starts_with("::")
                    && text[end + 2..].bytes().next().is_some_and(is_ident)
                {
                    end += 2;
                } else {
                    break;
                }
            }
            let run = &text[start..end];
            // Any `a::b` run: `resolve` keeps those that start at `crate`, `super`, `self` or
            // a child module and drops the rest (other crates, enum variants, types).
            if run.contains("::") {
                runs.push(split_path(run));
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    runs
}

/// Strongly connected components with more than one module (Tarjan), each sorted.
fn cyclic_components(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let n = state.index.len();
        state.index.insert(node, n);
        state.low.insert(node, n);
        state.stack.push(node);
        state.on_stack.insert(node);
        for next in state.graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[node].min(state.low[next]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(next) {
                let low = state.low[node].min(state.index[next]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                component.push(top.to_string());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.components.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.components
}
