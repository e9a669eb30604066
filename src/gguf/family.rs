//! What each model family needs in a GGUF file: its architecture name and `{arch}.*` keys,
//! how its tensors are named, how its weights differ from the Hugging Face layout, and its
//! chat format (for `tokenizer.chat_template` and an Ollama Modelfile). Each family the model
//! module reads has an entry here, found by its `model_type`: llama.cpp's `gemma2`, `gemma3`,
//! `qwen3` and `llama`.

use super::{GgufError, Result};
use crate::model::{Activation, ModelConfig, RopeScaling};
use candle_core::quantized::gguf_file::Value;
use candle_core::Tensor;

/// GGUF key-value pairs.
pub type Metadata = Vec<(String, Value)>;

/// Named tensors, in llama.cpp's names.
pub type NamedTensors = Vec<(String, Tensor)>;

pub struct Family {
    /// `general.architecture`.
    pub arch: &'static str,
    /// Whole-model tensors: Hugging Face name → GGUF name.
    pub globals: &'static [(&'static str, &'static str)],
    /// Per-layer tensors: the name after `model.layers.{i}.` → after `blk.{i}.`.
    pub per_layer: &'static [(&'static str, &'static str)],
    /// The `{arch}.*` keys, or why llama.cpp could not run this configuration.
    pub metadata: fn(&ModelConfig) -> Result<Metadata>,
    /// Turns a weight in the Hugging Face layout into what llama.cpp computes with.
    pub convert: fn(&ModelConfig, &str, Tensor) -> Result<Tensor>,
    /// Tensors llama.cpp wants that the checkpoint does not hold (`rope_freqs.weight`).
    pub extra_tensors: fn(&ModelConfig) -> Result<NamedTensors>,
    /// The chat template (Jinja), used when the tokenizer config has none.
    pub chat_template: &'static str,
    /// The same format in Ollama's Go-template language. It reads `$prefix` (the variant's
    /// prefix, put before the first user text), which `ollama::modelfile` defines before it.
    pub ollama_template: &'static str,
    /// The token that ends a turn.
    pub end_of_turn: &'static str,
}

impl Family {
    /// The GGUF name of a Hugging Face tensor name, or None for one this family leaves out.
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        if let Some((_, g)) = self.globals.iter().find(|(h, _)| *h == hf) {
            return Some(g.to_string());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, suffix) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (_, g) = self.per_layer.iter().find(|(h, _)| *h == suffix)?;
        Some(format!("blk.{layer}.{g}"))
    }
}

/// The family of a `config.json`'s `model_type`.
pub fn family(model_type: &str) -> Result<&'static Family> {
    match model_type {
        "gemma2" => Ok(&GEMMA2),
        "gemma3_text" | "gemma3" => Ok(&GEMMA3),
        "qwen3" => Ok(&QWEN3),
        "llama" => Ok(&LLAMA),
        other => Err(GgufError::Invalid(format!(
            "GGUF export does not know the model family `{other}`"
        ))),
    }
}

const GEMMA_GLOBALS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
];

/// Gemma's turn format, text only, with a system message folded into the first user turn as
/// google/gemma-3-1b-it's template does and as training renders it (`dataset::chat_format`).
/// Both Gemma families get it: google/gemma-2-2b-it's own template refuses a system message,
/// which would make llama.cpp fail on a model trained with a variant's `system`.
const GEMMA_CHAT_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] | trim + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

/// Ollama's gemma2 template (a system message is rendered as a user turn); Gemma-3 uses the
/// same turns.
// Gemma has no system turn: as training does (dataset::chat_format), the system text goes
// before the first user text, then a blank line. Ollama passes a Modelfile's SYSTEM as the
// first message with the role "system".
const GEMMA_OLLAMA_TEMPLATE: &str = r#"{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ $prefix }}{{ $prefix = "" }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"#;

pub static GEMMA2: Family = Family {
    arch: "gemma2",
    globals: GEMMA_GLOBALS,
    per_layer: &[
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        (
            "post_attention_layernorm.weight",
            "post_attention_norm.weight",
        ),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ],
    metadata: gemma2_metadata,
    convert: gemma2_convert,
    extra_tensors: no_extra_tensors,
    chat_template: GEMMA_CHAT_TEMPLATE,
    ollama_template: GEMMA_OLLAMA_TEMPLATE,
    end_of_turn: "<end_of_turn>",
};

