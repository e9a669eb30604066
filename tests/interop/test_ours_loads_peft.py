"""(c) The reverse: an adapter trained by PEFT loads in socratune, and `model score` matches
transformers on the same data."""
import json

import torch
from conftest import figure, hf_loss, read_jsonl, rel, socratune
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

TOLERANCE = 1e-5  # relative
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_model_score_matches_transformers_on_a_peft_adapter(base_model, data, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype="float32",
                                                 attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for ex in read_jsonl(data / "train.jsonl")[:12]:
        loss = model(input_ids=torch.tensor([ex["input_ids"]]),
                     labels=torch.tensor([ex["labels"]])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    adapter = tmp_path / "peft-adapter"
    model.save_pretrained(adapter)
    val = read_jsonl(data / "val.jsonl")
    theirs = hf_loss(model, val)
    out = json.loads(socratune("model", "score", "--model", base_model, "--adapter", adapter,
                               "--data", data / "val.jsonl", "--device", "cpu", "--json"))
    assert out["examples"] == len(val)
    assert out["tokens"] == sum(sum(l != -100 for l in ex["labels"][1:]) for ex in val)
    figure(f"(c) PEFT-trained adapter, val loss: transformers {theirs:.8f}, "
          f"socratune model score {out['loss']:.8f}, relative difference "
          f"{rel(out['loss'], theirs):.2e} (tolerance {TOLERANCE:.0e})", base_model)
    assert rel(out["loss"], theirs) <= TOLERANCE
