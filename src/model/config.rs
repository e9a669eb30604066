//! Gemma-2 `config.json`, read as the Hugging Face Hub spells it.

use super::ModelError;
use serde::Deserialize;
use std::path::Path;

/// The activation of the feed-forward gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, Gemma's own).
    GeluTanh,
    /// GELU, exact (erf).
    GeluErf,
}

/// The model's shape and numerics.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub query_pre_attn_scalar: f64,
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub sliding_layers: Vec<bool>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// The file's fields; unknown ones are ignored.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    final_logit_softcapping: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    bos_token_id: Option<OneOrMany>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
}

fn default_max_positions() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

impl Gemma2Config {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::file(path, format!("cannot read config: {e}")))?;
        Self::from_json(&text).map_err(|m| ModelError::file(path, m))
    }

    /// Parses the text of a `config.json`; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("malformed config.json: {e}"))?;
        if let Some(t) = &raw.model_type {
            if t != "gemma2" {
                return Err(format!("model_type is `{t}`; socratune supports `gemma2`"));
            }
        }
        if raw.attention_bias {
            return Err("attention_bias = true is not supported (Gemma-2 has none)".into());
        }
        let rope_from_params = raw.rope_parameters.as_ref().and_then(|p| {
            if p.rope_type.as_deref().is_some_and(|t| t != "default") {
                Some(Err(format!(
                    "rope_parameters.rope_type `{}` is not supported (only default RoPE)",
                    p.rope_type.as_deref().unwrap_or_default()
                )))
            } else {
                p.rope_theta.map(Ok)
            }
        });
        let rope_theta = match (raw.rope_theta, rope_from_params) {
            (_, Some(Err(e))) => return Err(e),
            (Some(t), _) | (None, Some(Ok(t))) => t,
            (None, None) => 10_000.0,
        };
        if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported by Gemma-2".into());
        }
        let act_name = raw
            .hidden_activation
            .or(raw.hidden_act)
            .unwrap_or_else(|| "gelu_pytorch_tanh".into());
        let activation = match act_name.as_str() {
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            other => return Err(format!("hidden_activation `{other}` is not supported")),
        };
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            ));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!(
                "head_dim must be a positive even number, got {head_dim}"
            ));
        }
        for (name, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("max_position_embeddings", raw.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        let n = raw.num_hidden_layers;
        let sliding_layers = match raw.layer_types {
            Some(types) => {
                if types.len() != n {
                    return Err(format!(
                        "layer_types has {} entries for {n} layers",
                        types.len()
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        o => Err(format!("layer_types: unknown layer type `{o}`")),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            // Gemma-2: even layers slide, odd layers are global.
            None => (0..n).map(|i| i % 2 == 0).collect(),
        };
        if raw.sliding_window == Some(0) {
            return Err("sliding_window must be positive".into());
        }
        let positive_cap = |name: &str, c: Option<f64>| match c {
            Some(c) if c <= 0.0 => Err(format!("{name} must be positive, got {c}")),
            _ => Ok(c),
        };
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: n,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            activation,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            attn_logit_softcapping: positive_cap(
                "attn_logit_softcapping",
                raw.attn_logit_softcapping,
            )?,
            final_logit_softcapping: positive_cap(
                "final_logit_softcapping",
                raw.final_logit_softcapping,
            )?,
            query_pre_attn_scalar: raw.query_pre_attn_scalar.unwrap_or(head_dim as f64),
            sliding_window: raw.sliding_window,
            sliding_layers,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id: raw.bos_token_id.and_then(|b| b.into_vec().first().copied()),
            eos_token_ids: raw
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
            pad_token_id: raw.pad_token_id,
        })
    }

    /// The shape preset used by benchmarks and the demo (same fields as the Hub's files).
    pub fn preset(name: &str) -> Option<Self> {
        let (v, h, i, l, heads, kv, d, window) = match name {
            "tiny" => (384, 64, 160, 4, 4, 2, 16, 4096),
            "small" => (32000, 512, 2048, 6, 8, 4, 64, 4096),
            "gemma-2-2b" => (256000, 2304, 9216, 26, 8, 4, 256, 4096),
            _ => return None,
        };
        let json = serde_json::json!({
            "model_type": "gemma2", "vocab_size": v, "hidden_size": h, "intermediate_size": i,
            "num_hidden_layers": l, "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": d, "query_pre_attn_scalar": d, "sliding_window": window,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 10000.0,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
            "bos_token_id": 2, "eos_token_id": [1, 107], "pad_token_id": 0
        });
        Some(Self::from_json(&json.to_string()).expect("presets are valid"))
    }

    /// Writes the config in the Hub's spelling (for exports and random models).
    pub fn to_hub_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Gemma2ForCausalLM"],
            "model_type": "gemma2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.activation_name(),
            "hidden_activation": self.activation_name(),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "attn_logit_softcapping": self.attn_logit_softcapping,
            "final_logit_softcapping": self.final_logit_softcapping,
            "query_pre_attn_scalar": self.query_pre_attn_scalar_json(),
            "sliding_window": self.sliding_window,
            "layer_types": self.sliding_layers.iter()
                .map(|s| if *s { "sliding_attention" } else { "full_attention" })
                .collect::<Vec<_>>(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
        })
    }

    /// transformers declares `query_pre_attn_scalar: int` and refuses `16.0`; a (non-standard)
    /// fractional value can only be written as it is.
    fn query_pre_attn_scalar_json(&self) -> serde_json::Value {
        let s = self.query_pre_attn_scalar;
        if s.fract() == 0.0 && s >= 0.0 && s < u32::MAX as f64 {
            serde_json::json!(s as u64)
        } else {
            serde_json::json!(s)
        }
    }

    fn activation_name(&self) -> &'static str {
        match self.activation {
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::GeluErf => "gelu",
        }
    }

    /// One line: layers, widths, heads, vocabulary and parameter count.
    pub fn summary(&self) -> String {
        format!(
            "gemma2, {} layers, hidden {}, intermediate {}, {} heads ({} kv) of {}, vocab {}, {:.2}M parameters",
            self.num_hidden_layers,
            self.hidden_size,
            self.intermediate_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.vocab_size,
            self.parameter_count() as f64 / 1e6
        )
    }

    /// Parameters of the base model (tied embedding counted once).
    pub fn parameter_count(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads * d;
        let kv = self.num_key_value_heads * d;
        let layer = h * q * 2 + h * kv * 2 + 3 * h * i + 4 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }

    /// Query heads per key/value head.
    pub fn groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = r#"{"model_type":"gemma2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
      "num_hidden_layers":3,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":4,
      "hidden_act":"gelu_pytorch_tanh","rope_theta":500.0,"eos_token_id":[1,107],"bos_token_id":2,
      "query_pre_attn_scalar":6,"sliding_window":4,"attn_logit_softcapping":50.0,
      "final_logit_softcapping":null,"torch_dtype":"bfloat16"}"#;

    #[test]
    fn reads_the_hub_spelling() {
        let c = Gemma2Config::from_json(HUB).unwrap();
        assert_eq!(c.rope_theta, 500.0);
        assert_eq!(c.eos_token_ids, vec![1, 107]);
        assert_eq!(c.sliding_layers, vec![true, false, true]);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.final_logit_softcapping, None);
        assert_eq!(c.query_pre_attn_scalar, 6.0);
        assert!(c.tie_word_embeddings);
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
        let c = Gemma2Config::from_json(&t).unwrap();
        assert_eq!(c.rope_theta, 7.0);
        assert_eq!(c.eos_token_ids, vec![1]);
    }

    #[test]
    fn round_trips_through_hub_json() {
        let c = Gemma2Config::from_json(HUB).unwrap();
        let json = c.to_hub_json();
        let back = Gemma2Config::from_json(&json.to_string()).unwrap();
        assert_eq!(c, back);
        // transformers rejects a float here.
        assert!(json["query_pre_attn_scalar"].is_i64(), "{json}");
    }

    #[test]
    fn hub_json_uses_the_declared_types() {
        let v = Gemma2Config::preset("gemma-2-2b").unwrap().to_hub_json();
        for int_field in [
            "query_pre_attn_scalar",
            "head_dim",
            "sliding_window",
            "max_position_embeddings",
            "vocab_size",
        ] {
            assert!(v[int_field].is_u64(), "{int_field}: {}", v[int_field]);
        }
        assert_eq!(v["query_pre_attn_scalar"], serde_json::json!(256));
        for float_field in ["rms_norm_eps", "rope_theta", "attn_logit_softcapping"] {
            assert!(v[float_field].is_f64(), "{float_field}: {}", v[float_field]);
        }
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let cases = [
            (HUB.replace("gemma2", "llama"), "model_type is `llama`"),
            (
                HUB.replace("\"num_key_value_heads\":1", "\"num_key_value_heads\":3"),
                "multiple of num_key_value_heads",
            ),
            (
                HUB.replace("gelu_pytorch_tanh", "silu"),
                "hidden_activation `silu`",
            ),
            (
                HUB.replace("\"vocab_size\":10,", ""),
                "missing field `vocab_size`",
            ),
            ("{".to_string(), "malformed config.json"),
        ];
        for (text, want) in cases {
            let e = Gemma2Config::from_json(&text).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn presets_exist() {
        assert_eq!(
            Gemma2Config::preset("gemma-2-2b").unwrap().hidden_size,
            2304
        );
        assert!(Gemma2Config::preset("huge").is_none());
    }
}
