"""Drives `tritium serve` with PyPI's official `openai` client: a chat completion, the same one
streamed (its deltas must join to the same text), and a legacy completion with logprobs.
Usage: python3 openai_client.py BASE_URL (e.g. http://127.0.0.1:8080/v1); the key is k-123."""

import sys

import openai
from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base, api_key="k-123", max_retries=0)

models = [m.id for m in client.models.list()]
assert models == ["m"], models

messages = [{"role": "user", "content": "Tell me a story."}]
extra = {"ignore_eos": True}
whole = client.chat.completions.create(
    model="m", messages=messages, max_tokens=16, temperature=0, extra_body=extra
)
text = whole.choices[0].message.content
assert whole.choices[0].finish_reason == "length", whole
assert whole.usage.completion_tokens == 16, whole.usage
assert isinstance(text, str) and text, whole

stream = client.chat.completions.create(
    model="m", messages=messages, max_tokens=16, temperature=0, stream=True, extra_body=extra
)
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    usage = getattr(chunk, "usage", None) or usage
assert "".join(pieces) == text, ("".join(pieces), text)
assert finish == "length", finish
assert usage is not None and usage.completion_tokens == 16, usage

done = client.completions.create(
    model="m", prompt="Once upon", max_tokens=4, temperature=0, logprobs=2, echo=True
)
lp = done.choices[0].logprobs
assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(lp.tokens), lp
assert done.choices[0].text.startswith("Once upon"), done

# A wrong key is the client's AuthenticationError.
try:
    OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print("openai client: ok")
