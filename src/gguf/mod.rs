//! `socratune export --format gguf`: a merged model as one GGUF file that llama.cpp, Ollama
//! and LM Studio load, with the tokenizer and chat template embedded, in llama.cpp's tensor
//! names, layouts and quantization mixtures; and an Ollama Modelfile beside it.

pub mod family;
pub mod ollama;
pub(crate) mod quant;
pub(crate) mod vocab;

pub use quant::Quant;

use crate::model::{CausalLm, ModelError, Source};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use family::Family;
use quant::Role;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vocab::Vocab;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A model or request the format (or llama.cpp) cannot represent.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl GgufError {
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        GgufError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl From<crate::fsutil::FileError> for GgufError {
    fn from(e: crate::fsutil::FileError) -> Self {
        GgufError::file(&e.path, e.source.to_string())
    }
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    /// Tensors per GGML type name.
    pub types: BTreeMap<&'static str, usize>,
}

impl Written {
    /// `q4_k 14, q6_k 5, f32 17`.
    pub fn describe_types(&self) -> String {
        let parts: Vec<String> = self.types.iter().map(|(t, n)| format!("{t} {n}")).collect();
        parts.join(", ")
    }
}

/// Writes `model` (adapters merged) to `out` as `quant`, with the tokenizer from `base`;
/// `name` goes in `general.name`.
pub fn export(
    model: &CausalLm,
    base: &Source,
    out: &Path,
    quant: Quant,
    name: &str,
) -> Result<Written> {
    if !model.lora_vars().is_empty() {
        return Err(GgufError::Invalid(
            "merge the adapter before exporting".into(),
        ));
    }
    let fam = family::family(model.cfg.family.model_type())?;
    let cfg = &model.cfg;
    let tok = read_tokenizer(base, cfg.vocab_size)?;
    let mut meta: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String(fam.arch.into()),
        ),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(quant.file_type())),
        // ggml's GGML_QNT_VERSION.
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    meta.extend((fam.metadata)(cfg)?);
    meta.extend(tok.vocab.metadata());
    meta.extend(special_ids(&tok, cfg, fam));
    meta.push((
        "tokenizer.chat_template".into(),
        Value::String(
            tok.chat_template
                .unwrap_or_else(|| fam.chat_template.into()),
        ),
    ));

    let tensors = convert_tensors(model, fam, quant)?;
    let mut types = BTreeMap::new();
    for (_, q) in &tensors {
        *types.entry(quant::type_name(q.dtype())).or_insert(0) += 1;
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    crate::fsutil::write_atomic_with(out, |w| {
        gguf_file::write(w, &meta_refs, &tensor_refs).map_err(std::io::Error::other)
    })?;
    let bytes = std::fs::metadata(out)
        .map_err(|e| GgufError::file(out, e.to_string()))?
        .len();
    Ok(Written {
        path: out.to_path_buf(),
        bytes,
        types,
    })
}

