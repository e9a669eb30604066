//! Variant specs (`configs/variants/<name>.toml`): which pairs of each dialogue start an
//! example, how many utterances an example holds, the prefix put before its first user turn,
//! whether dropped dialogues are used anyway, and the layout: a system text and the format
//! (the family's chat turns or Alpaca's blocks).

use super::{DatasetError, Format, Layout, Result};
use serde::{Deserialize, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// No dialogue has this many rounds; a larger pair number is a typo, not a request.
const MAX_PAIR: usize = 10_000;

/// The pairs that start an example, ascending and without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pairs {
    /// `start..=end` (a single pair has `start == end`).
    Range {
        start: usize,
        end: usize,
    },
    List(Vec<usize>),
}

impl Pairs {
    pub fn iter(&self) -> Box<dyn Iterator<Item = usize> + '_> {
        match self {
            Pairs::Range { start, end } => Box::new(*start..=*end),
            Pairs::List(v) => Box::new(v.iter().copied()),
        }
    }

    pub fn count(&self) -> usize {
        match self {
            Pairs::Range { start, end } => end - start + 1,
            Pairs::List(v) => v.len(),
        }
    }

    pub fn last(&self) -> usize {
        match self {
            Pairs::Range { end, .. } => *end,
            Pairs::List(v) => *v.last().expect("a pair list is never empty"),
        }
    }

    /// Reads the TOML value of `pairs`: `0`, `"0"`, `"1..=11"`, `"1..12"` or `[0, 2, 4]`.
    fn parse(v: &toml::Value) -> Result<Self, String> {
        let one = |n: i64| -> Result<usize, String> {
            let n = usize::try_from(n).map_err(|_| format!("pair {n} is negative"))?;
            if n > MAX_PAIR {
                return Err(format!(
                    "pair {n} is beyond any dialogue (at most {MAX_PAIR})"
                ));
            }
            Ok(n)
        };
        match v {
            toml::Value::Integer(n) => one(*n).map(|n| Pairs::Range { start: n, end: n }),
            toml::Value::String(s) => {
                let num = |t: &str| -> Result<usize, String> {
                    let t = t.trim();
                    let n: i64 = t.parse().map_err(|_| {
                        format!("`{s}` is not a pair number or a range like \"1..=11\"")
                    })?;
                    one(n)
                };
                let (start, end) = if let Some((a, b)) = s.split_once("..=") {
                    (num(a)?, num(b)?)
                } else if let Some((a, b)) = s.split_once("..") {
                    let (a, b) = (num(a)?, num(b)?);
                    if b <= a {
                        return Err(format!("range `{s}` is empty"));
                    }
                    (a, b - 1)
                } else {
                    let n = num(s)?;
                    (n, n)
                };
                if end < start {
                    return Err(format!("range `{s}` is empty"));
                }
                Ok(Pairs::Range { start, end })
            }
            toml::Value::Array(items) => {
                if items.is_empty() {
                    return Err("the list is empty".into());
                }
                let mut v = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::Integer(n) => v.push(one(*n)?),
                        other => return Err(format!("list item {other} is not a pair number")),
                    }
                }
                v.sort_unstable();
                if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!("pair {} is listed twice", w[0]));
                }
                Ok(Pairs::List(v))
            }
            other => Err(format!(
                "expected a pair number, a range like \"1..=11\" or a list of pair numbers, not {}",
                other.type_str()
            )),
        }
    }
}

impl std::fmt::Display for Pairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pairs::Range { start, end } if start == end => write!(f, "{start}"),
            Pairs::Range { start, end } => write!(f, "{start}..={end}"),
            Pairs::List(v) => {
                let items: Vec<String> = v.iter().map(|n| n.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// Written back as the config spells it: a range as its string, a list as an array.
impl Serialize for Pairs {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Pairs::Range { .. } => s.collect_str(self),
            Pairs::List(v) => v.serialize(s),
        }
    }
}

/// A validated variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "VariantFile")]
pub struct Variant {
    pub name: String,
    pub pairs: Pairs,
    /// Utterances per example: an even number, `utterances / 2` consecutive pairs.
    pub utterances: usize,
    /// Put before the first user utterance of each example, exactly (no separator).
    pub prefix: String,
    /// Use dropped (and unjudged) dialogues too, as the seed did by mistake for model4–9.
    pub include_rejected: bool,
    /// `format` and `system` (written only when set, so a chat variant without a system text
    /// is recorded as before they existed).
    #[serde(flatten)]
    pub layout: Layout,
}

