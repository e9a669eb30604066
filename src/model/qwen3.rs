//! Qwen3: Llama's layout (see [`super::llama`]) with an RMSNorm of each query and key head
//! before RoPE, and the head tied or untied as the config says. Its sliding-window option
//! (`use_sliding_window`) is refused.

use super::config::{preset_config, Defaults, Family, ModelConfig};
use super::llama::{hub_json_with, read_llama_like};
use serde_json::{json, Value};

pub(super) const PRESETS: &[&str] = &["tiny-qwen3", "qwen3-1.7b"];

/// transformers' `Qwen3Config` defaults for what a config may leave out.
const DEFAULTS: Defaults = Defaults {
    vocab_size: Some(151_936),
    hidden_size: None,
    intermediate_size: None,
    num_hidden_layers: None,
    num_attention_heads: None,
    num_key_value_heads: None,
    head_dim: Some(128),
    max_position_embeddings: 32_768,
    query_pre_attn_scalar: None,
    sliding_window: None,
    activation: "silu",
    tie_word_embeddings: false,
    bos_token_id: None,
    eos_token_ids: &[],
    pad_token_id: None,
};

pub(super) fn read_config(v: &Value) -> Result<ModelConfig, String> {
    read_llama_like(v, Family::Qwen3, &DEFAULTS, true)
}

pub(super) fn hub_json(cfg: &ModelConfig) -> Value {
    let mut v = hub_json_with(cfg, "Qwen3ForCausalLM");
    v["use_sliding_window"] = json!(false);
    v
}

pub(super) fn preset(name: &str) -> Option<ModelConfig> {
    let json = match name {
        // The fixture's shape (tests/fixtures/qwen3-tiny).
        "tiny-qwen3" => json!({
            "vocab_size": 384, "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 2,
            "head_dim": 16, "max_position_embeddings": 256, "rope_theta": 10000.0,
            "tie_word_embeddings": true, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0
        }),
        // Qwen/Qwen3-1.7B, as its Hub config says.
        "qwen3-1.7b" => json!({
            "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645
        }),
        _ => return None,
    };
    let common = [
        ("model_type", json!("qwen3")),
        ("hidden_act", json!("silu")),
        ("rms_norm_eps", json!(1e-6)),
    ];
    Some(preset_config(json, &common, read_config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, NormWeight, RopeScaling};

    fn parse(v: Value) -> Result<ModelConfig, String> {
        ModelConfig::from_json(&v.to_string())
    }

    /// Qwen/Qwen3-1.7B's config.json, as the Hub has it.
    fn hub() -> Value {
        json!({
            "architectures": ["Qwen3ForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
            "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
            "initializer_range": 0.02, "intermediate_size": 6144,
            "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
            "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
            "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
            "vocab_size": 151936
        })
    }

    #[test]
    fn reads_the_hub_spelling() {
        let c = parse(hub()).unwrap();
        assert_eq!(c, ModelConfig::preset("qwen3-1.7b").unwrap());
        assert_eq!(c.family, Family::Qwen3);
        assert_eq!(c.activation, Activation::Silu);
        assert_eq!(c.norm_weight, NormWeight::Plain);
        assert!(c.qk_norm && !c.post_norms && !c.scale_embeddings);
        assert_eq!(c.rope_global.theta, 1e6);
        assert_eq!(c.rope_global.scaling, RopeScaling::None);
        assert_eq!(c.sliding_window, None);
        assert!(c.sliding_layers.iter().all(|s| !s));
        // The model card's 1.7 B (1.4 B without the embedding).
        assert_eq!(c.parameter_count(), 1_720_574_976);
    }

    #[test]
    fn reads_transformers_5_rope_parameters_and_a_window_it_ignores() {
        let mut v = hub();
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e5});
        v["sliding_window"] = json!(4096);
        v["tie_word_embeddings"] = json!(false);
        let c = parse(v).unwrap();
        assert_eq!(c.rope_global.theta, 5e5);
        assert_eq!(c.sliding_window, None);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn refuses_the_sliding_window_and_biases() {
        for (field, want) in [
            ("use_sliding_window", "use_sliding_window = true"),
            ("attention_bias", "attention_bias = true"),
        ] {
            let mut v = hub();
            v[field] = json!(true);
            let e = parse(v).unwrap_err();
            assert!(e.contains(want), "{field}: {e}");
        }
    }

    #[test]
    fn round_trips_through_hub_json() {
        for name in PRESETS {
            let c = ModelConfig::preset(name).unwrap();
            let j = c.to_hub_json();
            assert_eq!(j["model_type"], "qwen3");
            assert_eq!(j["use_sliding_window"], false);
            assert_eq!(parse(j).unwrap(), c, "{name}");
        }
    }
}
