"""GGUF export checked with the real tools: the `gguf` package reads every key and tensor
back, and llama.cpp (llama-cpp-python) loads every quantization and computes what our merged
model computes.

Self-contained: reads SOCRATUNE_BIN and SOCRATUNE_ROOT, and makes everything in tmp_path: a
tokenizer (`socratune data tokenizer`), a small random Gemma-2 (transformers) whose query
scale differs from llama.cpp's fixed one, and a PEFT adapter with non-zero weights.
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
llama_cpp = pytest.importorskip("llama_cpp")

ROOT = Path(os.environ.get("SOCRATUNE_ROOT", Path(__file__).resolve().parents[2]))
BIN = Path(os.environ.get("SOCRATUNE_BIN", ROOT / "target" / "release" / "socratune"))
QUANTS = ["f16", "bf16", "q8_0", "q4_0", "q4_k_m"]
LAYERS = 4
OPENING = "正義とは何だろうか？"


def socratune(*args, stdin=""):
    r = subprocess.run(
        [str(BIN), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, f"socratune {' '.join(map(str, args))}: {r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The base model, its adapter, the merged safetensors export and every GGUF file."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(
        # Rows of 256 so that q4_k_m uses real k-quants; a vocabulary larger than the
        # tokenizer's (padded, as Gemma's is).
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        # Not head_dim: the export must fold the difference into attn_q.
        query_pre_attn_scalar=48,
        sliding_window=16, max_position_embeddings=256,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        bos_token_id=2, eos_token_id=[1, 107], pad_token_id=0,
    )
    return build(tmp_path_factory.mktemp("gguf"), transformers.Gemma2ForCausalLM(cfg), QUANTS)


def build(tmp, model, quants):
    """Saves `model` with a tokenizer, makes a random PEFT adapter for it, and exports the
    merged model as safetensors and as GGUF in each of `quants`."""
    base = tmp / "base"
    base.mkdir()
    socratune(
        "data", "tokenizer",
        "--dialogues", ROOT / "data" / "dialogues" / "sample.jsonl",
        "--out", base / "tokenizer.json",
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Around Gemma's 0 (it stores 1 + w) or the others' 1.
                p.normal_(0.0 if model.config.model_type == "gemma2" else 1.0, 0.2)
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                # As the demo's random model: a residual stream the layers steer rather than
                # drown, so that next-token predictions are decided, not near-ties that any
                # rounding flips (a real model's margins are larger still).
                p.normal_(0.0, 0.3)
    model.save_pretrained(base)
    lora = peft.LoraConfig(
        r=8, lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random B too, so the merge changes the model
    )
    tuned = peft.get_peft_model(model, lora)
    tuned.save_pretrained(tmp / "adapter")
    # The adapter names its base by the path it was loaded from.
    cfg_path = tmp / "adapter" / "adapter_config.json"
    import json

    ac = json.loads(cfg_path.read_text())
    ac["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(ac))

    socratune("export", "--adapter", tmp / "adapter", "--out", tmp / "merged", "--dtype", "f32")
    files = {}
    for q in quants:
        out = tmp / "gguf" / f"tiny.{q}.gguf"
        socratune("export", "--format", "gguf", "--quant", q, "--adapter", tmp / "adapter", "--out", out)
        files[q] = out
    return {"tmp": tmp, "base": base, "adapter": tmp / "adapter", "merged": tmp / "merged", "gguf": files}


def reference_logits(merged, ids):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        merged, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


def fixed_prompt():
    """64 positions: BOS then ordinary tokens (ids past the specials), seeded."""
    rng = np.random.default_rng(0)
    return [2] + [int(i) for i in rng.integers(108, 384, 63)]


def llama(path):
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0
    )


def llama_logits(path, ids):
    llm = llama(path)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("quant", QUANTS)
def test_gguf_reads_back_every_key_and_tensor(made, quant):
    r = gguf.GGUFReader(made["gguf"][quant])
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "gemma2"
    want = {
        "gemma2.context_length": 256, "gemma2.embedding_length": 256, "gemma2.block_count": LAYERS,
        "gemma2.feed_forward_length": 512, "gemma2.attention.head_count": 4,
        "gemma2.attention.head_count_kv": 2, "gemma2.attention.key_length": 64,
        "gemma2.attention.value_length": 64, "gemma2.attention.sliding_window": 16,
        "gemma2.attn_logit_softcapping": 50.0, "gemma2.final_logit_softcapping": 30.0,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.eot_token_id": 107,
        "tokenizer.ggml.add_bos_token": True,
    }
    for k, v in want.items():
        assert f[k] == pytest.approx(v), k
    assert f["gemma2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == 512 and tokens[107] == "<end_of_turn>" and tokens[511] == "[PAD511]"
    assert len(f["tokenizer.ggml.token_type"]) == 512
    assert len(f["tokenizer.ggml.merges"]) > 0
    assert "<start_of_turn>" in f["tokenizer.chat_template"]

    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]
    names = {t.name: t for t in r.tensors}
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(LAYERS) for n in per_layer
    }
    assert set(names) == expected
    # GGUF lists dimensions fastest first: (in, out) for a PyTorch (out, in) weight.
    assert list(names["token_embd.weight"].shape) == [256, 512]
    assert list(names["blk.0.attn_k.weight"].shape) == [256, 128]
    assert list(names["blk.0.ffn_down.weight"].shape) == [512, 256]
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_q4_k_m_follows_llama_cpp_mixture(made):
    r = gguf.GGUFReader(made["gguf"]["q4_k_m"])
    t = {x.name: x.tensor_type.name for x in r.tensors}
    assert t["token_embd.weight"] == "Q6_K"
    assert t["blk.1.attn_q.weight"] == "Q4_K"
    # use_more_bits(i, 4): i >= 7*4/8, or (i - 4/8) % 3 == 2: layers 2 and 3.
    more = ["Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert [t[f"blk.{i}.attn_v.weight"] for i in range(LAYERS)] == more
    assert [t[f"blk.{i}.ffn_down.weight"] for i in range(LAYERS)] == more


def test_the_norms_carry_gemmas_one_plus_w(made):
    from safetensors.numpy import load_file

    r = gguf.GGUFReader(made["gguf"]["f16"])
    norm = next(x for x in r.tensors if x.name == "blk.0.attn_norm.weight")
    w = load_file(made["merged"] / "model.safetensors")["model.layers.0.input_layernorm.weight"]
    np.testing.assert_allclose(np.asarray(norm.data), w + 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("quant", QUANTS)
def test_llama_cpp_loads_every_quantization(made, quant):
    got = llama_logits(made["gguf"][quant], fixed_prompt()[:8])
    assert got.shape == (8, 512) and np.isfinite(got).all()


def test_f16_logits_match_the_merged_model(made):
    ids = fixed_prompt()
    ref = reference_logits(made["merged"], ids)
    got = llama_logits(made["gguf"]["f16"], ids)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel <= 1e-2, f"f16: max relative difference {rel}"
    # The adapter is in: the base model alone is far further away.
    base = reference_logits(made["base"], ids)
    assert np.abs(base - ref).max() > 20 * np.abs(got - ref).max()


def test_q8_0_top1_agrees_with_the_merged_model(made):
    ids = fixed_prompt()
    ref = reference_logits(made["merged"], ids)
    got = llama_logits(made["gguf"]["q8_0"], ids)
    agree = (got.argmax(-1) == ref.argmax(-1)).mean()
    assert agree >= 0.99, f"q8_0: top-1 agreement {agree:.3f} over {len(ids)} positions"


@pytest.mark.parametrize("quant", ["q4_0", "q4_k_m"])
def test_4_bit_top1_mostly_agrees(made, quant):
    ids = fixed_prompt()
    ref = reference_logits(made["merged"], ids)
    got = llama_logits(made["gguf"][quant], ids)
    agree = (got.argmax(-1) == ref.argmax(-1)).mean()
    assert agree >= 0.9, f"{quant}: top-1 agreement {agree:.3f} over {len(ids)} positions"


def test_f16_greedy_generation_equals_socratune_chat(made):
    """16 greedy tokens after the opening, in the trained chat format: llama.cpp's text must be
    socratune's, which also checks that llama.cpp tokenizes the prompt as we do."""
    out = socratune(
        "chat", "--adapter", made["adapter"], "--device", "cpu", "--temperature", "0",
        "--max-new-tokens", "16", "--opening", OPENING,
    )
    # stdout: `<label>: <opening> <reply>`.
    line = out.splitlines()[0]
    ours = line.split(OPENING, 1)[1].strip()

    llm = llama(made["gguf"]["f16"])
    prompt = f"<bos><start_of_turn>user\n{OPENING}<end_of_turn>\n<start_of_turn>model\n"
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.eval(ids)
    stops = {llm.token_eos(), 107}
    new = []
    for _ in range(16):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if nxt in stops:
            break
        new.append(nxt)
        llm.eval([nxt])
    theirs = llm.detokenize(new).decode("utf-8", errors="replace").strip()
    assert theirs == ours, f"llama.cpp {theirs!r} != socratune {ours!r}"


