//! The layers of `src/` (ARCHITECTURE.md, "Layers"), checked: every `crate::…` and `super::…`
//! path in every `.rs` file under `src/` may name only its own top-level module or one of a
//! lower rank, and inside `core` only a file of a lower rank. A new top-level module, or a file
//! in `core`, must be placed in the table below first. Also: only `http` names tiny_http, only
//! `wechat` ureq, only `store` (and the import of an original Wafer) rusqlite and mysql; and a
//! handler in `api` calls no `Db` method (it hands its connection to `core`).
//!
//! A failure names the offending file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by rank: a module may use its own and those of a lower rank, never a higher
/// one, never another of the same rank.
const LAYERS: &[(&str, u8)] = &[
    // The crypto crate (re-exported as `crate::crypto`): no I/O at all.
    ("crypto", 0),
    // Support: importable from anywhere below `cli`, importing nothing above themselves.
    ("secret", 1),
    ("ids", 2),
    ("logging", 2),
    ("metrics", 2),
    ("config", 3),
    ("seal", 4),
    // The two outsides: WeChat's HTTP API and the database.
    ("wechat", 5),
    ("store", 5),
    // What wafer does, whatever the transport.
    ("core", 6),
    // The dialects: parse → core → render.
    ("api", 7),
    // The only tiny_http user: the server, its workers, the route table, the upstream pool.
    ("http", 8),
    // The command line, then the binary.
    ("cli", 9),
    ("main", 10),
];

/// Inside `core`, by rank: a file may use those of a lower rank only (no cycles).
const CORE: &[(&str, u8)] = &[
    ("error", 0),
    ("cos", 1),
    ("push", 1),
    ("probe", 1),
    ("credential", 1),
    ("accounts", 2),
    ("session", 2),
    ("gateway", 2),
    ("component", 3),
];

/// External crates only some top-level modules (or files) may name.
const CONFINED: &[(&str, &[&str])] = &[
    ("tiny_http::", &["src/http/"]),
    ("ureq::", &["src/wechat/"]),
    ("rusqlite::", &["src/store/"]),
    ("mysql::", &["src/store/", "src/cli/import_wafer.rs"]),
];

fn rank(table: &[(&str, u8)], name: &str) -> Option<u8> {
    table.iter().find(|(n, _)| *n == name).map(|&(_, r)| r)
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/core/credential.rs` → `["core", "credential"]`; `src/api/mod.rs` → `["api"]`;
/// `src/lib.rs` → `[]`; `src/main.rs` → `["main"]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut segs: Vec<String> = rel
        .iter()
        .skip(1) // "src"
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = segs.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" => {}
        file => segs.push(file.trim_end_matches(".rs").to_string()),
    }
    segs
}

/// The text with comment lines blanked (doc links are not imports), same length and lines.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `crate::`/`super::` prefix at `at` names, expanded through `{…}` groups, as
/// segments after the prefix (`crate::core::{accounts, credential::Key}` →
/// `[core, accounts]`, `[core, credential, Key]`).
fn expand(s: &[u8], mut at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut segs = prefix;
    loop {
        while at < s.len() && s[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < s.len() && s[at] == b'{' {
            at += 1;
            loop {
                while at < s.len() && (s[at].is_ascii_whitespace() || s[at] == b',') {
                    at += 1;
                }
                if at >= s.len() || s[at] == b'}' {
                    return at + 1;
                }
                at = expand(s, at, segs.clone(), out);
            }
        }
        let start = at;
        while at < s.len() && (s[at].is_ascii_alphanumeric() || s[at] == b'_' || s[at] == b'*') {
            at += 1;
        }
        if at > start {
            segs.push(String::from_utf8_lossy(&s[start..at]).into_owned());
        }
        if s[at..].starts_with(b"::") {
            at += 2;
            continue;
        }
        out.push(segs);
        return at;
    }
}

/// Each path the file names, resolved from the crate root, with its line.
fn paths(file_module: &[String], text: &str) -> Vec<(usize, Vec<String>)> {
    let code = code_only(text);
    let s = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary =
            i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_' || s[i - 1] == b':');
        let (base, len) = if boundary && s[i..].starts_with(b"crate::") {
            (Vec::new(), "crate::".len())
        } else if boundary && s[i..].starts_with(b"super::") {
            // `super::super::…`: each one level up from the file's module.
            let (mut up, mut len) = (0, 0);
            while s[i + len..].starts_with(b"super::") {
                up += 1;
                len += "super::".len();
            }
            let keep = file_module.len().saturating_sub(up);
            (file_module[..keep].to_vec(), len)
        } else {
            i += 1;
            continue;
        };
        let line = 1 + s[..i].iter().filter(|&&b| b == b'\n').count();
        let mut out = Vec::new();
        i = expand(s, i + len, base, &mut out);
        found.extend(out.into_iter().map(|p| (line, p)));
    }
    found
}

