"""(d) The official openai client against `socratune serve`: the models list, plain and
streamed completions equal under one seed, usage, and OpenAI-style 400 and 404 errors."""
import os
import re
import subprocess
import threading

import openai
import pytest
from conftest import BIN, figure


@pytest.fixture(scope="module")
def server(base_model, trained_run, family_tokenizer):
    p = subprocess.Popen([str(BIN), "serve", "--model", str(base_model), "--adapter",
                          str(trained_run / "best"), "--tokenizer", str(family_tokenizer),
                          "--device", "cpu", "--host", "127.0.0.1", "--port", "0",
                          "--name", "socrates"],
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seen, found = [], {}

    def read():  # the server names its address on stderr once it listens
        for line in p.stderr:
            seen.append(line)
            m = re.search(r"http://([0-9.]+:[0-9]+)", line)
            if m and "url" not in found:
                found["url"] = f"http://{m.group(1)}/v1"
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    ready.wait(120)
    if "url" not in found:
        p.kill()
        pytest.fail("socratune serve did not say where it listens:\n" + "".join(seen))
    yield found["url"]
    p.terminate()
    p.wait(30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "What is justice?"}]


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["socrates"]
    assert client.models.retrieve("socrates").id == "socrates"


def test_plain_and_streamed_agree_under_one_seed(client):
    args = dict(model="socrates", messages=MESSAGES, max_tokens=12, temperature=0.9, seed=7)
    plain = client.chat.completions.create(**args)
    again = client.chat.completions.create(**args)
    text = plain.choices[0].message.content
    assert again.choices[0].message.content == text
    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    u = plain.usage
    figure(f"(d) seed 7: plain == streamed ({len(text)} chars), usage {u.prompt_tokens} prompt + "
          f"{u.completion_tokens} completion = {u.total_tokens}")
    assert streamed == text
    assert 0 < u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_errors_are_openai_style(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="socrates", messages=MESSAGES, temperature=-1)
    assert bad.value.status_code == 400 and "temperature" in str(bad.value)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
