"""Checks `s4c serve` with the official `openai` client (see openai-client-check.sh)."""
import sys

import openai

url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=url + "/v1", api_key=key)
model = client.models.list().data[0].id
messages = [{"role": "user", "content": "Write a story about the animals that live in the sea."}]

whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
text = whole.choices[0].message.content
assert whole.usage.completion_tokens == 24, whole.usage
assert whole.choices[0].finish_reason == "length", whole.choices[0]

# Streamed, the same text; the usage comes last.
chunks = list(client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=24, stream=True,
    stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage.completion_tokens == 24

# A stop string: the text up to it, finish_reason "stop".
word = text.split()[len(text.split()) // 2]
cut = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=24, stop=[word])
assert cut.choices[0].message.content == text[:text.index(word)], (cut, word)
assert cut.choices[0].finish_reason == "stop"

# Text completion, whole and streamed.
c = client.completions.create(model=model, prompt="The ocean is", temperature=0, max_tokens=12)
s = "".join(x.choices[0].text for x in client.completions.create(
    model=model, prompt="The ocean is", temperature=0, max_tokens=12, stream=True))
assert c.choices[0].text == s, (c, s)

# Errors arrive as the client's exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=4)
    raise AssertionError("empty messages were accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

print(f"openai {openai.__version__}: chat, stream, stop, completions and errors as expected")
