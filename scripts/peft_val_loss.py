#!/usr/bin/env python3
"""Cross-check a socratune adapter with Hugging Face transformers + PEFT.

Loads the base model and the adapter folder (PEFT format, as `socratune train` writes
`adapter/` and `best/`), computes the token-weighted validation loss on a tokenized
`val.jsonl` (input_ids, labels aligned as in Hugging Face), and prints it next to the value
socratune reported (`summary.json` in the run folder, when given).

Usage: peft_val_loss.py --model BASE_DIR --adapter RUN/best --data RUN/data/val.jsonl [--summary RUN/summary.json]
Needs: torch, transformers, peft (pip install torch transformers peft).
"""
import argparse, json
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--summary")
    ap.add_argument("--key", default="best_val_loss")
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, a.adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for line in open(a.data):
            ex = json.loads(line)
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            logits = model(input_ids=ids).logits.float()
            shift_logits, shift_labels = logits[0, :-1], labels[0, 1:]
            total += torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum").item()
            count += int((shift_labels != -100).sum())
    loss = total / count
    out = {"peft_val_loss": loss, "tokens": count}
    if a.summary:
        ours = json.load(open(a.summary))[a.key]
        out.update({"socratune_val_loss": ours, "abs_diff": abs(loss - ours)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
