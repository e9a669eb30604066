//! Llama (Llama-3.x): how its `config.json` reads, its presets and its Hub spelling. The
//! network is the shared decoder with plain RMSNorm, pre-norms only, SwiGLU, GQA, no soft-caps,
//! raw embeddings and one RoPE (with Llama-3.1's `llama3` scaling when the config says so).
//! Qwen3 reads the same way with q/k norms added (see [`super::qwen3`]).

use super::config::{
    preset_config, rope_json, scaling_json, single_rope, Defaults, Family, FamilyParts, Layout,
    ModelConfig, RawConfig, RopeScaling,
};
use serde_json::{json, Value};

pub(super) const PRESETS: &[&str] = &["tiny-llama", "llama-3.2-1b"];

/// transformers' `LlamaConfig` defaults for what a config may leave out.
const DEFAULTS: Defaults = Defaults {
    vocab_size: None,
    hidden_size: None,
    intermediate_size: None,
    num_hidden_layers: None,
    num_attention_heads: None,
    num_key_value_heads: None,
    head_dim: None,
    max_position_embeddings: 2048,
    query_pre_attn_scalar: None,
    sliding_window: None,
    activation: "silu",
    tie_word_embeddings: false,
    bos_token_id: Some(1),
    eos_token_ids: &[2],
    pad_token_id: None,
};

pub(super) fn read_config(v: &Value) -> Result<ModelConfig, String> {
    read_llama_like(v, Family::Llama, &DEFAULTS, false)
}

/// A Llama-shaped config: every layer global, one RoPE, scores scaled by 1/sqrt(head_dim), no
/// soft-caps; `qk_norm` adds Qwen3's per-head norms. Gemma-only fields, should a config carry
/// them, mean nothing to these families and are dropped.
pub(super) fn read_llama_like(
    v: &Value,
    family: Family,
    defaults: &Defaults,
    qk_norm: bool,
) -> Result<ModelConfig, String> {
    let mut raw: RawConfig =
        serde_json::from_value(v.clone()).map_err(|e| format!("malformed config.json: {e}"))?;
    if raw.use_sliding_window {
        return Err(
            "use_sliding_window = true is not supported (every layer attends globally here)".into(),
        );
    }
    if let Some(p) = v.get("partial_rotary_factor").and_then(Value::as_f64) {
        if p != 1.0 {
            return Err(format!(
                "partial_rotary_factor = {p} is not supported (RoPE on the whole head only)"
            ));
        }
    }
    // Without use_sliding_window transformers ignores the window (Qwen3 configs still name one).
    raw.sliding_window = None;
    raw.layer_types = None;
    raw.query_pre_attn_scalar = None;
    raw.attn_logit_softcapping = None;
    raw.final_logit_softcapping = None;
    raw.build(defaults, |raw, n, _| {
        let rope = single_rope(raw, 10_000.0)?;
        Ok(FamilyParts {
            family,
            rope_global: rope,
            rope_local: rope,
            sliding_layers: vec![false; n],
            qk_norm,
            layout: Layout::LLAMA,
        })
    })
}

/// The Hub's spelling of a Llama-shaped config (both RoPE spellings, as Gemma-3's).
pub(super) fn hub_json_with(cfg: &ModelConfig, architecture: &str) -> Value {
    let mut m = cfg.common_hub_json();
    m.remove("layer_types");
    m.insert("architectures".into(), json!([architecture]));
    m.insert("hidden_act".into(), json!(cfg.activation_name()));
    m.insert("mlp_bias".into(), json!(false));
    m.insert("rope_parameters".into(), rope_json(&cfg.rope_global));
    m.insert("rope_theta".into(), json!(cfg.rope_global.theta));
    if cfg.rope_global.scaling != RopeScaling::None {
        m.insert(
            "rope_scaling".into(),
            Value::Object(scaling_json(&cfg.rope_global.scaling)),
        );
    }
    Value::Object(m)
}

