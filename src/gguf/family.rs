//! What each model family needs in a GGUF file: its architecture name and `{arch}.*` keys,
//! how its tensors are named, how its weights differ from the Hugging Face layout, and its
//! chat format (for `tokenizer.chat_template` and an Ollama Modelfile): Gemma-2, Qwen3 and
//! Llama (`gemma2`, `qwen3`, `llama` in llama.cpp); each new one adds an entry here.

use super::{GgufError, Result};
use crate::model::{Activation, ModelConfig, RopeScaling};
use candle_core::quantized::gguf_file::Value;
use candle_core::Tensor;

/// GGUF key-value pairs.
pub type Metadata = Vec<(String, Value)>;

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
    pub extra_tensors: fn(&ModelConfig) -> Result<Vec<(String, Tensor)>>,
    /// The chat template (Jinja), used when the tokenizer config has none.
    pub chat_template: &'static str,
    /// The same format in Ollama's Go-template language.
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
        "qwen3" => Ok(&QWEN3),
        "llama" => Ok(&LLAMA),
        other => Err(GgufError::Invalid(format!(
            "GGUF export does not know the model family `{other}`"
        ))),
    }
}

pub static GEMMA2: Family = Family {
    arch: "gemma2",
    globals: &[
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
    ],
    per_layer: &[
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("post_attention_layernorm.weight", "post_attention_norm.weight"),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ],
    metadata: gemma2_metadata,
    convert: gemma2_convert,
    extra_tensors: no_extra_tensors,
    // google/gemma-2-2b-it's template.
    chat_template: "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
    // Ollama's gemma2 template.
    ollama_template: r#"{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"#,
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

pub static QWEN3: Family = Family {
    arch: "qwen3",
    globals: LLAMA_GLOBALS,
    per_layer: LLAMA_PER_LAYER,
    metadata: qwen3_metadata,
    // llama.cpp's qwen3 rotates halves (NeoX), as transformers does: weights as they are.
    convert: |_, _, t| Ok(t),
    extra_tensors: llama3_rope_freqs,
    // ChatML with thinking off, as Qwen3's own template renders it with enable_thinking=False.
    chat_template: "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{%- endif %}",
    ollama_template: r#"{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant
<think>

</think>

{{ end }}
{{- end }}"#,
    end_of_turn: "<|im_end|>",
};

pub static LLAMA: Family = Family {
    arch: "llama",
    globals: LLAMA_GLOBALS,
    per_layer: LLAMA_PER_LAYER,
    metadata: llama_metadata,
    convert: llama_convert,
    extra_tensors: llama3_rope_freqs,
    // Llama-3's header format (meta-llama/Meta-Llama-3-8B-Instruct's template).
    chat_template: "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    ollama_template: r#"{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"#,
    end_of_turn: "<|eot_id|>",
};

/// The `{arch}.*` keys of the model's shape, which every architecture has.
fn shape_metadata(arch: &str, cfg: &ModelConfig) -> Metadata {
    let u = |k: &str, v: usize| (format!("{arch}.{k}"), Value::U32(v as u32));
    vec![
        u("context_length", cfg.max_position_embeddings),
        u("embedding_length", cfg.hidden_size),
        u("block_count", cfg.num_hidden_layers),
        u("feed_forward_length", cfg.intermediate_size),
        u("attention.head_count", cfg.num_attention_heads),
        u("attention.head_count_kv", cfg.num_key_value_heads),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        u("attention.key_length", cfg.head_dim),
        u("attention.value_length", cfg.head_dim),
    ]
}

fn no_extra_tensors(_: &ModelConfig) -> Result<Vec<(String, Tensor)>> {
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
    let mut m = shape_metadata(arch, cfg);
    m.extend([
        u("rope.dimension_count", cfg.head_dim),
        f("rope.freq_base", cfg.rope_global.theta),
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
fn llama3_rope_freqs(cfg: &ModelConfig) -> Result<Vec<(String, Tensor)>> {
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

/// llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 46-layer
/// (27B) model, whatever `query_pre_attn_scalar` says.
fn llama_cpp_query_scalar(cfg: &ModelConfig) -> f64 {
    if cfg.num_hidden_layers == 46 {
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
    let mut m = shape_metadata("gemma2", cfg);
    m.extend([
        f("attn_logit_softcapping", attn_cap),
        f("final_logit_softcapping", final_cap),
        f("rope.freq_base", cfg.rope_global.theta),
    ]);
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

fn gemma2_convert(cfg: &ModelConfig, gguf_name: &str, t: Tensor) -> Result<Tensor> {
    if gguf_name.ends_with("norm.weight") {
        // Gemma's RMSNorm multiplies by (1 + w); llama.cpp by the stored weight.
        return Ok((t + 1.0)?);
    }
    if gguf_name.ends_with(".attn_q.weight") {
        // Fold the difference between the model's query scale and llama.cpp's fixed one into
        // the query projection (RoPE is linear, so scaling before it is the same).
        let factor = (llama_cpp_query_scalar(cfg) / cfg.query_pre_attn_scalar).sqrt();
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
