//! The reference pages in `docs/` checked against the code they describe, so
//! that they cannot drift: every setting with its default and environment
//! variable, the record headers, the Redis keys and scripts, the problem types,
//! and the links between the pages; ARCHITECTURE.md against the files and
//! functions it names ([`architecture`]); docs/guarantees.md against the tests
//! it names ([`guarantees`]); the figures the pages quote against the committed
//! run outputs they come from ([`figures`]). No broker, no Redis.

mod architecture;
mod figures;
mod guarantees;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use replyway_gateway::problem::ProblemKind;
use replyway_shared::settings::ENV_PREFIX;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every `.rs` file under `dir` (relative to the repository), with its text.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {dir:?}: {e}"));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    walk(&root.join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
            let name = path.strip_prefix(&root).unwrap_or(&path);
            (name.display().to_string(), text)
        })
        .collect()
}

/// The text of every inline code span (`` `…` ``) of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Words made of `[A-Za-z0-9_-]` that follow `prefix` in `text`, e.g. every
/// problem type after `urn:replyway:problem:`.
fn words_after<'a>(text: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            rest[..end].trim_end_matches('-')
        })
        .filter(|w| !w.is_empty())
        .collect()
}

// ---------------------------------------------------------------- settings

/// A settings value flattened to dotted names (`redis.ttl`, `kafka.brokers`).
/// A table with entries is walked into; an empty table, a list and an unset
/// (`null`) value are one setting each.
fn flatten(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, value, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

fn to_json<T: serde::Serialize>(settings: &T) -> Value {
    serde_json::to_value(settings).unwrap_or_else(|e| panic!("serializing settings: {e}"))
}

/// One settings table of docs/configuration.md.
struct Table {
    heading: String,
    has_env: bool,
    rows: Vec<Row>,
}

struct Row {
    line: usize,
    name: String,
    default: String,
    env: Option<String>,
}

fn cells(line: &str) -> Vec<String> {
    let line = line.trim().trim_start_matches('|').trim_end_matches('|');
    line.replace("\\|", "\u{0}")
        .split('|')
        .map(|c| c.replace('\u{0}', "|").trim().to_owned())
        .collect()
}

/// The rows of every table among `lines` (line number, text) whose header
/// names both a `first` and a `second` column: the row's line and those two
/// cells. Separator rows are skipped; any line that is not a table row ends
/// a table.
fn table_columns<'a>(
    lines: impl IntoIterator<Item = (usize, &'a str)>,
    first: &str,
    second: &str,
) -> Vec<(usize, String, String)> {
    let mut rows = Vec::new();
    let mut columns: Option<(usize, usize)> = None;
    let mut header = true;
    for (line, text) in lines {
        if !text.trim_start().starts_with('|') {
            (columns, header) = (None, true);
            continue;
        }
        let row = cells(text);
        if header {
            header = false;
            let a = row.iter().position(|c| c == first);
            let b = row.iter().position(|c| c == second);
            columns = a.zip(b);
            continue;
        }
        let Some((a, b)) = columns else {
            continue;
        };
        if row
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let cell = |at: usize| row.get(at).cloned().unwrap_or_default();
        rows.push((line, cell(a), cell(b)));
    }
    rows
}

/// The tables of `page` whose first column is `key`, each under the heading it
/// follows.
fn settings_tables(page: &str) -> Vec<Table> {
    let mut tables: Vec<Table> = Vec::new();
    let mut heading = String::new();
    let mut columns: Option<(usize, Option<usize>)> = None;
    let mut in_table = false;
    let mut fenced = false;
    for (i, line) in page.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            heading = text.trim_start_matches('#').trim().to_owned();
        }
        if !trimmed.starts_with('|') {
            in_table = false;
            columns = None;
            continue;
        }
        let row = cells(trimmed);
        if !in_table {
            in_table = true;
            if row.first().is_some_and(|c| c == "key") {
                let default = row.iter().position(|c| c == "default").unwrap_or_else(|| {
                    panic!(
                        "configuration.md:{}: a key table without a default column",
                        i + 1
                    )
                });
                let env = row.iter().position(|c| c == "environment");
                columns = Some((default, env));
                tables.push(Table {
                    heading: heading.clone(),
                    has_env: env.is_some(),
                    rows: Vec::new(),
                });
            }
            continue;
        }
        let Some((default, env)) = columns else {
            continue;
        };
        if row
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let names = code_spans(&row[0]);
        assert!(
            !names.is_empty(),
            "configuration.md:{}: a setting row names no `setting`",
            i + 1
        );
        let table = tables
            .last_mut()
            .unwrap_or_else(|| unreachable!("a row follows its header"));
        for name in names {
            table.rows.push(Row {
                line: i + 1,
                name: name.to_owned(),
                default: row.get(default).cloned().unwrap_or_default(),
                env: env.map(|e| row.get(e).cloned().unwrap_or_default()),
            });
        }
    }
    tables
}

