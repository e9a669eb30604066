//! The decoder every family runs, written for training: full-sequence forward with a padding
//! mask, LoRA on any of the seven projections, and a KV-cached path for generation. It is built
//! from the shared blocks ([`super::blocks`]) and configured by a [`ModelConfig`]: a family is
//! how its config reads (`gemma2`, `gemma3`, `qwen3`, `llama`), not a separate network. The
//! families' specifics are options here: RMSNorm with `1 + w` or `w`, scaled embeddings,
//! sandwich or pre-norms only, `query_pre_attn_scalar`, attention and final soft-capping,
//! sliding-window layers with their own RoPE, q/k norms, GeGLU or SwiGLU, GQA, a tied or
//! untied head.

use super::blocks::{Attention, AttnCall, AttnShape, Gather, GroupAttn, Mlp, Norm, Rope};
use super::cache::LayerCache;
use super::config::{ModelConfig, NormWeight};
use super::kernels::Kernels;
use super::lora::{LoraConfig, LoraLinear, Mode, Target};
use super::ops;
use super::weights::Weights;
use super::{ModelError, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod batch;
pub use batch::BatchCache;

struct Layer {
    input_norm: Norm,
    attn: Attention,
    /// Gemma's post-norms (None: the residual adds the block's output as it is).
    post_attn_norm: Option<Norm>,
    pre_ff_norm: Norm,
    mlp: Mlp,
    post_ff_norm: Option<Norm>,
    sliding: bool,
}

/// The Hugging Face names of a layer's norms, after `layers.{i}.`. Llama's
/// `post_attention_layernorm` is the norm before the MLP; Gemma's the norm after attention.
struct NormNames {
    input: &'static str,
    pre_ff: &'static str,
    /// Gemma's post-attention and post-feed-forward norms.
    post: Option<[&'static str; 2]>,
}

impl NormNames {
    fn of(cfg: &ModelConfig) -> Self {
        if cfg.post_norms {
            NormNames {
                input: "input_layernorm",
                pre_ff: "pre_feedforward_layernorm",
                post: Some(["post_attention_layernorm", "post_feedforward_layernorm"]),
            }
        } else {
            NormNames {
                input: "input_layernorm",
                pre_ff: "post_attention_layernorm",
                post: None,
            }
        }
    }

    /// Every name.
    fn all(&self) -> Vec<&'static str> {
        let mut v = vec![self.input, self.pre_ff];
        v.extend(self.post.iter().flatten());
        v
    }
}

/// The KV cache of one sequence.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// Tokens processed so far (the position of the next token).
    pub len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }
}

/// (first key position, number of keys, sliding window?) of an attention bias.
type BiasKey = (usize, usize, bool);

/// What the layers need to know about the batch being processed.
struct Pass<'a> {
    b: usize,
    t: usize,
    /// Absolute position of the first query.
    offset: usize,
    /// Per sequence, whether each key position is real (None: all are).
    key_mask: Option<&'a [Vec<bool>]>,
    /// Per row, the RoPE position of each query (None: `offset..offset + t` in every row).
    positions: Option<&'a [Vec<u32>]>,
    /// Packed rows: attention runs on the gather's groups of examples, one example a row,
    /// each group with its own pass (its rows, positions and key masks).
    gather: Option<(&'a Gather, Vec<Pass<'a>>)>,
    /// Attention biases already built in this pass, by (first key, keys, sliding): every layer
    /// of a kind shares one.
    biases: std::cell::RefCell<Vec<(BiasKey, Tensor)>>,
    /// RoPE tables of this pass's positions, global and local, made once.
    ropes: [std::cell::OnceCell<[Tensor; 3]>; 2],
}

impl<'a> Pass<'a> {
    fn new(b: usize, t: usize, offset: usize, key_mask: Option<&'a [Vec<bool>]>) -> Self {
        Self {
            b,
            t,
            offset,
            key_mask,
            positions: None,
            gather: None,
            biases: Default::default(),
            ropes: Default::default(),
        }
    }
}

/// Where the weight names of a checkpoint's text model start: `model.` in a causal-LM
/// checkpoint, one of the others in a multimodal Gemma-3 (Hub files, transformers 5 saves).
const TEXT_PREFIXES: [&str; 3] = ["model.", "language_model.model.", "model.language_model."];
/// The untied output projection's names, in the same order.
const HEAD_NAMES: [&str; 3] = [
    "lm_head.weight",
    "language_model.lm_head.weight",
    "lm_head.weight",
];

/// A causal language model of any supported family, with LoRA.
pub struct CausalLm {
    pub cfg: ModelConfig,
    embed: Tensor,
    /// An untied output projection, when the checkpoint has one.
    lm_head: Option<Tensor>,
    layers: Vec<Layer>,
    final_norm: Norm,
    /// RoPE of the global and of the sliding layers.
    ropes: [Rope; 2],
    kernels: Kernels,
    dtype: DType,
    device: Device,
}

