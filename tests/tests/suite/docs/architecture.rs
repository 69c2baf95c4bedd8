//! ARCHITECTURE.md checked against the code: every file it names exists, and
//! every function or type it places in a file is declared there.
//!
//! What counts as naming something, so that prose stays free:
//! * a code span that is a path (`gateway/src/app.rs`, `shared/`) — it must
//!   exist; so must every `.rs` path in a diagram;
//! * in a table with a `file` and a `names` column, each code span of the
//!   `names` cell — declared in that row's file;
//! * "`name` in `file`" in prose — declared in that file.

use std::path::Path;

use super::{code_spans, read, root, table_columns};

const PAGE: &str = "ARCHITECTURE.md";

/// Extensions of the files a path-like code span may name.
const FILE_EXTENSIONS: &[&str] = &[
    ".rs", ".md", ".toml", ".yml", ".yaml", ".sh", ".py", ".conf", ".json", ".lock",
];

/// Whether a code span names a file or folder of the repository: no spaces or
/// placeholders, and a path under one of the repository's top-level entries,
/// or a file with a known extension.
fn path_like(span: &str) -> bool {
    if span.is_empty()
        || span.starts_with('/')
        || span.contains("://")
        || span
            .chars()
            .any(|c| c.is_whitespace() || "<>{}*$?".contains(c))
    {
        return false;
    }
    let Some((first, _)) = span.split_once('/') else {
        // A bare name: only files at the root, such as `README.md`.
        return [".md", ".toml", ".yml"].iter().any(|e| span.ends_with(e));
    };
    FILE_EXTENSIONS.iter().any(|e| span.ends_with(e)) || root().join(first).is_dir()
}

/// Whether `c` may be part of a Rust identifier.
fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `text` has `word` as a whole word right after `prefix` (e.g.
/// `fn submit`, not `fn submit_all`).
fn has_after(text: &str, prefix: &str, word: &str) -> bool {
    let needle = format!("{prefix}{word}");
    text.match_indices(&needle).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + needle.len()..].chars().next();
        !before.is_some_and(ident_char) && !after.is_some_and(ident_char)
    })
}

/// Whether `source` declares `name`: an item, or (for a type) an `impl` of
/// it, or (for a capitalised name) an enum variant.
fn declares(source: &str, name: &str) -> bool {
    let item = [
        "fn ", "struct ", "enum ", "trait ", "type ", "const ", "static ", "mod ",
    ]
    .iter()
    .any(|kw| has_after(source, kw, name));
    let capitalised = name.starts_with(|c: char| c.is_ascii_uppercase());
    let implemented =
        capitalised && (has_after(source, "impl ", name) || has_after(source, " for ", name));
    let variant = capitalised
        && source.lines().any(|line| {
            line.trim_start()
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['(', ' ', ',', '{']) || rest.is_empty())
        });
    item || implemented || variant
}

/// Whether a code span is a Rust name or a path of names (`Node::submit`).
fn is_name(span: &str) -> bool {
    !span.is_empty()
        && span
            .split("::")
            .all(|part| !part.is_empty() && part.chars().all(ident_char))
}

/// Checks that `name` (`Type::method`, `module::function`, `name`) is declared
/// in `file`; a problem otherwise.
fn check_name(file: &str, name: &str, problems: &mut Vec<String>) {
    let Ok(source) = std::fs::read_to_string(root().join(file)) else {
        problems.push(format!("`{file}` (for `{name}`) cannot be read"));
        return;
    };
    let stem = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let parts: Vec<&str> = name.split("::").collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let module = !last && !part.starts_with(|c: char| c.is_ascii_uppercase());
        let found = if module {
            // A module path's segment: the file itself, or a module in it.
            *part == stem || has_after(&source, "mod ", part)
        } else {
            declares(&source, part)
        };
        if !found {
            problems.push(format!("`{name}`: `{part}` is not declared in `{file}`"));
        }
    }
}

/// Lines of a page with their numbers (from 1).
type Lines<'a> = Vec<(usize, &'a str)>;

/// Lines outside code fences, and the lines inside them, apart.
fn split_fences(page: &str) -> (Lines<'_>, Lines<'_>) {
    let (mut prose, mut fenced) = (Vec::new(), Vec::new());
    let mut inside = false;
    for (i, line) in page.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
            continue;
        }
        if inside {
            fenced.push((i + 1, line));
        } else {
            prose.push((i + 1, line));
        }
    }
    (prose, fenced)
}

