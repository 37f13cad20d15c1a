//! Dependencies point one way. Reads the source of the engine, the CLI and the shell and checks
//! that no module imports a module that imports it back (directly or through others), and that
//! the engine's top-level modules only use modules of their own layer or below, in the order
//! `lib.rs` documents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The engine's layers, lowest first; a module may use its own layer and those before it.
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "fsutil",
        "memory",
        "runtime",
        "seed",
        "test_support",
    ],
    &["ops", "tokenizer", "template"],
    &["quant", "hardware"],
    &["model"],
    &["data", "infer"],
    &["peft", "export"],
    &["plan"],
    &["train"],
];

/// Module path (`model::decoder`) → source file, for every `.rs` under `src`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                out.insert(parts.join("::"), p);
            }
        }
    }
    out
}

/// The source without comments, string literals and `#[cfg(test)] mod tests` blocks.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Paths named after `crate::` (and `super::`, resolved), with `{a, b::c}` groups expanded.
fn used_paths(module: &str, is_mod_file: bool, text: &str) -> Vec<String> {
    let code = code(text);
    let mut out = Vec::new();
    let parent = {
        let mut p: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        if !is_mod_file {
            p.pop();
        }
        p.join("::")
    };
    for (prefix, base) in [("crate::", String::new()), ("super::", parent)] {
        for (i, _) in code.match_indices(prefix) {
            // Skip identifiers that merely end in the prefix, and the inner `super::` of
            // `super::super::`.
            let before = code[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| {
                    !(c.is_alphanumeric()
                        || c == '_'
                        || c == ':'
                        || c == '{'
                        || c == '}'
                        || c == ','
                        || c == ' '
                        || c == '\n')
                })
                .unwrap_or(rest.len());
            let item = &rest[..end];
            let item = if item.contains('{') {
                item
            } else {
                item.split([',', ' ', '\n', '}']).next().unwrap_or("")
            };
            // `super::super::x` climbs once more per `super`.
            let mut item = item;
            let mut base: Vec<&str> = base.split("::").filter(|s| !s.is_empty()).collect();
            while let Some(rest) = item.strip_prefix("super::") {
                base.pop();
                item = rest;
            }
            let base = base.join("::");
            let join = |p: &str| {
                if base.is_empty() {
                    p.to_string()
                } else {
                    format!("{base}::{p}")
                }
            };
            match item.split_once('{') {
                Some((head, group)) => {
                    let group = group.split('}').next().unwrap_or("");
                    for g in group.split(',') {
                        let g = g.trim().split(' ').next().unwrap_or("");
                        if !g.is_empty() {
                            out.push(join(&format!("{head}{g}")));
                        }
                    }
                }
                None => out.push(join(item.trim_end_matches("::"))),
            }
        }
    }
    out
}

/// For each module, the other modules (longest known prefix of each used path) it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let resolve = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].join("::"))
            .find(|m| mods.contains_key(m))
    };
    mods.iter()
        .map(|(m, file)| {
            let text = std::fs::read_to_string(file).unwrap();
            let is_mod =
                file.ends_with("mod.rs") || file.ends_with("lib.rs") || file.ends_with("main.rs");
            let deps = used_paths(m, is_mod, &text)
                .iter()
                .filter_map(|p| resolve(p))
                // A parent module declaring its children is not a use.
                .filter(|d| d != m && !d.starts_with(&format!("{m}::")) && !m.is_empty())
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

/// Every cycle's members (Tarjan's strongly connected components of size > 1).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[v].min(t.low[w]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.low[v].min(t.index[w]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The graph between top-level modules (`model::decoder` → `model`).
fn top_level(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in g {
        let a = m.split("::").next().unwrap().to_string();
        for d in deps {
            let b = d.split("::").next().unwrap().to_string();
            if a != b {
                top.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    top
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for krate in ["crates/engine/src", "crates/cli/src", "src-tauri/src"] {
        let g = graph(&root().join(krate));
        assert!(g.len() > 5, "{krate}: found only {} modules", g.len());
        let found = cycles(&g);
        assert!(found.is_empty(), "{krate}: import loops {found:?}");
        // Top-level modules too (a file-level DAG can still loop between folders).
        let found = cycles(&top_level(&g));
        assert!(
            found.is_empty(),
            "{krate}: loops between top-level modules {found:?}"
        );
    }
}

#[test]
fn engine_modules_use_only_their_layer_or_below() {
    let layer_of = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let g = graph(&root().join("crates/engine/src"));
    let mut bad = Vec::new();
    for (m, deps) in g.iter().filter(|(m, _)| !m.is_empty()) {
        let a = m.split("::").next().unwrap();
        let la = layer_of(a).unwrap_or_else(|| panic!("module `{a}` is in no layer of LAYERS"));
        for d in deps {
            let b = d.split("::").next().unwrap();
            let lb = layer_of(b).unwrap_or_else(|| panic!("module `{b}` is in no layer of LAYERS"));
            if lb > la {
                bad.push(format!("{m} → {d}"));
            }
        }
    }
    assert!(bad.is_empty(), "upward dependencies: {bad:#?}");
}

/// The checker itself finds what it must: a loop through `super::` and a `{group}` import.
#[test]
fn the_checker_sees_loops_through_groups_and_super() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(
        src.join("a/mod.rs"),
        "pub mod x;\nuse crate::{b::thing, error};\n",
    )
    .unwrap();
    std::fs::write(
        src.join("a/x.rs"),
        "// use crate::b;\nfn f() { let s = \"crate::b\"; }\n",
    )
    .unwrap();
    std::fs::write(src.join("b.rs"), "use crate::a::x::f;\npub fn g() {}\n").unwrap();
    let g = graph(src);
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
    assert!(
        g["a::x"].is_empty(),
        "comments and strings are not uses: {:?}",
        g["a::x"]
    );
    assert!(cycles(&g).is_empty());
    assert_eq!(
        cycles(&top_level(&g)).len(),
        1,
        "a → b → a::x is a loop between a and b"
    );
    std::fs::write(
        src.join("a/x.rs"),
        "pub fn f() {}\nuse super::super::b::g;\n",
    )
    .unwrap();
    let g = graph(src);
    assert_eq!(g["a::x"], BTreeSet::from(["b".to_string()]));
    assert_eq!(cycles(&g).len(), 1, "a::x → b → a::x through super: {g:?}");
}