pub(crate) static GEMMA3: Family = Family {
    arch: "gemma3",
    globals: GEMMA_GLOBALS,
    per_layer: &[
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        (
            "post_attention_layernorm.weight",
            "post_attention_norm.weight",
        ),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ],
    metadata: gemma3_metadata,
    convert: gemma3_convert,
    extra_tensors: no_extra_tensors,
    chat_template: GEMMA_CHAT_TEMPLATE,
    ollama_template: GEMMA_OLLAMA_TEMPLATE,
    end_of_turn: "<end_of_turn>",
};

/// The tensors of a Llama-shaped family: an untied head as `output.weight`, no post-norms.
const LLAMA_GLOBALS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];
const LLAMA_PER_LAYER: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    // Llama's post-attention norm is the one before the MLP.
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

pub(crate) static QWEN3: Family = Family {
    arch: "qwen3",
    globals: LLAMA_GLOBALS,
    per_layer: LLAMA_PER_LAYER,
    metadata: qwen3_metadata,
    // llama.cpp's qwen3 rotates halves (NeoX), as transformers does: weights as they are.
    convert: |_, _, t| Ok(t),
    extra_tensors: llama3_rope_freqs,
    // ChatML with thinking off, as Qwen3's own template renders it with enable_thinking=False
    // and as training renders it: the empty think block on replies after the last user
    // message and in the generation prompt, none on earlier replies.
    chat_template: "{%- set ns = namespace(last_user=-1) %}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}{%- for message in messages %}{%- if message['role'] == 'assistant' and loop.index0 > ns.last_user %}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message['content'] + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{%- endif %}",
    ollama_template: r#"{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ if eq .Role "user" }}{{ $prefix }}{{ $prefix = "" }}{{ end }}{{ .Content }}<|im_end|>
{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant
<think>

</think>

{{ end }}
{{- end }}"#,
    end_of_turn: "<|im_end|>",
};

pub(crate) static LLAMA: Family = Family {
    arch: "llama",
    globals: LLAMA_GLOBALS,
    per_layer: LLAMA_PER_LAYER,
    metadata: llama_metadata,
    convert: llama_convert,
    extra_tensors: llama3_rope_freqs,
    // Llama-3.1/3.2's header format as training renders it (dataset::chat_format): the system
    // header always, with the knowledge cutoff and the fixed date.
    chat_template: "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] | trim %}{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' + system_message + '<|eot_id|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    // The system header always, the system message's text in it when there is one.
    ollama_template: r#"{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end -}}
<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

{{ $system }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ if eq .Role "user" }}{{ $prefix }}{{ $prefix = "" }}{{ end }}{{ .Content }}<|eot_id|>
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"#,
    end_of_turn: "<|eot_id|>",
};

fn no_extra_tensors(_: &ModelConfig) -> Result<NamedTensors> {
    Ok(Vec::new())
}

/// The `{arch}.*` keys of a Llama-shaped family, as llama.cpp's converter writes them.
fn llama_like_metadata(arch: &str, cfg: &ModelConfig) -> Result<Metadata> {
    if cfg.activation != Activation::Silu || cfg.post_norms || cfg.scale_embeddings {
        return Err(GgufError::Invalid(format!(
            "llama.cpp's {arch} is SwiGLU with pre-norms only and unscaled embeddings; this config is not"
        )));
    }
    let u = |k: &str, v: usize| (format!("{arch}.{k}"), Value::U32(v as u32));
    let f = |k: &str, v: f64| (format!("{arch}.{k}"), Value::F32(v as f32));
    let mut m = shape_metadata(cfg, arch);
    m.extend([
        u("rope.dimension_count", cfg.head_dim),
        u("vocab_size", cfg.vocab_size),
    ]);
    // llama3 scaling travels as the rope_freqs tensor; linear as two keys.
    if let RopeScaling::Linear { factor } = cfg.rope_global.scaling {
        m.push((
            format!("{arch}.rope.scaling.type"),
            Value::String("linear".into()),
        ));
        m.push(f("rope.scaling.factor", factor));
    }
    Ok(m)
}

