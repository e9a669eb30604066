//! `data stats` and `data build`: load everything once, tokenize each distinct utterance once,
//! then compute statistics or write each variant's `runs/<variant>/data/`.

use super::extract::common_examples;
use super::template::fit;
use super::{
    extract, render, ChatTokenizer, Corpus, DatasetError, Example, Extracted, Fit, Overflow,
    Result, Segments, Split, TokenCounts, Tokenized, Variant, VariantStats, IGNORE,
};
use crate::corpus::write_jsonl;
use crate::fsutil::write_json;
use crate::rundir::RunDir;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which variants to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Named(Vec<String>),
}

/// What `prepare` reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub dialogues: PathBuf,
    /// A tokenizer.json path, a folder holding one, or a Hub repo id.
    pub tokenizer: String,
    pub variants_dir: PathBuf,
    pub selection: Selection,
    pub seed: u64,
    /// Skip bad lines and dialogues too short for a variant (each reported) instead of failing.
    pub skip_bad: bool,
    /// Count dialogues with neither judge nor review as kept.
    pub include_unjudged: bool,
}

/// Everything loaded, extracted and tokenized, ready for statistics or writing.
pub struct Prepared {
    pub inputs: Inputs,
    pub corpus: Corpus,
    pub tokenizer: ChatTokenizer,
    pub split: Split,
    pub variants: Vec<(Variant, Extracted)>,
    pub counts: TokenCounts,
}

pub fn prepare(inputs: Inputs) -> Result<Prepared> {
    // Cheap checks first: a typo in a variant should not wait for a tokenizer download.
    let variants = match &inputs.selection {
        Selection::All => Variant::load_dir(&inputs.variants_dir)?,
        Selection::Named(names) => Variant::load_named(&inputs.variants_dir, names)?,
    };
    let corpus = Corpus::load(&inputs.dialogues, inputs.skip_bad)?;
    let split = Split::new(corpus.ids(), inputs.seed);
    let variants = variants
        .into_iter()
        .map(|v| {
            let x = extract(
                &v,
                &corpus.dialogues,
                inputs.include_unjudged,
                inputs.skip_bad,
            )?;
            Ok((v, x))
        })
        .collect::<Result<Vec<_>>>()?;
    let tokenizer = ChatTokenizer::resolve(&inputs.tokenizer)?;
    let counts = TokenCounts::build(
        &tokenizer,
        variants
            .iter()
            .flat_map(|(v, x)| x.examples.iter().map(move |e| (&v.layout, e))),
    )?;
    Ok(Prepared {
        inputs,
        corpus,
        tokenizer,
        split,
        variants,
        counts,
    })
}

impl Prepared {
    pub fn stats(&self) -> Vec<VariantStats> {
        self.variants
            .iter()
            .map(|(v, x)| VariantStats::compute(v, x, &self.counts, &self.split))
            .collect()
    }
}

/// Where and how `build` writes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The runs folder; each variant goes to `<out>/<variant>/data/`.
    pub out: PathBuf,
    pub max_len: Option<usize>,
    pub overflow: Overflow,
}

/// What `build` wrote for one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    pub variant: String,
    pub dir: PathBuf,
    /// Examples written to train.jsonl and val.jsonl.
    pub train: usize,
    pub val: usize,
    /// Examples cut to `max_len`, and examples left out by the max-length policy.
    pub truncated: usize,
    pub dropped: usize,
    /// Tokens in the longest example written to train.jsonl or val.jsonl (0 in a stats.json
    /// written before it was recorded).
    #[serde(default)]
    pub longest: usize,
}

/// An example longer than this many tokens is warned about: it exceeds Gemma-2's context.
pub const LONG_EXAMPLE: usize = 8192;

impl BuildReport {
    /// What the user should know before training on this data: an empty split, or an
    /// example too long to train on (made without `--max-len`).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let name = &self.variant;
        if self.train == 0 {
            w.push(format!(
                "{name}: the training set is empty; nothing can be trained on it"
            ));
        }
        if self.val == 0 {
            w.push(format!(
                "{name}: the validation set is empty (too few dialogues for the split); training cannot be evaluated or early-stopped"
            ));
        }
        if self.longest > LONG_EXAMPLE {
            w.push(format!(
                "{name}: the longest example is {} tokens, more than Gemma-2's context of {LONG_EXAMPLE}; rebuild with --max-len to cut or drop such examples",
                self.longest
            ));
        }
        w
    }
}

