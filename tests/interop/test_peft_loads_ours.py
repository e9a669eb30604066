"""(a) PEFT loads the adapter socratune trained and recomputes socratune's val loss."""
import json

from conftest import figure, hf_loss, read_jsonl, rel
from peft import PeftModel
from transformers import AutoModelForCausalLM

TOLERANCE = 1e-5  # relative


def test_peft_recomputes_our_val_loss(base_model, data, trained_run):
    ours = json.loads((trained_run / "summary.json").read_text())["best_val_loss"]
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype="float32",
                                                 attn_implementation="eager")
    model = PeftModel.from_pretrained(model, trained_run / "best").eval()
    theirs = hf_loss(model, read_jsonl(data / "val.jsonl"))
    figure(f"(a) val loss: socratune {ours:.8f}, PEFT {theirs:.8f}, "
          f"relative difference {rel(ours, theirs):.2e} (tolerance {TOLERANCE:.0e})", base_model)
    assert rel(ours, theirs) <= TOLERANCE
