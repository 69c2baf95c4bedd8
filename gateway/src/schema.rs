//! Request schemas: a route may name a JSON Schema (draft 2020-12) that its
//! bodies must match. The schema is read and compiled once, when the route
//! table is built, with its `$ref`s: within the file, or to other files of
//! the schema's directory (nothing outside it, nothing over the network); a
//! body is checked after it is read and before anything is written to Redis
//! or produced, and a mismatch is answered `422` listing the violations (at
//! most [`MAX_VIOLATIONS`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// Most violations one answer lists; the count says how many there were.
pub const MAX_VIOLATIONS: usize = 20;

/// A route's compiled schema.
#[derive(Clone)]
pub struct RouteSchema {
    /// The file it was read from.
    pub path: PathBuf,
    /// The schema document, for the OpenAPI document.
    pub document: Arc<Value>,
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for RouteSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSchema")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One way a body does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON Pointer to the offending value (`""` is the whole body).
    pub pointer: String,
    /// The schema keyword it violates (`required`, `type`, …).
    pub keyword: String,
    /// What is wrong, in a few words.
    pub message: String,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The first [`MAX_VIOLATIONS`] violations.
    pub violations: Vec<Violation>,
    /// How many there were in all.
    pub count: usize,
}

impl RouteSchema {
    /// Reads and compiles the schema at `path` (draft 2020-12 unless the
    /// document's `$schema` names another draft).
    ///
    /// # Errors
    /// What is wrong with the file or the schema, in words.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = read_bounded(path)?;
        let document: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let file = path
            .canonicalize()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let dir = file.parent().map(Path::to_owned).unwrap_or_default();
        let base = url::Url::from_file_path(&file)
            .map_err(|()| format!("{} has no file: URI", path.display()))?;
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_base_uri(base.as_str())
            .with_retriever(SchemaDir { dir })
            .build(&document)
            .map_err(|e| format!("{} is not a valid JSON Schema: {e}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            document: Arc::new(document),
            validator: Arc::new(validator),
        })
    }

    /// Checks a body: it must be JSON that matches the schema.
    ///
    /// # Errors
    /// The violations, a body that is not JSON being one at the root.
    pub fn check(&self, body: &[u8]) -> Result<(), Refusal> {
        let value: Value = serde_json::from_slice(body).map_err(|e| Refusal {
            violations: vec![Violation {
                pointer: String::new(),
                keyword: "json".into(),
                message: format!("the body is not JSON: {e}"),
            }],
            count: 1,
        })?;
        let mut violations = Vec::new();
        let mut count = 0;
        for error in self.validator.iter_errors(&value) {
            count += 1;
            if violations.len() < MAX_VIOLATIONS {
                let schema_path = error.schema_path().as_str().to_owned();
                violations.push(Violation {
                    pointer: error.instance_path().as_str().to_owned(),
                    keyword: schema_path
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    message: error.to_string(),
                });
            }
        }
        if count == 0 {
            Ok(())
        } else {
            Err(Refusal { violations, count })
        }
    }
}

/// Reads the files a schema's `$ref`s name, from its own directory only.
struct SchemaDir {
    dir: PathBuf,
}

impl jsonschema::Retrieve for SchemaDir {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let outside = || format!("{uri}: only files of the schema's directory are read");
        let path = url::Url::parse(uri.as_str())
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(outside)?;
        let path = path.canonicalize().map_err(|e| format!("{uri}: {e}"))?;
        if !path.starts_with(&self.dir) {
            return Err(outside().into());
        }
        let text = read_bounded(&path)?;
        Ok(serde_json::from_str(&text).map_err(|e| format!("{uri} is not JSON: {e}"))?)
    }
}

/// Largest schema file read.
pub const MAX_SCHEMA_BYTES: u64 = 1024 * 1024;

