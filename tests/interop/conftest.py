"""Shared fixtures of the interop layer: the socratune binary, a tiny base model of each
family (the repository's parity fixtures), tokenized data and a trained adapter, all made in
pytest's temporary folders (no downloads). Every test that uses `base_model` runs once per
family.

Environment: SOCRATUNE_BIN (the binary under test), SOCRATUNE_ROOT (the repository).
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(os.environ.get("SOCRATUNE_ROOT", Path(__file__).resolve().parents[2]))
BIN = Path(os.environ.get("SOCRATUNE_BIN", ROOT / "target" / "release" / "socratune"))
FIXTURES = ROOT / "tests" / "fixtures"
# Gemma-2 (sandwich norms, soft-caps), Qwen3 (q/k norms, tied head), Llama-3 (llama3 RoPE
# scaling, untied head): tests/fixtures/{family}-tiny.
FAMILIES = ["gemma2", "qwen3", "llama"]

# One thread: the figures are reproducible, and the machine's other cores stay free.
torch.set_num_threads(1)


FIGURES = []


def figure(line, base_model=None):
    """Records a check's measured figure (naming the family of `base_model`, the folder
    `base_model` made); all are printed at the end of the run."""
    FIGURES.append(line if base_model is None else f"[{base_model.name}] {line}")


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("interop figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def socratune(*args, timeout=600):
    """Runs the binary; returns its stdout, or fails the test with its stderr."""
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        pytest.fail(f"socratune {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr}")
    return r.stdout


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def hf_loss(model, examples):
    """Token-weighted cross-entropy as Hugging Face computes it (labels shifted left by one),
    summed over every supervised token of every example, then divided once."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor(ex["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].double()
            total += torch.nn.functional.cross_entropy(
                logits, labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.fixture(scope="session", params=FAMILIES)
def base_model(request, tmp_path_factory):
    """The repository's tiny random model of one family (Hub spelling of config.json), copied."""
    if not BIN.is_file():
        pytest.fail(f"no socratune binary at {BIN}: cargo build --release first")
    d = tmp_path_factory.mktemp(request.param, numbered=False)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(FIXTURES / f"{request.param}-tiny" / name, d / name)
    return d


@pytest.fixture(scope="session")
def data(base_model, tmp_path_factory):
    """train.jsonl / val.jsonl in socratune's format: BOS, then a repeated motif (learnable),
    the first 40% masked as the "user turn"; lengths vary so batches carry padding."""
    vocab = json.loads((base_model / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(3)
    d = tmp_path_factory.mktemp("data")
    for name, n in (("train.jsonl", 24), ("val.jsonl", 8)):
        with open(d / name, "w") as f:
            for i in range(n):
                length = 20 + i % 5
                motif = torch.randint(3, vocab, (4,), generator=g).tolist()
                ids = [2] + [motif[k % 4] for k in range(1, length)]
                labels = [-100 if k < length * 2 // 5 else t for k, t in enumerate(ids)]
                f.write(json.dumps({"id": f"{name}-{i}", "input_ids": ids, "labels": labels}) + "\n")
    return d


@pytest.fixture(scope="session")
def trained_run(base_model, data, tmp_path_factory):
    """A socratune LoRA run on the data: best/ adapter and summary.json."""
    run = tmp_path_factory.mktemp("run") / "run"
    config = run.parent / "train.toml"
    config.write_text("# every option at its default unless a flag says otherwise\n")
    socratune("train", "--data", data, "--out", run, "--model", base_model, "--config", config,
              "--device", "cpu", "--dtype", "f32", "--max-steps", 8, "--micro-batch", 4,
              "--grad-accum", 1, "--eval-every", 4, "--save-every", 4, "--eval-batch", 3,
              "--lora-r", 4, "--lora-alpha", 8, "--lora-dropout", 0, "--lr", 1e-2,
              "--max-seq-len", 64)
    return run


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A byte-level BPE made by `socratune data tokenizer` from the shipped sample dialogues,
    with the fixture's vocabulary size."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    socratune("data", "tokenizer", "--dialogues", ROOT / "data" / "dialogues" / "sample.jsonl",
              "--vocab-size", 384, "--out", out)
    return out
