//! Finding what a conversation needs: the base model (named by the adapter, or given), the
//! tokenizer the run's data was made with, and the variant that decides the prompt format.

use super::{ChatError, PromptFormat, Result};
use crate::dataset::{ChatTemplate, ChatTokenizer, StatsFile, Variant};
use crate::model::device::{device_name, parse_device, parse_dtype};
use crate::model::{adapter, CausalLm, Source};
use crate::rundir::RunDir;
use std::path::{Path, PathBuf};

/// The base model when neither an adapter nor `--model` names one.
pub const DEFAULT_MODEL: &str = "google/gemma-2-2b-it";

/// What a run folder says about an adapter in it (`<run>/best`, `<run>/adapter`,
/// `<run>/checkpoints/step-N`): the run's `data/stats.json`.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub stats: PathBuf,
    /// The variant the run was trained on (`config` in stats.json).
    pub variant: Variant,
    /// The tokenizer its data was made with, when that file still exists.
    pub tokenizer: Option<PathBuf>,
}

impl RunInfo {
    /// Looks for `data/stats.json` one and two folders above the adapter.
    pub fn find(adapter: &Path) -> Result<Option<Self>> {
        match RunDir::containing(adapter) {
            Some(run) => Self::read(&run.data().stats()).map(Some),
            None => Ok(None),
        }
    }

    pub fn read(stats: &Path) -> Result<Self> {
        let file = StatsFile::read(stats)?;
        let tokenizer = Some(PathBuf::from(file.tokenizer)).filter(|p| p.is_file());
        Ok(Self {
            stats: stats.to_path_buf(),
            variant: file.config,
            tokenizer,
        })
    }
}

/// Where the model comes from and where it runs.
#[derive(Debug, Clone, Default)]
pub struct ModelSpec {
    /// Hub repo id or local folder; None: what the adapters name, else [`DEFAULT_MODEL`].
    pub model: Option<String>,
    pub revision: Option<String>,
    /// tokenizer.json, a folder holding one, or a Hub repo id; None: the run's, else the model's.
    pub tokenizer: Option<String>,
    pub device: String,
    pub dtype: String,
}

/// How the prompt is cut and prefixed, as asked (`--variant`, `--window`, `--prefix`); unset
/// ones come from the run's variant.
#[derive(Debug, Clone, Default)]
pub struct PromptChoice {
    /// A variant file whose window and prefix to use.
    pub variant: Option<PathBuf>,
    /// `variant` (the variant's window), `all` (the whole history) or a number of pairs.
    pub window: Option<String>,
    /// Put before the first user turn of the window instead of the variant's prefix.
    pub prefix: Option<String>,
    /// The system text instead of the variant's (empty: none).
    pub system: Option<String>,
}

/// A base model in memory with its tokenizer.
pub struct Loaded {
    pub model: CausalLm,
    pub tokenizer: ChatTokenizer,
    /// How the base model was named (for transcripts and messages).
    pub base: String,
    /// One line: what was loaded, where.
    pub summary: String,
}

/// Loads the base model shared by `adapters` (the adapters themselves are loaded by the caller,
/// so that several can take turns on one model).
pub fn load_base(
    spec: &ModelSpec,
    adapters: &[&Path],
    runs: &[Option<&RunInfo>],
) -> Result<Loaded> {
    let base = match &spec.model {
        Some(m) => m.clone(),
        None => base_of(adapters)?,
    };
    let src = Source::parse(&base, spec.revision.as_deref())?;
    let tokenizer = match &spec.tokenizer {
        Some(t) => ChatTokenizer::resolve(t)?,
        None => match runs.iter().flatten().find_map(|r| r.tokenizer.as_ref()) {
            Some(p) => ChatTokenizer::from_file(p)?,
            None => {
                let path = src.file("tokenizer.json").map_err(ChatError::NoTokenizer)?;
                ChatTokenizer::from_file(&path)?
            }
        },
    };
    let device = parse_device(&spec.device)?;
    let dtype = parse_dtype(&spec.dtype, &device)?;
    let model = crate::model::load(&src, dtype, &device)?;
    let want = ChatTemplate::of_family(model.cfg.family);
    if tokenizer.specials.template != want {
        return Err(ChatError::Invalid(format!(
            "{}: the tokenizer has the {} chat template's special tokens, but {src} is a {} model (template {want}); use the model's own tokenizer",
            tokenizer.path().display(),
            tokenizer.specials.template,
            model.cfg.family.model_type()
        )));
    }
    let vocab = tokenizer.inner().get_vocab_size(true);
    if vocab > model.cfg.vocab_size {
        return Err(ChatError::Invalid(format!(
            "{}: the tokenizer has {vocab} tokens, more than the model's {} (a tokenizer for another model?)",
            tokenizer.path().display(),
            model.cfg.vocab_size
        )));
    }
    let summary = format!(
        "{src}: {} ({dtype:?} on {}); tokenizer {}",
        model.cfg.summary(),
        device_name(&device),
        tokenizer.path().display()
    );
    Ok(Loaded {
        model,
        tokenizer,
        base,
        summary,
    })
}

/// The base model the adapters name; they must agree.
fn base_of(adapters: &[&Path]) -> Result<String> {
    let mut named: Option<(String, &Path)> = None;
    for dir in adapters {
        let info = adapter::read_config(dir)?;
        match (info.base_model, &named) {
            (None, _) => {
                return Err(ChatError::Invalid(format!(
                    "{}: the adapter does not name its base model; pass --model",
                    dir.display()
                )))
            }
            (Some(b), Some((first, at))) if &b != first => {
                return Err(ChatError::Invalid(format!(
                    "{} is for {b} but {} is for {first}; pass --model to use one base for both",
                    dir.display(),
                    at.display()
                )))
            }
            (Some(b), None) => named = Some((b, dir)),
            (Some(_), Some(_)) => {}
        }
    }
    Ok(named
        .map(|(b, _)| b)
        .unwrap_or_else(|| DEFAULT_MODEL.into()))
}

