"""Each family's chat template as socratune renders it, against transformers'
`apply_chat_template` with a template that reproduces the family's official one for these
message shapes (system or not, 1-3 rounds, Japanese text): `data build` must write exactly
the ids transformers tokenizes, and `serve` must prompt with exactly as many tokens as the
template's generation prompt (`add_generation_prompt=True`). The tokenizers are made by
`socratune data tokenizer --template`; Llama-3's date is fixed through `date_string`, as
socratune fixes it."""
import json
import shutil
import subprocess

import pytest
from conftest import BIN, FIXTURES, ROOT, figure, socratune
from transformers import AutoTokenizer

# google/gemma-3-1b-it's template, text content only (Gemma-2's is the same without system).
GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Qwen/Qwen3-1.7B's template without tools: the think block only on replies after the last
# user message, and the empty one in the generation prompt when thinking is off.
QWEN3 = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)

# meta-llama/Llama-3.2-1B-Instruct's template without tools: a system header always, with the
# knowledge cutoff and the date (`date_string`, else today, else 26 Jul 2024).
LLAMA3 = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\n' }}"
    "{{- 'Today Date: ' + date_string + '\n\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

# template name → (official template, bos, eos, the model fixture of that family)
FAMILIES = {
    "gemma": (GEMMA, "<bos>", "<end_of_turn>", "gemma2"),
    "qwen3": (QWEN3, None, "<|im_end|>", "qwen3"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "llama"),
}
KWARGS = {"enable_thinking": False, "date_string": "26 Jul 2024"}
SYSTEM = "あなたは古代ギリシャの哲学者ソクラテスです。問い返してください。"

TEXTS = [
    ("正義とは何ですか？", "君はどう思うかね？まず君の考えを聞かせてくれたまえ。"),
    ("法に従うことだと思います。", "では、法が間違っていたらどうするのかね？"),
    ("それでも従うべきです、たぶん。", "「たぶん」と言ったね。その迷いはどこから来るのだろう？"),
]


def dialogue(i):
    """A judged, kept dialogue of three rounds (the texts rotated so dialogues differ)."""
    rounds = TEXTS[i % 3:] + TEXTS[:i % 3]
    turns = [t for u, m in rounds for t in ({"role": "user", "text": u},
                                            {"role": "model", "text": m})]
    return {"id": f"d{i:02}", "persona": "p001", "question": "q01", "user_temperature": 0.7,
            "turns": turns, "judge": {"socratic": 4, "coherence": 4, "comment": ""}}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("templates")
    dialogues = tmp / "dialogues.jsonl"
    dialogues.write_text("".join(json.dumps(dialogue(i), ensure_ascii=False) + "\n"
                                 for i in range(10)))
    variants = tmp / "variants"
    variants.mkdir()
    for rounds in (1, 2, 3):
        for system in (False, True):
            name = f"r{rounds}{'s' if system else ''}"
            text = f'name = "{name}"\npairs = 0\nutterances = {2 * rounds}\n'
            if system:
                text += f'system = "{SYSTEM}"\n'
            (variants / f"{name}.toml").write_text(text)
    out = {}
    for template, (jinja, bos, eos, _) in FAMILIES.items():
        d = tmp / template
        d.mkdir()
        socratune("data", "tokenizer", "--dialogues", dialogues, "--template", template,
                  "--vocab-size", 384, "--out", d / "tokenizer.json")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": jinja,
                  "eos_token": eos, "bos_token": bos}
        (d / "tokenizer_config.json").write_text(json.dumps(config))
        socratune("data", "build", "--all", "--dialogues", dialogues, "--variants", variants,
                  "--tokenizer", d / "tokenizer.json", "--out", d / "runs")
        out[template] = d
    return out


def fixture_base(family, tmp_path):
    """The family's parity fixture (config and weights, no tokenizer files) in tmp_path/base."""
    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(FIXTURES / f"{family}-tiny" / name, base / name)
    return base


def ids(rendered):
    """The token ids of `apply_chat_template(tokenize=True)`, a list or an encoding by version."""
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def messages(turns, system):
    roles = {"user": "user", "model": "assistant"}
    m = [{"role": "system", "content": system}] if system else []
    return m + [{"role": roles[t["role"]], "content": t["text"]} for t in turns]


