//! The module map holds: dependencies between certgate's top-level modules point one way (no
//! cycle), `docs/architecture.md` names every top-level module, and nothing in the project reads
//! files from beside the repository. `unsafe` stays in the one place allowed to use it.
//!
//! A module's dependencies are the `crate::<module>` paths its files name, comments and doc
//! comments excluded, so an intra-doc link does not count as a dependency but every `use` does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules its code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let deps = graph.entry(module.clone()).or_default();
        for line in fs::read_to_string(&file).unwrap().lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && name.chars().all(|c| !c.is_uppercase()) {
                    deps.insert(name);
                }
            }
        }
    }
    // Names that are functions at the crate root (`crate::error_chain`) are not modules.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// A cycle through `start`, if there is one, as the path of modules.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in &graph[at] {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    let mut seen = BTreeSet::new();
    walk(graph, start, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn top_level_modules_depend_on_each_other_without_cycles() {
    let graph = module_graph();
    assert!(graph.len() > 5, "found too few modules: {graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|path| path.join(" → "))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    graph.insert("d".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle_from(&graph, "a").unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(cycle_from(&graph, "d"), None);
}

#[test]
fn the_architecture_doc_names_every_top_level_module() {
    let doc = fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let missing: Vec<_> = module_graph()
        .into_keys()
        .filter(|m| !doc.contains(&format!("`{m}`")) && !doc.contains(&format!("`{m}/`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not describe: {missing:?}"
    );
}

/// Users clone the repository alone; a file read from beside it works only on a developer's machine.
#[test]
fn nothing_reads_files_from_beside_the_repository() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "fuzz/fuzz_targets"] {
        rust_files(&root().join(dir), &mut files);
    }
    for dir in ["fuzz", "benches", "tests/security", ".ci"] {
        for entry in fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && path.file_name().is_some_and(|n| n != "architecture.rs") {
                files.push(path);
            }
        }
    }
    let needle = ["..", "/shared"].concat();
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "architecture.rs"))
        .filter(|f| fs::read_to_string(f).is_ok_and(|text| text.contains(&needle)))
        .collect();
    assert!(
        offenders.is_empty(),
        "these files read from beside the repository: {offenders:?}"
    );
}

#[test]
fn unsafe_code_is_allowed_in_one_audited_place_only() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let allow = ["allow(", "unsafe_code)"].concat();
    let mut allowed: Vec<String> = files
        .iter()
        .filter(|f| fs::read_to_string(f).unwrap().contains(&allow))
        .map(|f| f.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    allowed.sort();
    assert_eq!(allowed, ["src/runtime/trim.rs"]);
    let trim = fs::read_to_string(root().join("src/runtime/trim.rs")).unwrap();
    assert_eq!(trim.matches(&allow).count(), 1, "one function, one call");
    assert_eq!(trim.matches("unsafe {").count(), 1);
    let lib = fs::read_to_string(root().join("src/lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
}