def test_sentencepiece_vocab_tokenizes_as_sentencepiece(tmp_path):
    """Gemma's own tokenizer path (tokenizer.model → llama vocabulary with scores and types):
    llama.cpp must split text exactly as SentencePiece does (the `sentencepiece` package, pinned
    in requirements.txt, trains a small model like Gemma's: BPE, byte fallback, no dummy prefix)."""
    import json

    import sentencepiece as spm
    sample = ROOT / "data" / "dialogues" / "sample.jsonl"
    lines = [t["text"] for l in sample.read_text().splitlines() if l.strip() for t in json.loads(l)["turns"]]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines))
    base = tmp_path / "base"
    base.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(base / "tokenizer"), model_type="bpe",
        vocab_size=2048, byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        control_symbols=["<start_of_turn>", "<end_of_turn>"], add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(
        vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=16, max_position_embeddings=256, bos_token_id=2, eos_token_id=1,
        pad_token_id=0,
    )
    model = transformers.Gemma2ForCausalLM(cfg)
    model.save_pretrained(base)
    peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "adapter"
    )
    out = tmp_path / "spm.gguf"
    socratune("export", "--format", "gguf", "--quant", "f16", "--model", base,
              "--adapter", tmp_path / "adapter", "--out", out)
    f = {k: v.contents() for k, v in gguf.GGUFReader(out).fields.items() if k.startswith("tokenizer.")}
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.add_space_prefix"] is False
    assert f["tokenizer.ggml.token_type"][4] == 3  # <start_of_turn>: control

    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    samples = lines[:200] + ["Hello  world 12345 🦙 tab\there", "x\n\n  y"]
    for s in samples:
        assert llm.tokenize(s.encode(), add_bos=False, special=False) == sp.encode(s), s
    assert llm.tokenize(b"<start_of_turn>user", add_bos=True, special=True)[:2] == [2, 4]


