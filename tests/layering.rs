//! The layers of `src/` (ARCHITECTURE.md, "Layers"), checked: every `crate::…`, `super::…`,
//! `self::…` path and every `use` in every `.rs` file under `src/` may name only its own
//! top-level module or one of a lower rank, and inside `core` only a file of a lower rank. A new
//! top-level module, or a file in `core`, must be placed in the table below first. Also: only
//! `http` names tiny_http, only `wechat` ureq, only `store` (and the import of an original Wafer)
//! rusqlite and mysql; and a handler in `api` calls no `Db` method (it hands its connection to
//! `core`).
//!
//! It reads text, but as Rust would: comments, strings and character literals are blanked; a
//! path inside an inline `mod x { }` is resolved from that module; and a path is followed
//! through the `use`s that re-export it (`pub use`, a `mod.rs`'s list, a glob, the root's), so
//! an upward import cannot hide behind a re-export. `#[path]` is refused. A failure names the
//! offending file and line, and the `use` a path went through.

use std::collections::{BTreeMap, BTreeSet};
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
fn module_of(rel: &str) -> Vec<String> {
    let mut segs: Vec<String> = rel.split('/').skip(1).map(str::to_string).collect();
    let last = segs.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" => {}
        file => segs.push(file.trim_end_matches(".rs").to_string()),
    }
    segs
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The text with comments, string and character literals blanked (newlines kept, so lines
/// keep their numbers): a doc link or a log target is not an import, and braces balance.
fn scrub(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if at(i) == 'r'
            && (i == 0 || !ident(at(i - 1)) || (at(i - 1) == 'b' && (i < 2 || !ident(at(i - 2)))))
            && {
                let mut j = i + 1;
                while at(j) == '#' {
                    j += 1;
                }
                at(j) == '"'
            }
        {
            // A raw string: `r"…"`, `r#"…"#`, `br"…"`.
            let mut hashes = 0;
            i += 1;
            while at(i) == '#' {
                hashes += 1;
                i += 1;
            }
            out.push('r');
            out.extend(std::iter::repeat_n('#', hashes));
            out.push('"');
            i += 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    out.push('"');
                    out.extend(std::iter::repeat_n('#', hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if at(i) == '"' {
            out.push('"');
            i += 1;
            while i < c.len() {
                match c[i] {
                    '\\' => {
                        out.push(' ');
                        out.push(blank(at(i + 1)));
                        i += 2;
                    }
                    '"' => {
                        out.push('"');
                        i += 1;
                        break;
                    }
                    ch => {
                        out.push(blank(ch));
                        i += 1;
                    }
                }
            }
        } else if at(i) == '\'' && (at(i + 1) == '\\' || (at(i + 1) != '\'' && at(i + 2) == '\'')) {
            // A character literal (`'{'`, `b'"'`, `'\''`, `'\u{7f}'`), not a lifetime.
            out.push('\'');
            i += 1;
            if at(i) == '\\' {
                out.push_str("  ");
                i += 2;
            }
            while i < c.len() && c[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push('\'');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Each path of a `use` tree or a `crate::`/`super::`/`self::` path at `at`, as written
/// (`super::super::x::{a, b as c, self, *}` → `[super, super, x, a]`, …), with the name it
/// binds (`c` for `b as c`, `x` for `x::{self}`, none for `*` or `as _`); and where it ends.
fn tree(
    s: &[u8],
    mut at: usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    let mut segs = prefix;
    let skip_ws = |at: &mut usize| {
        while *at < s.len() && s[*at].is_ascii_whitespace() {
            *at += 1;
        }
    };
    loop {
        skip_ws(&mut at);
        if s[at..].starts_with(b"::") && segs.is_empty() {
            // `::mysql::…`: an outside crate.
            segs.push(String::new());
            at += 2;
            continue;
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
                at = tree(s, at, segs.clone(), out);
            }
        }
        let start = at;
        while at < s.len() && (is_ident(s[at]) || s[at] == b'*') {
            at += 1;
        }
        if at > start {
            segs.push(String::from_utf8_lossy(&s[start..at]).into_owned());
        }
        if s[at..].starts_with(b"::") {
            at += 2;
            continue;
        }
        if segs.last().is_some_and(|l| l == "self") && segs.len() > 1 {
            segs.pop();
        }
        let mut name = segs.last().filter(|l| *l != "*").cloned();
        let mut look = at;
        skip_ws(&mut look);
        if s[look..].starts_with(b"as") && s.get(look + 2).is_some_and(|c| c.is_ascii_whitespace())
        {
            look += 2;
            skip_ws(&mut look);
            let start = look;
            while look < s.len() && is_ident(s[look]) {
                look += 1;
            }
            let alias = String::from_utf8_lossy(&s[start..look]).into_owned();
            name = (alias != "_").then_some(alias);
            at = look;
        }
        out.push((segs, name));
        return at;
    }
}

/// One path a file names, as written, in the module it is written in (the file's, or an inline
/// `mod x { }` inside it).
struct Written {
    line: usize,
    module: Vec<String>,
    raw: Vec<String>,
    /// The name a `use` at module level binds there (`pub` or not: a child module sees it
    /// through `super::`), and whether it is a glob.
    binds: Option<String>,
    glob: bool,
}

/// A file read: its module, its code (scrubbed), the paths it names, and what it cannot be
/// checked for.
struct Read {
    shown: String,
    module: Vec<String>,
    code: String,
    written: Vec<Written>,
    refused: Vec<String>,
}

/// Read one file: every `use` tree and every `crate::`/`super::`/`self::` path, each in the
/// module it is written in (inline `mod x { }` blocks followed by their braces), and the
/// modules it declares (`mod x;`, `mod x { }`) into `modules`.
fn read(shown: &str, text: &str, modules: &mut BTreeSet<Vec<String>>) -> Read {
    let module = module_of(shown);
    let code = scrub(text);
    let s = code.as_bytes();
    let mut written = Vec::new();
    let mut refused = Vec::new();
    let (mut depth, mut inline, mut pending) = (0usize, Vec::<(String, usize)>::new(), None);
    let word = |i: usize, w: &[u8]| {
        s[i..].starts_with(w) && !s.get(i + w.len()).copied().is_some_and(is_ident)
    };
    let ident_at = |mut j: usize| {
        while j < s.len() && s[j].is_ascii_whitespace() {
            j += 1;
        }
        let start = j;
        while j < s.len() && is_ident(s[j]) {
            j += 1;
        }
        (String::from_utf8_lossy(&s[start..j]).into_owned(), j)
    };
    let (mut i, mut line, mut counted) = (0, 1, 0);
    while i < s.len() {
        line += s[counted..i].iter().filter(|&&b| b == b'\n').count();
        counted = i;
        let mut here = module.clone();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        let at_module_level = depth == inline.last().map_or(0, |&(_, d)| d);
        let boundary = i == 0 || !(is_ident(s[i - 1]) || s[i - 1] == b':');
        match s[i] {
            b'{' => {
                depth += 1;
                if let Some(name) = pending.take() {
                    inline.push((name, depth));
                }
            }
            b'}' => {
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            b';' => pending = None,
            b'#' if s[i..].starts_with(b"#[path") => refused.push(format!(
                "{shown}:{line}: `#[path]` puts a module where its name does not say; this check maps files to modules by their place, so move the file instead"
            )),
            _ if boundary && word(i, b"mod") => {
                let (name, j) = ident_at(i + 3);
                let mut next = j;
                while next < s.len() && s[next].is_ascii_whitespace() {
                    next += 1;
                }
                let mut child = here.clone();
                child.push(name.clone());
                modules.insert(child);
                if s.get(next) == Some(&b'{') {
                    pending = Some(name);
                }
                i = next;
                continue;
            }
            _ if boundary && word(i, b"use") => {
                let mut leaves = Vec::new();
                i = tree(s, i + 3, Vec::new(), &mut leaves);
                for (raw, name) in leaves {
                    let glob = raw.last().is_some_and(|l| l == "*");
                    written.push(Written {
                        line,
                        module: here.clone(),
                        binds: name.filter(|_| at_module_level),
                        glob: glob && at_module_level,
                        raw,
                    });
                }
                continue;
            }
            _ if boundary
                && (s[i..].starts_with(b"crate::")
                    || s[i..].starts_with(b"super::")
                    || s[i..].starts_with(b"self::")) =>
            {
                let mut leaves = Vec::new();
                i = tree(s, i, Vec::new(), &mut leaves);
                for (raw, _) in leaves {
                    written.push(Written { line, module: here.clone(), raw, binds: None, glob: false });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Read {
        shown: shown.to_string(),
        module,
        code,
        written,
        refused,
    }
}

/// A written path resolved from the crate root; an outside crate's path starts with `::name`.
/// A plain first segment is a child module when one of that name is declared, else an outside
/// crate or a local item (`Dialect::Plain`).
fn resolve(w: &Written, modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    let raw = &w.raw;
    let Some(first) = raw.first() else {
        return Vec::new();
    };
    match first.as_str() {
        "crate" | "self" | "super" => {
            // `crate::`, `self::` and any number of `super::`, in any order Rust allows.
            let mut at = w.module.clone();
            let mut rest = &raw[..];
            while let Some((head, tail)) = rest.split_first() {
                match head.as_str() {
                    "crate" => at.clear(),
                    "self" => {}
                    "super" => {
                        at.pop();
                    }
                    _ => break,
                }
                rest = tail;
            }
            [&at[..], rest].concat()
        }
        "" => {
            let mut p = raw[1..].to_vec();
            if let Some(f) = p.first_mut() {
                *f = format!("::{f}");
            }
            p
        }
        _ => {
            let mut child = w.module.clone();
            child.push(first.clone());
            if modules.contains(&child) {
                [&w.module[..], &raw[..]].concat()
            } else {
                let mut p = raw.clone();
                p[0] = format!("::{first}");
                p
            }
        }
    }
}

/// What `use` declarations make a name in a module stand for: `(module, name)` → the path it
/// names and where the `use` is; a module's globs → the modules they open.
#[derive(Default)]
struct Uses {
    names: BTreeMap<(Vec<String>, String), (Vec<String>, String)>,
    globs: BTreeMap<Vec<String>, Vec<(Vec<String>, String)>>,
}

/// Follow a path through the `use` declarations that re-export it (`crate::Handle` where
/// `lib.rs` has `pub use http::Handle;` → `crate::http::Handle`), to where it is defined; with
/// the `use`s passed through.
fn follow(
    path: &[String],
    uses: &Uses,
    modules: &BTreeSet<Vec<String>>,
) -> (Vec<String>, Vec<String>) {
    let mut p = path.to_vec();
    let mut via = Vec::new();
    'again: for _ in 0..16 {
        for i in 0..p.len() {
            if p[0].starts_with("::") {
                break 'again;
            }
            let (prefix, name) = (&p[..i], &p[i]);
            if let Some((target, at)) = uses.names.get(&(prefix.to_vec(), name.clone())) {
                if target[..] != p[..=i] {
                    p = [&target[..], &p[i + 1..]].concat();
                    via.push(at.clone());
                    continue 'again;
                }
            }
            if modules.contains(&p[..=i].to_vec()) {
                continue;
            }
            // An item of `prefix`, or one a single glob brings in.
            if let Some([(target, at)]) = uses.globs.get(prefix).map(Vec::as_slice) {
                p = [&target[..], &p[i..]].concat();
                via.push(at.clone());
                continue 'again;
            }
            break 'again;
        }
        break;
    }
    (p, via)
}

/// What is wrong with `module` (a file's) naming `path` (from the crate root), if anything.
fn judge(module: &[String], path: &[String]) -> Option<String> {
    let top = &module[0];
    let my_rank = rank(LAYERS, top)?;
    let first = path.first()?;
    if first == "*" {
        return None;
    }
    let shown = path.join("::");
    let Some(their_rank) = rank(LAYERS, first) else {
        return Some(format!("`crate::{shown}` is not in the layer table"));
    };
    if first != top {
        return (their_rank >= my_rank).then(|| {
            format!("{top} (rank {my_rank}) uses crate::{shown} ({first}, rank {their_rank}): upward or sideways")
        });
    }
    if top != "core" || module.len() < 2 || path.len() < 2 || module[1] == path[1] {
        return None;
    }
    let (mine, theirs) = (rank(CORE, &module[1])?, rank(CORE, &path[1])?);
    (theirs >= mine).then(|| {
        format!(
            "core::{} (rank {mine}) uses crate::{shown} (core::{}, rank {theirs}): only a lower rank",
            module[1], path[1]
        )
    })
}

/// What is wrong with the files (path relative to the package root, text), one line each. The
/// files are read together: a `use` in one (a re-export) is followed from another.
fn check(files: &[(&str, &str)]) -> Vec<String> {
    let (read, uses, modules) = index(files);
    read.iter()
        .flat_map(|r| check_one(r, &uses, &modules))
        .collect()
}

/// The files read, what their `use`s bind, and every module (from the file names and the
/// `mod` declarations).
fn index(files: &[(&str, &str)]) -> (Vec<Read>, Uses, BTreeSet<Vec<String>>) {
    let mut modules = BTreeSet::new();
    for (shown, _) in files {
        let m = module_of(shown);
        for k in 1..=m.len() {
            modules.insert(m[..k].to_vec());
        }
    }
    let read: Vec<Read> = files
        .iter()
        .map(|(f, t)| read(f, t, &mut modules))
        .collect();
    let mut uses = Uses::default();
    for r in &read {
        for w in &r.written {
            let at = format!("{}:{}", r.shown, w.line);
            let target = resolve(w, &modules);
            if w.glob {
                let opened = target[..target.len() - 1].to_vec();
                uses.globs
                    .entry(w.module.clone())
                    .or_default()
                    .push((opened, at));
            } else if let Some(name) = &w.binds {
                uses.names
                    .insert((w.module.clone(), name.clone()), (target, at));
            }
        }
    }
    (read, uses, modules)
}

fn check_one(r: &Read, uses: &Uses, modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    let (shown, module) = (&r.shown, &r.module);
    let mut wrong = r.refused.clone();
    let Some(top) = module.first() else {
        return wrong; // lib.rs declares the modules (its re-exports are followed from the users).
    };
    if rank(LAYERS, top).is_none() {
        wrong.push(format!(
            "{shown}: top-level module `{top}` is not in the layer table"
        ));
        return wrong;
    }
    if top == "core" && module.len() > 1 && rank(CORE, &module[1]).is_none() {
        wrong.push(format!(
            "{shown}: `core::{}` is not in the core table",
            module[1]
        ));
    }
    for w in &r.written {
        let path = resolve(w, modules);
        if path.is_empty() || path[0].starts_with("::") {
            continue; // An outside crate as written: the text check below.
        }
        let (to, via) = follow(&path, uses, modules);
        // A name the root re-exports (`crate::Handle`) is judged by what it stands for alone.
        let at_root = rank(LAYERS, &path[0]).is_none() && !via.is_empty();
        if let Some(why) = judge(module, &path).filter(|_| !at_root) {
            wrong.push(format!("{shown}:{}: {why}", w.line));
            continue;
        }
        if via.is_empty() {
            continue;
        }
        let to_shown = match to[0].strip_prefix("::") {
            Some(_) => to.join("::")[2..].to_string(),
            None => format!("crate::{}", to.join("::")),
        };
        let through = format!(
            "crate::{} is {to_shown} (`use` at {})",
            path.join("::"),
            via.join(", ")
        );
        if let Some(krate) = to[0].strip_prefix("::") {
            let confined = CONFINED
                .iter()
                .find(|(k, _)| k.trim_end_matches("::") == krate);
            if let Some((k, allowed)) = confined {
                if !allowed.iter().any(|a| shown.starts_with(a)) {
                    wrong.push(format!(
                        "{shown}:{}: names `{k}` (only {allowed:?} may): {through}",
                        w.line
                    ));
                }
            }
        } else if let Some(why) = judge(module, &to) {
            wrong.push(format!("{shown}:{}: {why}: {through}", w.line));
        }
    }
    if shown.starts_with("src/api/") {
        for (n, l) in r.code.lines().enumerate() {
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
        for (n, l) in r.code.lines().enumerate() {
            let hit = l.match_indices(krate).any(|(at, _)| {
                // Not inside a longer name or path.
                at == 0 || !matches!(l.as_bytes()[at - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b':')
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
    let mut texts = Vec::new();
    let mut per_top: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(root).unwrap();
        let rel = rel.to_string_lossy().replace('\\', "/");
        if let Some(top) = module_of(&rel).first() {
            *per_top.entry(top.clone()).or_default() += 1;
        }
        texts.push((rel, std::fs::read_to_string(file).unwrap()));
    }
    let texts: Vec<(&str, &str)> = texts
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let wrong = check(&texts);
    // It sees the tree's re-exports: a glob, a list in a `mod.rs`, the root's.
    let (_, uses, modules) = index(&texts);
    for (from, to) in [
        ("wechat::WeChat", "wechat::client::WeChat"),
        ("api::Context", "api::context::Context"),
        ("crypto::ct_eq", "::wafer_crypto::ct_eq"),
    ] {
        let path: Vec<String> = from.split("::").map(str::to_string).collect();
        assert_eq!(follow(&path, &uses, &modules).0.join("::"), to);
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
        let got = check(&[(file, text)]);
        assert_eq!(got.len(), expected.len(), "{file}: {got:?}");
        for (g, e) in got.iter().zip(expected.iter()) {
            assert!(g.contains(e), "{file}: {g:?} should contain {e:?}");
        }
    }
}

/// The checker follows what a path stands for: an upward import hidden behind a `pub use`
/// (at the root, in a `mod.rs`, through a glob, onto a confined crate) is caught at the file
/// that uses it, naming the `use`; a path written inside an inline `mod x { }` is resolved from
/// that module; and a `#[path]` is refused.
#[test]
fn the_checker_follows_reexports_and_inline_modules() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        // `crate::Handle` is `crate::http::Handle`: core would use http.
        (
            &[
                ("src/lib.rs", "pub mod core;\npub mod http;\n\npub use http::Handle;\n"),
                ("src/core/session.rs", "use crate::Handle;\n"),
            ],
            &["src/core/session.rs:1: core (rank 6) uses crate::http::Handle (http, rank 8): upward or sideways: crate::Handle is crate::http::Handle (`use` at src/lib.rs:4)"],
        ),
        // Inside `core`, a re-export in `core/mod.rs` hides `component` from `credential`.
        (
            &[
                ("src/core/mod.rs", "pub mod component;\npub mod credential;\npub(crate) use component::{authorize as auth};\n"),
                ("src/core/credential.rs", "fn f() {\n    super::auth();\n}\n"),
            ],
            &["src/core/credential.rs:2: core::credential (rank 1) uses crate::core::component::authorize (core::component, rank 3): only a lower rank: crate::core::auth is"],
        ),
        // The same through a glob, and a chain of two re-exports.
        (
            &[
                ("src/core/mod.rs", "mod component;\npub use component::*;\n"),
                ("src/core/component.rs", "pub use crate::api::Reply;\n"),
                ("src/store/apps.rs", "use crate::core::Reply;\n"),
            ],
            &[
                "src/core/component.rs:1: core (rank 6) uses crate::api::Reply",
                "src/store/apps.rs:1: store (rank 5) uses crate::core::Reply (core, rank 6)",
            ],
        ),
        (
            &[
                ("src/api/mod.rs", "mod context;\npub use context::Context;\n"),
                ("src/api/context.rs", "pub use crate::store::Db as Context;\n"),
                ("src/core/mod.rs", "pub use crate::api::Context;\n"),
            ],
            &["src/core/mod.rs:1: core (rank 6) uses crate::api::Context (api, rank 7)"],
        ),
        // A confined crate re-exported by its owner, named elsewhere through it.
        (
            &[
                ("src/store/mod.rs", "pub use rusqlite::Connection;\n"),
                ("src/core/session.rs", "fn f(_: &crate::store::Connection) {}\n"),
            ],
            &["src/core/session.rs:1: names `rusqlite::` (only [\"src/store/\"] may): crate::store::Connection is rusqlite::Connection (`use` at src/store/mod.rs:1)"],
        ),
        // Downward re-exports pass, as does a name defined beside a glob.
        (
            &[
                ("src/wechat/mod.rs", "mod client;\npub use client::*;\n"),
                ("src/wechat/client.rs", "pub use crate::secret::Secret;\npub struct WeChat;\n"),
                ("src/core/session.rs", "use crate::wechat::{Secret, WeChat};\n"),
            ],
            &[],
        ),
        // An inline module: `super::super` from `core::credential::inner` is `core`.
        (
            &[(
                "src/core/credential.rs",
                "#[cfg(test)]\nmod inner {\n    use super::super::error::Error;\n    fn f() {\n        let _ = '{';\n    }\n    use super::super::component::Flow;\n}\nuse super::session::X;\n",
            )],
            &[
                "src/core/credential.rs:7: core::credential (rank 1) uses crate::core::component::Flow",
                "src/core/credential.rs:9: core::credential (rank 1) uses crate::core::session::X",
            ],
        ),
        (
            &[("src/api/v1.rs", "mod a {\n    mod b {\n        use super::super::super::context::Context;\n        use self::super::super::super::super::http::Handle;\n    }\n}\n")],
            &["src/api/v1.rs:4: api (rank 7) uses crate::http::Handle"],
        ),
        (
            &[("src/core/session.rs", "#[path = \"elsewhere.rs\"]\nmod hidden;\n")],
            &["src/core/session.rs:1: `#[path]`"],
        ),
        // Strings, comments and character literals are not code.
        (
            &[("src/core/session.rs", "const A: &str = \"crate::http::X }\";\n/* crate::http::Y\n */ const B: char = '\"';\nconst C: &str = r#\"crate::api::\"#;\nuse crate::api::Z;\n")],
            &["src/core/session.rs:5: core (rank 6) uses crate::api::Z"],
        ),
    ];
    for (files, expected) in cases {
        let got = check(files);
        assert_eq!(got.len(), expected.len(), "{files:?}: {got:#?}");
        for (g, e) in got.iter().zip(expected.iter()) {
            assert!(g.contains(e), "{g:?} should contain {e:?}");
        }
    }
}
