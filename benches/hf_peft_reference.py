#!/usr/bin/env python3
"""The reference for `socratune bench train`: LoRA training throughput of Hugging Face
transformers + PEFT doing exactly the same work, printed as one JSON line with the same keys.

The work (keep it in step with src/train/bench.rs):
  - Gemma2ForCausalLM with random weights, of a preset shape (PRESETS, the shapes of
    `Gemma2Config::preset`), eager attention (Gemma-2's logit soft-capping needs it)
  - LoRA r=16, alpha=32, dropout 0, on q, k, v, o, gate, up and down projections
  - AdamW, lr 1e-4, betas (0.9, 0.999), eps 1e-8, no weight decay
  - B sequences of T random tokens a step, no padding, the first 40% of each sequence
    masked with -100 (the "user turn"), the loss on the rest
  - float32 on the CPU; on CUDA, bfloat16 base weights and float32 LoRA parameters

Usage: python benches/hf_peft_reference.py [--preset small] [--steps 10] [--warmup 2]
           [--device cpu|cuda] [--batch B] [--seq T] [--threads N]
benches/compare.sh runs it right after socratune and prints the ratios.
"""
import argparse
import importlib.metadata as md
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma2Config, Gemma2ForCausalLM

# vocab, hidden, intermediate, layers, heads, kv heads, head_dim; then B, T
PRESETS = {
    "tiny": ((384, 64, 160, 4, 4, 2, 16), (2, 64)),
    "small": ((32000, 512, 2048, 6, 8, 4, 64), (4, 256)),
    "gemma-2-2b": ((256000, 2304, 9216, 26, 8, 4, 256), (8, 512)),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def config(preset):
    (v, h, i, layers, heads, kv, d), _ = PRESETS[preset]
    cfg = Gemma2Config(vocab_size=v, hidden_size=h, intermediate_size=i,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, head_dim=d, query_pre_attn_scalar=d,
                       sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
                       max_position_embeddings=8192, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, bos_token_id=2, eos_token_id=[1, 107],
                       pad_token_id=0)
    cfg._attn_implementation = "eager"
    return cfg


def main():
    ap = argparse.ArgumentParser(description="transformers + PEFT LoRA training throughput")
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.steps < 1:
        ap.error("--steps must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    b, t = a.batch or PRESETS[a.preset][1][0], a.seq or PRESETS[a.preset][1][1]
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32

    torch.manual_seed(0)
    cfg = config(a.preset)
    model = Gemma2ForCausalLM(cfg).to(dtype=dtype, device=dev)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             task_type="CAUSAL_LM", target_modules=TARGETS))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA parameters stay f32 over a bf16 base
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (b, t), generator=gen).to(dev)
    labels = ids.clone()
    labels[:, : int(t * 0.4)] = -100

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    loss = loss.item()  # waits for the device
    dt = time.perf_counter() - start
    # CPU: the process's resident high-water mark, as socratune reports (ru_maxrss is in KiB).
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({
        "impl": "transformers+peft", "torch": torch.__version__,
        "transformers": md.version("transformers"), "peft": md.version("peft"),
        "preset": a.preset, "device": dev.type, "dtype": "bf16" if cuda else "f32",
        "batch": b, "seq": t, "steps": a.steps,
        "tokens_per_s": round(b * t * a.steps / dt, 1), "s_per_step": round(dt / a.steps, 4),
        "peak_mem_bytes": int(peak), "loss": round(loss, 4), "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