/// A duration as humantime writes and reads it (`500ms`, `10m`, `1day`), in
/// nanoseconds.
fn duration(text: &str) -> Option<u128> {
    let mut total = 0u128;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u128 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == ' ')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" | "sec" | "secs" => 1_000_000_000,
            "m" | "min" | "mins" => 60_000_000_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            _ => return None,
        };
        total += number * unit;
        rest = rest[unit_len..].trim_start();
    }
    Some(total)
}

/// Whether a documented default (the text of its code span) says `value`.
fn same_default(documented: &str, value: &Value) -> bool {
    match value {
        Value::String(s) => {
            s == documented
                || matches!((duration(s), duration(documented)), (Some(a), Some(b)) if a == b)
        }
        Value::Array(_) | Value::Object(_) => {
            serde_json::to_string(value).is_ok_and(|v| v == documented.replace(' ', ""))
        }
        other => serde_json::from_str::<Value>(documented).is_ok_and(|d| d == *other),
    }
}

fn env_name(setting: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        setting.replace('.', "__").to_ascii_uppercase()
    )
}

/// The sections every binary shares, documented once under "Common settings".
fn is_common(setting: &str) -> bool {
    ["redis.", "kafka.", "log."]
        .iter()
        .any(|section| setting.starts_with(section))
}

/// What one table of docs/configuration.md must list.
struct Expected {
    heading: &'static str,
    settings: BTreeMap<String, Value>,
    /// Settings whose default this test made up (required keys of optional
    /// sections): their default is not compared.
    made_up: &'static [&'static str],
}

fn check_table(table: &Table, expected: &Expected, problems: &mut Vec<String>) {
    let documented: BTreeSet<&str> = table.rows.iter().map(|r| r.name.as_str()).collect();
    for name in expected.settings.keys() {
        if !documented.contains(name.as_str()) {
            problems.push(format!(
                "setting `{name}` is not in the table under \"{}\"",
                expected.heading
            ));
        }
    }
    for row in &table.rows {
        let at = format!("configuration.md:{} (`{}`)", row.line, row.name);
        let Some(value) = expected.settings.get(&row.name) else {
            problems.push(format!(
                "{at}: no such setting of \"{}\" in the code",
                expected.heading
            ));
            continue;
        };
        if let Some(env) = &row.env
            && *env != format!("`{}`", env_name(&row.name))
        {
            problems.push(format!(
                "{at}: environment variable is `{}`, the page says {env}",
                env_name(&row.name)
            ));
        }
        let made_up = expected.made_up.iter().any(|m| row.name.starts_with(m));
        if value.is_null() || made_up || row.default.starts_with("required") {
            continue;
        }
        let spans = code_spans(&row.default);
        let single = spans.len() == 1 && row.default == format!("`{}`", spans[0]);
        if !single || !same_default(spans[0], value) {
            problems.push(format!(
                "{at}: the default is `{value}` in the code, the page says {}",
                row.default
            ));
        }
    }
}

