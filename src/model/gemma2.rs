//! Gemma-2: how its `config.json` reads, its presets and its Hub spelling. The network itself
//! is the shared decoder ([`super::CausalLm`]) with soft-caps on, no q/k norms, one RoPE base
//! and alternating sliding-window layers.

use super::config::{
    rope_object, Defaults, Family, FamilyParts, Layout, ModelConfig, RawConfig, RopeScaling,
    RopeSpec,
};
use serde_json::{json, Value};

pub(super) const PRESETS: &[&str] = &["tiny", "small", "gemma-2-2b"];

pub(super) fn read_config(v: &Value) -> Result<ModelConfig, String> {
    let raw: RawConfig =
        serde_json::from_value(v.clone()).map_err(|e| format!("malformed config.json: {e}"))?;
    let defaults = Defaults {
        vocab_size: None,
        hidden_size: None,
        intermediate_size: None,
        num_hidden_layers: None,
        num_attention_heads: None,
        num_key_value_heads: None,
        head_dim: None,
        max_position_embeddings: 8192,
        query_pre_attn_scalar: None,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: &[],
        activation: "gelu_pytorch_tanh",
        tie_word_embeddings: true,
        pad_token_id: None,
    };
    raw.build(&defaults, |raw, n, _| {
        // transformers 5 writes `rope_parameters` (one object); the Hub's files `rope_theta`.
        let (scaling, nested_theta) = match &raw.rope_parameters {
            Some(p) if !p.is_null() => rope_object(p, "rope_parameters")?,
            _ => (RopeScaling::None, None),
        };
        if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported by Gemma-2".into());
        }
        if scaling != RopeScaling::None {
            return Err("rope_parameters: only default RoPE is supported by Gemma-2".into());
        }
        let rope = RopeSpec {
            theta: raw.rope_theta.or(nested_theta).unwrap_or(10_000.0),
            scaling,
        };
        Ok(FamilyParts {
            family: Family::Gemma2,
            rope_global: rope,
            rope_local: rope,
            // Gemma-2: even layers slide, odd layers are global.
            sliding_layers: raw.sliding_layers(n, |i| i % 2 == 0)?,
            qk_norm: false,
            layout: Layout::GEMMA,
        })
    })
}

pub(super) fn preset(name: &str) -> Option<ModelConfig> {
    let (v, h, i, l, heads, kv, d, window) = match name {
        "tiny" => (384, 64, 160, 4, 4, 2, 16, 4096),
        "small" => (32000, 512, 2048, 6, 8, 4, 64, 4096),
        "gemma-2-2b" => (256000, 2304, 9216, 26, 8, 4, 256, 4096),
        _ => return None,
    };
    let json = json!({
        "model_type": "gemma2", "vocab_size": v, "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": l, "num_attention_heads": heads, "num_key_value_heads": kv,
        "head_dim": d, "query_pre_attn_scalar": d, "sliding_window": window,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 10000.0,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "bos_token_id": 2, "eos_token_id": [1, 107], "pad_token_id": 0
    });
    Some(ModelConfig::from_json(&json.to_string()).expect("presets are valid"))
}

pub(super) fn hub_json(cfg: &ModelConfig) -> Value {
    let mut m = cfg.gemma_hub_json();
    m.insert("architectures".into(), json!(["Gemma2ForCausalLM"]));
    m.insert("hidden_act".into(), json!(cfg.activation_name()));
    m.insert("rope_theta".into(), json!(cfg.rope_global.theta));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = r#"{"model_type":"gemma2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
      "num_hidden_layers":3,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":4,
      "hidden_act":"gelu_pytorch_tanh","rope_theta":500.0,"eos_token_id":[1,107],"bos_token_id":2,
      "query_pre_attn_scalar":6,"sliding_window":4,"attn_logit_softcapping":50.0,
      "final_logit_softcapping":null,"torch_dtype":"bfloat16"}"#;

    fn parse(t: &str) -> Result<ModelConfig, String> {
        ModelConfig::from_json(t)
    }

    #[test]
    fn reads_the_hub_spelling() {
        let c = parse(HUB).unwrap();
        assert_eq!(c.family, Family::Gemma2);
        assert_eq!(c.rope_global.theta, 500.0);
        assert_eq!(c.rope_local, c.rope_global);
        assert_eq!(c.eos_token_ids, vec![1, 107]);
        assert_eq!(c.sliding_layers, vec![true, false, true]);
        assert_eq!(c.activation, super::super::Activation::GeluTanh);
        assert_eq!(c.final_logit_softcapping, None);
        assert_eq!(c.query_pre_attn_scalar, 6.0);
        assert!(c.tie_word_embeddings && !c.qk_norm);
    }

    #[test]
    fn reads_nested_rope_parameters_and_scalar_eos() {
        let t = HUB
            .replace(
                "\"rope_theta\":500.0",
                "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":7.0}",
            )
            .replace("[1,107]", "1")
            .replace("\"hidden_act\"", "\"hidden_activation\"");
        let c = parse(&t).unwrap();
        assert_eq!(c.rope_global.theta, 7.0);
        assert_eq!(c.eos_token_ids, vec![1]);
    }

    #[test]
    fn round_trips_through_hub_json() {
        let c = parse(HUB).unwrap();
        let json = c.to_hub_json();
        let back = parse(&json.to_string()).unwrap();
        assert_eq!(c, back);
        // transformers rejects a float here.
        assert!(json["query_pre_attn_scalar"].is_i64(), "{json}");
    }

    #[test]
    fn hub_json_uses_the_declared_types() {
        let v = ModelConfig::preset("gemma-2-2b").unwrap().to_hub_json();
        for int_field in [
            "query_pre_attn_scalar",
            "head_dim",
            "sliding_window",
            "max_position_embeddings",
            "vocab_size",
        ] {
            assert!(v[int_field].is_u64(), "{int_field}: {}", v[int_field]);
        }
        assert_eq!(v["query_pre_attn_scalar"], json!(256));
        for float_field in ["rms_norm_eps", "rope_theta", "attn_logit_softcapping"] {
            assert!(v[float_field].is_f64(), "{float_field}: {}", v[float_field]);
        }
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let cases = [
            (
                HUB.replace("\"num_key_value_heads\":1", "\"num_key_value_heads\":3"),
                "multiple of num_key_value_heads",
            ),
            (
                HUB.replace("gelu_pytorch_tanh", "relu"),
                "hidden_activation `relu`",
            ),
            (
                HUB.replace("\"vocab_size\":10,", ""),
                "missing field `vocab_size`",
            ),
            (
                HUB.replace(
                    "\"rope_theta\":500.0",
                    "\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2.0}",
                ),
                "rope_scaling is not supported by Gemma-2",
            ),
            ("{".to_string(), "malformed config.json"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn presets_exist() {
        assert_eq!(ModelConfig::preset("gemma-2-2b").unwrap().hidden_size, 2304);
        assert!(ModelConfig::preset("huge").is_none());
    }
}
