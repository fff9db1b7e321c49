//! Keeps the crate's imports running one way (the crate documentation's list): reads every
//! source file and refuses an import of a folder the file's own folder may not use.

use std::path::{Path, PathBuf};

/// The folders and loose modules, lowest first: each may use the ones before it.
const LAYERS: [&[&str]; 8] = [
    &["nc", "fault"],
    &["input"],
    &["output"],
    &["station"],
    &["run"],
    &["tools"],
    &["cli", "lib", "layers"],
    &["main"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code names through a path (`crate::X`,
/// `shoal_manager::X`, or `super::` as far up as the crate's root from `module`, the file's own
/// module path), comments left out.
fn named(line: &str, module: &[String]) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        // A path begins here: not in the middle of an identifier or after `::`.
        let starts = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let rest = &code[i..];
        if starts {
            for root in ["crate::", "shoal_manager::"] {
                if let Some(after) = rest.strip_prefix(root) {
                    found.push(ident(after));
                }
            }
            let mut after = rest;
            let mut up = 0;
            while let Some(a) = after.strip_prefix("super::") {
                after = a;
                up += 1;
            }
            if up > 0 && up <= module.len() {
                let mut path = module[..module.len() - up].to_vec();
                path.push(ident(after));
                found.push(path[0].clone());
            }
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    found.retain(|n| !n.is_empty());
    found
}

/// What `file` (a path under `src/`) imports against the layers, as "file:line: uses X".
fn crossings(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let own = first.trim_end_matches(".rs").to_string();
        let mine = layer(&own).unwrap_or_else(|| panic!("{}: in no layer", rel.display()));
        // The file's module path: `run/fabric.rs` is run::fabric, `run/mod.rs` is run.
        let mut module: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect();
        if module
            .last()
            .is_some_and(|m| m == "mod" || m == "lib" || m == "main")
        {
            module.pop();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (k, line) in text.lines().enumerate() {
            for name in named(line, &module) {
                let Some(theirs) = layer(&name) else {
                    continue;
                };
                if name != own && theirs >= mine {
                    bad.push(format!(
                        "{}:{}: `{own}` uses `{name}`",
                        rel.display(),
                        k + 1
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = crossings(&src);
    assert!(
        bad.is_empty(),
        "imports against the layers (lib.rs's list):\n{}",
        bad.join("\n")
    );
    // No flat aliases at the root: an import names the folder it crosses into.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(
        !lib.lines().any(|l| l.trim_start().starts_with("pub use")),
        "lib.rs re-exports a module under a short name"
    );
}

#[test]
fn the_layer_check_refuses_an_import_that_runs_back() {
    let dir = std::env::temp_dir().join(format!("shoal-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::write(
        dir.join("input/config.rs"),
        "// crate::run in a comment is fine\nuse crate::run::schedule;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("run/mod.rs"),
        "use crate::input::config;\nuse super::output::Storage;\n",
    )
    .unwrap();
    std::fs::write(dir.join("run/fabric.rs"), "use super::super::tools::x;\n").unwrap();
    let bad = crossings(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        bad,
        vec![
            "input/config.rs:2: `input` uses `run`".to_string(),
            "run/fabric.rs:1: `run` uses `tools`".to_string(),
        ]
    );
}