/// The file's shape; `pairs` and `utterances` are read loosely so that their errors can say
/// what is wrong in our words rather than serde's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantFile {
    name: String,
    pairs: toml::Value,
    utterances: i64,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    include_rejected: bool,
    format: Option<String>,
    system: Option<String>,
}

impl VariantFile {
    /// The checks every variant passes, from a variant file or read back from `stats.json`:
    /// `Err((key, message))` names the faulty key. `stem`: the file's name, which `name` must
    /// match so that `--variant NAME` finds it.
    fn check(self, stem: Option<&str>) -> Result<Variant, (&'static str, String)> {
        let name_ok = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err((
                "name",
                format!(
                    "`{}` must be letters, digits, `-`, `_` or `.` (it names a run folder)",
                    self.name
                ),
            ));
        }
        if let Some(stem) = stem.filter(|s| *s != self.name) {
            return Err((
                "name",
                format!("`{}` differs from the file name `{stem}.toml`", self.name),
            ));
        }
        let pairs = Pairs::parse(&self.pairs).map_err(|m| ("pairs", m))?;
        if self.utterances < 2 || self.utterances % 2 != 0 {
            return Err((
                "utterances",
                format!(
                    "{} is not an even number of at least 2 (2 = one pair per example, 4 = two consecutive pairs)",
                    self.utterances
                ),
            ));
        }
        let format = match self.format.as_deref() {
            None | Some("chat") => Format::Chat,
            Some("alpaca") => Format::Alpaca,
            Some(other) => {
                return Err((
                    "format",
                    format!("`{other}` is not a format (chat or alpaca)"),
                ))
            }
        };
        if let Some(s) = &self.system {
            if s.trim().is_empty() {
                return Err((
                    "system",
                    "is empty; leave the key out for no system text".into(),
                ));
            }
            if s.trim() != s {
                return Err((
                    "system",
                    "starts or ends with whitespace, which the official Gemma and Llama templates trim away; remove it".into(),
                ));
            }
        }
        Ok(Variant {
            name: self.name,
            pairs,
            utterances: self.utterances as usize,
            prefix: self.prefix,
            include_rejected: self.include_rejected,
            layout: Layout {
                format,
                system: self.system,
            },
        })
    }
}

/// A variant read back (the `config` of `stats.json`) passes the variant file's checks.
impl TryFrom<VariantFile> for Variant {
    type Error = String;
    fn try_from(f: VariantFile) -> std::result::Result<Self, String> {
        let name = f.name.clone();
        f.check(None)
            .map_err(|(key, message)| format!("variant `{name}`: {key}: {message}"))
    }
}

impl Variant {
    /// Pairs per example.
    pub fn span(&self) -> usize {
        self.utterances / 2
    }

    /// Pairs a dialogue must have for every example of this variant.
    pub fn pairs_needed(&self) -> usize {
        self.pairs.last() + self.span()
    }