fn check_paths(prose: &[(usize, &str)], fenced: &[(usize, &str)], problems: &mut Vec<String>) {
    for (line, text) in prose {
        for span in code_spans(text) {
            if path_like(span) && !root().join(span).exists() {
                problems.push(format!("{PAGE}:{line}: `{span}` does not exist"));
            }
        }
    }
    for (line, text) in fenced {
        for word in text.split_whitespace() {
            let word = word.trim_matches(|c: char| "(),;:".contains(c));
            if word.contains('/') && word.ends_with(".rs") && !root().join(word).exists() {
                problems.push(format!(
                    "{PAGE}:{line}: {word} (in a diagram) does not exist"
                ));
            }
        }
    }
}

/// Every table with a `file` and a `names` column: the names of a row are
/// declared in its file. Returns how many names were checked.
fn check_tables(prose: &[(usize, &str)], problems: &mut Vec<String>) -> usize {
    let mut checked = 0;
    for (line, file, names) in table_columns(prose.iter().copied(), "file", "names") {
        let files = code_spans(&file).to_vec();
        let [path] = files[..] else {
            problems.push(format!("{PAGE}:{line}: the file cell must hold one `path`"));
            continue;
        };
        let spans = code_spans(&names);
        if spans.is_empty() {
            problems.push(format!("{PAGE}:{line}: no `name` in the names cell"));
        }
        for name in spans {
            if is_name(name) {
                check_name(path, name, problems);
                checked += 1;
            } else {
                problems.push(format!(
                    "{PAGE}:{line}: `{name}` in the names cell is not a Rust name"
                ));
            }
        }
    }
    checked
}

/// "`name` in `file`" in prose. Returns how many names were checked.
fn check_prose(prose: &[(usize, &str)], problems: &mut Vec<String>) -> usize {
    let mut checked = 0;
    for (_, text) in prose {
        // Code spans are the odd pieces between backticks.
        let pieces: Vec<&str> = text.split('`').collect();
        for i in (1..pieces.len().saturating_sub(2)).step_by(2) {
            let (name, between, file) = (pieces[i], pieces[i + 1], pieces[i + 2]);
            if between == " in " && is_name(name) && file.ends_with(".rs") && path_like(file) {
                check_name(file, name, problems);
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn architecture_names_files_and_functions_that_exist() {
    let page = read(PAGE);
    let (prose, fenced) = split_fences(&page);
    let mut problems = Vec::new();
    check_paths(&prose, &fenced, &mut problems);
    let in_tables = check_tables(&prose, &mut problems);
    let in_prose = check_prose(&prose, &mut problems);
    assert!(
        in_tables >= 20 && in_prose >= 5,
        "{PAGE}: only {in_tables} names in `file`/`names` tables and {in_prose} \"`name` in `file`\" were found: has the page's convention changed?"
    );
    assert!(
        problems.is_empty(),
        "{PAGE} and the code differ:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_checks_of_architecture_md_catch_what_they_should() {
    let exchange = read("shared/src/exchange.rs");
    assert!(declares(&exchange, "Node") && declares(&exchange, "submit"));
    assert!(
        !declares(&exchange, "sub"),
        "a prefix of a name is not the name"
    );
    assert!(declares(&exchange, "Kafka"), "an enum variant");
    let mut problems = Vec::new();
    check_name(
        "shared/src/exchange.rs",
        "exchange::Node::submit",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    check_name(
        "shared/src/exchange.rs",
        "Node::no_such_function",
        &mut problems,
    );
    check_name("shared/src/exchange.rs", "elsewhere::Node", &mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(path_like("gateway/src/app.rs") && path_like("shared/") && path_like("README.md"));
    assert!(!path_like("application/problem+json") && !path_like("/v1/replies/{id}"));
    assert!(!path_like("tests/tests/suite/<module>.rs"));
    let mut problems = Vec::new();
    let prose = [(
        1,
        "made by `submit` in `shared/src/exchange.rs` and `gone` in `shared/src/exchange.rs`",
    )];
    assert_eq!(check_prose(&prose, &mut problems), 2);
    assert_eq!(problems.len(), 1, "{problems:?}");
}
