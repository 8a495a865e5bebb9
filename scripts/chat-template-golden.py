"""Regenerates data/chat-templates/golden.json: every template in data/chat-templates/templates.json
rendered by HF transformers (the renderer behind `apply_chat_template`) on a few conversations,
with the assistant turn opened. A template that refuses a conversation (raise_exception) is
recorded with its error. `date_string` is fixed so that date-stamped templates are reproducible.

    pip install transformers==4.57.1 && python3 scripts/chat-template-golden.py
"""
import json
import pathlib

import transformers
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parent.parent / "data" / "chat-templates"
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "You are a helpful assistant"},
     {"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi there"},
     {"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "You are a helpful assistant"},
     {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "   I am an assistant   "},
     {"role": "user", "content": "Another question\nwith two lines"}],
]
DATE = "26 Jul 2024"

templates = json.loads((ROOT / "templates.json").read_text())
cases = []
for name, t in templates.items():
    source = (ROOT / t["file"]).read_text()
    for conversation in CONVERSATIONS:
        case = {"template": name, "messages": conversation}
        try:
            rendered, _ = render_jinja_template(
                conversations=[conversation], chat_template=source, add_generation_prompt=True,
                bos_token=t["bos_token"], eos_token=t["eos_token"], date_string=DATE)
            case["rendered"] = rendered[0]
        except Exception as e:  # the template refuses this conversation
            case["error"] = str(e)
        cases.append(case)
out = {"generator": f"transformers {transformers.__version__} render_jinja_template",
       "date_string": DATE, "cases": cases}
(ROOT / "golden.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
print(f"wrote {len(cases)} cases")
