#!/usr/bin/env python3
"""Makes a tiny model + LoRA fixture that the parity tests compare socratune against: a
random model of one family (Gemma-2, Gemma-3 text, Qwen3 or Llama) and adapter, and reference
outputs computed by Hugging Face transformers (eager attention) and PEFT on the CPU in float32.

Usage: python scripts/make_fixture.py OUT_DIR [--family gemma2|gemma3|qwen3|llama] [--seed N]
                                              [--shape tiny|odd]

Deterministic: the same seed, shape and library versions give byte-identical files (one
CPU thread, deterministic algorithms, no timestamps). The versions and the command are
written to OUT_DIR/GENERATED.md.

Files written into OUT_DIR:
  config.json                  the config spelled as the Hub's repositories of the family
                               spell it (gemma2: top-level rope_theta, torch_dtype, eos
                               list, no layer_types: even layers slide; gemma3: rope_theta,
                               rope_local_base_freq, rope_scaling, sliding_window_pattern;
                               qwen3 and llama: rope_theta and rope_scaling, as
                               Qwen3-1.7B's and Llama-3.2-1B's files)
  model.safetensors            the weights (float32, Hugging Face names)
  generation_config.json       as transformers writes it
  adapter/                     a PEFT LoRA adapter on all seven projections, lora_B non-zero
  io.safetensors               inputs and reference outputs:
    input_ids [B,T] i64, attention_mask [B,T] i64 (the last row is right-padded),
    labels [B,T] i64 (-100 = not trained: the first third and the padding)
    base_logits [B,T,V] f32    logits of the base model
    lora_logits [B,T,V] f32    logits with the adapter
    lora_loss [] f32           mean cross-entropy over labels != -100, labels shifted left
                               by one as in causal-LM training
    grad.<PEFT key> f32        d lora_loss / d each LoRA tensor
    gen_prompt [P] i64, gen_greedy [G] i64: a greedy continuation with the adapter
  README.md, GENERATED.md      what the folder holds; how and with what it was made
"""
import argparse
import importlib.metadata as md
import json
import os
import platform
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM,
                          Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

# sliding_window < T so that local and global layers really differ; query_pre_attn_scalar !=
# head_dim so that its use is tested; both softcaps active.
SHAPES = {
    "tiny": dict(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=7,
                 query_pre_attn_scalar=20, attn_logit_softcapping=50.0,
                 final_logit_softcapping=30.0, rope_theta=10000.0),
    # Odd sizes everywhere, for `GEMMA2_FIXTURE=dir` runs that shake out shape assumptions.
    "odd": dict(vocab_size=301, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=3, head_dim=8, sliding_window=5,
                query_pre_attn_scalar=12, attn_logit_softcapping=20.0,
                final_logit_softcapping=15.0, rope_theta=500.0),
}
# Gemma-3 text: q/k norms, no soft-caps, a local and a global RoPE base with linear scaling on
# the global layers, two sliding layers to one global (six layers: both kinds twice),
# sliding_window < T, query_pre_attn_scalar != head_dim.
GEMMA3_SHAPES = {
    "tiny": dict(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=7,
                 query_pre_attn_scalar=20, sliding_window_pattern=3, rope_theta=10000.0,
                 rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "odd": dict(vocab_size=301, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                num_attention_heads=6, num_key_value_heads=3, head_dim=8, sliding_window=5,
                query_pre_attn_scalar=12, sliding_window_pattern=2, rope_theta=500.0,
                rope_local_base_freq=50.0, rope_scaling={"rope_type": "linear", "factor": 2.0}),
}
# Qwen3: q/k norms, more query heads than hidden / head_dim (as Qwen3-4B), tied head.
QWEN3_SHAPES = {
    "tiny": dict(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                 num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                 tie_word_embeddings=True),
    "odd": dict(vocab_size=301, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                tie_word_embeddings=True),
}
# Llama-3: untied head; llama3 RoPE scaling whose original context (64) puts the head's eight
# wavelengths (2π·10⁴^(i/8): 6, 20, 63, 199, …) in all three bands: kept (< 64/4), blended,
# divided by the factor (> 64/1), so the scaling changes the angles at the fixture's lengths.
LLAMA_SHAPES = {
    "tiny": dict(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64},
                 tie_word_embeddings=False),
    "odd": dict(vocab_size=301, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 32},
                 tie_word_embeddings=False),
}
BATCH = {"tiny": (2, 21, 4, 8), "odd": (3, 17, 3, 5)}  # B, T, LoRA r, LoRA alpha
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD, BOS, EOS = 0, 2, 1