/// One line of train.jsonl, val.jsonl and common.jsonl: written here, read by training
/// (`train::data`) and scoring. `labels[i]` is `input_ids[i]` or -100 (position i's logits
/// predict `labels[i + 1]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub dialogue: String,
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Record {
    fn new(ex: &Example, t: Tokenized) -> Self {
        Record {
            id: ex.id.clone(),
            dialogue: ex.dialogue.clone(),
            input_ids: t.input_ids,
            labels: t.labels,
        }
    }

    /// Tokens the loss is computed on.
    pub fn supervised(&self) -> usize {
        self.labels.iter().skip(1).filter(|l| **l != IGNORE).count()
    }
}

/// `stats.json`: the statistics row, then how the data was made. Written by `data build`, read
/// by everything that needs a run's variant or tokenizer (chat, serve, eval).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsFile {
    #[serde(flatten)]
    pub stats: VariantStats,
    /// The variant the data was made with (validated again when read back).
    pub config: Variant,
    /// The tokenizer as it was given to `data build`.
    pub tokenizer: String,
    pub corpus: String,
    pub corpus_sha256: String,
    pub seed: u64,
    pub include_unjudged: bool,
    pub max_len: Option<usize>,
    pub overflow: Overflow,
    pub written: BuildReport,
    /// Dialogues left out as too short (under `--skip-bad`).
    pub too_short: Vec<String>,
}

