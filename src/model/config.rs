//! A model's `config.json`, read as the Hugging Face Hub spells it, into one family-agnostic
//! description. `model_type` picks the family reader (`gemma2`, `gemma3`, `qwen3`, `llama`);
//! each reader fills the same [`ModelConfig`], so nothing past loading needs to know the family.

use super::{gemma2, gemma3, llama, qwen3, ModelError};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The model families socratune runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gemma2,
    /// Gemma-3's text model (`gemma3_text`, or the text part of a `gemma3` checkpoint).
    Gemma3,
    Qwen3,
    /// Llama (Llama-3.x and the earlier ones without biases).
    Llama,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Gemma2, Family::Gemma3, Family::Qwen3, Family::Llama];

    /// The name of the chat template the family was instruction-tuned with (a
    /// `dataset::ChatTemplate` name): the one fact about chat formats the model side owns.
    pub fn chat_template(self) -> &'static str {
        match self {
            Family::Gemma2 | Family::Gemma3 => "gemma",
            Family::Qwen3 => "qwen3",
            Family::Llama => "llama3",
        }
    }

    /// The `model_type` that names this family in a text-only `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Qwen3 => "qwen3",
            Family::Llama => "llama",
        }
    }
}

/// The activation of the feed-forward gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, Gemma's own): GeGLU.
    GeluTanh,
    /// GELU, exact (erf): GeGLU.
    GeluErf,
    /// SiLU: SwiGLU.
    Silu,
}

/// How an RMSNorm applies its stored weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormWeight {
    /// `x̂ · (1 + w)`: Gemma stores the offset from one.
    OnePlus,
    /// `x̂ · w`.
    Plain,
}