const MASKED: f32 = -1e30;

impl CausalLm {
    /// Loads the base model from checked weights; the kernels are those of the device unless
    /// `SOCRATUNE_KERNELS` says otherwise (see [`CausalLm::set_kernels`]).
    pub(crate) fn from_weights(
        cfg: &ModelConfig,
        w: &Weights,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let kernels = Kernels::from_env(dev).map_err(ModelError::Invalid)?;
        let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let q_dim = cfg.num_attention_heads * d;
        let kv_dim = cfg.num_key_value_heads * d;
        let which = TEXT_PREFIXES
            .iter()
            .position(|p| w.contains(&format!("{p}embed_tokens.weight")))
            .unwrap_or(0);
        let prefix = TEXT_PREFIXES[which];
        let get = |name: &str, shape: &[usize]| w.get(name, shape, dtype, dev);
        let norm = |name: &str, n: usize| -> Result<Norm> {
            Norm::load(w.get(name, &[n], DType::F32, dev)?, cfg.norm_weight)
        };
        let names = NormNames::of(cfg);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("{prefix}layers.{l}");
            let layer_norm = |name: &str| norm(&format!("{p}.{name}.weight"), h);
            let post = |i: usize| names.post.map(|n| layer_norm(n[i])).transpose();
            let lin = |name: &str, shape: &[usize]| -> Result<LoraLinear> {
                Ok(LoraLinear::new(get(&format!("{p}.{name}.weight"), shape)?))
            };
            let qk_norm = |name: &str| -> Result<Option<Norm>> {
                cfg.qk_norm
                    .then(|| norm(&format!("{p}.self_attn.{name}.weight"), d))
                    .transpose()
            };
            layers.push(Layer {
                input_norm: layer_norm(names.input)?,
                attn: Attention {
                    q: lin("self_attn.q_proj", &[q_dim, h])?,
                    k: lin("self_attn.k_proj", &[kv_dim, h])?,
                    v: lin("self_attn.v_proj", &[kv_dim, h])?,
                    o: lin("self_attn.o_proj", &[h, q_dim])?,
                    q_norm: qk_norm("q_norm")?,
                    k_norm: qk_norm("k_norm")?,
                },
                post_attn_norm: post(0)?,
                pre_ff_norm: layer_norm(names.pre_ff)?,
                mlp: Mlp {
                    gate: lin("mlp.gate_proj", &[i, h])?,
                    up: lin("mlp.up_proj", &[i, h])?,
                    down: lin("mlp.down_proj", &[h, i])?,
                    activation: cfg.activation,
                },
                post_ff_norm: post(1)?,
                sliding: cfg.sliding_layers[l],
            });
        }
        let embed = get(
            &format!("{prefix}embed_tokens.weight"),
            &[cfg.vocab_size, h],
        )?;
        // An untied config needs its head: transformers would start a missing one at random.
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(get(HEAD_NAMES[which], &[cfg.vocab_size, h])?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            lm_head,
            layers,
            final_norm: norm(&format!("{prefix}norm.weight"), h)?,
            ropes: [
                Rope::new(&cfg.rope_global, d),
                Rope::new(&cfg.rope_local, d),
            ],
            kernels,
            dtype,
            device: dev.clone(),
        })
    }

    /// A randomly initialised model (weights N(0, 0.02), norms 0 as transformers does), seeded;
    /// for benchmarks and the offline demo.
    pub fn random(cfg: &ModelConfig, seed: u64, dtype: DType, dev: &Device) -> Result<Self> {
        Self::random_with_embedding_std(cfg, seed, 0.02, dtype, dev)
    }

    /// Like [`CausalLm::random`] with another spread for the (tied) embedding: at 0.02 a tiny
    /// model's output logits can hardly move from uniform, so the demo uses a wider one.
    pub fn random_with_embedding_std(
        cfg: &ModelConfig,
        seed: u64,
        embedding_std: f32,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let tensors = random_weights(cfg, seed, embedding_std, dev)?;
        let w = Weights::from_tensors(tensors);
        Self::from_weights(cfg, &w, dtype, dev)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The kernels every pass runs.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Chooses the kernels (the fused ones need the CPU).
    pub(crate) fn set_kernels(&mut self, k: Kernels) -> Result<()> {
        k.check(&self.device).map_err(ModelError::Invalid)?;
        self.kernels = k;
        Ok(())
    }

    /// The base weights by their Hugging Face names in a causal-LM checkpoint (`model.…`),
    /// in the model dtype (for merged exports).
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        if let Some(head) = &self.lm_head {
            v.push(("lm_head.weight".into(), head.clone()));
        }
        let unnorm = |n: &Norm| n.stored().to_dtype(self.dtype);
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            for (t, lin) in layer.linears() {
                v.push((
                    format!("{p}.{}.{}.weight", t.block(), t.module()),
                    lin.weight.clone(),
                ));
            }
            let a = &layer.attn;
            let names = NormNames::of(&self.cfg);
            let mut norms = vec![
                (names.input, &layer.input_norm),
                (names.pre_ff, &layer.pre_ff_norm),
            ];
            if let (Some([pa, pf]), Some(a_norm), Some(f_norm)) =
                (names.post, &layer.post_attn_norm, &layer.post_ff_norm)
            {
                norms.extend([(pa, a_norm), (pf, f_norm)]);
            }
            for (name, n) in norms {
                v.push((format!("{p}.{name}.weight"), unnorm(n)?));
            }
            for (name, n) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                if let Some(n) = n {
                    v.push((format!("{p}.self_attn.{name}.weight"), unnorm(n)?));
                }
            }
        }
        v.push(("model.norm.weight".into(), unnorm(&self.final_norm)?));
        Ok(v)
    }
    /// Makes every base weight a variable for full-parameter training and returns them by
    /// their Hugging Face names (those of [`CausalLm::named_weights`]); the forward passes then
    /// give each its gradient. The weights must be f32: they are the master weights.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        if self.dtype != DType::F32 {
            return Err(ModelError::Invalid(format!(
                "full-parameter training keeps f32 master weights; the model is loaded in {:?} (use dtype = \"f32\")",
                self.dtype
            )));
        }
        if self.linears().any(|(_, _, lin)| lin.lora.is_some()) {
            return Err(ModelError::Invalid(
                "full-parameter training of a model with an adapter attached".into(),
            ));
        }
        let var = |t: &mut Tensor| -> Result<Var> {
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            Ok(v)
        };
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            var(&mut self.embed)?,
        )];
        if let Some(head) = &mut self.lm_head {
            v.push(("lm_head.weight".into(), var(head)?));
        }
        // The projections through the one list of them, then each layer's norms.
        for (l, t, lin) in self.linears_mut() {
            let name = format!("model.layers.{l}.{}.{}.weight", t.block(), t.module());
            v.push((name, var(&mut lin.weight)?));
        }
        let names = NormNames::of(&self.cfg);
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            let Layer {
                input_norm,
                attn,
                post_attn_norm,
                pre_ff_norm,
                post_ff_norm,
                ..
            } = layer;
            let [post_attn, post_ff] = names.post.map_or([None, None], |[a, b]| [Some(a), Some(b)]);
            for (name, n) in [
                (Some(names.input), Some(input_norm)),
                (Some(names.pre_ff), Some(pre_ff_norm)),
                (post_attn, post_attn_norm.as_mut()),
                (post_ff, post_ff_norm.as_mut()),
                (Some("self_attn.q_norm"), attn.q_norm.as_mut()),
                (Some("self_attn.k_norm"), attn.k_norm.as_mut()),
            ] {
                if let (Some(name), Some(n)) = (name, n) {
                    v.push((format!("{p}.{name}.weight"), n.make_trainable()?));
                }
            }
        }
        v.push((
            "model.norm.weight".into(),
            self.final_norm.make_trainable()?,
        ));
        Ok(v)
    }

    /// Every adaptable projection: (layer, target, layer object).
    pub(crate) fn linears_mut(&mut self) -> impl Iterator<Item = (usize, Target, &mut LoraLinear)> {
        self.layers.iter_mut().enumerate().flat_map(|(l, layer)| {
            let Layer { attn, mlp, .. } = layer;
            [
                (Target::QProj, &mut attn.q),
                (Target::KProj, &mut attn.k),
                (Target::VProj, &mut attn.v),
                (Target::OProj, &mut attn.o),
                (Target::GateProj, &mut mlp.gate),
                (Target::UpProj, &mut mlp.up),
                (Target::DownProj, &mut mlp.down),
            ]
            .into_iter()
            .map(move |(t, lin)| (l, t, lin))
        })
    }

    /// Every adaptable projection, read-only.
    pub(crate) fn linears(&self) -> impl Iterator<Item = (usize, Target, &LoraLinear)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(l, layer)| layer.linears().into_iter().map(move |(t, lin)| (l, t, lin)))
    }

    /// Attaches fresh LoRA adapters (PEFT initialisation, seeded) to the configured targets.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        // A rank above min(in, out) adds parameters (and checkpoint size) but no capacity.
        // The tightest bound is named, so one error says the whole limit.
        let tightest = self
            .linears()
            .filter(|(_, t, _)| cfg.targets.contains(t))
            .min_by_key(|(_, _, lin)| lin.in_dim().min(lin.out_dim()));
        if let Some((_, t, lin)) = tightest {
            let most = lin.in_dim().min(lin.out_dim());
            if cfg.r > most {
                return Err(ModelError::Invalid(format!(
                    "LoRA rank r = {} is too large for {} ({} → {}): r must be at most min(in, out) = {most}",
                    cfg.r,
                    t.module(),
                    lin.in_dim(),
                    lin.out_dim()
                )));
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (_, t, lin) in self.linears_mut() {
            if cfg.targets.contains(&t) {
                lin.attach(cfg, &mut rng)?;
            } else {
                lin.lora = None;
            }
        }
        Ok(())
    }

    /// The trainable tensors with their PEFT names (`base_model.model.model.layers.{i}…`).
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for (l, t, lin) in self.linears() {
            if let Some(lora) = &lin.lora {
                let p = super::adapter::peft_prefix(l, t);
                v.push((format!("{p}.lora_A.weight"), lora.a.clone()));
                v.push((format!("{p}.lora_B.weight"), lora.b.clone()));
            }
        }
        v
    }

    /// The LoRA gradients of the backward passes since the last call, aligned with
    /// [`CausalLm::lora_vars`]; the accumulators are reset.
    pub fn take_lora_grads(&self) -> Vec<Option<Tensor>> {
        let mut v = Vec::new();
        for (_, _, lin) in self.linears() {
            if let Some((a, b)) = lin.take_grads() {
                v.push(a);
                v.push(b);
            }
        }
        v
    }

    /// Folds every adapter into the base weights.
    pub fn merge_lora(&mut self) -> Result<()> {
        for (_, _, lin) in self.linears_mut() {
            lin.merge()?;
        }
        Ok(())
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = ids.flatten_all()?;
        let x = self.embed.index_select(&flat, 0)?;
        if !self.cfg.scale_embeddings {
            return Ok(x);
        }
        // transformers multiplies by sqrt(hidden) rounded to the model dtype.
        let normalizer = Tensor::new((self.cfg.hidden_size as f32).sqrt(), &self.device)?
            .to_dtype(self.dtype)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        Ok((x * normalizer)?)
    }

    /// Hidden states after the last layer, before the final norm: `[B·T, hidden]`.
    /// `attention_mask` (per sequence, per position: a real token?) masks padded keys;
    /// `mode` says whether to build the gradient graph and draw dropout.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        attention_mask: Option<&[Vec<bool>]>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        self.hidden_states_packed(ids, attention_mask, None, mode)
    }

    /// [`CausalLm::hidden_states`] of rows that may hold several examples each (packing):
    /// `packed` lists every example as (row, first token, tokens). Each attends only to
    /// itself, from position 0, as if it were alone (see [`Gather`]); the padding after a
    /// row's last example is not attended.
    pub fn hidden_states_packed(
        &self,
        ids: &Tensor,
        attention_mask: Option<&[Vec<bool>]>,
        packed: Option<&[(usize, usize, usize)]>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            )));
        }
        let gather = packed
            .map(|examples| Gather::new(examples, b, t, &self.device))
            .transpose()?;
        let pass = match &gather {
            Some(g) => {
                let groups = g.groups().iter();
                let groups = groups.map(|g| Pass::new(g.e, g.l, 0, Some(&g.masks)));
                Pass {
                    gather: Some((g, groups.collect())),
                    ..Pass::new(b, t, 0, None)
                }
            }
            None => Pass::new(b, t, 0, attention_mask),
        };
        let mut h = self.embed(ids)?;
        for layer in &self.layers {
            h = self.layer_forward(layer, &h, &pass, None, mode)?;
        }
        Ok(h)
    }

    /// Applies the final norm.
    pub(crate) fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.final_norm
            .forward(h, self.cfg.rms_norm_eps, self.kernels)
    }

    /// The output projection (tied embedding unless the checkpoint has its own), `[vocab, hidden]`.
    pub(crate) fn output_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Full logits `[B, T, vocab]` in f32 (soft-capped). For tests and short inputs; training
    /// computes the loss at supervised positions only (see `loss`).
    pub fn logits(&self, ids: &Tensor, attention_mask: Option<&[Vec<bool>]>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.final_norm(&self.hidden_states(ids, attention_mask, &mut Mode::eval())?)?;
        let z = ops::linear_frozen(&h, self.output_weight())?.to_dtype(DType::F32)?;
        Ok(
            ops::softcap(&z, self.cfg.final_logit_softcapping)?.reshape((
                b,
                t,
                self.cfg.vocab_size,
            ))?,
        )
    }

    /// Feeds `ids` after what `cache` holds; returns the f32 logits of the last position.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(ModelError::Invalid("no tokens to feed".into()));
        }
        let t = ids.len();
        if cache.len + t > self.cfg.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "context of {} tokens exceeds max_position_embeddings {}",
                cache.len + t,
                self.cfg.max_position_embeddings
            )));
        }
        let x = Tensor::new(ids, &self.device)?.reshape((1, t))?;
        let pass = Pass::new(1, t, cache.len, None);
        let h = self.cached_layers(&x, &pass, &mut cache.layers)?;
        cache.len += t;
        Ok(self.head_logits(&h.narrow(0, t - 1, 1)?)?.squeeze(0)?)
    }

    /// Embeds `ids` `[B, T]` and runs every layer with its KV cache: `[B·T, hidden]`.
    fn cached_layers(
        &self,
        ids: &Tensor,
        pass: &Pass,
        caches: &mut Vec<Option<LayerCache>>,
    ) -> Result<Tensor> {
        if caches.len() != self.layers.len() {
            *caches = vec![None; self.layers.len()];
        }
        let mut h = self.embed(ids)?;
        for (layer, lc) in self.layers.iter().zip(caches.iter_mut()) {
            h = self.layer_forward(layer, &h, pass, Some(lc), &mut Mode::decode(self.kernels))?;
        }
        Ok(h)
    }

    /// The f32 logits (soft-capped) of last-layer hidden states `[N, hidden]`: `[N, vocab]`.
    fn head_logits(&self, h: &Tensor) -> Result<Tensor> {
        let x = self.final_norm(h)?;
        let few = match self.kernels {
            Kernels::Fused => super::matvec::matvec(&x, &[self.output_weight()])?,
            Kernels::Reference => None,
        };
        let z = match few {
            Some(mut y) => y.remove(0),
            None => ops::linear_frozen(&x, self.output_weight())?.to_dtype(DType::F32)?,
        };
        Ok(ops::softcap(&z, self.cfg.final_logit_softcapping)?)
    }

    /// One decoder layer: pre-norm attention and MLP, each followed by a post-norm before the
    /// residual add when the family has them (Gemma's sandwich).
    fn layer_forward(
        &self,
        layer: &Layer,
        h: &Tensor,
        pass: &Pass,
        cache: Option<&mut Option<LayerCache>>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (eps, kern) = (cfg.rms_norm_eps, self.kernels);
        let sliding = layer.sliding && cfg.sliding_window.is_some();
        let rope_index = usize::from(layer.sliding);
        let groups = match &pass.gather {
            Some((_, passes)) => passes
                .iter()
                .map(|p| {
                    Ok(GroupAttn {
                        rope: self.pass_rope(p, rope_index)?,
                        bias: self.shared_bias(p, 0, p.t, sliding)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let bias = |key_start: usize, s: usize| self.shared_bias(pass, key_start, s, sliding);
        let call = AttnCall {
            b: pass.b,
            t: pass.t,
            offset: pass.offset,
            rope: self.pass_rope(pass, rope_index)?,
            bias: &bias,
            kern,
            gather: pass.gather.as_ref().map(|(g, _)| (*g, groups.as_slice())),
        };
        let shape = AttnShape {
            nh: cfg.num_attention_heads,
            nkv: cfg.num_key_value_heads,
            d: cfg.head_dim,
            scale: cfg.query_pre_attn_scalar.powf(-0.5),
            cap: cfg.attn_logit_softcapping,
            window: if sliding { cfg.sliding_window } else { None },
            eps,
        };
        let residual = |h: &Tensor, x: &Tensor, post: &Option<Norm>| match post {
            Some(n) => n.add_forward(h, x, eps, kern),
            None => Ok((h + x)?),
        };
        let x = layer.input_norm.forward(h, eps, kern)?;
        let x = layer.attn.forward(&x, &shape, &call, cache, mode)?;
        let h = residual(h, &x, &layer.post_attn_norm)?;
        let x = layer.pre_ff_norm.forward(&h, eps, kern)?;
        let x = layer.mlp.forward(&x, kern, mode)?;
        residual(&h, &x, &layer.post_ff_norm)
    }

    /// The RoPE tables of a pass's positions (`rope_index` 0: global layers, 1: sliding),
    /// made once per pass.
    fn pass_rope<'p>(&self, pass: &'p Pass, rope_index: usize) -> Result<&'p [Tensor; 3]> {
        if let Some(r) = pass.ropes[rope_index].get() {
            return Ok(r);
        }
        let rope = &self.ropes[rope_index];
        let r = match pass.positions {
            Some(p) => rope.tables_for(p, self.dtype, &self.device)?,
            None => rope.tables(pass.offset, pass.t, self.dtype, &self.device)?,
        };
        Ok(pass.ropes[rope_index].get_or_init(|| r))
    }

    /// [`CausalLm::attention_bias`], built once per pass for all layers of a kind.
    fn shared_bias(
        &self,
        pass: &Pass,
        key_start: usize,
        s: usize,
        sliding: bool,
    ) -> Result<Tensor> {
        let key = (key_start, s, sliding);
        if let Some((_, b)) = pass.biases.borrow().iter().find(|(k, _)| *k == key) {
            return Ok(b.clone());
        }
        let b = self.attention_bias(pass, key_start, s, sliding)?;
        pass.biases.borrow_mut().push((key, b.clone()));
        Ok(b)
    }

    /// The additive attention bias `[B or 1, 1, groups·T, S]`: 0 where query i may see key j
    /// (causal, within the window on sliding layers, key not padding), a large negative number
    /// elsewhere. Rows repeat per query group to match the grouped-query layout.
    fn attention_bias(
        &self,
        pass: &Pass,
        key_start: usize,
        s: usize,
        sliding: bool,
    ) -> Result<Tensor> {
        let g = self.cfg.groups();
        let window = if sliding {
            self.cfg.sliding_window
        } else {
            None
        };
        let rows = match pass.key_mask {
            Some(m) => m.len(),
            None => 1,
        };
        let mut bias = Vec::with_capacity(rows * g * pass.t * s);
        for r in 0..rows {
            for _ in 0..g {
                for qi in 0..pass.t {
                    let i = pass.offset + qi;
                    for kj in 0..s {
                        let j = key_start + kj;
                        let mut ok = j <= i && window.is_none_or(|w| j + w > i);
                        // The mask is by absolute key position (a cached batch's keys may start
                        // past 0).
                        if let Some(m) = pass.key_mask {
                            ok &= m[r].get(j).copied().unwrap_or(false);
                        }
                        bias.push(if ok { 0.0 } else { MASKED });
                    }
                }
            }
        }
        Ok(Tensor::from_vec(
            bias,
            (rows, 1, g * pass.t, s),
            &self.device,
        )?)
    }
}

impl Layer {
    fn linears(&self) -> [(Target, &LoraLinear); 7] {
        [
            (Target::QProj, &self.attn.q),
            (Target::KProj, &self.attn.k),
            (Target::VProj, &self.attn.v),
            (Target::OProj, &self.attn.o),
            (Target::GateProj, &self.mlp.gate),
            (Target::UpProj, &self.mlp.up),
            (Target::DownProj, &self.mlp.down),
        ]
    }
}

/// Random weights as transformers initialises the family (normal 0.02; norms at their identity:
/// 0 for Gemma's `1 + w`, 1 otherwise), generated with a seeded generator so that benchmarks
/// and the demo are reproducible.
fn random_weights(
    cfg: &ModelConfig,
    seed: u64,
    embedding_std: f32,
    dev: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q_dim = cfg.num_attention_heads * cfg.head_dim;
    let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h])];
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", vec![q_dim, h]),
            ("self_attn.k_proj", vec![kv_dim, h]),
            ("self_attn.v_proj", vec![kv_dim, h]),
            ("self_attn.o_proj", vec![h, q_dim]),
            ("mlp.gate_proj", vec![i, h]),
            ("mlp.up_proj", vec![i, h]),
            ("mlp.down_proj", vec![h, i]),
        ] {
            shapes.push((format!("{p}.{name}.weight"), shape));
        }
    }
    let mut out = Vec::with_capacity(shapes.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, shape) in shapes {
        let std = if name == "model.embed_tokens.weight" {
            embedding_std
        } else {
            0.02
        };
        out.push((name, normal(&shape, std, &mut rng, dev)?));
    }
    let identity = |n: usize| -> Result<Tensor> {
        Ok(match cfg.norm_weight {
            NormWeight::OnePlus => Tensor::zeros(n, DType::F32, dev)?,
            NormWeight::Plain => Tensor::ones(n, DType::F32, dev)?,
        })
    };
    let norm = identity(h)?;
    for l in 0..cfg.num_hidden_layers {
        for n in NormNames::of(cfg).all() {
            out.push((format!("model.layers.{l}.{n}.weight"), norm.clone()));
        }
    }
    if cfg.qk_norm {
        let head_norm = identity(cfg.head_dim)?;
        for l in 0..cfg.num_hidden_layers {
            for n in ["q_norm", "k_norm"] {
                out.push((
                    format!("model.layers.{l}.self_attn.{n}.weight"),
                    head_norm.clone(),
                ));
            }
        }
    }
    out.push(("model.norm.weight".into(), norm));
    Ok(out)
}