/// Puts `dir`'s adapter on the model, or takes every adapter off (`None`, the base model).
pub fn use_adapter(model: &mut CausalLm, dir: Option<&Path>) -> Result<()> {
    match dir {
        Some(d) => {
            adapter::load(model, d)?;
        }
        None => {
            for (_, _, lin) in model.linears_mut() {
                lin.lora = None;
            }
        }
    }
    Ok(())
}

/// The prompt format from the flags and the run's variant: `--variant` (a file) or the run's,
/// its window unless `--window` says `all` or a number of pairs, its prefix unless `--prefix`,
/// its system text unless `--system`, and its format (chat or Alpaca). Returns the format and
/// the variant's name.
pub fn prompt_format(
    args: &PromptChoice,
    run_variant: Option<&Variant>,
) -> Result<(PromptFormat, Option<String>)> {
    let file = args.variant.as_deref().map(Variant::load).transpose()?;
    let variant = file.as_ref().or(run_variant);
    let pairs = match args.window.as_deref().map(str::trim) {
        None | Some("variant") => variant.map(|v| v.span()),
        Some("all") => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(ChatError::Invalid(format!(
                    "--window `{n}` is not `variant`, `all` or a number of pairs (1 or more)"
                )))
            }
        },
    };
    let prefix = match (&args.prefix, variant) {
        (Some(p), _) => p.clone(),
        (None, Some(v)) => v.prefix.clone(),
        (None, None) => String::new(),
    };
    let mut layout = variant.map(|v| v.layout.clone()).unwrap_or_default();
    if let Some(s) = &args.system {
        layout.system = Some(s.trim().to_string()).filter(|s| !s.is_empty());
    }
    Ok((
        PromptFormat {
            pairs,
            prefix,
            layout,
        },
        variant.map(|v| v.name.clone()),
    ))
}

/// A short name for an adapter folder: its last two path components (`model3/best`).
pub fn adapter_name(dir: &Path) -> String {
    let parts: Vec<String> = dir
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    match parts.len() {
        0 => dir.display().to_string(),
        1 => parts[0].clone(),
        n => format!("{}/{}", parts[n - 2], parts[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_variant_and_tokenizer_of_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("model8");
        std::fs::create_dir_all(run.join("data")).unwrap();
        std::fs::create_dir_all(run.join("checkpoints/step-10")).unwrap();
        let tok = dir.path().join("tokenizer.json");
        std::fs::write(&tok, "{}").unwrap();
        // A stats.json as data build writes it, naming this tokenizer.
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats/model8.json");
        let mut stats: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        stats["tokenizer"] = tok.display().to_string().into();
        std::fs::write(run.join("data/stats.json"), stats.to_string()).unwrap();
        for adapter in [run.join("best"), run.join("checkpoints/step-10")] {
            let info = RunInfo::find(&adapter).unwrap().unwrap();
            let v = info.variant;
            assert_eq!((v.name.as_str(), v.utterances), ("model8", 4));
            assert_eq!(v.prefix, "ソクラテスさん。");
            assert_eq!(info.tokenizer.as_deref(), Some(tok.as_path()));
        }
        assert!(RunInfo::find(&dir.path().join("elsewhere/x"))
            .unwrap()
            .is_none());
        stats["config"]["utterances"] = 3.into();
        std::fs::write(run.join("data/stats.json"), stats.to_string()).unwrap();
        let e = RunInfo::find(&run.join("best")).unwrap_err().to_string();
        assert!(
            e.contains("stats.json") && e.contains("not an even number"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_run_variant() {
        let v = Variant::from_toml(
            "name = \"m8\"\npairs = 0\nutterances = 4\nprefix = \"P。\"\n",
            Path::new("m8.toml"),
        )
        .unwrap();
        let f = |window: Option<&str>, prefix: Option<&str>, v: Option<&Variant>| {
            let args = PromptChoice {
                variant: None,
                window: window.map(String::from),
                prefix: prefix.map(String::from),
                system: None,
            };
            prompt_format(&args, v).map(|(f, name)| (f.pairs, f.prefix, name))
        };
        let name = Some("m8".to_string());
        assert_eq!(
            f(None, None, Some(&v)).unwrap(),
            (Some(2), "P。".into(), name.clone())
        );
        assert_eq!(
            f(Some("all"), None, Some(&v)).unwrap(),
            (None, "P。".into(), name.clone())
        );
        assert_eq!(
            f(Some("3"), Some(""), Some(&v)).unwrap(),
            (Some(3), "".into(), name)
        );
        assert_eq!(f(None, None, None).unwrap(), (None, "".into(), None));
        assert_eq!(f(None, Some("Q"), None).unwrap(), (None, "Q".into(), None));
        let e = f(Some("0"), None, None).unwrap_err().to_string();
        assert!(e.contains("--window `0`"), "{e}");
    }

    #[test]
    fn adapter_names_are_short() {
        assert_eq!(adapter_name(Path::new("runs/model3/best")), "model3/best");
        assert_eq!(adapter_name(Path::new("best")), "best");
        assert_eq!(adapter_name(Path::new("/a/b/c/")), "b/c");
    }
}