/// How RoPE frequencies are scaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' `linear`).
    Linear {
        factor: f64,
    },
    /// Llama-3.1's: low frequencies divided by `factor`, high ones kept, the band between
    /// interpolated (transformers' `llama3`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The RoPE of one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// The unscaled inverse frequencies `theta^(-2i/d)`, in f32 as transformers computes them.
    pub fn base_inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let theta = self.theta as f32;
        (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect()
    }

    /// Per frequency, what the scaling divides it by (1 without scaling). llama.cpp takes
    /// these for llama3 scaling as its `rope_freqs` tensor.
    pub fn divisors(&self, head_dim: usize) -> Vec<f32> {
        let base = self.base_inv_freq(head_dim);
        match self.scaling {
            RopeScaling::None => vec![1.0; base.len()],
            RopeScaling::Linear { factor } => vec![factor as f32; base.len()],
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // transformers' `_compute_llama3_parameters`: wavelengths shorter than
                // old / high keep their frequency, longer than old / low are divided by the
                // factor, and the band between blends the two.
                let (factor, low, high) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                );
                let old = original_max_position_embeddings as f32;
                base.iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < old / high {
                            1.0
                        } else if wavelen > old / low {
                            factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The model's shape and numerics, whatever its family.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
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
    pub norm_weight: NormWeight,
    /// RMSNorm of each query and key head before RoPE.
    pub qk_norm: bool,
    /// Embeddings multiplied by sqrt(hidden_size).
    pub scale_embeddings: bool,
    /// Gemma's sandwich: a norm after attention and after the MLP, before each residual add
    /// (otherwise only the pre-norms, as Llama).
    pub post_norms: bool,
    /// RoPE of the full-attention layers.
    pub rope_global: RopeSpec,
    /// RoPE of the sliding-window layers.
    pub rope_local: RopeSpec,
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
pub(super) enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The fields every family reads; unknown ones are ignored. Missing ones take the family's
/// defaults (Gemma-3's Hub configs leave most fields to transformers' defaults).
#[derive(Deserialize)]
pub(super) struct RawConfig {
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub hidden_activation: Option<String>,
    pub hidden_act: Option<String>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_local_base_freq: Option<f64>,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    pub query_pre_attn_scalar: Option<f64>,
    pub sliding_window: Option<usize>,
    pub sliding_window_pattern: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    pub bos_token_id: Option<OneOrMany>,
    pub eos_token_id: Option<OneOrMany>,
    pub pad_token_id: Option<u32>,
}

/// A family's values for the fields a `config.json` may leave out.
pub(super) struct Defaults {
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub query_pre_attn_scalar: Option<f64>,
    pub sliding_window: Option<usize>,
    /// `hidden_act` when the config names none.
    pub activation: &'static str,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: &'static [u32],
    pub pad_token_id: Option<u32>,
}

/// What a family decides after the common fields are read.
pub(super) struct FamilyParts {
    pub family: Family,
    pub rope_global: RopeSpec,
    pub rope_local: RopeSpec,
    pub sliding_layers: Vec<bool>,
    pub qk_norm: bool,
    pub layout: Layout,
}

/// How a family's layers are put together, beyond its config's numbers.
pub(super) struct Layout {
    pub norm_weight: NormWeight,
    pub scale_embeddings: bool,
    pub post_norms: bool,
}

impl Layout {
    /// `1 + w` norms, scaled embeddings, sandwich norms.
    pub const GEMMA: Layout = Layout {
        norm_weight: NormWeight::OnePlus,
        scale_embeddings: true,
        post_norms: true,
    };
    /// Plain norms, raw embeddings, pre-norms only (Llama, Qwen3).
    pub const LLAMA: Layout = Layout {
        norm_weight: NormWeight::Plain,
        scale_embeddings: false,
        post_norms: false,
    };
}

impl RawConfig {
    /// The common fields, checked, with the family's defaults and decisions.
    pub(super) fn build(
        self,
        d: &Defaults,
        parts: impl FnOnce(&Self, usize, usize) -> Result<FamilyParts, String>,
    ) -> Result<ModelConfig, String> {
        if self.attention_bias {
            return Err(
                "attention_bias = true is not supported (projections without bias only)".into(),
            );
        }
        if self.mlp_bias {
            return Err("mlp_bias = true is not supported (projections without bias only)".into());
        }
        let need = |name: &str, v: Option<usize>, dflt: Option<usize>| {
            v.or(dflt).ok_or_else(|| format!("missing field `{name}`"))
        };
        let vocab_size = need("vocab_size", self.vocab_size, d.vocab_size)?;
        let hidden_size = need("hidden_size", self.hidden_size, d.hidden_size)?;
        let intermediate_size = need(
            "intermediate_size",
            self.intermediate_size,
            d.intermediate_size,
        )?;
        let n = need(
            "num_hidden_layers",
            self.num_hidden_layers,
            d.num_hidden_layers,
        )?;
        let heads = need(
            "num_attention_heads",
            self.num_attention_heads,
            d.num_attention_heads,
        )?;
        let kv_heads = self
            .num_key_value_heads
            .or(d.num_key_value_heads)
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            ));
        }
        let head_dim = self
            .head_dim
            .or(d.head_dim)
            .unwrap_or(hidden_size / heads.max(1));
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim must be a positive even number, got {head_dim}"
            ));
        }
        let max_position_embeddings = self
            .max_position_embeddings
            .unwrap_or(d.max_position_embeddings);
        for (name, v) in [
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("intermediate_size", intermediate_size),
            ("num_hidden_layers", n),
            ("max_position_embeddings", max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        let act_name = self
            .hidden_activation
            .clone()
            .or(self.hidden_act.clone())
            .unwrap_or_else(|| d.activation.into());
        let activation = match act_name.as_str() {
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "silu" | "swish" => Activation::Silu,
            other => return Err(format!("hidden_activation `{other}` is not supported")),
        };
        let sliding_window = self.sliding_window.or(d.sliding_window);
        if sliding_window == Some(0) {
            return Err("sliding_window must be positive".into());
        }
        let positive_cap = |name: &str, c: Option<f64>| match c {
            Some(c) if c <= 0.0 => Err(format!("{name} must be positive, got {c}")),
            _ => Ok(c),
        };
        let p = parts(&self, n, head_dim)?;
        Ok(ModelConfig {
            family: p.family,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: n,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            activation,
            max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            norm_weight: p.layout.norm_weight,
            qk_norm: p.qk_norm,
            scale_embeddings: p.layout.scale_embeddings,
            post_norms: p.layout.post_norms,
            rope_global: p.rope_global,
            rope_local: p.rope_local,
            attn_logit_softcapping: positive_cap(
                "attn_logit_softcapping",
                self.attn_logit_softcapping,
            )?,
            final_logit_softcapping: positive_cap(
                "final_logit_softcapping",
                self.final_logit_softcapping,
            )?,
            query_pre_attn_scalar: self
                .query_pre_attn_scalar
                .or(d.query_pre_attn_scalar)
                .unwrap_or(head_dim as f64),
            sliding_window,
            sliding_layers: p.sliding_layers,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(d.tie_word_embeddings),
            bos_token_id: match self.bos_token_id {
                Some(b) => b.into_vec().first().copied(),
                None => d.bos_token_id,
            },
            eos_token_ids: self
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_else(|| d.eos_token_ids.to_vec()),
            pad_token_id: self.pad_token_id.or(d.pad_token_id),
        })
    }

    /// `layer_types` when present (checked), else `fallback` for each layer index.
    pub(super) fn sliding_layers(
        &self,
        n: usize,
        fallback: impl Fn(usize) -> bool,
    ) -> Result<Vec<bool>, String> {
        let Some(types) = &self.layer_types else {
            return Ok((0..n).map(fallback).collect());
        };
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
            .collect()
    }
}