/// What is wrong with the file at `rel` (relative to the package root), one line each.
fn check(rel: &Path, text: &str) -> Vec<String> {
    let shown = rel.display().to_string().replace('\\', "/");
    let module = module_of(rel);
    let mut wrong = Vec::new();
    let Some(top) = module.first() else {
        return wrong; // lib.rs declares the modules.
    };
    let Some(my_rank) = rank(LAYERS, top) else {
        return vec![format!(
            "{shown}: top-level module `{top}` is not in the layer table"
        )];
    };
    if top == "core" && module.len() > 1 && rank(CORE, &module[1]).is_none() {
        wrong.push(format!(
            "{shown}: `core::{}` is not in the core table",
            module[1]
        ));
    }
    for (line, path) in paths(&module, text) {
        let Some(first) = path.first() else { continue };
        // `super::*`, a type or const at the root through a test module's `super`: not a module.
        if first == "*" || first.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        let Some(their_rank) = rank(LAYERS, first) else {
            wrong.push(format!(
                "{shown}:{line}: `crate::{}` is not in the layer table",
                path.join("::")
            ));
            continue;
        };
        if first == top {
            if top == "core" && module.len() > 1 && path.len() > 1 {
                let (Some(mine), Some(theirs)) = (rank(CORE, &module[1]), rank(CORE, &path[1]))
                else {
                    continue;
                };
                if module[1] != path[1] && theirs >= mine {
                    wrong.push(format!(
                        "{shown}:{line}: core::{} (rank {mine}) uses crate::{} (core::{}, rank {theirs}): only a lower rank",
                        module[1],
                        path.join("::"),
                        path[1]
                    ));
                }
            }
            continue;
        }
        if their_rank >= my_rank {
            wrong.push(format!(
                "{shown}:{line}: {top} (rank {my_rank}) uses crate::{} ({first}, rank {their_rank}): upward or sideways",
                path.join("::")
            ));
        }
    }
    let code = code_only(text);
    if shown.starts_with("src/api/") {
        for (n, l) in code.lines().enumerate() {
            if l.contains(".db.") {
                wrong.push(format!(
                    "{shown}:{}: a handler calls a `Db` method (it hands `w.db` to `core`)",
                    n + 1
                ));
            }
        }
    }
    for (krate, allowed) in CONFINED {
        if allowed.iter().any(|a| shown.starts_with(a)) {
            continue;
        }
        for (n, l) in code.lines().enumerate() {
            let hit = l.match_indices(krate).any(|(at, _)| {
                // Not inside a longer name or path, not a string (`"ureq::pool"`, a log target).
                at == 0 || !matches!(l.as_bytes()[at - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b':' | b'"')
            });
            if hit {
                wrong.push(format!(
                    "{shown}:{}: names `{krate}` (only {allowed:?} may)",
                    n + 1
                ));
            }
        }
    }
    wrong
}

#[test]
fn every_import_points_down_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files);
    files.sort();
    assert!(files.len() > 30, "src/ read: {} files", files.len());
    let mut wrong = Vec::new();
    let mut per_top: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(root).unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        if let Some(top) = module_of(rel).first() {
            *per_top.entry(top.clone()).or_default() += 1;
        }
        wrong.extend(check(rel, &text));
    }
    assert!(
        per_top.contains_key("core") && per_top.contains_key("http"),
        "{per_top:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

/// The checker itself: an upward import, a sideways one, a cycle inside `core`, a `super::`
/// that climbs out and a confined crate are each caught, with file and line; downward ones pass.
#[test]
fn the_checker_catches_what_it_must() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "src/core/session.rs",
            "use crate::store::Db;\nuse crate::core::credential::Key;\n",
            &[],
        ),
        (
            "src/http/mod.rs",
            "use crate::api::{\n    guard, v1,\n};\nfn f(rq: tiny_http::Request) {}\n",
            &[],
        ),
        (
            "src/wechat/client.rs",
            "fn f() {\n    crate::core::error::Error::Db;\n}\n",
            &["src/wechat/client.rs:2:"],
        ),
        (
            "src/api/v1.rs",
            "use crate::{config::Config, http::Handle};\n",
            &["src/api/v1.rs:1: api (rank 7) uses crate::http::Handle"],
        ),
        (
            "src/store/apps.rs",
            "use crate::wechat::WeChat;\n",
            &["src/store/apps.rs:1:"],
        ),
        (
            "src/core/credential.rs",
            "\n\nuse crate::core::component;\n",
            &["src/core/credential.rs:3: core::credential"],
        ),
        (
            "src/api/gateway_routes.rs",
            "use super::super::http::Reply;\n",
            &["src/api/gateway_routes.rs:1:"],
        ),
        (
            "src/core/session.rs",
            "// crate::http::Handle in a comment\nfn f(_: &rusqlite::Connection) {}\n",
            &["src/core/session.rs:2: names `rusqlite::`"],
        ),
        ("src/gadget.rs", "", &["not in the layer table"]),
        (
            "src/api/mina.rs",
            "fn f(w: &Context) {\n    core::session::check(&w.db, 1);\n    w.db.app(\"x\");\n}\n",
            &["src/api/mina.rs:3: a handler calls a `Db` method"],
        ),
    ];
    for (file, text, expected) in cases {
        let got = check(Path::new(file), text);
        assert_eq!(got.len(), expected.len(), "{file}: {got:?}");
        for (g, e) in got.iter().zip(expected.iter()) {
            assert!(g.contains(e), "{file}: {g:?} should contain {e:?}");
        }
    }
}