/// Normal samples; on an accelerator the device generator (seeded from `rng`) avoids a host
/// round trip for billions of values.
fn normal(shape: &[usize], std: f32, rng: &mut ChaCha8Rng, dev: &Device) -> Result<Tensor> {
    use rand::Rng;
    if !dev.is_cpu() {
        dev.set_seed(rng.random())?;
        return Ok(Tensor::randn(0f32, std, shape, dev)?);
    }
    let n: usize = shape.iter().product();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        // Box–Muller: two normals from two uniforms.
        let u1: f32 = rng.random_range(f32::MIN_POSITIVE..1.0);
        let u2: f32 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = std::f32::consts::TAU * u2;
        v.push(r * a.cos());
        if v.len() < n {
            v.push(r * a.sin());
        }
    }
    Ok(Tensor::from_vec(v, shape, dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::loss::{loss_sum, Batch};

    #[test]
    fn lora_rank_is_bounded_by_the_smaller_side_of_each_target() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let mut m = CausalLm::random(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
        // k_proj is 64 → 32 in the tiny preset.
        let lora = |r| crate::model::LoraConfig {
            r,
            ..Default::default()
        };
        m.attach_lora(&lora(32), 0).unwrap();
        let e = m.attach_lora(&lora(100_000), 0).unwrap_err().to_string();
        assert!(
            e.contains("r = 100000") && e.contains("at most min(in, out) = 32"),
            "{e}"
        );
    }

    /// Decoding token by token (past several reallocations of the cache and far past a short
    /// sliding window, after a prompt fed at once) gives the logits of the whole sequence
    /// recomputed, for every family's options and both kernel sets.
    #[test]
    fn cached_decoding_matches_recomputing_the_sequence() {
        let dev = Device::Cpu;
        let ids: Vec<u32> = (0..150).map(|i| 3 + (i * 37 % 300) as u32).collect();
        for preset in ["tiny", "tiny-gemma3", "tiny-qwen3", "tiny-llama"] {
            let mut cfg = ModelConfig::preset(preset).unwrap();
            if cfg.sliding_window.is_some() {
                cfg.sliding_window = Some(5);
            }
            for kernels in [Kernels::Fused, Kernels::Reference] {
                let mut m =
                    CausalLm::random_with_embedding_std(&cfg, 1, 0.5, DType::F32, &dev).unwrap();
                m.set_kernels(kernels).unwrap();
                let full = m
                    .logits(
                        &Tensor::new(ids.as_slice(), &dev)
                            .unwrap()
                            .unsqueeze(0)
                            .unwrap(),
                        None,
                    )
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                let mut cache = KvCache::new();
                let mut pos = 0;
                for len in std::iter::once(9).chain(std::iter::repeat_n(1, ids.len() - 9)) {
                    let got = m.forward_cached(&ids[pos..pos + len], &mut cache).unwrap();
                    pos += len;
                    let want = full.get(pos - 1).unwrap();
                    let d = crate::model::max_abs_diff(&got, &want);
                    assert!(d < 1e-4, "{preset} {kernels:?}, position {pos}: {d}");
                }
            }
        }
    }

    #[test]
    fn multimodal_checkpoints_load_their_text_model() {
        let cfg = ModelConfig::preset("tiny-gemma3").unwrap();
        let dev = Device::Cpu;
        let tensors = random_weights(&cfg, 4, 0.3, &dev).unwrap();
        let ids = Tensor::new(&[[2u32, 50, 60, 70, 80]], &dev).unwrap();
        let plain = CausalLm::from_weights(
            &cfg,
            &Weights::from_tensors(tensors.clone()),
            DType::F32,
            &dev,
        )
        .unwrap();
        let want = plain.logits(&ids, None).unwrap();
        // The Hub's gemma3 files and transformers 5's saves, with a vision tower beside.
        for prefix in ["language_model.model.", "model.language_model."] {
            let mut renamed: Vec<(String, Tensor)> = tensors
                .iter()
                .map(|(k, t)| (k.replacen("model.", prefix, 1), t.clone()))
                .collect();
            renamed.push((
                "vision_tower.x.weight".into(),
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
            ));
            let m = CausalLm::from_weights(&cfg, &Weights::from_tensors(renamed), DType::F32, &dev)
                .unwrap();
            let d = crate::model::max_abs_diff(&m.logits(&ids, None).unwrap(), &want);
            assert_eq!(d, 0.0, "{prefix}");
            // Exports write the causal-LM names.
            assert!(m
                .named_weights()
                .unwrap()
                .iter()
                .all(|(k, _)| k.starts_with("model.layers.")
                    || k.starts_with("model.embed")
                    || k == "model.norm.weight"));
        }
    }

    #[test]
    fn bf16_forward_and_backward_track_f32() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[2u32, 50, 60, 70, 80, 90], [2, 51, 61, 71, 0, 0]], &dev).unwrap();
        let mask = vec![vec![true; 6], vec![true, true, true, true, false, false]];
        let mut logits = Vec::new();
        for dtype in [DType::F32, DType::BF16] {
            let mut m = CausalLm::random(&cfg, 3, dtype, &dev).unwrap();
            m.attach_lora(
                &LoraConfig {
                    dropout: 0.1,
                    ..Default::default()
                },
                5,
            )
            .unwrap();
            logits.push(
                m.logits(&ids, Some(&mask))
                    .unwrap()
                    .narrow(0, 0, 1)
                    .unwrap(),
            );
            let seqs: [(&[u32], &[i64]); 2] = [
                (&[2, 50, 60, 70, 80, 90], &[-100, -100, 60, 70, 80, 90]),
                (&[2, 51, 61, 71], &[-100, 51, 61, 71]),
            ];
            let batch = Batch::new(&seqs, 0, cfg.vocab_size, &dev).unwrap();
            let loss = loss_sum(&m, &batch, &mut Mode::train(1)).unwrap();
            loss.backward().unwrap();
            for ((name, _), g) in m.lora_vars().iter().zip(m.take_lora_grads()) {
                let g = g.unwrap_or_else(|| panic!("{name} has no gradient"));
                assert_eq!(g.dtype(), DType::F32);
            }
        }
        let diff = (&logits[0] - &logits[1])
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap();
        let norm = logits[0].sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let rel = (diff / norm).unwrap().to_scalar::<f32>().unwrap();
        assert!(rel < 3e-2, "bf16 logits differ from f32 by {rel}");
    }

    /// At a length of several causal attention tiles (150 positions), with a sliding window
    /// shorter than the sequence (so later tiles skip keys at both ends) and a padded row, the
    /// fused kernels give the reference ops' loss and full-parameter gradients.
    #[test]
    fn fused_causal_tiles_match_the_reference_at_length() {
        let dev = Device::Cpu;
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        cfg.sliding_window = Some(24);
        let rows = crate::model::test_rows(&[150usize, 97], cfg.vocab_size);
        let batch = Batch::masked_prefix(&rows, 0.25, cfg.vocab_size, &dev).unwrap();
        let run = |k: Kernels| {
            let mut m =
                CausalLm::random_with_embedding_std(&cfg, 7, 0.5, DType::F32, &dev).unwrap();
            m.set_kernels(k).unwrap();
            let vars = m.make_trainable().unwrap();
            let loss = loss_sum(&m, &batch, &mut Mode::grad_only()).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<(String, Tensor)> = vars
                .iter()
                .map(|(name, v)| (name.clone(), grads.get(v).unwrap().clone()))
                .collect();
            (loss.to_scalar::<f32>().unwrap(), g)
        };
        let (l1, g1) = run(Kernels::Fused);
        let (l2, g2) = run(Kernels::Reference);
        assert!((l1 - l2).abs() <= 1e-5 * l2.abs(), "loss {l1} vs {l2}");
        for ((name, a), (_, b)) in g1.iter().zip(&g2) {
            let scale = crate::model::max_abs(b);
            let d = crate::model::max_abs_diff(a, b);
            assert!(
                d <= 1e-4 * scale,
                "{name}: gradients differ by {d} (scale {scale})"
            );
        }
    }

    /// Full-parameter gradients (embedding, norms, projections, tied head) against central
    /// finite differences of the loss along a random direction per weight, for both kernel
    /// sets and both families' options.
    #[test]
    fn full_parameter_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let seqs: [(&[u32], &[i64]); 2] = [
            (&[2, 50, 60, 70, 80, 90], &[-100, -100, 60, 70, 80, 90]),
            (&[2, 51, 61, 71], &[-100, 51, 61, 71]),
        ];
        for (preset, kernels) in [
            ("tiny", Kernels::Reference),
            ("tiny", Kernels::Fused),
            ("tiny-gemma3", Kernels::Fused),
        ] {
            let cfg = ModelConfig::preset(preset).unwrap();
            let mut m =
                CausalLm::random_with_embedding_std(&cfg, 7, 0.5, DType::F32, &dev).unwrap();
            m.set_kernels(kernels).unwrap();
            let vars = m.make_trainable().unwrap();
            assert_eq!(vars.len(), m.named_weights().unwrap().len());
            let batch = Batch::new(&seqs, 0, cfg.vocab_size, &dev).unwrap();
            let loss = |m: &CausalLm| -> f64 {
                loss_sum(m, &batch, &mut Mode::eval())
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let grads = loss_sum(&m, &batch, &mut Mode::grad_only())
                .unwrap()
                .backward()
                .unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            for (name, var) in &vars {
                let g = grads
                    .get(var)
                    .unwrap_or_else(|| panic!("{preset}: {name} has no gradient"));
                let d = normal(var.dims(), 1.0, &mut rng, &dev).unwrap();
                let analytic = (g * &d)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64;
                let w0 = var.as_tensor().copy().unwrap();
                let eps = 1e-3;
                var.set(&(&w0 + (&d * eps).unwrap()).unwrap()).unwrap();
                let up = loss(&m);
                var.set(&(&w0 - (&d * eps).unwrap()).unwrap()).unwrap();
                let down = loss(&m);
                var.set(&w0).unwrap();
                let numeric = (up - down) / (2.0 * eps);
                let err = (analytic - numeric).abs();
                assert!(
                    // The f32 loss (a sum of ~10 token losses) is noisy at ~1e-3, i.e. ~0.5
                    // in a difference quotient over 2e-3; analytic values are in the hundreds.
                    err < 1.0 + 1e-2 * numeric.abs(),
                    "{preset} {kernels:?} {name}: analytic {analytic} vs numeric {numeric}"
                );
            }
        }
    }
}
