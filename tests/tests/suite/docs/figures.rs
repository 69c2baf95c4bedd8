//! Figures in the docs come from committed run outputs: a table or a fenced
//! block that a page marks with `<!-- quoted from PATH -->` must consist of
//! lines of the file at PATH (a benchmark's results.md, a profile's output, a
//! fuzz run's summary), so a number cannot be typed in, nor outlive the run
//! it came from.

use super::{read, root};

/// The pages that quote run outputs.
const PAGES: [&str; 3] = [
    "docs/benchmark.md",
    "docs/security.md",
    "docs/transactions.md",
];

const MARK: &str = "<!-- quoted from ";

/// One quoted block: where the page says it comes from, and its lines.
struct Quote {
    line: usize,
    source: String,
    lines: Vec<String>,
}

/// The marked blocks of `page`: each mark applies to the table or fenced
/// block that starts on the next non-empty line.
fn quotes(page: &str) -> Vec<Quote> {
    let mut quotes = Vec::new();
    let lines: Vec<&str> = page.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let Some(source) = lines[i]
            .trim()
            .strip_prefix(MARK)
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            i += 1;
            continue;
        };
        let line = i + 1;
        i += 1;
        while i < lines.len() && lines[i].trim().is_empty() {
            i += 1;
        }
        let mut quoted = Vec::new();
        if lines
            .get(i)
            .is_some_and(|l| l.trim_start().starts_with("```"))
        {
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                quoted.push(lines[i].to_owned());
                i += 1;
            }
        } else {
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                quoted.push(lines[i].to_owned());
                i += 1;
            }
        }
        quotes.push(Quote {
            line,
            source: source.trim().to_owned(),
            lines: quoted,
        });
    }
    quotes
}

/// A line with its runs of whitespace as one space.
fn normalized(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn quoted_figures_are_lines_of_committed_run_outputs() {
    let mut problems = Vec::new();
    for page in PAGES {
        let quotes = quotes(&read(page));
        if quotes.is_empty() {
            problems.push(format!("{page}: quotes no run output"));
        }
        for quote in quotes {
            let at = format!("{page}:{}", quote.line);
            if quote.lines.is_empty() {
                problems.push(format!("{at}: the mark is followed by no table or block"));
                continue;
            }
            let Ok(source) = std::fs::read_to_string(root().join(&quote.source)) else {
                problems.push(format!("{at}: no file {}", quote.source));
                continue;
            };
            let source: Vec<String> = source.lines().map(normalized).collect();
            for line in &quote.lines {
                if !source.contains(&normalized(line)) {
                    problems.push(format!("{at}: not in {}: {line}", quote.source));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "figures that no committed output holds:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_quote_is_the_table_or_block_after_its_mark() {
    let page = "text\n<!-- quoted from a.md -->\n\n| x | y |\n|---|---|\n| 1 | 2 |\nafter\n\
                <!-- quoted from b.txt -->\n```\nline one\n```\n";
    let quotes = quotes(page);
    assert_eq!(quotes.len(), 2);
    assert_eq!(quotes[0].source, "a.md");
    assert_eq!(quotes[0].lines, ["| x | y |", "|---|---|", "| 1 | 2 |"]);
    assert_eq!(quotes[1].source, "b.txt");
    assert_eq!(quotes[1].lines, ["line one"]);
}
