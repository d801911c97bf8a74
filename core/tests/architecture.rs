//! The layout tells the architecture, and this test keeps it true: the
//! files of qconform-core import one another without a cycle, no format
//! folder imports another format's, and only the registry and the chain
//! name the formats (so a new format is a folder plus one registry line).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every .rs file under core/src, as its module path (`disk::chain`).
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned();
        if p.is_dir() {
            modules(&p, &format!("{prefix}{stem}::"), out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let name = match stem.as_str() {
                "mod" | "lib" => prefix.trim_end_matches("::").to_owned(),
                _ => format!("{prefix}{stem}"),
            };
            out.insert(name, p);
        }
    }
}

/// The modules a file's `crate::` and `super::` paths name (resolved to
/// the longest known module), test code excluded. `module` is the file's
/// own module path; `is_mod` says whether it is a folder's mod.rs.
fn imports(
    text: &str,
    module: &str,
    is_mod: bool,
    known: &BTreeMap<String, PathBuf>,
) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    // `super::` from a file a::b names a::*, from a::b's mod.rs names a's parent.
    let parent = {
        // A file a::b and a folder's mod.rs for a::b both have super a.
        let _ = is_mod;
        let mut p: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        p.pop();
        p.join("::")
    };
    let mut paths: Vec<String> = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        paths.push(code[i + "crate::".len()..].to_owned());
    }
    for (i, _) in code.match_indices("super::") {
        let rest = &code[i + "super::".len()..];
        let joined = if parent.is_empty() {
            rest.to_owned()
        } else {
            format!("{parent}::{rest}")
        };
        paths.push(joined);
    }
    for rest in &paths {
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut parts: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        while !parts.is_empty() {
            let m = parts.join("::");
            if known.contains_key(&m) {
                out.insert(m);
                break;
            }
            parts.pop();
        }
    }
    out
}

#[test]
fn core_files_import_each_other_without_a_cycle_and_formats_stay_apart() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut known = BTreeMap::new();
    modules(&src, "", &mut known);
    let graph: BTreeMap<String, BTreeSet<String>> = known
        .iter()
        .map(|(m, p)| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let is_mod = p.file_name().is_some_and(|f| f == "mod.rs");
            let mut deps = imports(&text, m, is_mod, &known);
            deps.remove(m);
            deps.remove(""); // the crate root re-exports; it is not a layer
            (m.clone(), deps)
        })
        .collect();
    // Formats never import each other.
    let formats = ["qcow2", "qed", "parallels"];
    for (m, deps) in &graph {
        let own = m.split("::").next().unwrap_or("");
        for d in deps {
            let theirs = d.split("::").next().unwrap_or("");
            assert!(
                !(formats.contains(&own) && formats.contains(&theirs) && own != theirs),
                "{m} imports {d}: a format folder must not import another format's"
            );
        }
    }
    // Only the registry (and the crate root) names the format folders from
    // outside them; the chain opens formats through the registry.
    for (m, deps) in &graph {
        let own = m.split("::").next().unwrap_or("");
        if formats.contains(&own) || m == "formats" || m.is_empty() || m == "detect" {
            continue;
        }
        for d in deps {
            let theirs = d.split("::").next().unwrap_or("");
            assert!(
                !formats.contains(&theirs) || m.starts_with("vhost_user"),
                "{m} imports {d}: go through crate::formats"
            );
        }
    }
    // No cycle among files (depth-first search with colours).
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) {
        match state.get(m) {
            Some(2) => return,
            Some(1) => panic!("import cycle: {} -> {m}", stack.join(" -> ")),
            _ => {}
        }
        state.insert(m, 1);
        stack.push(m);
        for d in graph.get(m).into_iter().flatten() {
            visit(d, graph, state, stack);
        }
        stack.pop();
        state.insert(m, 2);
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        visit(m, &graph, &mut state, &mut Vec::new());
    }
}