pub(super) fn hub_json(cfg: &ModelConfig) -> Value {
    hub_json_with(cfg, "LlamaForCausalLM")
}

pub(super) fn preset(name: &str) -> Option<ModelConfig> {
    let json = match name {
        // The fixture's shape (tests/fixtures/llama-tiny), untied.
        "tiny-llama" => json!({
            "vocab_size": 384, "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": false,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0
        }),
        // meta-llama/Llama-3.2-1B-Instruct, as its Hub config says.
        "llama-3.2-1b" => json!({
            "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": true,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]
        }),
        _ => return None,
    };
    let common = [
        ("model_type", json!("llama")),
        ("hidden_act", json!("silu")),
    ];
    Some(preset_config(json, &common, read_config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, NormWeight, RopeSpec};

    fn parse(v: Value) -> Result<ModelConfig, String> {
        ModelConfig::from_json(&v.to_string())
    }

    /// meta-llama/Llama-3.2-1B-Instruct's config.json, as the Hub has it.
    fn hub() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
            "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
            "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
            "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
            "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256
        })
    }

    #[test]
    fn reads_the_hub_spelling() {
        let c = parse(hub()).unwrap();
        assert_eq!(c, ModelConfig::preset("llama-3.2-1b").unwrap());
        assert_eq!(c.family, Family::Llama);
        assert_eq!(c.activation, Activation::Silu);
        assert_eq!(c.norm_weight, NormWeight::Plain);
        assert!(!c.qk_norm && !c.post_norms && !c.scale_embeddings);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.query_pre_attn_scalar, 64.0);
        assert!(c.attn_logit_softcapping.is_none() && c.sliding_window.is_none());
        assert_eq!(
            c.rope_global,
            RopeSpec {
                theta: 500000.0,
                scaling: RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192
                }
            }
        );
        // 1.24 B parameters, as the model card says.
        assert_eq!(c.parameter_count(), 1_235_814_400);
    }

    #[test]
    fn reads_transformers_5_rope_parameters() {
        let mut v = hub();
        let o = v.as_object_mut().unwrap();
        let mut rope = o.remove("rope_scaling").unwrap();
        rope["rope_theta"] = o.remove("rope_theta").unwrap();
        o.insert("rope_parameters".into(), rope);
        o.remove("head_dim");
        o.remove("tie_word_embeddings");
        let c = parse(v).unwrap();
        let want = ModelConfig::preset("llama-3.2-1b").unwrap();
        assert_eq!(c.rope_global, want.rope_global);
        // transformers' defaults: head_dim = hidden / heads, an untied head.
        assert_eq!(c.head_dim, 64);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn refuses_what_it_cannot_run_naming_the_field() {
        let cases = [
            ("attention_bias", json!(true), "attention_bias = true"),
            ("mlp_bias", json!(true), "mlp_bias = true"),
            ("hidden_act", json!("relu"), "hidden_activation `relu`"),
            ("partial_rotary_factor", json!(0.5), "partial_rotary_factor"),
            (
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0}),
                "rope_scaling: llama3 RoPE scaling needs a numeric `low_freq_factor`",
            ),
            (
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                    "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
                "high_freq_factor (1) must be larger than low_freq_factor (4)",
            ),
            (
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 8.0}),
                "rope_scaling: rope_type `yarn`",
            ),
        ];
        for (field, value, want) in cases {
            let mut v = hub();
            v[field] = value;
            let e = parse(v).unwrap_err();
            assert!(e.contains(want), "{field}: {e}");
        }
    }

    #[test]
    fn round_trips_through_hub_json() {
        for name in PRESETS {
            let c = ModelConfig::preset(name).unwrap();
            let j = c.to_hub_json();
            assert_eq!(j["model_type"], "llama");
            assert!(j.get("query_pre_attn_scalar").is_none(), "{j}");
            assert_eq!(parse(j).unwrap(), c, "{name}");
        }
    }
}