# Qwen3 (q/k norms, tied head, llama.cpp's NeoX RoPE) and Llama-3 (untied head as output.weight,
# query/key rows permuted for llama.cpp's pairwise RoPE, llama3 scaling as rope_freqs), in
# llama.cpp's `qwen3` and `llama` architectures.
FAMILY_CONFIGS = {
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0)),
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
        # Wavelengths from 6 to 4·10⁴ positions: all three bands of the scaling are used.
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
        tie_word_embeddings=False, bos_token_id=2, eos_token_id=1, pad_token_id=0)),
}


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def family_made(request, tmp_path_factory):
    torch.manual_seed(0)
    model = FAMILY_CONFIGS[request.param]()
    return request.param, build(tmp_path_factory.mktemp(f"gguf-{request.param}"), model,
                                ["f16", "q8_0", "q4_k_m"])


def test_family_gguf_has_its_architecture_and_tensors(family_made):
    family, made = family_made
    r = gguf.GGUFReader(made["gguf"]["f16"])
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == family
    for k, v in {"block_count": LAYERS, "embedding_length": 256, "attention.head_count": 4,
                 "attention.head_count_kv": 2, "rope.dimension_count": 64,
                 "rope.freq_base": 10000.0}.items():
        assert f[f"{family}.{k}"] == pytest.approx(v), k
    names = {t.name: t for t in r.tensors}
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                 "ffn_gate", "ffn_up", "ffn_down"]
    if family == "qwen3":
        per_layer += ["attn_q_norm", "attn_k_norm"]
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(LAYERS) for n in per_layer}
    if family == "llama":
        expected |= {"output.weight", "rope_freqs.weight"}
        freqs = np.asarray(names["rope_freqs.weight"].data)
        assert freqs.shape == (32,) and freqs[0] == 1.0 and freqs[-1] == pytest.approx(8.0)
        assert ((freqs > 1.0) & (freqs < 8.0)).any()
    assert set(names) == expected
    q4 = {x.name: x.tensor_type.name for x in gguf.GGUFReader(made["gguf"]["q4_k_m"]).tensors}
    # The output projection takes Q6_K, whichever tensor it is.
    out = "output.weight" if family == "llama" else "token_embd.weight"
    assert q4[out] == "Q6_K"


def test_family_f16_logits_match_the_merged_model(family_made):
    family, made = family_made
    ids = fixed_prompt()
    ref = reference_logits(made["merged"], ids)
    got = llama_logits(made["gguf"]["f16"], ids)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"{family} f16 GGUF vs merged model: max |Δlogit| / max |logit| = {rel:.2e}")
    assert rel <= 1e-2, f"{family} f16: max relative difference {rel}"
    base = reference_logits(made["base"], ids)
    assert np.abs(base - ref).max() > 20 * np.abs(got - ref).max()
    # A random model has near-ties that 8-bit rounding may flip: one or two of 64 positions.
    # In Q4_K_M an untied embedding (Llama's) is 4-bit too, as llama.cpp makes it, and a random
    # model's thin margins flip far more (0.61 measured for Llama, 0.98 for tied Qwen3); chance
    # is 1/512, so a wrong layout would still fail.
    floor4 = 0.5 if family == "llama" else 0.9
    for quant, floor in (("q8_0", 0.95), ("q4_k_m", floor4)):
        agree = (llama_logits(made["gguf"][quant], ids).argmax(-1) == ref.argmax(-1)).mean()
        print(f"{family} {quant} GGUF: top-1 agreement {agree:.3f} over {len(ids)} positions")
        assert agree >= floor, f"{family} {quant}: top-1 agreement {agree:.3f}"