#[test]
fn configuration_page_lists_every_setting_with_its_default_and_variable() {
    // Optional sections are unset by default: fill them in (their required
    // settings here, the rest from their defaults) so that their keys are
    // listed too.
    let mut gateway = to_json(&replyway_gateway::Settings::default());
    gateway["tls"] = json!({ "cert_file": "", "key_file": "" });
    gateway["auth"]["jwt"] = json!({});
    let gateway: replyway_gateway::Settings = serde_json::from_value(gateway)
        .unwrap_or_else(|e| panic!("[tls] or [auth.jwt] has changed: {e}"));
    let mut route = to_json(&replyway_gateway::routes::RouteConfig::default());
    route["rate_limit"] = json!({ "requests": 1, "per": "1s" });
    let route: replyway_gateway::routes::RouteConfig = serde_json::from_value(route)
        .unwrap_or_else(|e| panic!("a route's rate_limit has changed: {e}"));

    let gateway = flatten(&to_json(&gateway));
    let common: BTreeMap<String, Value> = gateway
        .iter()
        .filter(|(k, _)| is_common(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // A binary's own settings, and those of the common sections whose default
    // is its own.
    let own = |settings: BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        settings
            .into_iter()
            .filter(|(k, v)| !is_common(k) || common.get(k) != Some(v))
            .collect()
    };
    let expected = [
        Expected {
            heading: "Common settings",
            settings: common.clone(),
            made_up: &[],
        },
        Expected {
            heading: "Gateway",
            settings: own(gateway.clone()),
            made_up: &["tls."],
        },
        Expected {
            heading: "Routes",
            settings: flatten(&to_json(&route)),
            made_up: &["rate_limit."],
        },
        Expected {
            heading: "Collector",
            settings: own(flatten(&to_json(&replyway_collector::Settings::default()))),
            made_up: &[],
        },
        Expected {
            heading: "Echo service",
            settings: own(flatten(&to_json(&replyway_echo::Settings::default()))),
            made_up: &[],
        },
        Expected {
            heading: "Ledger service",
            settings: own(flatten(&to_json(&replyway_ledger::Settings::default()))),
            made_up: &[],
        },
        Expected {
            heading: "Outbox relay",
            settings: own(flatten(&to_json(
                &replyway_shared::outbox::RelaySettings::default(),
            ))),
            made_up: &[],
        },
        Expected {
            heading: "Risk-scoring services",
            settings: own(flatten(&to_json(
                &replyway_risk_scoring::Settings::default(),
            ))),
            made_up: &[],
        },
    ];

    let page = read("docs/configuration.md");
    let tables = settings_tables(&page);
    let mut problems = Vec::new();
    for table in &tables {
        match expected.iter().find(|e| e.heading == table.heading) {
            Some(e) => {
                if table.has_env != (e.heading != "Routes") {
                    problems.push(format!(
                        "the table under \"{}\" should {}have an environment column",
                        table.heading,
                        if table.has_env { "not " } else { "" }
                    ));
                }
                check_table(table, e, &mut problems);
            }
            None => problems.push(format!(
                "a settings table under \"{}\", which this test does not know",
                table.heading
            )),
        }
    }
    for e in &expected {
        if !tables.iter().any(|t| t.heading == e.heading) {
            problems.push(format!(
                "no settings table under a heading \"{}\"",
                e.heading
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and the settings types differ:\n  {}",
        problems.join("\n  ")
    );
}

// ----------------------------------------------------------------- records

#[test]
fn records_page_names_every_record_header() {
    let (file, text) = sources("shared/src")
        .into_iter()
        .find(|(_, text)| text.contains("pub mod header {"))
        .unwrap_or_else(|| {
            panic!("no `pub mod header {{` in shared/src: where did the header names go?")
        });
    let start = text.find("pub mod header {").unwrap_or_default();
    let block = &text[start..];
    let block = &block[..block.find("\n}").unwrap_or(block.len())];
    let names: Vec<&str> = block
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    for known in [
        replyway_shared::record::header::CORRELATION_ID,
        replyway_shared::record::header::HEADER_PREFIX,
        replyway_shared::record::header::SPRING_CONTENT_TYPE,
    ] {
        assert!(
            names.contains(&known),
            "{file}: `{known}` not read from the header module"
        );
    }
    let page = read("docs/records.md");
    let spans = code_spans(&page);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            if name.ends_with('-') {
                // A prefix: documented as `param-<name>`, `header-<name>`.
                !spans
                    .iter()
                    .any(|s| s.starts_with(name) && s.len() > name.len())
            } else {
                !spans.contains(name)
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/records.md does not name these record headers of {file}: {missing:?}"
    );
}

// ------------------------------------------------------------------- redis

#[test]
fn redis_page_names_every_key_channel_and_script() {
    let keys = replyway_shared::store::Keys::new("<prefix>");
    let documented = [
        ("pending", keys.pending("<id>")),
        ("waiters", keys.waiters("<id>")),
        ("reply", keys.reply("<id>")),
        ("parts", keys.parts("<id>")),
        ("idempotency", keys.idempotency("<digest>")),
        ("rate_limit", keys.rate_limit("<digest>")),
        ("channel", keys.channel("<node-id>")),
        ("channel_prefix", keys.channel_prefix()),
    ];
    let store = read("shared/src/store/mod.rs");
    let start = store
        .find("impl Keys {")
        .unwrap_or_else(|| panic!("no `impl Keys {{` in shared/src/store/mod.rs"));
    let block = &store[start..];
    let block = &block[..block.find("\n}").unwrap_or(block.len())];
    let methods: BTreeSet<&str> = words_after(block, "pub fn ")
        .into_iter()
        .filter(|m| *m != "new")
        .collect();
    let checked: BTreeSet<&str> = documented.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        methods, checked,
        "store::Keys has names this test does not check (or no longer has some): add them here and to docs/redis.md"
    );

    let page = read("docs/redis.md");
    let spans = code_spans(&page);
    let mut problems = Vec::new();
    for (method, pattern) in &documented {
        let named = if *method == "channel_prefix" {
            spans.iter().any(|s| s.starts_with(pattern.as_str()))
        } else {
            spans
                .iter()
                .any(|s| s.trim_start_matches("channel ") == pattern)
        };
        if !named {
            problems.push(format!("`{pattern}` (Keys::{method}) is not on the page"));
        }
    }

    // Scripts: every one in the code is on the page, and the page names no other.
    let scripts: BTreeSet<String> = sources("shared/src")
        .iter()
        .flat_map(|(_, text)| {
            words_after(text, "pub const ")
                .into_iter()
                .filter(|name| name.ends_with("_LUA"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !scripts.is_empty(),
        "no `pub const …_LUA` script found in shared/src"
    );
    let named: BTreeSet<String> = spans
        .iter()
        .filter(|s| s.ends_with("_LUA") && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|s| (*s).to_owned())
        .collect();
    for script in scripts.difference(&named) {
        problems.push(format!("script `{script}` is not on the page"));
    }
    for script in named.difference(&scripts) {
        problems.push(format!(
            "the page names `{script}`, which is not in shared/src"
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/redis.md and shared/src/store/ differ:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------- problems

#[test]
fn http_api_page_names_every_problem_type_with_its_status_and_no_other() {
    let page = read("docs/http-api.md");
    // The table of problem types: `type` in the first column, status in the second.
    let rows: BTreeMap<String, String> = page
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(cells)
        .filter_map(|row| {
            let uri = code_spans(row.first()?).first()?.to_string();
            uri.starts_with(ProblemKind::PREFIX)
                .then(|| (uri, row.get(1).cloned().unwrap_or_default()))
        })
        .collect();
    let mut problems = Vec::new();
    for kind in ProblemKind::ALL {
        match rows.get(kind.uri()) {
            None => problems.push(format!(
                "`{}` is not in the table of problem types",
                kind.uri()
            )),
            Some(status) if *status != format!("`{}`", kind.status().as_u16()) => {
                problems.push(format!(
                    "`{}` is answered `{}`, the page says {status}",
                    kind.uri(),
                    kind.status().as_u16()
                ))
            }
            Some(_) => {}
        }
    }
    for path in pages() {
        for name in words_after(&read(&path), ProblemKind::PREFIX) {
            let uri = format!("{}{name}", ProblemKind::PREFIX);
            if ProblemKind::from_uri(&uri).is_none() {
                problems.push(format!(
                    "{path} names {uri}, which the gateway does not answer with"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the pages and replyway_gateway::problem::ProblemKind differ:\n  {}",
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------- links

/// README.md, ARCHITECTURE.md and every page of docs/, relative to the
/// repository.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_owned(), "ARCHITECTURE.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap_or_else(|e| panic!("listing docs/: {e}"))
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The anchors GitHub makes of a page's headings.
fn anchors(page: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_default();
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the page's Markdown links (`[text](target)`), outside code.
fn links(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code may hold `](`; leave it out.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for (at, _) in prose.match_indices("](") {
            let rest = &prose[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

#[test]
fn links_between_pages_resolve() {
    let mut broken = Vec::new();
    for path in pages() {
        let text = read(&path);
        let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if file.is_empty() {
                PathBuf::from(&path)
            } else {
                dir.join(file)
            };
            let full = root().join(&file);
            if !full.exists() {
                broken.push(format!("{path}: ({target}): no file {}", file.display()));
                continue;
            }
            if !anchor.is_empty() {
                let ok = std::fs::read_to_string(&full)
                    .map(|t| anchors(&t).contains(anchor))
                    .unwrap_or(false);
                if !ok {
                    broken.push(format!("{path}: ({target}): no heading #{anchor}"));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn readme_stays_a_landing_page() {
    let lines = read("README.md").lines().count();
    assert!(
        lines < 400,
        "README.md has {lines} lines: reference material belongs in docs/"
    );
}