impl StatsFile {
    /// Reads and checks a `stats.json`; an error names the file and what is wrong in it.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::fsutil::FileError::new(path, e))?;
        serde_json::from_str(&text).map_err(|e| DatasetError::Stats {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Writes `train.jsonl`, `val.jsonl`, `split.json` and `stats.json` for every prepared variant.
pub fn build(p: &Prepared, opts: &BuildOptions) -> Result<Vec<BuildReport>> {
    if opts.max_len.is_some_and(|m| m < 2) {
        return Err(DatasetError::Invalid(
            "--max-len must be at least 2 (BOS and one token)".into(),
        ));
    }
    let manifest = p.split.manifest(&p.corpus.path, &p.corpus.sha256);
    let stats = p.stats();
    let common: Vec<Vec<super::Example>> = p
        .variants
        .iter()
        .map(|(v, _)| {
            common_examples(
                v,
                &p.corpus.dialogues,
                |id| p.split.is_val(id),
                p.inputs.include_unjudged,
            )
        })
        .collect();
    let segments = Segments::build(
        &p.tokenizer,
        p.variants.iter().zip(&common).flat_map(|((v, x), common)| {
            x.examples.iter().chain(common).map(move |e| (&v.layout, e))
        }),
    )?;
    let keep_first = p.tokenizer.specials.bos.is_some();
    let mut reports = Vec::new();
    for (((v, x), stats), common) in p.variants.iter().zip(&stats).zip(&common) {
        let data = RunDir::of(&opts.out, &v.name).data();
        let dir = data.root();
        let fitted: Vec<Fit> = x
            .examples
            .par_iter()
            .map(|ex| {
                let t = render(ex, &v.layout, &segments);
                fit(t, opts.max_len, opts.overflow, keep_first)
            })
            .collect();
        let mut report = BuildReport {
            variant: v.name.clone(),
            dir: dir.to_path_buf(),
            train: 0,
            val: 0,
            truncated: 0,
            dropped: 0,
            longest: 0,
        };
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (ex, f) in x.examples.iter().zip(fitted) {
            let t = match f {
                Fit::Fits(t) => t,
                Fit::Truncated(t) => {
                    report.truncated += 1;
                    t
                }
                Fit::Dropped => {
                    report.dropped += 1;
                    continue;
                }
            };
            report.longest = report.longest.max(t.input_ids.len());
            let r = Record::new(ex, t);
            if p.split.is_val(&ex.dialogue) {
                val.push(r);
            } else {
                train.push(r);
            }
        }
        (report.train, report.val) = (train.len(), val.len());
        write_jsonl(&data.train(), &train)?;
        write_jsonl(&data.val(), &val)?;
        let whole: Vec<Record> = common
            .iter()
            .map(|ex| Record::new(ex, render(ex, &v.layout, &segments)))
            .collect();
        write_jsonl(&data.common(), &whole)?;
        write_json(&data.split(), &manifest)?;
        let file = StatsFile {
            stats: stats.clone(),
            config: v.clone(),
            tokenizer: p.tokenizer.path().display().to_string(),
            corpus: p.corpus.path.display().to_string(),
            corpus_sha256: p.corpus.sha256.clone(),
            seed: p.split.seed,
            include_unjudged: p.inputs.include_unjudged,
            max_len: opts.max_len,
            overflow: opts.overflow,
            written: report.clone(),
            too_short: x.too_short.clone(),
        };
        write_json(&data.stats(), &file)?;
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_splits_and_overlong_examples_are_warned_about() {
        let r = BuildReport {
            variant: "model1".into(),
            dir: PathBuf::from("runs/model1/data"),
            train: 40,
            val: 10,
            truncated: 0,
            dropped: 0,
            longest: 900,
        };
        assert!(r.warnings().is_empty());
        let w = BuildReport {
            val: 0,
            longest: 17_000_000,
            ..r
        }
        .warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("validation set is empty"), "{w:?}");
        assert!(
            w[1].contains("17000000 tokens") && w[1].contains("--max-len"),
            "{w:?}"
        );
    }

    /// stats.json files as `data build` wrote them before this type owned the schema
    /// (tests/fixtures/stats): each reads back and writes out byte for byte.
    #[test]
    fn stats_json_written_earlier_reads_and_writes_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats");
        for name in ["model8", "listed"] {
            let path = fixtures.join(format!("{name}.json"));
            let file = StatsFile::read(&path).unwrap();
            assert_eq!(file.config.name, name);
            let out = dir.path().join("stats.json");
            write_json(&out, &file).unwrap();
            assert_eq!(
                std::fs::read_to_string(&out).unwrap(),
                std::fs::read_to_string(&path).unwrap(),
                "{name}"
            );
        }
        let listed = StatsFile::read(&fixtures.join("listed.json")).unwrap();
        assert_eq!(
            listed.config.pairs,
            super::super::Pairs::List(vec![0, 2, 10])
        );
        assert_eq!((listed.max_len, listed.overflow), (None, Overflow::Drop));
    }

    #[test]
    fn a_bad_stats_json_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let good: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats/model8.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let path = dir.path().join("stats.json");
        let cases: [(&str, serde_json::Value, &str); 4] = [
            (
                "/config/utterances",
                3.into(),
                "variant `model8`: utterances: 3 is not an even number",
            ),
            (
                "/config/pairs",
                "3..1".into(),
                "variant `model8`: pairs: range `3..1` is empty",
            ),
            (
                "/config/name",
                "../x".into(),
                "name: `../x` must be letters",
            ),
            ("/overflow", "keep".into(), "unknown variant `keep`"),
        ];
        for (pointer, value, expected) in cases {
            let mut bad = good.clone();
            *bad.pointer_mut(pointer).unwrap() = value;
            std::fs::write(&path, bad.to_string()).unwrap();
            let e = StatsFile::read(&path).unwrap_err().to_string();
            assert!(
                e.starts_with(&path.display().to_string()) && e.contains(expected),
                "{pointer}: {e}"
            );
        }
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("tokenizer");
        std::fs::write(&path, missing.to_string()).unwrap();
        let e = StatsFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("missing field `tokenizer`"), "{e}");
        // Written before `longest` was recorded: still reads.
        let mut older = good;
        older["written"].as_object_mut().unwrap().remove("longest");
        std::fs::write(&path, older.to_string()).unwrap();
        assert_eq!(StatsFile::read(&path).unwrap().written.longest, 0);
    }
}
