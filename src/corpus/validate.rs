//! Loading whole corpus files with the checks that span records: duplicate ids, references to
//! personas and questions that do not exist, the opening question quoted verbatim.

use super::jsonl::{read_jsonl, BadLine, Loaded};
use super::{CorpusError, Dialogue, Persona, PersonaKind, Question};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;

/// The personas and questions that dialogues refer to.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    pub personas: Vec<Persona>,
    pub questions: Vec<Question>,
}

impl Catalog {
    pub fn persona(&self, id: &str) -> Option<&Persona> {
        self.personas.iter().find(|p| p.id == id)
    }
    pub fn question(&self, id: &str) -> Option<&Question> {
        self.questions.iter().find(|q| q.id == id)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Skip bad lines (each is returned in `Loaded::skipped`) instead of failing on the first.
    pub skip_bad: bool,
    /// When given, persona and question ids must exist and turn 0 must quote the question.
    pub catalog: Option<&'a Catalog>,
}

/// Reads records and applies `check` to each, with duplicate-id detection; fails on any bad
/// line unless `skip_bad`.
fn load_checked<T: DeserializeOwned>(
    path: &Path,
    skip_bad: bool,
    id: impl Fn(&T) -> &str,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<Loaded<T>, CorpusError> {
    let loaded = read_jsonl::<T>(path)?;
    let mut skipped = loaded.skipped;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut records = Vec::with_capacity(loaded.records.len());
    for (line, r) in loaded.records {
        let bad = |message: String| BadLine {
            path: path.into(),
            line,
            message,
        };
        if let Err(m) = check(&r) {
            skipped.push(bad(m));
            continue;
        }
        if let Some(first) = seen.get(id(&r)) {
            skipped.push(bad(format!(
                "duplicate id `{}` (first seen on line {first})",
                id(&r)
            )));
            continue;
        }
        seen.insert(id(&r).to_string(), line);
        records.push((line, r));
    }
    skipped.sort_by_key(|b| b.line);
    if !skip_bad && !skipped.is_empty() {
        if skipped.len() == 1 {
            return Err(skipped.remove(0).into());
        }
        return Err(CorpusError::BadLines {
            path: path.into(),
            count: skipped.len(),
            first: skipped[0].to_string(),
        });
    }
    if records.is_empty() && skipped.is_empty() {
        return Err(CorpusError::Empty { path: path.into() });
    }
    Ok(Loaded { records, skipped })
}

/// Loads dialogues, validating each line and the references between files.
pub fn load_dialogues(path: &Path, opts: LoadOptions) -> Result<Loaded<Dialogue>, CorpusError> {
    load_checked(
        path,
        opts.skip_bad,
        |d: &Dialogue| &d.id,
        |d| {
            d.check()?;
            // A transcript saved by `chat` (`/save`) was played by a person, not a persona
            // (`persona: chat`), and may open with a line of its own (`question: custom`).
            let chat = d.extra.get("source").and_then(|v| v.as_str()) == Some("chat");
            if let Some(cat) = opts.catalog {
                if chat && (d.question == "custom" || cat.question(&d.question).is_none()) {
                    return Ok(());
                }
                if !chat && cat.persona(&d.persona).is_none() {
                    return Err(format!(
                        "dialogue {}: unknown persona `{}`",
                        d.id, d.persona
                    ));
                }
                match cat.question(&d.question) {
                    None => {
                        return Err(format!(
                            "dialogue {}: unknown question `{}`",
                            d.id, d.question
                        ))
                    }
                    Some(q) if q.text.trim() != d.turns[0].text.trim() => {
                        return Err(format!(
                            "dialogue {}: turn 0 does not quote question `{}` verbatim",
                            d.id, d.question
                        ))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        },
    )
}

/// Loads personas; an inheritor must name an existing historical persona.
pub fn load_personas(path: &Path) -> Result<Vec<Persona>, CorpusError> {
    let loaded = load_checked(
        path,
        false,
        |p: &Persona| &p.id,
        |p| {
            if p.id.trim().is_empty() || p.name.trim().is_empty() {
                return Err("empty `id` or `name`".into());
            }
            match (p.kind, &p.inherits) {
                (PersonaKind::Inheritor, None) => {
                    Err(format!("persona {}: an inheritor needs `inherits`", p.id))
                }
                (PersonaKind::Ordinary | PersonaKind::Historical, Some(_)) => Err(format!(
                    "persona {}: only an inheritor has `inherits`",
                    p.id
                )),
                _ => Ok(()),
            }
        },
    )?;
    let personas: Vec<Persona> = loaded.records.iter().map(|(_, p)| p.clone()).collect();
    for (line, p) in &loaded.records {
        if let Some(target) = &p.inherits {
            let ok = personas
                .iter()
                .any(|h| &h.id == target && h.kind == PersonaKind::Historical);
            if !ok {
                return Err(CorpusError::Line {
                    path: path.into(),
                    line: *line,
                    message: format!(
                        "persona {}: inherits `{target}`, which is not a historical persona",
                        p.id
                    ),
                });
            }
        }
    }
    Ok(personas)
}

/// Loads opening questions.
pub fn load_questions(path: &Path) -> Result<Vec<Question>, CorpusError> {
    let loaded = load_checked(
        path,
        false,
        |q: &Question| &q.id,
        |q| {
            if q.id.trim().is_empty() || q.text.trim().is_empty() {
                Err("empty `id` or `text`".into())
            } else {
                Ok(())
            }
        },
    )?;
    Ok(loaded.records.into_iter().map(|(_, q)| q).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn line(id: &str, persona: &str, q: &str, first: &str) -> String {
        format!(
            r#"{{"id":"{id}","persona":"{persona}","question":"{q}","user_temperature":0.7,"turns":[{{"role":"user","text":"{first}"}},{{"role":"model","text":"ふむ。"}}]}}"#
        )
    }

    fn catalog() -> Catalog {
        Catalog {
            personas: vec![Persona {
                id: "p001".into(),
                kind: PersonaKind::Ordinary,
                name: "a".into(),
                description: "b".into(),
                inherits: None,
            }],
            questions: vec![Question {
                id: "q01".into(),
                text: "正義とは？".into(),
            }],
        }
    }

    #[test]
    fn each_bad_case_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog();
        let cases = [
            (
                line("d1", "p999", "q01", "正義とは？"),
                "unknown persona `p999`",
            ),
            (
                line("d1", "p001", "q77", "正義とは？"),
                "unknown question `q77`",
            ),
            (
                line("d1", "p001", "q01", "勇気とは？"),
                "does not quote question `q01`",
            ),
            (
                line("d1", "p001", "q01", "正義とは？").replace("\"model\"", "\"user\""),
                "turn 1 is `user`",
            ),
            (
                line("d1", "p001", "q01", "正義とは？").replace("\"persona\":\"p001\",", ""),
                "missing field `persona`",
            ),
            ("{\"id\": \"d1\",".to_string(), "malformed JSON"),
        ];
        for (text, want) in cases {
            let p = write(
                dir.path(),
                "d.jsonl",
                &format!("{}\n{text}\n", line("d0", "p001", "q01", "正義とは？")),
            );
            let e = load_dialogues(
                &p,
                LoadOptions {
                    skip_bad: false,
                    catalog: Some(&cat),
                },
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("d.jsonl:2: ") && e.contains(want),
                "{e} (wanted {want})"
            );
        }
    }

    #[test]
    fn chat_transcripts_need_no_persona() {
        let dir = tempfile::tempdir().unwrap();
        let saved = line("c1", "chat", "custom", "やあ").replace(
            "\"user_temperature\"",
            "\"source\":\"chat\",\"user_temperature\"",
        );
        let quoted = line("c2", "chat", "q01", "正義とは？").replace(
            "\"user_temperature\"",
            "\"source\":\"chat\",\"user_temperature\"",
        );
        let p = write(dir.path(), "d.jsonl", &format!("{saved}\n{quoted}\n"));
        let cat = catalog();
        let opts = LoadOptions {
            skip_bad: false,
            catalog: Some(&cat),
        };
        assert_eq!(load_dialogues(&p, opts).unwrap().records.len(), 2);
        // Without the mark, `chat` is an unknown persona like any other.
        let p = write(
            dir.path(),
            "e.jsonl",
            &format!("{}\n", line("c1", "chat", "q01", "正義とは？")),
        );
        let e = load_dialogues(&p, opts).unwrap_err().to_string();
        assert!(e.contains("unknown persona `chat`"), "{e}");
    }

    #[test]
    fn duplicates_are_reported_and_skip_bad_keeps_going() {
        let dir = tempfile::tempdir().unwrap();
        let ok = line("d1", "p001", "q01", "正義とは？");
        let p = write(
            dir.path(),
            "d.jsonl",
            &format!(
                "{ok}\n{ok}\nnot json\n{}\n",
                line("d2", "p001", "q01", "正義とは？")
            ),
        );
        let e = load_dialogues(&p, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 bad line(s)")
                && e.contains(":2: duplicate id `d1` (first seen on line 1)"),
            "{e}"
        );
        let l = load_dialogues(
            &p,
            LoadOptions {
                skip_bad: true,
                catalog: None,
            },
        )
        .unwrap();
        assert_eq!(
            l.records
                .iter()
                .map(|(n, d)| (*n, d.id.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "d1"), (4, "d2")]
        );
        assert_eq!(
            l.skipped.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn personas_check_inheritance() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "p.jsonl",
            concat!(
                r#"{"id":"p1","kind":"historical","name":"孔子","description":"x"}"#,
                "\n",
                r#"{"id":"p2","kind":"inheritor","name":"a","description":"x","inherits":"p1"}"#,
                "\n",
                r#"{"id":"p3","kind":"inheritor","name":"b","description":"x","inherits":"p2"}"#,
                "\n",
            ),
        );
        let e = load_personas(&p).unwrap_err().to_string();
        assert!(
            e.contains("p.jsonl:3: persona p3: inherits `p2`, which is not a historical persona"),
            "{e}"
        );
        let q = write(
            dir.path(),
            "q.jsonl",
            "{\"id\":\"q1\",\"text\":\"x\"}\n{\"id\":\"q1\",\"text\":\"y\"}\n",
        );
        assert!(load_questions(&q)
            .unwrap_err()
            .to_string()
            .contains("q.jsonl:2: duplicate id `q1`"));
    }
}
