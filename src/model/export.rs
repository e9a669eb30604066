//! Merged full weights in the Hub's layout (config, sharded safetensors with an index,
//! generation config, tokenizer files), loadable by transformers, vLLM and llama.cpp's
//! converter.

use super::causal_lm::CausalLm;
use super::hub::Source;
use super::{ModelError, Result};
use crate::fsutil::{write_atomic, write_json};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Tokenizer files copied from the base model when it has them.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

/// Writes `model`'s weights (merge adapters first) to `out` in `dtype`, in shards of at most
/// `max_shard_bytes`, plus config and tokenizer files from `base`.
pub fn export(
    model: &CausalLm,
    base: Option<&Source>,
    out: &Path,
    dtype: DType,
    max_shard_bytes: usize,
) -> Result<Vec<String>> {
    if !model.lora_vars().is_empty() {
        return Err(ModelError::Invalid(
            "merge the adapter before exporting".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e.to_string()))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in model.named_weights()? {
        tensors.push((
            name,
            t.to_dtype(dtype)?.to_device(&Device::Cpu)?.contiguous()?,
        ));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    // Greedy sharding in name order, as transformers does.
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut size = 0;
    for (name, t) in tensors {
        let bytes = t.elem_count() * dtype.size_in_bytes();
        if size > 0 && size + bytes > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push((name, t));
    }
    let n = shards.len();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    let mut written = Vec::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        for (name, t) in &shard {
            weight_map.insert(name.clone(), file.clone());
            total += t.elem_count() * dtype.size_in_bytes();
        }
        let map: BTreeMap<String, Tensor> = shard.into_iter().collect();
        let bytes = safetensors::serialize(&map, Some(metadata.clone()))
            .map_err(|e| ModelError::file(&out.join(&file), e.to_string()))?;
        write_atomic(&out.join(&file), &bytes)?;
        written.push(file);
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(
            &out.join("model.safetensors.index.json"),
            index.to_string().as_bytes(),
        )?;
        written.push("model.safetensors.index.json".into());
    }
    write_json(&out.join("config.json"), &config_json(model, base, dtype)?)?;
    written.push("config.json".to_string());
    // The base model's generation settings verbatim; a model made from scratch gets its own.
    match base
        .map(|src| src.optional_file("generation_config.json"))
        .transpose()?
        .flatten()
    {
        Some(p) => copy_verbatim(&p, &out.join("generation_config.json"))?,
        None => {
            let generation = json!({
                "bos_token_id": model.cfg.bos_token_id,
                "eos_token_id": model.cfg.eos_token_ids,
                "pad_token_id": model.cfg.pad_token_id,
                "cache_implementation": "hybrid",
            });
            write_json(&out.join("generation_config.json"), &generation)?;
        }
    }
    written.push("generation_config.json".to_string());
    if let Some(src) = base {
        for f in TOKENIZER_FILES {
            if let Some(p) = src.optional_file(f)? {
                copy_verbatim(&p, &out.join(f))?;
                written.push(f.to_string());
            }
        }
    }
    Ok(written)
}

/// The export's `config.json`: the base model's own, every field kept as written (peers
/// validate types strictly: `query_pre_attn_scalar` must stay an int), with only the weight
/// dtype changed (a multimodal base's text part, see [`text_part`]); from scratch (no base) the
/// typed config in transformers' declared types.
fn config_json(model: &CausalLm, base: Option<&Source>, dtype: DType) -> Result<Value> {
    let mut config = match base {
        Some(src) => {
            let path = src.file("config.json")?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ModelError::file(&path, e.to_string()))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::file(&path, format!("malformed config.json: {e}")))?;
            if !v.is_object() {
                return Err(ModelError::file(&path, "config.json is not a JSON object"));
            }
            text_part(v)
        }
        None => model.cfg.to_hub_json(),
    };
    // `dtype` for transformers 5, `torch_dtype` for older readers (vLLM, llama.cpp's converter).
    config["dtype"] = json!(dtype_name(dtype));
    config["torch_dtype"] = json!(dtype_name(dtype));
    Ok(config)
}

/// A multimodal checkpoint's config (`text_config` beside a vision tower) as the text-only
/// model the export holds: its `text_config`, with the top level's token ids, named as the
/// family's causal LM. Any other config is returned as it is.
fn text_part(v: Value) -> Value {
    let Some(Value::Object(text)) = v.get("text_config") else {
        return v;
    };
    let mut text = text.clone();
    for key in [
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "tie_word_embeddings",
    ] {
        if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
            text.entry(key).or_insert_with(|| x.clone());
        }
    }
    let causal_lm = match text.get("model_type").and_then(Value::as_str) {
        Some("gemma3_text") => Some("Gemma3ForCausalLM"),
        _ => None,
    };
    if let Some(arch) = causal_lm {
        text.insert("architectures".into(), json!([arch]));
    }
    Value::Object(text)
}

fn copy_verbatim(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| ModelError::file(from, e.to_string()))?;
    write_atomic(to, &bytes)?;
    Ok(())
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multimodal_config_exports_as_its_text_model() {
        let v = json!({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
            "eos_token_id": [1, 106], "text_config": {"model_type": "gemma3_text",
            "hidden_size": 2560, "eos_token_id": 1}, "vision_config": {}});
        let t = text_part(v);
        assert_eq!(t["model_type"], "gemma3_text");
        assert_eq!(t["architectures"], json!(["Gemma3ForCausalLM"]));
        assert_eq!(t["hidden_size"], 2560);
        // The text config's own value wins over the top level's.
        assert_eq!(t["eos_token_id"], 1);
        assert!(t.get("vision_config").is_none());
        let plain = json!({"model_type": "gemma2", "hidden_size": 8});
        assert_eq!(text_part(plain.clone()), plain);
    }
}
