//! LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors` with
//! keys `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`, so that
//! Hugging Face PEFT, vLLM and mistral.rs load ours and we load theirs.

use super::causal_lm::CausalLm;
use super::lora::{LoraConfig, Target};
use super::{ModelError, Result};
use crate::fsutil::write_atomic;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub(crate) const CONFIG_FILE: &str = "adapter_config.json";
pub(crate) const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT name of a projection's adapter, without the `.lora_A.weight` suffix.
pub(crate) fn peft_prefix(layer: usize, t: Target) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}",
        t.block(),
        t.module()
    )
}

/// What an adapter folder says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub lora: LoraConfig,
    /// `base_model_name_or_path`, when the adapter names its base model.
    pub base_model: Option<String>,
}

/// Writes the model's adapters (every attached LoRA) to `dir`, each file atomically.
pub fn save(
    model: &CausalLm,
    lora: &LoraConfig,
    base_model: Option<&str>,
    dir: &Path,
) -> Result<()> {
    let vars = model.lora_vars();
    if vars.is_empty() {
        return Err(ModelError::Invalid(
            "the model has no LoRA adapter to save".into(),
        ));
    }
    let tensors: BTreeMap<String, Tensor> = vars
        .into_iter()
        .map(|(k, v)| {
            Ok((
                k,
                v.as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(&tensors, Some(metadata))
        .map_err(|e| ModelError::file(&dir.join(WEIGHTS_FILE), e.to_string()))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let config = config_json(lora, base_model);
    crate::fsutil::write_json(&dir.join(CONFIG_FILE), &config)?;
    Ok(())
}

/// The `adapter_config.json` PEFT writes for a LoRA on a causal LM.
pub(crate) fn config_json(lora: &LoraConfig, base_model: Option<&str>) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": null,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.targets.iter().map(|t| t.module()).collect::<Vec<_>>(),
        "use_rslora": lora.use_rslora,
        "use_dora": false,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

/// Reads `adapter_config.json` and checks that socratune can apply it.
pub fn read_config(dir: &Path) -> Result<AdapterInfo> {
    let path = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|e| ModelError::file(&path, e.to_string()))?;
    parse_config(&text).map_err(|m| ModelError::file(&path, m))
}

fn parse_config(text: &str) -> std::result::Result<AdapterInfo, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = field("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            return Err(format!(
                "peft_type is `{t}`; only LORA adapters are supported"
            ));
        }
    }
    let r = field("r")
        .and_then(Value::as_u64)
        .ok_or("`r` is missing or not a positive integer")? as usize;
    let alpha = field("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let dropout = field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32;
    let use_rslora = field("use_rslora")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (k, ok) in [
        (
            "use_dora",
            field("use_dora").is_none_or(|x| x == &json!(false)),
        ),
        (
            "fan_in_fan_out",
            field("fan_in_fan_out").is_none_or(|x| x == &json!(false)),
        ),
        ("bias", field("bias").is_none_or(|x| x == "none")),
        (
            "modules_to_save",
            field("modules_to_save").is_none_or(|x| x.as_array().is_some_and(|a| a.is_empty())),
        ),
        (
            "rank_pattern",
            field("rank_pattern").is_none_or(|x| x.as_object().is_some_and(|o| o.is_empty())),
        ),
        (
            "alpha_pattern",
            field("alpha_pattern").is_none_or(|x| x.as_object().is_some_and(|o| o.is_empty())),
        ),
    ] {
        if !ok {
            return Err(format!("`{k}` = {} is not supported", v[k]));
        }
    }
    let targets = match field("target_modules") {
        None => Target::ALL.to_vec(),
        Some(Value::String(s)) if s == "all-linear" => Target::ALL.to_vec(),
        Some(Value::String(s)) => {
            return Err(format!(
                "target_modules is the pattern `{s}`; list the modules instead (q_proj, k_proj, …)"
            ))
        }
        Some(Value::Array(a)) => {
            let mut t = a
                .iter()
                .map(|x| {
                    let s = x.as_str().ok_or("target_modules holds a non-string")?;
                    // PEFT also accepts dotted suffixes such as `self_attn.q_proj`.
                    Target::parse(s.rsplit('.').next().unwrap_or(s)).map_err(|_| {
                        format!("target module `{s}` is not a projection socratune adapts (q,k,v,o,gate,up,down)")
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            t.sort();
            t.dedup();
            t
        }
        Some(other) => {
            return Err(format!(
                "target_modules = {other} is neither a list nor a string"
            ))
        }
    };
    let lora = LoraConfig {
        r,
        alpha,
        dropout,
        targets,
        use_rslora,
    };
    lora.validate().map_err(|e| e.to_string())?;
    let base_model = field("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(String::from);
    Ok(AdapterInfo { lora, base_model })
}

/// Parses `base_model.model.model.layers.{i}.{block}.{module}.lora_{A|B}.weight`.
fn parse_key(key: &str) -> Option<(usize, Target, bool)> {
    let rest = key.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (block, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let t = Target::parse(module)
        .ok()
        .filter(|t| t.block() == block && t.module() == module)?;
    match rest {
        "lora_A.weight" => Some((layer, t, true)),
        "lora_B.weight" => Some((layer, t, false)),
        _ => None,
    }
}

/// Loads the adapter in `dir` into `model` (replacing any attached one).
pub fn load(model: &mut CausalLm, dir: &Path) -> Result<AdapterInfo> {
    let info = read_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(ModelError::file(&path, "not found"));
    }
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| ModelError::file(&path, format!("cannot read: {e}")))?;
    let bad = |m: String| ModelError::file(&path, m);
    let layers = model.cfg.num_hidden_layers;
    let mut pairs: BTreeMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, t) in tensors {
        let (layer, target, is_a) = parse_key(&key).ok_or_else(|| {
            bad(format!(
                "tensor `{key}` is not the LoRA weight of a projection socratune adapts"
            ))
        })?;
        if layer >= layers {
            return Err(bad(format!(
                "tensor `{key}` is for layer {layer}, but the model has {layers} layers (an adapter for another model?)"
            )));
        }
        if !info.lora.targets.contains(&target) {
            return Err(bad(format!(
                "tensor `{key}` adapts `{}`, which target_modules does not list",
                target.module()
            )));
        }
        let slot = pairs.entry((layer, target)).or_default();
        if is_a {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    if pairs.is_empty() {
        return Err(bad("no LoRA tensors".into()));
    }
    let scale = info.lora.scale();
    let r = info.lora.r;
    for (l, t, lin) in model.linears_mut() {
        lin.lora = None;
        let Some((a, b)) = pairs.remove(&(l, t)) else {
            continue;
        };
        let prefix = peft_prefix(l, t);
        let a = a.ok_or_else(|| bad(format!("`{prefix}.lora_A.weight` is missing")))?;
        let b = b.ok_or_else(|| bad(format!("`{prefix}.lora_B.weight` is missing")))?;
        let (out_dim, in_dim) = (lin.out_dim(), lin.in_dim());
        if a.dims() != [r, in_dim] || b.dims() != [out_dim, r] {
            return Err(bad(format!(
                "`{prefix}`: lora_A {:?} / lora_B {:?} do not fit rank {r} on a [{out_dim}, {in_dim}] weight (expected [{r}, {in_dim}] and [{out_dim}, {r}])",
                a.dims(),
                b.dims()
            )));
        }
        lin.set_lora(a, b, scale, info.lora.dropout)?;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_when_well_formed() {
        assert_eq!(
            parse_key("base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"),
            Some((3, Target::DownProj, false))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some((0, Target::QProj, true))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"),
            None
        );
        assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"),
            None
        );
    }

    #[test]
    fn config_round_trips_and_refuses_what_it_cannot_apply() {
        let lora = LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.1,
            targets: vec![Target::QProj, Target::VProj],
            use_rslora: true,
        };
        let text = config_json(&lora, Some("google/gemma-2-2b-it")).to_string();
        let info = parse_config(&text).unwrap();
        assert_eq!(info.lora, lora);
        assert_eq!(info.base_model.as_deref(), Some("google/gemma-2-2b-it"));
        for (edit, want) in [
            (("use_dora", json!(true)), "`use_dora`"),
            (
                ("target_modules", json!(["q_proj", "lm_head"])),
                "`lm_head`",
            ),
            (("target_modules", json!(".*proj")), "pattern"),
            (("peft_type", json!("IA3")), "only LORA"),
            (("r", json!(0)), "rank r"),
        ] {
            let mut v: Value = serde_json::from_str(&text).unwrap();
            v[edit.0] = edit.1;
            let e = parse_config(&v.to_string()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
