"""(b) transformers loads socratune's merged export (f32 and bf16), and its logits match
PEFT's merge_and_unload() of the same adapter; configs made from scratch pass transformers'
strict type validation too."""
import json

import pytest
import torch
from conftest import figure, read_jsonl, socratune
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

TOLERANCE = {"f32": 1e-5, "bf16": 3e-2}  # max |Δlogit| / max |logit|


@pytest.fixture(scope="module")
def merged_by_peft(base_model, trained_run):
    m = AutoModelForCausalLM.from_pretrained(base_model, dtype="float32",
                                             attn_implementation="eager")
    return PeftModel.from_pretrained(m, trained_run / "best").merge_and_unload().eval()


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_export_loads_and_matches_merge_and_unload(dtype, base_model, data, trained_run,
                                                   merged_by_peft, tmp_path):
    out = tmp_path / f"export-{dtype}"
    socratune("export", "--adapter", trained_run / "best", "--model", base_model,
              "--out", out, "--dtype", dtype)
    base_cfg = json.loads((base_model / "config.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k not in ("dtype", "torch_dtype")} == \
        {k: v for k, v in base_cfg.items() if k not in ("dtype", "torch_dtype")}
    ours = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    want = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert next(ours.parameters()).dtype == want
    ids = torch.tensor([read_jsonl(data / "val.jsonl")[0]["input_ids"]])
    with torch.no_grad():
        got = ours.float()(input_ids=ids).logits
        ref = merged_by_peft(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_model, dtype="float32")(input_ids=ids).logits
    # The adapter moves the logits far more than the f32 tolerance: the check means something.
    effect = ((base - ref).abs().max() / ref.abs().max()).item()
    assert effect > 1000 * TOLERANCE["f32"]
    d = ((got - ref).abs().max() / ref.abs().max()).item()
    figure(f"(b) {dtype} export vs PEFT merge_and_unload: max |Δlogit| / max |logit| = {d:.2e} "
          f"(tolerance {TOLERANCE[dtype]:.0e}; the adapter itself moves them by {effect:.2e})", base_model)
    assert d <= TOLERANCE[dtype]


def test_configs_made_from_scratch_pass_strict_validation(base_model, tmp_path):
    # `model info --json` writes the typed config, as the demo's base model and presets do.
    cfg = json.loads(socratune("model", "info", "--model", base_model, "--json"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = AutoConfig.from_pretrained(tmp_path)
    base = json.loads((base_model / "config.json").read_text())
    assert loaded.model_type == base["model_type"]
    if "query_pre_attn_scalar" in base:  # Gemma: declared int, and 16.0 is refused
        assert loaded.query_pre_attn_scalar == 20
        assert isinstance(loaded.query_pre_attn_scalar, int)
    for key in ("tie_word_embeddings", "num_key_value_heads", "head_dim"):
        assert getattr(loaded, key) == base[key], key
    # Either RoPE spelling must mean the base model's RoPE.
    assert loaded.rope_parameters == AutoConfig.from_pretrained(base_model).rope_parameters
