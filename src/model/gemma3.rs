//! Gemma-3's text model: how its `config.json` reads (`gemma3_text`, or the `text_config` of a
//! multimodal `gemma3` checkpoint), its presets and its Hub spelling. The network is the
//! shared decoder ([`super::CausalLm`]) with q/k RMSNorm, no soft-caps, a local and a global
//! RoPE (linear scaling possible on each) and `layer_types` (five sliding layers to one global
//! by default).

use super::config::{
    preset_config, rope_json, rope_object, scaling_json, Defaults, Family, FamilyParts, Layout,
    ModelConfig, RawConfig, RopeScaling, RopeSpec,
};
use serde_json::{json, Value};

pub(super) const PRESETS: &[&str] = &["tiny-gemma3", "gemma-3-1b", "gemma-3-4b"];

/// transformers' `Gemma3TextConfig` defaults: the Hub's configs rely on them (gemma-3-4b's
/// `text_config` does not even name its vocabulary size).
const DEFAULTS: Defaults = Defaults {
    vocab_size: Some(262_208),
    hidden_size: Some(2304),
    intermediate_size: Some(9216),
    num_hidden_layers: Some(26),
    num_attention_heads: Some(8),
    num_key_value_heads: Some(4),
    head_dim: Some(256),
    max_position_embeddings: 131_072,
    query_pre_attn_scalar: Some(256.0),
    sliding_window: Some(4096),
    bos_token_id: Some(2),
    eos_token_ids: &[1],
    activation: "gelu_pytorch_tanh",
    tie_word_embeddings: true,
    pad_token_id: Some(0),
};
const GLOBAL_THETA: f64 = 1_000_000.0;
const LOCAL_THETA: f64 = 10_000.0;
const SLIDING_WINDOW_PATTERN: usize = 6;

pub(super) fn read_config(v: &Value) -> Result<ModelConfig, String> {
    let raw: RawConfig =
        serde_json::from_value(v.clone()).map_err(|e| format!("malformed config.json: {e}"))?;
    if raw.use_bidirectional_attention == Some(true) {
        return Err(
            "use_bidirectional_attention = true is not supported (an encoder, not a causal LM)"
                .into(),
        );
    }
    raw.build(&DEFAULTS, |raw, n, _| {
        let (rope_global, rope_local) = ropes(raw)?;
        let pattern = raw.sliding_window_pattern.unwrap_or(SLIDING_WINDOW_PATTERN);
        if pattern == 0 {
            return Err("sliding_window_pattern must be positive".into());
        }
        Ok(FamilyParts {
            family: Family::Gemma3,
            rope_global,
            rope_local,
            // As transformers: every `pattern`-th layer is global.
            sliding_layers: raw.sliding_layers(n, |i| (i + 1) % pattern != 0)?,
            qk_norm: true,
            layout: Layout::GEMMA,
        })
    })
}

/// A multimodal `gemma3` config: its `text_config`, with the token ids and embedding tying
/// that the top level holds.
pub(super) fn read_multimodal_config(v: &Value) -> Result<ModelConfig, String> {
    let mut text = match v.get("text_config") {
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(format!("text_config must be an object, got {other}")),
        None => return Err(
            "missing field `text_config` (a `gemma3` config holds its text model's config there)"
                .into(),
        ),
    };
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
    text.insert("model_type".into(), json!("gemma3_text"));
    read_config(&Value::Object(text)).map_err(|e| format!("text_config: {e}"))
}

/// (global, local) RoPE from either spelling: transformers 5's `rope_parameters` keyed by
/// layer type, or `rope_theta` + `rope_local_base_freq` + `rope_scaling` (global layers only).
fn ropes(raw: &RawConfig) -> Result<(RopeSpec, RopeSpec), String> {
    let mut global = RopeSpec {
        theta: raw.rope_theta.unwrap_or(GLOBAL_THETA),
        scaling: RopeScaling::None,
    };
    let mut local = RopeSpec {
        theta: raw.rope_local_base_freq.unwrap_or(LOCAL_THETA),
        scaling: RopeScaling::None,
    };
    if let Some(p) = raw.rope_parameters.as_ref().filter(|p| !p.is_null()) {
        let Some(o) = p.as_object() else {
            return Err(format!("rope_parameters must be an object, got {p}"));
        };
        for key in o.keys() {
            if key != "full_attention" && key != "sliding_attention" {
                return Err(format!(
                    "rope_parameters: unknown key `{key}` (Gemma-3 keys them by layer type: full_attention, sliding_attention)"
                ));
            }
        }
        for (key, spec) in [
            ("full_attention", &mut global),
            ("sliding_attention", &mut local),
        ] {
            if let Some(entry) = o.get(key) {
                let (scaling, theta) = rope_object(entry, &format!("rope_parameters.{key}"))?;
                spec.scaling = scaling;
                if let Some(t) = theta {
                    spec.theta = t;
                }
            }
        }
    }
    // transformers applies `rope_scaling` to the global layers, over `rope_parameters`.
    if let Some(s) = raw.rope_scaling.as_ref().filter(|s| !s.is_null()) {
        let (scaling, theta) = rope_object(s, "rope_scaling")?;
        global.scaling = scaling;
        if let Some(t) = theta {
            global.theta = t;
        }
    }
    Ok((global, local))
}