/// One RoPE parameter object (`rope_scaling`, or a `rope_parameters` entry): its type and
/// factor, and its `rope_theta` when it has one. `field` names it in errors.
pub(super) fn rope_object(v: &Value, field: &str) -> Result<(RopeScaling, Option<f64>), String> {
    let Some(o) = v.as_object() else {
        return Err(format!("{field} must be an object, got {v}"));
    };
    // `type` is the pre-4.45 spelling of `rope_type`.
    let kind = o
        .get("rope_type")
        .or_else(|| o.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let theta = match o.get("rope_theta") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_f64()
                .ok_or_else(|| format!("{field}.rope_theta must be a number, got {t}"))?,
        ),
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => {
            let factor = o
                .get("factor")
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("{field}: linear RoPE scaling needs a numeric `factor`"))?;
            if factor <= 0.0 {
                return Err(format!("{field}.factor must be positive, got {factor}"));
            }
            RopeScaling::Linear { factor }
        }
        "llama3" => {
            let num = |key: &str| {
                o.get(key)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("{field}: llama3 RoPE scaling needs a numeric `{key}`"))
            };
            let factor = num("factor")?;
            let low_freq_factor = num("low_freq_factor")?;
            let high_freq_factor = num("high_freq_factor")?;
            let original = o
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    format!("{field}: llama3 RoPE scaling needs an integer `original_max_position_embeddings`")
                })?;
            if factor <= 0.0 || low_freq_factor <= 0.0 || original == 0 {
                return Err(format!(
                    "{field}: factor, low_freq_factor and original_max_position_embeddings must be positive"
                ));
            }
            // The interpolation divides by their difference.
            if high_freq_factor <= low_freq_factor {
                return Err(format!(
                    "{field}: high_freq_factor ({high_freq_factor}) must be larger than low_freq_factor ({low_freq_factor})"
                ));
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original as usize,
            }
        }
        other => {
            return Err(format!(
                "{field}: rope_type `{other}` is not supported (default, linear and llama3 are)"
            ))
        }
    };
    Ok((scaling, theta))
}

/// The one RoPE of a family without per-layer kinds, from either spelling: transformers 5's
/// `rope_parameters` (one object) or the Hub's `rope_theta` + `rope_scaling`. As transformers,
/// `rope_scaling` wins over `rope_parameters`, and a `rope_theta` inside the object wins over
/// the top-level one.
pub(super) fn single_rope(raw: &RawConfig, default_theta: f64) -> Result<RopeSpec, String> {
    let (scaling, nested_theta) = match (&raw.rope_scaling, &raw.rope_parameters) {
        (Some(s), _) if !s.is_null() => rope_object(s, "rope_scaling")?,
        (_, Some(p)) if !p.is_null() => rope_object(p, "rope_parameters")?,
        _ => (RopeScaling::None, None),
    };
    Ok(RopeSpec {
        theta: nested_theta.or(raw.rope_theta).unwrap_or(default_theta),
        scaling,
    })
}

