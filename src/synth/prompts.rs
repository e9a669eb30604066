//! Prompt templates with `{{name}}` placeholders.
//!
//! A template must use exactly the placeholders its role provides: a missing one means the
//! model never sees, say, the persona; an unknown one would be sent to the model literally.
//! Both fail when the template is loaded, before any paid call.

use super::SynthError;
use crate::fsutil::sha256_hex;
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
    /// SHA-256 of the file's bytes, for run manifests.
    pub sha256: String,
}

impl Template {
    /// Reads `dir/file` and checks that its placeholders are exactly `names`.
    pub fn load(dir: &Path, file: &str, names: &[&str]) -> Result<Self, SynthError> {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| SynthError::Template {
            path: path.clone(),
            message: format!("cannot read the prompt template: {e}"),
        })?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| SynthError::Template {
            path: path.clone(),
            message: "not UTF-8".into(),
        })?;
        let mut t = Self::parse(&path, &text, names)?;
        t.sha256 = sha256_hex(&bytes);
        Ok(t)
    }

    /// Parses template text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str, names: &[&str]) -> Result<Self, SynthError> {
        let bad = |message: String| SynthError::Template {
            path: path.into(),
            message,
        };
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                let line = text[..text.len() - rest.len() + open].matches('\n').count() + 1;
                bad(format!("line {line}: `{{{{` without a closing `}}}}`"))
            })?;
            let name = after[..close].trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(format!(
                    "`{{{{{}}}}}` is not a placeholder name",
                    &after[..close]
                )));
            }
            pieces.push(Piece::Var(name.to_string()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        let used: BTreeSet<&str> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Var(v) => Some(v.as_str()),
                Piece::Text(_) => None,
            })
            .collect();
        let allowed = names.join(", ");
        if let Some(unknown) = used.iter().find(|u| !names.contains(u)) {
            return Err(bad(format!(
                "unknown placeholder {{{{{unknown}}}}} (this template takes: {allowed})"
            )));
        }
        if let Some(missing) = names.iter().find(|n| !used.contains(*n)) {
            return Err(bad(format!(
                "lacks the placeholder {{{{{missing}}}}} (this template takes: {allowed})"
            )));
        }
        Ok(Self {
            pieces,
            sha256: sha256_hex(text.as_bytes()),
        })
    }

    /// Fills the placeholders in one pass, so a value containing `{{…}}` stays literal.
    pub fn render(&self, values: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => {
                    let value = values.iter().find(|(k, _)| k == v).map(|(_, x)| *x);
                    // `parse` guarantees every placeholder is one of the names the caller
                    // passes values for.
                    out.push_str(value.unwrap_or_default());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, names: &[&str]) -> Result<Template, SynthError> {
        Template::parse(Path::new("user.txt"), text, names)
    }

    #[test]
    fn renders_each_placeholder_once_and_literally() {
        let t = parse(
            "あなたは{{persona_name}}。{{ persona_description }}\n問い: {{question}}",
            &["persona_name", "persona_description", "question"],
        )
        .unwrap();
        let s = t.render(&[
            ("persona_name", "孔子"),
            ("persona_description", "{{question}}を好む"),
            ("question", "正義とは？"),
        ]);
        assert_eq!(s, "あなたは孔子。{{question}}を好む\n問い: 正義とは？");
    }

    #[test]
    fn missing_unknown_and_malformed_placeholders_fail() {
        let e = parse("{{question}}", &["question", "persona_name"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("user.txt: lacks the placeholder {{persona_name}}"),
            "{e}"
        );
        let e = parse("{{question}} {{qestion}}", &["question"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown placeholder {{qestion}}"), "{e}");
        let e = parse("a\nb {{question", &["question"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("without a closing"),
            "{e}"
        );
        let e = parse("{{ two words }}", &["question"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a placeholder name"), "{e}");
    }
}