@pytest.mark.parametrize("template", list(FAMILIES))
def test_data_build_writes_the_ids_transformers_renders(made, template):
    d = made[template]
    hf = AutoTokenizer.from_pretrained(d)
    by_id = {dialogue(i)["id"]: dialogue(i) for i in range(10)}
    checked = 0
    for variant in sorted(p.name for p in (d / "runs").iterdir()):
        rounds, system = int(variant[1]), variant.endswith("s")
        data = d / "runs" / variant / "data"
        for name in ("train.jsonl", "val.jsonl"):
            for line in (data / name).read_text().splitlines():
                r = json.loads(line)
                turns = by_id[r["dialogue"]]["turns"][:2 * rounds]
                want = ids(hf.apply_chat_template(
                    messages(turns, SYSTEM if system else None), tokenize=True, **KWARGS))
                assert r["input_ids"] == want, (template, variant, r["id"])
                # The loss is on replies only: every trained position holds its own id.
                assert all(l in (-100, i) for l, i in zip(r["labels"], r["input_ids"]))
                checked += 1
    assert checked == 60
    figure(f"[{template}] data build == apply_chat_template on {checked} examples (1-3 rounds, with and without system)")


@pytest.mark.parametrize("template", list(FAMILIES))
def test_serve_prompts_with_the_generation_prompt(made, template, tmp_path):
    """The prompt's token count that `serve` reports equals the template's generation prompt,
    for a conversation with a system message and for one without."""
    _, _, _, family = FAMILIES[template]
    d = made[template]
    base = fixture_base(family, tmp_path)
    hf = AutoTokenizer.from_pretrained(d)
    proc = subprocess.Popen([str(BIN), "serve", "--model", str(base), "--tokenizer",
                             str(d / "tokenizer.json"), "--device", "cpu", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        addr = None
        for line in proc.stderr:
            if "http://" in line:
                addr = "http://" + line.split("http://")[1].split("/v1")[0].strip()
                break
        assert addr, "serve printed no address"
        import urllib.request
        for system in (None, SYSTEM):
            turns = dialogue(1)["turns"][:3]
            msgs = messages(turns, system)
            body = json.dumps({"messages": msgs, "max_tokens": 1}).encode()
            req = urllib.request.Request(f"{addr}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            usage = json.load(urllib.request.urlopen(req, timeout=120))["usage"]
            want = ids(hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                              **KWARGS))
            assert usage["prompt_tokens"] == len(want), (template, system)
    finally:
        proc.kill()
        proc.wait()
    figure(f"[{template}] serve's prompt == apply_chat_template(add_generation_prompt=True) in length")


@pytest.mark.parametrize("template", list(FAMILIES))
def test_gguf_fallback_template_renders_the_trained_prompt(made, template, tmp_path):
    """A base without a chat template of its own is exported to GGUF with the family's
    fallback `tokenizer.chat_template`; rendered by transformers' Jinja, that template must
    give exactly the ids `data build` trained on (with and without a system message) and
    serve's generation prompt, or llama.cpp and Ollama users would prompt the model in a
    format it never saw."""
    gguf = pytest.importorskip("gguf")
    _, _, _, family = FAMILIES[template]
    d = made[template]
    base = fixture_base(family, tmp_path)
    # The tokenizer only: no tokenizer_config.json, so the export falls back.
    shutil.copy(d / "tokenizer.json", base / "tokenizer.json")
    # Export takes an adapter: PEFT's default one (B = 0) leaves the base unchanged.
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                        peft.LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "adapter")
    out = tmp_path / "model.gguf"
    socratune("export", "--format", "gguf", "--quant", "f16", "--model", base,
              "--adapter", tmp_path / "adapter", "--out", out)
    fields = gguf.GGUFReader(out).fields
    fallback = fields["tokenizer.chat_template"].contents()

    hf = AutoTokenizer.from_pretrained(d)
    official = hf.chat_template
    by_id = {dialogue(i)["id"]: dialogue(i) for i in range(10)}
    checked = 0
    for variant in sorted(p.name for p in (d / "runs").iterdir()):
        rounds, system = int(variant[1]), variant.endswith("s")
        for line in (d / "runs" / variant / "data" / "train.jsonl").read_text().splitlines():
            r = json.loads(line)
            msgs = messages(by_id[r["dialogue"]]["turns"][:2 * rounds], SYSTEM if system else None)
            hf.chat_template = fallback
            got = ids(hf.apply_chat_template(msgs, tokenize=True))
            assert got == r["input_ids"], (template, variant, r["id"])
            # The generation prompt after the last user turn, as the official template gives it.
            prompt = msgs[:-1]
            got = ids(hf.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True))
            hf.chat_template = official
            want = ids(hf.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                              **KWARGS))
            assert got == want, (template, variant, r["id"])
            checked += 1
    assert checked > 0
    figure(f"[{template}] GGUF fallback chat_template == data build on {checked} examples, "
           "and == the official generation prompt")