/// A RoPE object in transformers 5's spelling (`rope_parameters`, or a per-layer entry).
pub(super) fn rope_json(r: &RopeSpec) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("rope_theta".into(), serde_json::json!(r.theta));
    o.extend(scaling_json(&r.scaling));
    Value::Object(o)
}

/// The scaling fields of a RoPE object, `rope_type` included.
pub(super) fn scaling_json(s: &RopeScaling) -> serde_json::Map<String, Value> {
    let v = match *s {
        RopeScaling::None => serde_json::json!({"rope_type": "default"}),
        RopeScaling::Linear { factor } => {
            serde_json::json!({"rope_type": "linear", "factor": factor})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => serde_json::json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// A preset: `fields` (a JSON object literal, as a Hub config spells them) with `common` added,
/// read by the family's reader.
pub(super) fn preset_config(
    fields: Value,
    common: &[(&str, Value)],
    read: fn(&Value) -> Result<ModelConfig, String>,
) -> ModelConfig {
    let Value::Object(mut m) = fields else {
        unreachable!("presets are JSON object literals")
    };
    for (k, v) in common {
        m.insert((*k).into(), v.clone());
    }
    read(&Value::Object(m)).expect("presets are valid")
}

impl ModelConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::file(path, format!("cannot read config: {e}")))?;
        Self::from_json(&text).map_err(|m| ModelError::file(path, m))
    }

    /// Parses the text of a `config.json`; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("malformed config.json: {e}"))?;
        if !v.is_object() {
            return Err("malformed config.json: not a JSON object".into());
        }
        // A config without `model_type` is taken for the default family.
        match v.get("model_type").and_then(Value::as_str) {
            None | Some("gemma2") => gemma2::read_config(&v),
            Some("gemma3_text") => gemma3::read_config(&v),
            Some("gemma3") => gemma3::read_multimodal_config(&v),
            Some("qwen3") => qwen3::read_config(&v),
            Some("llama") => llama::read_config(&v),
            Some(t) => Err(format!(
                "model_type is `{t}`; socratune supports `gemma2`, `gemma3_text`, `gemma3` (its text part), `qwen3` and `llama`"
            )),
        }
    }

    /// A shape preset for benchmarks and the demo (the same fields as the Hub's files):
    /// `tiny`, `small`, `gemma-2-2b`, `tiny-gemma3`, `gemma-3-1b`, `gemma-3-4b`, `tiny-qwen3`,
    /// `qwen3-1.7b`, `tiny-llama`, `llama-3.2-1b`.
    pub fn preset(name: &str) -> Option<Self> {
        gemma2::preset(name)
            .or_else(|| gemma3::preset(name))
            .or_else(|| qwen3::preset(name))
            .or_else(|| llama::preset(name))
    }

    /// [`ModelConfig::preset`], or an error that lists the presets.
    pub fn preset_or_list(name: &str) -> Result<Self, String> {
        Self::preset(name).ok_or_else(|| {
            format!(
                "unknown preset `{name}`; use one of {}",
                Self::preset_names().join(", ")
            )
        })
    }

    /// Every preset name.
    pub fn preset_names() -> Vec<&'static str> {
        let mut v = gemma2::PRESETS.to_vec();
        v.extend_from_slice(gemma3::PRESETS);
        v.extend_from_slice(qwen3::PRESETS);
        v.extend_from_slice(llama::PRESETS);
        v
    }

    /// Writes the config in the Hub's spelling (for exports and random models).
    pub fn to_hub_json(&self) -> Value {
        match self.family {
            Family::Gemma2 => gemma2::hub_json(self),
            Family::Gemma3 => gemma3::hub_json(self),
            Family::Qwen3 => qwen3::hub_json(self),
            Family::Llama => llama::hub_json(self),
        }
    }

    /// The Hub fields every family writes alike.
    pub(super) fn common_hub_json(&self) -> serde_json::Map<String, Value> {
        let v = serde_json::json!({
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "layer_types": self.sliding_layers.iter()
                .map(|s| if *s { "sliding_attention" } else { "full_attention" })
                .collect::<Vec<_>>(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        }
    }

    /// [`ModelConfig::common_hub_json`] with the fields of Gemma's options.
    pub(super) fn gemma_hub_json(&self) -> serde_json::Map<String, Value> {
        let mut m = self.common_hub_json();
        for (k, v) in [
            (
                "hidden_activation",
                serde_json::json!(self.activation_name()),
            ),
            (
                "attn_logit_softcapping",
                serde_json::json!(self.attn_logit_softcapping),
            ),
            (
                "final_logit_softcapping",
                serde_json::json!(self.final_logit_softcapping),
            ),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar_json()),
            ("sliding_window", serde_json::json!(self.sliding_window)),
        ] {
            m.insert(k.into(), v);
        }
        m
    }

    /// transformers declares `query_pre_attn_scalar: int` and refuses `16.0`; a (non-standard)
    /// fractional value can only be written as it is.
    fn query_pre_attn_scalar_json(&self) -> Value {
        let s = self.query_pre_attn_scalar;
        if s.fract() == 0.0 && s >= 0.0 && s < u32::MAX as f64 {
            serde_json::json!(s as u64)
        } else {
            serde_json::json!(s)
        }
    }

    pub(super) fn activation_name(&self) -> &'static str {
        match self.activation {
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::GeluErf => "gelu",
            Activation::Silu => "silu",
        }
    }

    /// One line: family, layers, widths, heads, vocabulary and parameter count.
    pub fn summary(&self) -> String {
        format!(
            "{}, {} layers, hidden {}, intermediate {}, {} heads ({} kv) of {}, vocab {}, {:.2}M parameters",
            self.family.model_type(),
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
        let qk_norms = if self.qk_norm { 2 * d } else { 0 };
        let norms = if self.post_norms { 4 * h } else { 2 * h };
        let layer = h * q * 2 + h * kv * 2 + 3 * h * i + norms + qk_norms;
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

    /// The RoPE of layer `l`.
    pub fn rope_of_layer(&self, l: usize) -> &RopeSpec {
        if self.sliding_layers[l] {
            &self.rope_local
        } else {
            &self.rope_global
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_type_picks_the_family_and_unknown_ones_are_named() {
        let e = ModelConfig::from_json(r#"{"model_type":"mistral"}"#).unwrap_err();
        assert!(e.contains("model_type is `mistral`"), "{e}");
        assert!(ModelConfig::from_json("[1]")
            .unwrap_err()
            .contains("not a JSON object"));
        for name in ModelConfig::preset_names() {
            let c = ModelConfig::preset(name).unwrap();
            let back = ModelConfig::from_json(&c.to_hub_json().to_string()).unwrap();
            assert_eq!(c, back, "{name}");
        }
    }

    #[test]
    fn rope_objects_are_read_and_refused_by_field() {
        let (s, t) = rope_object(
            &serde_json::json!({"rope_type": "linear", "factor": 8.0}),
            "rope_scaling",
        )
        .unwrap();
        assert_eq!(s, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(t, None);
        let (s, _) = rope_object(&serde_json::json!({"type": "linear", "factor": 2}), "x").unwrap();
        assert_eq!(s, RopeScaling::Linear { factor: 2.0 });
        let e = rope_object(
            &serde_json::json!({"rope_type": "yarn", "factor": 8.0}),
            "rope_scaling",
        )
        .unwrap_err();
        assert!(e.contains("rope_scaling: rope_type `yarn`"), "{e}");
        let e =
            rope_object(&serde_json::json!({"rope_type": "linear"}), "rope_scaling").unwrap_err();
        assert!(e.contains("`factor`"), "{e}");
    }
}