pub(super) fn preset(name: &str) -> Option<ModelConfig> {
    // google/gemma-3-1b-it and the text part of google/gemma-3-4b-it, as their Hub files say.
    let json = match name {
        "tiny-gemma3" => json!({
            "vocab_size": 384, "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 512,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "max_position_embeddings": 32768
        }),
        "gemma-3-1b" => json!({
            "vocab_size": 262144, "hidden_size": 1152, "intermediate_size": 6912,
            "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1,
            "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 512,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "max_position_embeddings": 32768
        }),
        "gemma-3-4b" => json!({
            "vocab_size": 262208, "hidden_size": 2560, "intermediate_size": 10240,
            "num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 1024,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "max_position_embeddings": 131072
        }),
        _ => return None,
    };
    let common = [
        ("model_type", json!("gemma3_text")),
        ("bos_token_id", json!(2)),
        ("eos_token_id", json!([1, 106])),
        ("pad_token_id", json!(0)),
        ("rms_norm_eps", json!(1e-6)),
        ("hidden_activation", json!("gelu_pytorch_tanh")),
    ];
    Some(preset_config(json, &common, read_config))
}

/// Both RoPE spellings: `rope_parameters` for transformers 5, and the keys that older readers
/// (llama.cpp's converter, vLLM) look for.
pub(super) fn hub_json(cfg: &ModelConfig) -> Value {
    let mut m = cfg.gemma_hub_json();
    m.insert("architectures".into(), json!(["Gemma3ForCausalLM"]));
    m.insert(
        "rope_parameters".into(),
        json!({"full_attention": rope_json(&cfg.rope_global), "sliding_attention": rope_json(&cfg.rope_local)}),
    );
    m.insert("rope_theta".into(), json!(cfg.rope_global.theta));
    m.insert("rope_local_base_freq".into(), json!(cfg.rope_local.theta));
    if cfg.rope_global.scaling != RopeScaling::None {
        m.insert(
            "rope_scaling".into(),
            Value::Object(scaling_json(&cfg.rope_global.scaling)),
        );
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ModelConfig, String> {
        ModelConfig::from_json(&v.to_string())
    }

    #[test]
    fn reads_the_legacy_hub_spelling_with_transformers_defaults() {
        // google/gemma-3-4b-it's text_config, as the Hub has it.
        let c = parse(json!({
            "model_type": "gemma3",
            "eos_token_id": [1, 106],
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                "model_type": "gemma3_text", "num_attention_heads": 8, "num_hidden_layers": 34,
                "num_key_value_heads": 4, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024},
            "vision_config": {"model_type": "siglip_vision_model"}
        }))
        .unwrap();
        assert_eq!(c, ModelConfig::preset("gemma-3-4b").unwrap());
        assert_eq!(c.family, Family::Gemma3);
        assert_eq!(c.vocab_size, 262_208);
        assert_eq!(c.head_dim, 256);
        assert_eq!(c.eos_token_ids, vec![1, 106]);
        assert_eq!(
            c.rope_global,
            RopeSpec {
                theta: 1e6,
                scaling: RopeScaling::Linear { factor: 8.0 }
            }
        );
        assert_eq!(
            c.rope_local,
            RopeSpec {
                theta: 1e4,
                scaling: RopeScaling::None
            }
        );
        // Five sliding layers to one global.
        let globals: Vec<usize> = (0..34).filter(|&i| !c.sliding_layers[i]).collect();
        assert_eq!(globals, vec![5, 11, 17, 23, 29]);
        assert!(c.qk_norm && c.attn_logit_softcapping.is_none());
    }

    #[test]
    fn reads_transformers_5_rope_parameters_and_layer_types() {
        let c = parse(json!({
            "model_type": "gemma3_text", "num_hidden_layers": 3,
            "layer_types": ["full_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}
            }
        }))
        .unwrap();
        assert_eq!(c.sliding_layers, vec![false, true, false]);
        assert_eq!(c.rope_global.theta, 5000.0);
        assert_eq!(c.rope_global.scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(c.rope_local.theta, 50.0);
        assert_eq!(c.rope_of_layer(1), &c.rope_local);
    }

    #[test]
    fn refuses_what_it_cannot_run_naming_the_field() {
        let base = || json!({"model_type": "gemma3_text"});
        let cases = [
            (
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 2.0}),
                "rope_scaling: rope_type `yarn`",
            ),
            (
                "rope_parameters",
                json!({"global": {}}),
                "rope_parameters: unknown key `global`",
            ),
            (
                "rope_parameters",
                json!({"full_attention": {"rope_type": "dynamic"}}),
                "rope_parameters.full_attention: rope_type `dynamic`",
            ),
            (
                "use_bidirectional_attention",
                json!(true),
                "use_bidirectional_attention",
            ),
            (
                "layer_types",
                json!(["sliding_attention"]),
                "layer_types has 1 entries for 26 layers",
            ),
            (
                "sliding_window_pattern",
                json!(0),
                "sliding_window_pattern must be positive",
            ),
        ];
        for (field, value, want) in cases {
            let mut v = base();
            v[field] = value;
            let e = parse(v).unwrap_err();
            assert!(e.contains(want), "{field}: {e}");
        }
        let e = parse(json!({"model_type": "gemma3"})).unwrap_err();
        assert!(e.contains("`text_config`"), "{e}");
        let e = parse(json!({"model_type": "gemma3", "text_config": {"head_dim": 3}})).unwrap_err();
        assert!(e.starts_with("text_config: head_dim"), "{e}");
    }
}
