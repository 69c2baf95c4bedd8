//! docs/guarantees.md checked against the tests it names: every row's file
//! exists and declares its test function as a test.

use super::{code_spans, read, root, table_columns};

const PAGE: &str = "docs/guarantees.md";

/// One row of the table: a guarantee and the test that checks it.
struct Claim {
    line: usize,
    file: String,
    test: String,
}

/// The rows of every table of the page whose header has a `file` and a
/// `test` column.
fn claims(page: &str) -> (Vec<Claim>, Vec<String>) {
    let (mut claims, mut problems) = (Vec::new(), Vec::new());
    // Lines inside code fences are no table rows (and end a table).
    let mut fenced = false;
    let lines = page.lines().enumerate().map(|(i, text)| {
        if text.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        (i + 1, if fenced { "" } else { text })
    });
    for (line, file, test) in table_columns(lines, "file", "test") {
        let one = |cell: &str| -> Option<String> {
            match code_spans(cell)[..] {
                [span] => Some(span.to_owned()),
                _ => None,
            }
        };
        match (one(&file), one(&test)) {
            (Some(file), Some(test)) => claims.push(Claim { line, file, test }),
            _ => problems.push(format!(
                "{PAGE}:{line}: the file and test cells must each hold one code span"
            )),
        }
    }
    (claims, problems)
}

/// Whether an attribute marks a test (`#[test]`, `#[tokio::test(…)]`,
/// `#[test_log::test]`), not `#[cfg(test)]`.
fn is_test_attribute(line: &str) -> bool {
    line.starts_with("#[")
        && ["test]", "test(", "::test"]
            .iter()
            .any(|t| line.contains(t))
}

/// Whether `source` has a function `name` with a test attribute on it
/// (doc comments and other attributes may sit between).
fn declares_test(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    lines.iter().enumerate().any(|(at, line)| {
        let is_fn = line.split("fn ").skip(1).any(|rest| {
            rest.strip_prefix(name)
                .is_some_and(|after| after.starts_with(['(', '<']))
        });
        is_fn
            && lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
                .any(|l| is_test_attribute(l))
    })
}

#[test]
fn guarantees_name_tests_that_exist() {
    let page = read(PAGE);
    assert!(
        page.lines().any(|l| l.trim() == "## Not yet checked"),
        "{PAGE}: the heading \"Not yet checked\" is gone"
    );
    let (claims, mut problems) = claims(&page);
    assert!(
        claims.len() >= 30,
        "{PAGE}: only {} rows with a `file` and a `test` found: has the table changed shape?",
        claims.len()
    );
    for claim in &claims {
        let at = format!("{PAGE}:{}", claim.line);
        match std::fs::read_to_string(root().join(&claim.file)) {
            Err(e) => problems.push(format!("{at}: `{}`: {e}", claim.file)),
            Ok(source) if !declares_test(&source, &claim.test) => problems.push(format!(
                "{at}: `{}` has no test function `{}`",
                claim.file, claim.test
            )),
            Ok(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "guarantees without the test they claim:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_guarantee_naming_a_missing_test_is_caught() {
    let source = "#[tokio::test(flavor = \"multi_thread\")]\n/// Why.\nasync fn real() {}\n\n#[cfg(test)]\nfn helper() {}\nfn real_but_longer() {}\n";
    assert!(declares_test(source, "real"));
    assert!(!declares_test(source, "helper"), "not a test");
    assert!(
        !declares_test(source, "real_but"),
        "a prefix is not the name"
    );
    assert!(!declares_test(source, "missing"));
    let page = "| area | guarantee | file | test |\n|---|---|---|---|\n| x | y | `a.rs` | `t` |\n| x | y | `a.rs` | |\n";
    let (claims, problems) = claims(page);
    assert_eq!(claims.len(), 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
}