/// Every weight under its GGUF name, converted and encoded in the type llama.cpp would give it.
fn convert_tensors(model: &CausalLm, fam: &Family, quant: Quant) -> Result<Vec<(String, QTensor)>> {
    let cfg = &model.cfg;
    let mut out = Vec::new();
    for (hf, t) in model.named_weights()? {
        let Some(name) = fam.gguf_name(&hf) else {
            return Err(GgufError::Invalid(if hf == "lm_head.weight" {
                format!(
                    "llama.cpp's {} uses the token embedding as the output projection; this model has an untied lm_head",
                    fam.arch
                )
            } else {
                format!("tensor `{hf}` has no GGUF name in the {} family", fam.arch)
            }));
        };
        let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let t = (fam.convert)(cfg, &name, t)?;
        let dims = t.dims().to_vec();
        let layer = || {
            name.split('.')
                .nth(1)
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let role = if dims.len() < 2 {
            Role::Vector
        } else if name == "output.weight"
            || (name == "token_embd.weight" && cfg.tie_word_embeddings)
        {
            Role::Output
        } else if name.ends_with(".attn_v.weight") {
            Role::AttnV(layer())
        } else if name.ends_with(".ffn_down.weight") {
            Role::FfnDown(layer())
        } else {
            Role::Matrix
        };
        let ncols = *dims.last().unwrap_or(&1);
        let ty: GgmlDType = quant::tensor_type(quant, role, ncols, cfg.num_hidden_layers);
        out.push((name, quant::encode(&t, ty)?));
    }
    for (name, t) in (fam.extra_tensors)(cfg)? {
        out.push((name, quant::encode(&t, GgmlDType::F32)?));
    }
    Ok(out)
}

/// The tokenizer files of the base model, read for GGUF.
struct Tokenizer {
    vocab: Vocab,
    chat_template: Option<String>,
    add_bos: bool,
    add_eos: bool,
}

/// `tokenizer.model` (SentencePiece) when the base has it, else a byte-level BPE
/// `tokenizer.json`; `tokenizer_config.json` adds tokens, BOS/EOS flags and the template.
fn read_tokenizer(base: &Source, vocab_size: usize) -> Result<Tokenizer> {
    let config = match base.optional_file("tokenizer_config.json")? {
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).map_err(|e| GgufError::file(&p, e.to_string()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| GgufError::file(&p, format!("malformed JSON: {e}")))?
        }
        None => serde_json::Value::Null,
    };
    let vocab = if let Some(p) = base.optional_file("tokenizer.model")? {
        let mut added: Vec<(usize, String, bool)> = Vec::new();
        if let Some(map) = config["added_tokens_decoder"].as_object() {
            for (id, v) in map {
                let id = id.parse().map_err(|_| {
                    GgufError::Invalid(format!(
                        "tokenizer_config.json: added_tokens_decoder key `{id}` is not a token id"
                    ))
                })?;
                let content = v["content"].as_str().unwrap_or_default().to_string();
                added.push((id, content, v["special"] == true));
            }
        }
        added.sort_by_key(|a| a.0);
        vocab::from_sentencepiece(&p, vocab_size, &added)?
    } else if let Some(p) = base.optional_file("tokenizer.json")? {
        vocab::from_tokenizer_json(&p, vocab_size)?
    } else {
        return Err(GgufError::Invalid(format!(
            "{base}: no tokenizer.model or tokenizer.json to embed in the GGUF file"
        )));
    };
    // Newer repositories keep the template in its own file.
    let chat_template = match base.optional_file("chat_template.jinja")? {
        Some(p) => {
            Some(std::fs::read_to_string(&p).map_err(|e| GgufError::file(&p, e.to_string()))?)
        }
        None => config["chat_template"].as_str().map(str::to_string),
    };
    Ok(Tokenizer {
        vocab,
        chat_template,
        add_bos: config["add_bos_token"].as_bool().unwrap_or(true),
        add_eos: config["add_eos_token"].as_bool().unwrap_or(false),
    })
}

/// `tokenizer.ggml.*_token_id` and the BOS/EOS flags.
fn special_ids(
    tok: &Tokenizer,
    cfg: &crate::model::ModelConfig,
    fam: &Family,
) -> Vec<(String, Value)> {
    let mut m = Vec::new();
    let mut id = |k: &str, v: Option<u32>| {
        if let Some(v) = v {
            m.push((format!("tokenizer.ggml.{k}_token_id"), Value::U32(v)));
        }
    };
    id("bos", cfg.bos_token_id);
    id("eos", cfg.eos_token_ids.first().copied());
    id("unknown", tok.vocab.id("<unk>"));
    id("padding", cfg.pad_token_id);
    id("eot", tok.vocab.id(fam.end_of_turn));
    m.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(tok.add_bos),
    ));
    m.push((
        "tokenizer.ggml.add_eos_token".into(),
        Value::Bool(tok.add_eos),
    ));
    m
}