def hub_spelling(path, family, shape):
    """Rewrites config.json as the Hub's repositories of the family spell it, so the tests
    read (and exports keep) the spelling real base models have."""
    with open(path) as f:
        c = json.load(f)
    if family == "gemma3":
        # As google/gemma-3-1b-it: the pre-transformers-5 RoPE keys and the layer pattern.
        want = GEMMA3_SHAPES[shape]
        c.pop("rope_parameters")
        for k in ("rope_theta", "rope_local_base_freq", "rope_scaling", "sliding_window_pattern"):
            c[k] = want[k]
        c["eos_token_id"] = [EOS, 106]
    elif family in ("qwen3", "llama"):
        # As Qwen/Qwen3-1.7B and meta-llama/Llama-3.2-1B: rope_theta, rope_scaling at the top.
        rope = dict(c.pop("rope_parameters"))
        c["rope_theta"] = rope.pop("rope_theta")
        c["rope_scaling"] = None if rope["rope_type"] == "default" else rope
        c["torch_dtype"] = c.pop("dtype", "float32")
        for k in ("layer_types", "pretraining_tp"):
            c.pop(k, None)
        if family == "qwen3":
            c["sliding_window"] = None
        with open(path, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
            f.write("\n")
        return
    else:
        c["rope_theta"] = c.pop("rope_parameters")["rope_theta"]
        c["hidden_act"] = c["hidden_activation"]
        c["eos_token_id"] = [EOS, 107]
    c["cache_implementation"] = "hybrid"
    c["torch_dtype"] = c.pop("dtype", "float32")
    for k in ("layer_types", "use_bidirectional_attention", "_sliding_window_pattern"):
        c.pop(k, None)
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")


def inputs(vocab, b, t):
    ids = torch.randint(3, vocab, (b, t))
    ids[:, 0] = BOS
    mask = torch.ones(b, t, dtype=torch.long)
    pad = 4
    ids[-1, t - pad:] = PAD
    mask[-1, t - pad:] = 0
    labels = ids.clone()
    labels[:, : t // 3] = -100  # the "user" part is not trained on
    labels[mask == 0] = -100
    return ids, mask, labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--family", default="gemma2", choices=["gemma2", "gemma3", "qwen3", "llama"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(a.seed)
    b, t, r, alpha = BATCH[a.shape]

    common = dict(max_position_embeddings=256, rms_norm_eps=1e-6,
                  pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                  attention_bias=False, attention_dropout=0.0)
    gemma = dict(common, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
    if a.family == "gemma3":
        cfg = Gemma3TextConfig(**gemma, **GEMMA3_SHAPES[a.shape])
        model_class = Gemma3ForCausalLM
    elif a.family == "qwen3":
        cfg = Qwen3Config(**common, hidden_act="silu", use_sliding_window=False,
                          **QWEN3_SHAPES[a.shape])
        model_class = Qwen3ForCausalLM
    elif a.family == "llama":
        cfg = LlamaConfig(**dict(common, rms_norm_eps=1e-5), hidden_act="silu", mlp_bias=False,
                          **LLAMA_SHAPES[a.shape])
        model_class = LlamaForCausalLM
    else:
        cfg = Gemma2Config(**gemma, **SHAPES[a.shape])
        model_class = Gemma2ForCausalLM
    cfg._attn_implementation = "eager"
    model = model_class(cfg).float().eval()
    # Gemma stores its norms as the offset from one, the others as the weight itself.
    norm_centre = 0.0 if a.family.startswith("gemma") else 1.0
    with torch.no_grad():
        for n, p in model.named_parameters():
            # Random norm weights too, so that each family's RMSNorm weight is exercised.
            if "norm" in n:
                p.copy_(norm_centre + torch.randn_like(p) * 0.3)
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)

    ids, mask, labels = inputs(cfg.vocab_size, b, t)
    with torch.no_grad():
        base_logits = model(input_ids=ids, attention_mask=mask).logits.float()

    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                      task_type="CAUSAL_LM", target_modules=TARGETS)
    pm = get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:  # PEFT starts B at zero, which would test nothing
                p.copy_(torch.randn_like(p) * 0.05)
    pm.train()  # dropout is 0: train mode changes nothing numerically
    logits = pm(input_ids=ids, attention_mask=mask).logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=-100)
    loss.backward()

    out = {"input_ids": ids, "attention_mask": mask, "labels": labels,
           "base_logits": base_logits, "lora_logits": logits.detach(),
           "lora_loss": loss.detach().reshape(())}
    for n, p in pm.named_parameters():
        if p.grad is not None:
            out["grad." + n.replace(".default", "")] = p.grad.detach().float()
    pm.eval()
    prompt = ids[0, :6].clone()
    with torch.no_grad():
        g = pm.generate(input_ids=prompt[None], attention_mask=torch.ones(1, 6, dtype=torch.long),
                        max_new_tokens=12, min_new_tokens=12, do_sample=False)
    out["gen_prompt"] = prompt
    out["gen_greedy"] = g[0, 6:].clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(a.out, "io.safetensors"))
    hub_spelling(os.path.join(a.out, "config.json"), a.family, a.shape)
    if a.family != "gemma2":
        # The Hub spelling must mean the same model to transformers as the config it came from.
        again = model_class.from_pretrained(a.out, attn_implementation="eager").float().eval()
        layer_types = getattr(cfg, "layer_types", None)
        assert getattr(again.config, "layer_types", None) == layer_types, again.config
        assert again.config.tie_word_embeddings == cfg.tie_word_embeddings
        assert again.config.rope_parameters == cfg.rope_parameters, again.config.rope_parameters
        with torch.no_grad():
            assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, base_logits)
    adir = os.path.join(a.out, "adapter")
    pm.save_pretrained(adir)
    os.remove(os.path.join(adir, "README.md"))  # PEFT's empty model card
    # PEFT writes target_modules from a set, in an order that changes between runs.
    with open(os.path.join(adir, "adapter_config.json")) as f:
        ac = json.load(f)
    ac["target_modules"] = sorted(ac["target_modules"])
    with open(os.path.join(adir, "adapter_config.json"), "w") as f:
        json.dump(ac, f, indent=2, sort_keys=True)
        f.write("\n")

    with open(os.path.join(a.out, "README.md"), "w") as f:
        title = {"gemma2": "Gemma-2", "gemma3": "Gemma-3 (text)", "qwen3": "Qwen3",
                 "llama": "Llama-3"}[a.family]
        f.write(f"# {title} parity fixture\n\nMade by `scripts/make_fixture.py` "
                "(see GENERATED.md). Files:\n\n```\n")
        f.write(__doc__.split("Files written into OUT_DIR:\n")[1].rstrip() + "\n```\n")
        f.write(f"\nshape {a.shape}, seed {a.seed}, lora_loss {loss.item():.6f}\n")
    versions = {p: md.version(p) for p in ("torch", "transformers", "peft", "safetensors")}
    with open(os.path.join(a.out, "GENERATED.md"), "w") as f:
        f.write("# How this fixture was made\n\n")
        family = "" if a.family == "gemma2" else f" --family {a.family}"
        f.write(f"Command, from the repository root:\n\n    python scripts/make_fixture.py "
                f"{os.path.relpath(a.out)}{family} --seed {a.seed} --shape {a.shape}\n\n")
        f.write(f"Python {platform.python_version()} on {platform.machine()}, CPU, float32, "
                "eager attention, one thread.\n\n")
        f.writelines(f"- {k} {v}\n" for k, v in versions.items())
    print(f"{a.out}: lora_loss {loss.item():.6f}, "
          f"{sum(k.startswith('grad.') for k in out)} LoRA gradients", file=sys.stderr)


if __name__ == "__main__":
    main()
