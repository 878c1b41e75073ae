#!/usr/bin/env python3
"""The fixtures' chat templates (Qwen2.5, Qwen3, Llama 3), Llama 2's and Mistral Instruct's, and one of Python's case operations, rendered by llmserve against Jinja2 set up as
transformers' apply_chat_template sets it up (sandbox, trim_blocks, lstrip_blocks, loopcontrols, its
tojson and raise_exception; continue_final_message cut by transformers' rule), on random conversations:
system, user, assistant and tool messages, tool calls, tools, thinking, Unicode whitespace at the edges,
template syntax in contents, letters whose case mappings are not one to one (German sharp s, Greek sigma,
Turkish dotted I, titlecase digraphs, ligatures). Every rendering and every failure must agree.
Usage: chat_vs_jinja2.py RENDER_CHAT FIXTURES [CASES] [SEED]"""
import json, random, subprocess, sys

try:
    import jinja2, jinja2.ext
except ImportError:  # (PyPI; a Debian system Python needs --break-system-packages)
    if subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "jinja2"]).returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--break-system-packages", "jinja2"], check=True)
    import jinja2, jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

render_bin, fixtures = sys.argv[1], sys.argv[2]
n_cases = int(sys.argv[3]) if len(sys.argv) > 3 else 600
r = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

templates = {}
for name, path in [("qwen2.5", "models/tiny-qwen2"), ("qwen3", "chat/qwen3"), ("llama3", "models/tiny-llama3")]:
    cfg = json.load(open(f"{fixtures}/{path}/tokenizer_config.json"))
    special = {}
    for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = cfg.get(k)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            special[k] = v
    templates[name] = (cfg["chat_template"], special)
# SentencePiece-era templates (Llama 2 chat's, Mistral Instruct's as published with those checkpoints): a
# system prompt folded into the first turn, roles that must alternate (raise_exception otherwise).
llama2_sp = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
templates["llama2"] = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}"
    "{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
    "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}", llama2_sp)
templates["mistral"] = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}", llama2_sp)
# Python's case operations as Jinja2 reaches them: filters, str methods, tests, case-insensitive sorting.
templates["case"] = ("{% for m in messages %}{% set c = m.content or '' %}{{ m.role|upper }}: {{ c|lower }}|{{ c|upper }}|"
                     "{{ c|title }}|{{ c|capitalize }}|{{ c.title() }}|{{ c.capitalize() }}|{{ c is lower }}{{ c is upper }}"
                     "{{ c.islower() }}{{ c.isupper() }}\n{% endfor %}"
                     "{{ messages|map(attribute='content')|select('string')|sort|join('|') }}\n"
                     "{{ messages|map(attribute='content')|select('string')|unique|list|length }}", {})

words = ["hi", "Hello!", "  spaced  ", "line\nbreak", "tab\there", "{{ x }}", "{% raw %}", "quote \" and '", "你好",
         "😀 emoji", "<think>reason</think>answer", "<think>\nlong\n</think>\n\nfinal", "", "</tool_call>", "a\\nb",
         "\n\nlead", "trail\n\n", "<|im_end|>", "\u3000ideo\u3000", "\xa0nb\xa0", "\x85nel", "x\u2028", "\x0bvt\x1c",
         "Straße STRASSE", "ΟΔΟΣ ΟΔΟΣ.", "ὈΔΥΣΣΕΎΣ", "İstanbul ıi", "ǅemal ǆ Ǆ", "ﬁnal ﬀ", "o'NEIL (x-y) [z]", "ŉ ΐ"]


def text():
    return " ".join(r.choice(words) for _ in range(r.randrange(1, 4)))


def arguments():
    return r.choice([{}, {"city": "Paris"}, {"n": 3, "flag": True, "x": None, "list": [1, "two", 3.5]},
                     {"q": "你好 \"quoted\""}, {"nested": {"a": {"b": []}}}])


def tools():
    return [{"type": "function", "function": {
        "name": r.choice(["get_weather", "search", "calc_2"]) + str(i), "description": text(),
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市"},
                                                        "n": {"type": "integer"}}, "required": ["city"]}}}
            for i in range(r.randrange(1, 3))]


def conversation():
    m = []
    if r.random() < 0.4:
        m.append({"role": "system", "content": text()})
    for _ in range(r.randrange(1, 5)):
        m.append({"role": "user", "content": text()})
        if r.random() < 0.8:
            a = {"role": "assistant", "content": text() if r.random() < 0.8 else (None if r.random() < 0.5 else "")}
            if r.random() < 0.3:
                a["tool_calls"] = [{"id": f"call_{k}", "type": "function",
                                    "function": {"name": "get_weather", "arguments": arguments()}}
                                   for k in range(r.randrange(1, 3))]
                if a["content"] is None and r.random() < 0.5:
                    del a["content"]
                m.append(a)
                for k in range(len(a["tool_calls"])):
                    m.append({"role": "tool", "tool_call_id": f"call_{k}", "content": text()})
                if r.random() < 0.6:
                    m.append({"role": "assistant", "content": text()})
            else:
                m.append(a)
    if r.random() < 0.3 and m[-1]["role"] == "user":
        m.append({"role": "assistant", "content": text()})
    return m


cases = []
for _ in range(n_cases):
    name = r.choice(sorted(templates))
    source, special = templates[name]
    messages = conversation()
    kwargs = {"enable_thinking": r.random() < 0.5} if name == "qwen3" and r.random() < 0.7 else {}
    generation_prompt, continue_final = r.random() < 0.7, False
    last = messages[-1]
    if last["role"] == "assistant" and isinstance(last.get("content"), str) and last["content"].strip() and r.random() < 0.6:
        generation_prompt, continue_final = False, True
    cases.append({"name": name, "template": source, "special": special, "messages": messages,
                  "tools": tools() if r.random() < 0.3 else None, "add_generation_prompt": generation_prompt,
                  "continue_final_message": continue_final, "kwargs": kwargs})


def reference(c):
    out = env.from_string(c["template"]).render(messages=c["messages"], tools=c["tools"], documents=None,
                                                add_generation_prompt=c["add_generation_prompt"], **c["special"], **c["kwargs"])
    if c["continue_final_message"]:  # transformers' rule
        final = c["messages"][-1]["content"]
        if final.strip() not in out:
            raise ValueError("the final message does not appear in the rendering")
        at = out.rindex(final.strip())
        out = out[:at + len(final.lstrip())] if out[at:at + len(final.lstrip())] == final else out[:at + len(final.strip())]
    return out


proc = subprocess.run([render_bin], input="\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n",
                      capture_output=True, text=True, check=True)
got = [json.loads(line) for line in proc.stdout.split("\n") if line]  # (not splitlines: U+2028 is inside the texts)
assert len(got) == len(cases), (len(got), len(cases))
bad = errors = 0
for c, g in zip(cases, got):
    try:
        want, failed = reference(c), None
    except Exception as e:  # noqa: BLE001 (any failure of the reference must be a failure here too)
        want, failed = None, f"{type(e).__name__}: {e}"
    errors += failed is not None
    if (failed is not None) != ("error" in g) or (failed is None and want != g.get("rendered")):
        bad += 1
        if bad <= 5:
            print(f"DIFFERS ({c['name']}): {json.dumps(c['messages'], ensure_ascii=False)[:400]}")
            print(f"  jinja2:   {failed or repr(want)[-300:]}")
            print(f"  llmserve: {g.get('error') or repr(g.get('rendered'))[-300:]}")
print(f"{len(cases)} conversations, {errors} refused by both, {bad} differ")
sys.exit(1 if bad else 0)