/// The text of a regular file of at most [`MAX_SCHEMA_BYTES`]: a path to a
/// device or a pipe is refused, not read forever.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut text = String::new();
    file.take(MAX_SCHEMA_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_SCHEMA_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SCHEMA_BYTES} bytes",
            path.display()
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> RouteSchema {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        RouteSchema::load(file.path()).unwrap()
    }

    const TRANSFER: &str = r##"{
        "type": "object",
        "required": ["from", "to", "amount"],
        "properties": {
            "from": {"type": "string", "minLength": 1},
            "to": {"$ref": "#/$defs/account"},
            "amount": {"type": "integer", "minimum": 1},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "$defs": {"account": {"type": "string", "pattern": "^[a-z]+$"}}
    }"##;

    #[test]
    fn a_matching_body_passes() {
        let s = schema(TRANSFER);
        assert_eq!(
            s.check(br#"{"from":"alice","to":"bob","amount":5}"#),
            Ok(())
        );
    }

    #[test]
    fn every_violation_is_listed_with_pointer_and_keyword() {
        let s = schema(TRANSFER);
        let refusal = s
            .check(br#"{"from":"","to":"B1","tags":["a",2]}"#)
            .unwrap_err();
        let found: Vec<(&str, &str)> = refusal
            .violations
            .iter()
            .map(|v| (v.pointer.as_str(), v.keyword.as_str()))
            .collect();
        for expected in [
            ("", "required"),
            ("/from", "minLength"),
            ("/to", "pattern"),
            ("/tags/1", "type"),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
        assert_eq!(refusal.count, 4);
    }

    #[test]
    fn the_list_is_bounded_and_the_count_is_not() {
        let s = schema(TRANSFER);
        let tags: Vec<u32> = (0..1000).collect();
        let body = serde_json::json!({"from": "a", "to": "b", "amount": 1, "tags": tags});
        let refusal = s.check(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(refusal.violations.len(), MAX_VIOLATIONS);
        assert_eq!(refusal.count, 1000);
    }

    #[test]
    fn a_body_that_is_not_json_is_one_violation() {
        let s = schema(TRANSFER);
        let refusal = s.check(b"from=alice").unwrap_err();
        assert_eq!(refusal.violations[0].keyword, "json");
        assert_eq!(refusal.count, 1);
    }

    #[test]
    fn refs_reach_files_of_the_schemas_directory_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(
            inner.join("account.json"),
            r#"{"type": "string", "pattern": "^[a-z]+$"}"#,
        )
        .unwrap();
        std::fs::write(
            inner.join("transfer.json"),
            r#"{"type": "object", "properties": {"to": {"$ref": "account.json"}}}"#,
        )
        .unwrap();
        let s = RouteSchema::load(&inner.join("transfer.json")).unwrap();
        assert_eq!(s.check(br#"{"to":"bob"}"#), Ok(()));
        let refusal = s.check(br#"{"to":"B1"}"#).unwrap_err();
        assert_eq!(refusal.violations[0].pointer, "/to");
        assert_eq!(refusal.violations[0].keyword, "pattern");

        std::fs::write(dir.path().join("outside.json"), r#"{"type": "string"}"#).unwrap();
        for reference in ["../outside.json", "https://example.com/s.json"] {
            std::fs::write(
                inner.join("escaping.json"),
                format!(r#"{{"properties": {{"to": {{"$ref": "{reference}"}}}}}}"#),
            )
            .unwrap();
            let error = RouteSchema::load(&inner.join("escaping.json")).unwrap_err();
            assert!(
                error.contains("only files of the schema's directory"),
                "{reference}: {error}"
            );
        }
    }

    #[test]
    fn a_broken_schema_is_refused_in_words() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), r#"{"type": 12}"#).unwrap();
        let error = RouteSchema::load(file.path()).unwrap_err();
        assert!(error.contains("not a valid JSON Schema"), "{error}");
        let missing = RouteSchema::load(Path::new("/nonexistent/schema.json")).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
        let device = RouteSchema::load(Path::new("/dev/zero")).unwrap_err();
        assert!(device.contains("not a regular file"), "{device}");
        let big = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(big.path(), vec![b' '; MAX_SCHEMA_BYTES as usize + 1]).unwrap();
        let error = RouteSchema::load(big.path()).unwrap_err();
        assert!(error.contains("larger than"), "{error}");
    }
}