    /// Parses a variant from TOML text; `path` is only used in messages. The name must match
    /// the file stem when `path` names a `.toml` file, so `--variant NAME` finds it.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let f: VariantFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            DatasetError::variant(path, line, e.message().trim().to_string())
        })?;
        let stem = path
            .extension()
            .is_some_and(|e| e == "toml")
            .then(|| path.file_stem().and_then(|s| s.to_str()))
            .flatten();
        f.check(stem).map_err(|(key, message)| {
            DatasetError::variant(path, key_line(text, key), format!("{key}: {message}"))
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::fsutil::FileError::new(path, e))?;
        Self::from_toml(&text, path)
    }

    /// Every `*.toml` in `dir`, in natural order (model2 before model10).
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>> {
        let entries = std::fs::read_dir(dir).map_err(|e| crate::fsutil::FileError::new(dir, e))?;
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let p = entry
                .map_err(|e| crate::fsutil::FileError::new(dir, e))?
                .path();
            if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
                paths.push(p);
            }
        }
        if paths.is_empty() {
            return Err(DatasetError::Invalid(format!(
                "{}: no variant files (*.toml)",
                dir.display()
            )));
        }
        let mut variants = paths
            .iter()
            .map(|p| Self::load(p))
            .collect::<Result<Vec<_>>>()?;
        variants.sort_by_key(|v| natural_key(&v.name));
        Ok(variants)
    }

    /// The named variants from `dir` (`<dir>/<name>.toml`), in the order asked.
    pub fn load_named(dir: &Path, names: &[String]) -> Result<Vec<Self>> {
        names
            .iter()
            .map(|n| {
                let p = dir.join(format!("{n}.toml"));
                if !p.is_file() {
                    let known = Self::load_dir(dir)
                        .map(|vs| {
                            vs.into_iter()
                                .map(|v| v.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    return Err(DatasetError::Invalid(format!(
                        "{}: no such variant `{n}` (known: {known})",
                        dir.display()
                    )));
                }
                Self::load(&p)
            })
            .collect()
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where `key = …` is set, for messages about a value that parsed but is invalid.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// Sorts `model2` before `model10`: text runs compare as text, digit runs as numbers.
pub(crate) fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = c.to_digit(10).unwrap() as u64;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d as u64);
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Variant> {
        Variant::from_toml(text, Path::new("v/x.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const BASE: &str = "name = \"x\"\nutterances = 2\n";

    #[test]
    fn reads_every_pairs_form() {
        let p = |s: &str| parse(&format!("{BASE}pairs = {s}\n")).unwrap().pairs;
        assert_eq!(p("\"1..=11\""), Pairs::Range { start: 1, end: 11 });
        assert_eq!(p("\"1..12\""), Pairs::Range { start: 1, end: 11 });
        assert_eq!(p("\"0\""), Pairs::Range { start: 0, end: 0 });
        assert_eq!(p("0"), Pairs::Range { start: 0, end: 0 });
        assert_eq!(p("\" 0 ..= 3 \""), Pairs::Range { start: 0, end: 3 });
        assert_eq!(p("[4, 0, 2]"), Pairs::List(vec![0, 2, 4]));
        assert_eq!(p("\"1..=11\"").count(), 11);
        assert_eq!(p("[4, 0, 2]").iter().collect::<Vec<_>>(), vec![0, 2, 4]);
        assert_eq!(p("\"1..=11\"").to_string(), "1..=11");
        assert_eq!(p("0").to_string(), "0");
    }

    #[test]
    fn defaults_and_span() {
        let v = parse(&format!("{BASE}pairs = 0\n")).unwrap();
        assert_eq!(v.prefix, "");
        assert!(!v.include_rejected);
        let v = parse("name = \"x\"\npairs = \"1..=10\"\nutterances = 4\nprefix = \"P。\"\ninclude_rejected = true\n").unwrap();
        assert_eq!(
            (
                v.span(),
                v.pairs_needed(),
                v.prefix.as_str(),
                v.include_rejected
            ),
            (2, 12, "P。", true)
        );
    }

    #[test]
    fn each_bad_variant_gives_a_clear_error() {
        let cases = [
            (
                format!("{BASE}pairs = 0\nprefx = \"a\"\n"),
                "v/x.toml:4: unknown field `prefx`",
            ),
            (
                "name = \"x\"\npairs = 0\n".to_string(),
                "missing field `utterances`",
            ),
            (
                format!("{BASE}pairs = \"3..=1\"\n"),
                "v/x.toml:3: pairs: range `3..=1` is empty",
            ),
            (
                format!("{BASE}pairs = \"3..3\"\n"),
                "pairs: range `3..3` is empty",
            ),
            (format!("{BASE}pairs = -1\n"), "pairs: pair -1 is negative"),
            (
                format!("{BASE}pairs = \"a..=3\"\n"),
                "pairs: `a..=3` is not a pair number or a range",
            ),
            (format!("{BASE}pairs = []\n"), "pairs: the list is empty"),
            (
                format!("{BASE}pairs = [1, 1]\n"),
                "pairs: pair 1 is listed twice",
            ),
            (
                format!("{BASE}pairs = [1, \"2\"]\n"),
                "pairs: list item \"2\" is not a pair number",
            ),
            (
                format!("{BASE}pairs = 1.5\n"),
                "pairs: expected a pair number",
            ),
            (format!("{BASE}pairs = 20000\n"), "beyond any dialogue"),
            (
                "name = \"x\"\nutterances = 3\npairs = 0\n".into(),
                "v/x.toml:2: utterances: 3 is not an even number",
            ),
            (
                "name = \"x\"\nutterances = 0\npairs = 0\n".into(),
                "utterances: 0 is not an even number",
            ),
            (
                "name = \"y\"\nutterances = 2\npairs = 0\n".into(),
                "v/x.toml:1: name: `y` differs from the file name `x.toml`",
            ),
            (
                "name = \"../x\"\nutterances = 2\npairs = 0\n".into(),
                "name: `../x` must be",
            ),
            (
                "name = \"x\"\nutterances = 2\npairs = 0\nprefix = 3\n".into(),
                "v/x.toml:4: invalid type",
            ),
            ("name = \"x\nutterances".into(), "v/x.toml:2: "),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn loads_a_folder_in_natural_order_and_finds_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["model10", "model2", "model1"] {
            std::fs::write(
                dir.path().join(format!("{n}.toml")),
                format!("name = \"{n}\"\npairs = 0\nutterances = 2\n"),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("notes.md"), "not a variant").unwrap();
        let names: Vec<String> = Variant::load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["model1", "model2", "model10"]);
        let got = Variant::load_named(dir.path(), &["model2".into()]).unwrap();
        assert_eq!(got[0].name, "model2");
        let e = Variant::load_named(dir.path(), &["model3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no such variant `model3` (known: model1, model2, model10)"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(Variant::load_dir(empty.path())
            .unwrap_err()
            .to_string()
            .contains("no variant files"));
    }

    #[test]
    fn reads_system_and_format() {
        let v = parse(&format!(
            "{BASE}pairs = 0\nformat = \"alpaca\"\nsystem = \"あなたはソクラテスです。\"\n"
        ))
        .unwrap();
        assert_eq!(v.layout.format, Format::Alpaca);
        assert_eq!(v.layout.system.as_deref(), Some("あなたはソクラテスです。"));
        // Written back only when set: a plain chat variant records as before.
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["format"], "alpaca");
        let plain = parse(&format!("{BASE}pairs = 0\nformat = \"chat\"\n")).unwrap();
        assert_eq!(plain.layout, Layout::default());
        let json = serde_json::to_value(&plain).unwrap();
        assert!(
            json.get("format").is_none() && json.get("system").is_none(),
            "{json}"
        );
        let cases = [
            (
                format!("{BASE}pairs = 0\nformat = \"chatml\"\n"),
                "v/x.toml:4: format: `chatml` is not a format (chat or alpaca)",
            ),
            (
                format!("{BASE}pairs = 0\nsystem = \"  \"\n"),
                "v/x.toml:4: system: is empty",
            ),
            (
                format!("{BASE}pairs = 0\nsystem = \"S \"\n"),
                "v/x.toml:4: system: starts or ends with whitespace",
            ),
            (
                format!("{BASE}pairs = 0\nsystem = 1\n"),
                "v/x.toml:4: invalid type",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
        }
    }

    #[test]
    fn the_fallback_variants_are_a_system_line_and_alpaca() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/variants-fallback");
        let vs = Variant::load_dir(&dir).unwrap();
        let got: Vec<(&str, Format, bool)> = vs
            .iter()
            .map(|v| (v.name.as_str(), v.layout.format, v.layout.system.is_some()))
            .collect();
        assert_eq!(
            got,
            [
                ("fallback-alpaca", Format::Alpaca, true),
                ("fallback-system", Format::Chat, true)
            ]
        );
        assert!(vs
            .iter()
            .all(|v| v.prefix.is_empty() && !v.include_rejected));
    }

    #[test]
    fn shipped_configs_match_the_design_table() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/variants");
        let vs = Variant::load_dir(&dir).unwrap();
        let short = "ソクラテスさん。";
        let long = "あなたは古代ギリシャの哲学者ソクラテスです。";
        let want: [(&str, &str, usize, &str); 9] = [
            ("model1", "1..=11", 2, short),
            ("model2", "1..=11", 2, long),
            ("model3", "1..=11", 2, ""),
            ("model4", "0", 2, ""),
            ("model5", "0", 4, ""),
            ("model6", "0", 2, short),
            ("model7", "0", 2, long),
            ("model8", "0", 4, short),
            ("model9", "0", 4, long),
        ];
        assert_eq!(vs.len(), 9);
        for (v, (name, pairs, utt, prefix)) in vs.iter().zip(want) {
            assert_eq!(
                (
                    v.name.as_str(),
                    v.pairs.to_string().as_str(),
                    v.utterances,
                    v.prefix.as_str()
                ),
                (name, pairs, utt, prefix)
            );
            assert!(
                !v.include_rejected,
                "{name}: the shipped variants train on kept dialogues only"
            );
        }
    }
}
