"""Gemma-3 (text) exports checked with the real tools, on the repository's Gemma-3 fixture and
its PEFT adapter: transformers loads our merged safetensors export and computes PEFT's
merge_and_unload() logits; llama.cpp loads our GGUF (gemma3 architecture: q/k norms, local and
global RoPE bases, linear scaling, per-layer sliding pattern) and computes the same logits."""
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, figure, socratune
from peft import PeftModel
from transformers import AutoModelForCausalLM

llama_cpp = pytest.importorskip("llama_cpp")

FIXTURE = ROOT / "tests" / "fixtures" / "gemma3-tiny"


@pytest.fixture(scope="module")
def made(tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemma3")
    base = tmp / "base"
    base.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(FIXTURE / name, base / name)
    shutil.copy(tokenizer, base / "tokenizer.json")
    adapter = FIXTURE / "adapter"
    socratune("export", "--adapter", adapter, "--model", base, "--out", tmp / "merged",
              "--dtype", "f32")
    socratune("export", "--format", "gguf", "--quant", "f16", "--adapter", adapter,
              "--model", base, "--out", tmp / "m.f16.gguf")
    m = AutoModelForCausalLM.from_pretrained(base, dtype="float32", attn_implementation="eager")
    peft_merged = PeftModel.from_pretrained(m, adapter).merge_and_unload().eval()
    return {"merged": tmp / "merged", "gguf": tmp / "m.f16.gguf", "peft": peft_merged}


def prompt():
    """40 positions (longer than the sliding window of 7): BOS then ordinary tokens, seeded."""
    rng = np.random.default_rng(1)
    return [2] + [int(i) for i in rng.integers(108, 384, 39)]


def test_transformers_loads_our_gemma3_export(made):
    ours = AutoModelForCausalLM.from_pretrained(made["merged"], attn_implementation="eager").eval()
    assert type(ours).__name__ == "Gemma3ForCausalLM"
    ids = torch.tensor([prompt()])
    with torch.no_grad():
        got = ours(input_ids=ids).logits
        ref = made["peft"](input_ids=ids).logits
    d = ((got - ref).abs().max() / ref.abs().max()).item()
    figure(f"(gemma3) f32 export vs PEFT merge_and_unload: max |Δlogit| / max |logit| = {d:.2e}")
    assert d <= 1e-5


def test_llama_cpp_runs_our_gemma3_gguf(made):
    ids = prompt()
    llm = llama_cpp.Llama(model_path=str(made["gguf"]), n_ctx=256, logits_all=True,
                          verbose=False, n_threads=2, seed=0)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    with torch.no_grad():
        ref = made["peft"](input_ids=torch.tensor([ids])).logits[0].numpy()
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    figure(f"(gemma3) llama.cpp f16 GGUF vs transformers: max relative difference {rel:.1e}")
    assert rel <= 1e-2