fn qwen3_metadata(cfg: &ModelConfig) -> Result<Metadata> {
    llama_like_metadata("qwen3", cfg)
}

fn llama_metadata(cfg: &ModelConfig) -> Result<Metadata> {
    if cfg.qk_norm {
        return Err(GgufError::Invalid(
            "llama.cpp's llama has no q/k norms".into(),
        ));
    }
    llama_like_metadata("llama", cfg)
}

/// llama.cpp's llama rotates adjacent pairs where transformers rotates halves: the converter
/// permutes the rows of each query and key head (`LlamaModel.permute`) so that both compute
/// the same.
fn llama_convert(cfg: &ModelConfig, gguf_name: &str, t: Tensor) -> Result<Tensor> {
    let heads = if gguf_name.ends_with(".attn_q.weight") {
        cfg.num_attention_heads
    } else if gguf_name.ends_with(".attn_k.weight") {
        cfg.num_key_value_heads
    } else {
        return Ok(t);
    };
    let (rows, cols) = t.dims2()?;
    let half = rows / heads / 2;
    Ok(t.reshape((heads, 2, half, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Llama-3.1's RoPE scaling as llama.cpp reads it: per frequency, the factor it divides by
/// (`LlamaModel.generate_extra_tensors`).
fn llama3_rope_freqs(cfg: &ModelConfig) -> Result<NamedTensors> {
    if !matches!(cfg.rope_global.scaling, RopeScaling::Llama3 { .. }) {
        return Ok(Vec::new());
    }
    let factors = cfg.rope_global.divisors(cfg.head_dim);
    let n = factors.len();
    Ok(vec![(
        "rope_freqs.weight".into(),
        Tensor::from_vec(factors, n, &candle_core::Device::Cpu)?,
    )])
}

/// llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B model
/// (46 layers in Gemma-2, 62 in Gemma-3), whatever `query_pre_attn_scalar` says.
fn llama_cpp_query_scalar(cfg: &ModelConfig, arch: &str) -> f64 {
    let big = match arch {
        "gemma3" => 62,
        _ => 46,
    };
    if cfg.num_hidden_layers == big {
        (cfg.hidden_size / cfg.num_attention_heads) as f64
    } else {
        cfg.head_dim as f64
    }
}

fn gemma2_metadata(cfg: &ModelConfig) -> Result<Metadata> {
    let refuse = |m: &str| Err(GgufError::Invalid(format!("llama.cpp's gemma2 {m}")));
    if cfg.activation != Activation::GeluTanh {
        return refuse("uses the tanh GELU; this model's hidden_activation is the exact one");
    }
    let (Some(attn_cap), Some(final_cap)) =
        (cfg.attn_logit_softcapping, cfg.final_logit_softcapping)
    else {
        return refuse("always soft-caps attention and final logits; this config sets no cap");
    };
    let u = |k: &str, v: usize| (format!("gemma2.{k}"), Value::U32(v as u32));
    let f = |k: &str, v: f64| (format!("gemma2.{k}"), Value::F32(v as f32));
    let mut m = shape_metadata(cfg, "gemma2");
    m.push(f("attn_logit_softcapping", attn_cap));
    m.push(f("final_logit_softcapping", final_cap));
    // Without a window every layer attends globally: a window as long as the context.
    m.push(u(
        "attention.sliding_window",
        cfg.sliding_window.unwrap_or(cfg.max_position_embeddings),
    ));
    // llama.cpp's default pattern for gemma2 slides on even layers; say so only otherwise.
    let default_pattern = (0..cfg.num_hidden_layers).all(|i| cfg.sliding_layers[i] == (i % 2 == 0));
    if !default_pattern {
        m.push((
            "gemma2.attention.sliding_window_pattern".into(),
            Value::Array(cfg.sliding_layers.iter().map(|&s| Value::Bool(s)).collect()),
        ));
    }
    Ok(m)
}

/// The `{arch}.*` keys Gemma-2 and Gemma-3 share.
/// The `{arch}.*` keys of the model's shape and RoPE base, which every architecture has.
fn shape_metadata(cfg: &ModelConfig, arch: &str) -> Metadata {
    let u = |k: &str, v: usize| (format!("{arch}.{k}"), Value::U32(v as u32));
    let f = |k: &str, v: f64| (format!("{arch}.{k}"), Value::F32(v as f32));
    vec![
        u("context_length", cfg.max_position_embeddings),
        u("embedding_length", cfg.hidden_size),
        u("block_count", cfg.num_hidden_layers),
        u("feed_forward_length", cfg.intermediate_size),
        u("attention.head_count", cfg.num_attention_heads),
        u("attention.head_count_kv", cfg.num_key_value_heads),
        f("attention.layer_norm_rms_epsilon", cfg.rms_norm_eps),
        u("attention.key_length", cfg.head_dim),
        u("attention.value_length", cfg.head_dim),
        f("rope.freq_base", cfg.rope_global.theta),
    ]
}

fn gemma3_metadata(cfg: &ModelConfig) -> Result<Metadata> {
    let refuse = |m: &str| Err(GgufError::Invalid(format!("llama.cpp's gemma3 {m}")));
    if cfg.activation != Activation::GeluTanh {
        return refuse("uses the tanh GELU; this model's hidden_activation is another");
    }
    if cfg.attn_logit_softcapping.is_some() {
        return refuse("has no attention soft-cap; this config sets attn_logit_softcapping");
    }
    if cfg.rope_local.scaling != RopeScaling::None {
        return refuse("scales RoPE on global layers only; this config scales the sliding ones");
    }
    let mut m = shape_metadata(cfg, "gemma3");
    m.push((
        "gemma3.rope.freq_base_swa".into(),
        Value::F32(cfg.rope_local.theta as f32),
    ));
    if let RopeScaling::Linear { factor } = cfg.rope_global.scaling {
        m.push((
            "gemma3.rope.scaling.type".into(),
            Value::String("linear".into()),
        ));
        m.push((
            "gemma3.rope.scaling.factor".into(),
            Value::F32(factor as f32),
        ));
    }
    if let Some(cap) = cfg.final_logit_softcapping {
        m.push((
            "gemma3.final_logit_softcapping".into(),
            Value::F32(cap as f32),
        ));
    }
    // Without a window (or a sliding layer) llama.cpp runs every layer globally.
    if let (Some(w), true) = (cfg.sliding_window, cfg.sliding_layers.contains(&true)) {
        m.push((
            "gemma3.attention.sliding_window".into(),
            Value::U32(w as u32),
        ));
        // Always the explicit per-layer pattern: llama.cpp's default (5:1) is only a default.
        m.push((
            "gemma3.attention.sliding_window_pattern".into(),
            Value::Array(cfg.sliding_layers.iter().map(|&s| Value::Bool(s)).collect()),
        ));
    }
    Ok(m)
}

fn gemma2_convert(cfg: &ModelConfig, gguf_name: &str, t: Tensor) -> Result<Tensor> {
    gemma_convert(cfg, "gemma2", gguf_name, t)
}

fn gemma3_convert(cfg: &ModelConfig, gguf_name: &str, t: Tensor) -> Result<Tensor> {
    gemma_convert(cfg, "gemma3", gguf_name, t)
}

fn gemma_convert(cfg: &ModelConfig, arch: &str, gguf_name: &str, t: Tensor) -> Result<Tensor> {
    // Gemma's RMSNorm multiplies by (1 + w); llama.cpp by the stored weight.
    let t = if gguf_name.ends_with("norm.weight") {
        (t + 1.0)?
    } else {
        t
    };
    // Fold the difference between the model's query scale and llama.cpp's fixed one into the
    // queries before RoPE (linear, so scaling before it is the same): into the projection, or
    // with a q-norm (which would normalise that away) into the norm's weight.
    let carrier = if cfg.qk_norm {
        ".attn_q_norm.weight"
    } else {
        ".attn_q.weight"
    };
    if gguf_name.ends_with(carrier) {
        let factor = (llama_cpp_query_scalar(cfg, arch) / cfg.query_pre_attn_scalar).sqrt();
        if (factor - 1.0).abs() > 1e-12 {
            return Ok((t * factor)?);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma2_names_follow_llama_cpp() {
        let g = &GEMMA2;
        assert_eq!(
            g.gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            g.gguf_name("model.layers.12.self_attn.o_proj.weight")
                .as_deref(),
            Some("blk.12.attn_output.weight")
        );
        assert_eq!(
            g.gguf_name("model.layers.0.pre_feedforward_layernorm.weight")
                .as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(g.gguf_name("lm_head.weight"), None);
        assert!(family("mistral")
            .err()
            .unwrap()
            .to_string()
            .contains("`mistral`"));
    }

    #[test]
    fn gemma2_metadata_and_refusals() {
        let mut cfg = ModelConfig::preset("gemma-2-2b").unwrap();
        let m = gemma2_metadata(&cfg).unwrap();
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("gemma2.block_count").unwrap().to_u32().unwrap(), 26);
        assert_eq!(
            get("gemma2.attention.sliding_window")
                .unwrap()
                .to_u32()
                .unwrap(),
            4096
        );
        assert_eq!(
            get("gemma2.final_logit_softcapping")
                .unwrap()
                .to_f32()
                .unwrap(),
            30.0
        );
        assert!(get("gemma2.attention.sliding_window_pattern").is_none());
        cfg.sliding_layers[0] = false;
        let m = gemma2_metadata(&cfg).unwrap();
        assert!(m.iter().any(|(k, _)| k.ends_with("sliding_window_pattern")));
        cfg.final_logit_softcapping = None;
        let e = gemma2_metadata(&cfg).unwrap_err().to_string();
        assert!(e.contains("soft-caps"), "{e}");
    }

    #[test]
    fn gemma3_metadata_names_both_ropes_and_every_layer_kind() {
        let cfg = ModelConfig::preset("gemma-3-4b").unwrap();
        let m = gemma3_metadata(&cfg).unwrap();
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("gemma3.block_count").unwrap().to_u32().unwrap(), 34);
        assert_eq!(get("gemma3.rope.freq_base").unwrap().to_f32().unwrap(), 1e6);
        assert_eq!(
            get("gemma3.rope.freq_base_swa").unwrap().to_f32().unwrap(),
            1e4
        );
        assert_eq!(
            get("gemma3.rope.scaling.factor").unwrap().to_f32().unwrap(),
            8.0
        );
        let pattern = match get("gemma3.attention.sliding_window_pattern").unwrap() {
            Value::Array(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(pattern.len(), 34);
        assert!(get("gemma3.attn_logit_softcapping").is_none());
        assert_eq!(
            GEMMA3
                .gguf_name("model.layers.3.self_attn.k_norm.weight")
                .as_deref(),
            Some("blk.3.attn_k_norm.weight")
        );
        let mut capped = cfg.clone();
        capped.attn_logit_softcapping = Some(50.0);
        let e = gemma3_metadata(&capped).unwrap_err().to_string();
        assert!(e.contains("attn_logit_softcapping"), "{e}");
        // Gemma-3's q/k norms are `1 + w` too; a query scale other than llama.cpp's goes into
        // the q-norm (the projection's scale would be normalised away).
        let w = Tensor::new(&[0.5f32], &candle_core::Device::Cpu).unwrap();
        let mut odd = cfg.clone();
        odd.query_pre_attn_scalar = cfg.head_dim as f64 * 4.0;
        for (c, q_norm) in [(&cfg, 1.5), (&odd, 0.75)] {
            let n = gemma3_convert(c, "blk.0.attn_q_norm.weight", w.clone()).unwrap();
            assert_eq!(n.to_vec1::<f32>().unwrap(), [q_norm]);
            let n = gemma3_convert(c, "blk.0.attn_k_norm.weight", w.clone()).unwrap();
            assert_eq!(n.to_vec1::<f32>().unwrap(), [1.5]);
            let q = gemma3_convert(c, "blk.0.attn_q.weight", w.clone()).unwrap();
            assert_eq!(q.to_vec1::<f32>().unwrap(), [0.5]);
        }
    }

    #[test]
    fn norms_shift_by_one_and_queries_take_the_scale_llama_cpp_lacks() {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        let dev = candle_core::Device::Cpu;
        let w = Tensor::new(&[0.5f32, -1.0], &dev).unwrap();
        let n = gemma2_convert(&cfg, "blk.0.attn_norm.weight", w.clone()).unwrap();
        assert_eq!(n.to_vec1::<f32>().unwrap(), [1.5, 0.0]);
        let q = gemma2_convert(&cfg, "blk.0.attn_q.weight", w.clone()).unwrap();
        assert_eq!(q.to_vec1::<f32>().unwrap(), [0.5, -1.0]);
        cfg.query_pre_attn_scalar = cfg.head_dim as f64 * 4.0;
        let q = gemma2_convert(&cfg, "blk.0.attn_q.weight", w).unwrap();
        assert_eq!(q.to_vec1::<f32>().unwrap(), [0.25, -0.5]);
    }
}

#[cfg(test)]
mod llama_tests {
    use super::*;

    #[test]
    fn llama_names_the_pre_mlp_norm_ffn_norm_and_the_untied_head_output() {
        for fam in [&QWEN3, &LLAMA] {
            assert_eq!(
                fam.gguf_name("model.layers.3.post_attention_layernorm.weight")
                    .as_deref(),
                Some("blk.3.ffn_norm.weight")
            );
            assert_eq!(
                fam.gguf_name("lm_head.weight").as_deref(),
                Some("output.weight")
            );
        }
        assert_eq!(
            QWEN3
                .gguf_name("model.layers.0.self_attn.k_norm.weight")
                .as_deref(),
            Some("blk.0.attn_k_norm.weight")
        );
        assert_eq!(family("qwen3").unwrap().arch, "qwen3");
        assert_eq!(family("llama").unwrap().arch, "llama");
    }

    #[test]
    fn llama_permutes_query_and_key_rows_per_head() {
        let cfg = ModelConfig::preset("tiny-llama").unwrap();
        let (d, h) = (cfg.head_dim, cfg.hidden_size);
        let rows = cfg.num_key_value_heads * d;
        let v: Vec<f32> = (0..rows * h).map(|i| (i / h) as f32).collect();
        let t = Tensor::from_vec(v, (rows, h), &candle_core::Device::Cpu).unwrap();
        let p = llama_convert(&cfg, "blk.0.attn_k.weight", t.clone()).unwrap();
        let first_col: Vec<f32> = p
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Head 0's rows 0..8 (first half) and 8..16 (second) interleave: 0, 8, 1, 9, …
        assert_eq!(&first_col[..4], &[0.0, 8.0, 1.0, 9.0]);
        assert_eq!(&first_col[16..18], &[16.0, 24.0]);
        let same = llama_convert(&cfg, "blk.0.attn_v.weight", t.clone()).unwrap();
        assert_eq!(same.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn llama3_rope_freqs_follow_the_converter() {
        // The tiny-llama preset: head_dim 16, theta 1e4, factor 8, low 1, high 4, original 64.
        let cfg = ModelConfig::preset("tiny-llama").unwrap();
        let t = llama3_rope_freqs(&cfg).unwrap();
        assert_eq!(t[0].0, "rope_freqs.weight");
        let f = t[0].1.to_vec1::<f32>().unwrap();
        assert_eq!(f.len(), 8);
        // Wavelengths 6.3 (kept), 19.9 and 62.8 (blended), 199 and longer (divided by 8).
        assert_eq!(f[0], 1.0);
        assert!(f[1] > 1.0 && f[1] < f[2] && f[2] < 8.0, "{f:?}");
        assert!(f[3..].iter().all(|&x| x == 8.0), "{f:?}");
        let plain = ModelConfig::preset("qwen3-1.7b").unwrap();
        assert!(llama3_rope_freqs(&plain).unwrap().is_empty());
    }

    #[test]
    fn llama_metadata_has_the_keys_llama_cpp_reads() {
        let cfg = ModelConfig::preset("llama-3.2-1b").unwrap();
        let m = llama_metadata(&cfg).unwrap();
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("llama.rope.dimension_count").unwrap().to_u32().unwrap(),
            64
        );
        assert_eq!(
            get("llama.rope.freq_base").unwrap().to_f32().unwrap(),
            500000.0
        );
        assert_eq!(get("llama.vocab_size").unwrap().to_u32().unwrap(), 128256);
        let q = qwen3_metadata(&ModelConfig::preset("qwen3-1.7b").unwrap()).unwrap();
        assert!(q.iter().all(|(k, _)| k.starts_with("qwen3.")));
        let e = qwen3_metadata(&ModelConfig::preset("gemma-2-2b").unwrap()).unwrap_err();
        assert!(e.to_string().contains("SwiGLU"), "{e}");
    }
}
