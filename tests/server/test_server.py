#!/usr/bin/env python3
"""End-to-end tests of the OpenAI server: `mpirun -np 2 llmserve` (tp=2, CPU backend, tiny Qwen2
fixture) on a free loopback port, driven over HTTP (standard library) and, when it can be installed,
with the official `openai` package. Prints one line per check and 'N passed, N failed'.
LLMSERVE_TEST_BACKEND=cuda runs every server and `llmserve generate` on the CUDA backend in float32, one
rank each (one GPU).
Usage: test_server.py BUILD_DIR"""
import concurrent.futures
import datetime, http.client, json, math, os, random, re, shutil, socket, subprocess, sys, threading, time, typing

BUILD = os.path.abspath(sys.argv[1])
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(BUILD, "test-models", "tiny-qwen2.h5")
FIXTURES = os.environ.get("LLMSERVE_FIXTURES", os.path.join(HERE, "..", "..", "..", "shared", "fixtures"))
BACKEND = os.environ.get("LLMSERVE_TEST_BACKEND", "cpu")
BACKEND_ARGS = ["--backend", BACKEND] + (["--dtype", "float32"] if BACKEND == "cuda" else [])
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)


def summary():
    """Prints 'N passed, N failed' over every check so far; the exit code (0 when all passed)."""
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


def heads(port, method, path, headers, body=None):
    """Status and lower-cased headers of one request."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}


def free_port(span=1):
    """A free port p, with p + 1 .. p + span - 1 free too (data_parallel_external_lb: replica r listens on p + r),
    below the kernel's range of ephemeral ports where there is room: a port the kernel hands out stays free only
    until an outgoing connection takes it as its own end (CI met 'Address already in use' on such a port while
    the MPI ranks connected to each other, starting up)."""
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random(os.getpid() * 1000003 + time.monotonic_ns())
    for attempt in range(200):
        held = [socket.socket()]
        try:
            if low > 12000 and attempt < 150:
                held[0].bind(("127.0.0.1", rng.randrange(10000, low - span)))
            else:  # (no room below the range: one the kernel hands out)
                held[0].bind(("127.0.0.1", 0))
            p = held[0].getsockname()[1]
            for i in range(1, span):
                held.append(socket.socket())
                held[-1].bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for h in held:
                h.close()
    raise RuntimeError(f"no {span} consecutive free ports")


class Server:
    def __init__(self, *extra, np=2, tp=2, model=None, env=None, ports=1):
        if BACKEND == "cuda":
            np, tp = 1, 1
        self.port = free_port(ports)
        self.log = open(os.path.join(BUILD, "test-out", f"server-{self.port}.log"), "w")
        cmd = [os.path.join(HERE, "..", "mpirun.sh"), str(np), os.path.join(BUILD, "llmserve"), "--model", model or MODEL,
               *BACKEND_ARGS, "-tp", str(tp), "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", "512", *([] if "--served-model-name" in extra else ["--served-model-name", "tiny"]), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        for _ in range(200 if BACKEND == "cpu" else 1200):  # a GPU server records its graphs first
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start; see " + self.log.name)

    def connect(self, timeout):
        """A connection to the server (test_tls.py's servers make HTTPS and Unix-socket ones)."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=60):
        c = self.connect(timeout)
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        out = r.read().decode()
        c.close()
        return r.status, out

    def post(self, path, body, **kw):
        st, out = self.request("POST", path, body, **kw)
        try:
            return st, json.loads(out)
        except ValueError:
            return st, out

    def stream(self, path, body, timeout=120, headers=None):
        """Returns the list of SSE data payloads."""
        c = self.connect(timeout)
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        events = [line[6:] for line in r.read().decode().split("\n") if line.startswith("data: ")]
        c.close()
        return r.status, events

    def stream_chunks(self, path, body, **kw):
        """The stream's JSON chunks, [DONE] left out."""
        st, events = self.stream(path, body, **kw)
        return st, [json.loads(e) for e in events if e != "[DONE]"]

    def metric(self, name):
        _, text = self.request("GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(name + "{"):
                return float(line.split()[-1])
        return None

    def ranks(self):
        """The pids of this server's llmserve processes (its MPI ranks)."""
        pids = []
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and open(f"/proc/{pid}/comm").read().strip() == "llmserve" and \
                        str(self.port) in open(f"/proc/{pid}/cmdline").read().split("\0"):
                    pids.append(int(pid))
            except OSError:
                continue
        return pids

    def idle_cpu(self, secs=3.0):
        """CPU seconds each rank spends over `secs` of the server doing nothing (user + system time)."""
        def cpu(pid):
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pids = self.ranks()
        before = {p: cpu(p) for p in pids}
        time.sleep(secs)
        return {p: round(cpu(p) - before[p], 3) for p in pids}

    def stop(self):
        rank0 = None
        # Signal the rank-0 process, as a batch system would signal the job's tasks.
        for pid in self.ranks():
            try:
                if "OMPI_COMM_WORLD_RANK=0" in open(f"/proc/{pid}/environ").read():
                    rank0 = pid
            except OSError:
                continue
        if rank0:
            os.kill(rank0, 15)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def sse_events(port, body):
    """POSTs a streamed Responses request; returns its events (type, payload) in order."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/responses", body=json.dumps(body), headers={"Content-Type": "application/json"})
    text = c.getresponse().read().decode()
    c.close()
    out = []
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "):
            out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


def import_openai():
    """OpenAI's Python SDK, installed with pip when missing (ImportError when it cannot be had)."""
    try:
        import openai
    except ImportError:
        if subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "openai"], capture_output=True).returncode:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--break-system-packages", "openai"], capture_output=True)
        import openai
    return openai


def sdk_checks(port, key, model):
    """OpenAI's Python SDK (installed when missing) on a real instruct model: the Responses API (a greedy
    answer, the next turn by previous_response_id, the SDK's stream helper, a Pydantic text_format and a
    required tool call) and a chat answer guided by a grammar."""
    openai = import_openai()
    import pydantic
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
    ask = dict(model=model, instructions="Answer in one short sentence.", input="What is the capital of France?",
               temperature=0, max_output_tokens=30)
    r = c.responses.create(**ask)
    check("seed SDK: responses.create answers", r.status == "completed" and "Paris" in r.output_text, r.output_text)
    r2 = c.responses.create(model=model, previous_response_id=r.id, input="And what is the capital of Italy?",
                            temperature=0, max_output_tokens=30)
    check("seed SDK: previous_response_id continues the conversation", r2.status == "completed" and "Rome" in r2.output_text
          and r2.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens, r2.output_text)
    with c.responses.stream(**ask) as st:
        deltas = "".join(e.delta for e in st if e.type == "response.output_text.delta")
        final = st.get_final_response()
    check("seed SDK: the stream helper's deltas and final response are the answer", deltas == final.output_text == r.output_text,
          (deltas, final.output_text))

    class City(pydantic.BaseModel):
        name: str
        country: str
    p = c.responses.parse(model=model, input="Name a famous city and its country.", text_format=City, temperature=0,
                          max_output_tokens=60)
    check("seed SDK: responses.parse fills a Pydantic model", p.status == "completed" and isinstance(p.output_parsed, City), p.output_text)
    # A Pydantic union of models (the SDK writes anyOf of two objects that begin alike: a grammar here).
    class Cat(pydantic.BaseModel):
        name: str
        meows: int

    class Dog(pydantic.BaseModel):
        name: str
        barks: bool

    class Pet(pydantic.BaseModel):
        pet: typing.Union[Cat, Dog]
    pp = c.chat.completions.parse(model=model, messages=[{"role": "user", "content": "Describe a dog named Rex who barks."}],
                                  response_format=Pet, temperature=0, max_tokens=60)
    parsed = pp.choices[0].message.parsed
    check("seed SDK: chat.completions.parse fills a model holding a Union of two models",
          pp.choices[0].finish_reason == "stop" and isinstance(parsed, Pet) and isinstance(parsed.pet, (Cat, Dog)),
          pp.choices[0].message.content)
    print("  seed union answer:", pp.choices[0].message.content)
    tools = [{"type": "function", "name": "get_weather", "description": "Get the weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    t = c.responses.create(model=model, input="What's the weather in Paris?", tools=tools, tool_choice="required",
                           temperature=0, max_output_tokens=60)
    calls = [o for o in t.output if o.type == "function_call"]
    check("seed SDK: tool_choice required gives function_call items", t.status == "completed" and calls
          and all(o.name == "get_weather" and "city" in json.loads(o.arguments) for o in calls),
          [(o.type, getattr(o, "arguments", None)) for o in t.output])
    # Beam search with a model that ends its answers: beams set aside at the end of sequence.
    def post(path, body):
        h = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        h.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        r = json.loads(h.getresponse().read().decode())
        h.close()
        return r
    prompt = post("/tokenize", {"messages": [{"role": "user", "content": "What is the capital of France?"}]})["tokens"]
    eos = post("/tokenize", {"prompt": "<|im_end|>", "add_special_tokens": False})["tokens"]
    for lp in (1.0, 2.0):  # (2.0 ranks beams of different lengths apart: it tells the penalty's length right)
        bs = c.completions.create(model=model, prompt=prompt, max_tokens=12, n=3,
                                  extra_body={"use_beam_search": True, "length_penalty": lp})
        want = reference_beam_search(port, prompt, 3, 12, lp, eos=set(eos))
        want_text = [post("/detokenize", {"tokens": t[:-1] if f == "stop" else t})["prompt"] for t, f in want]
        check(f"seed SDK: beam search (length_penalty {lp}) ending beams at end of sequence as vLLM's algorithm",
              len(eos) == 1 and "stop" in [f for _, f in want]
              and [(c_.text, c_.finish_reason) for c_ in bs.choices] == list(zip(want_text, [f for _, f in want])),
              ([(c_.text, c_.finish_reason) for c_ in bs.choices], want_text, want))
        print("  seed beam answers:", [c_.text for c_ in bs.choices])
    # A grammar through the SDK's extra_body, as vLLM's documentation sends it.
    sql = ('root ::= select_statement\nselect_statement ::= "SELECT " column " FROM " table " WHERE " condition\n'
           'column ::= "name" | "age" | "city"\ntable ::= "users" | "orders"\ncondition ::= column " = " value\n'
           'value ::= [0-9]+ | "\'" [a-zA-Z ]* "\'"')
    q = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Write a SQL query that finds users in Paris."}],
                                  temperature=0, max_tokens=40, extra_body={"structured_outputs": {"grammar": sql}})
    text = q.choices[0].message.content
    check("seed SDK: a chat answer of a grammar (structured_outputs.grammar)", q.choices[0].finish_reason == "stop" and
          re.fullmatch(r"SELECT (name|age|city) FROM (users|orders) WHERE (name|age|city) = ([0-9]+|'[a-zA-Z ]*')", text), text)
    print("  seed SQL answer:", text)


def reference_beam_search(port, prompt_ids, width, max_tokens, length_penalty=1.0, eos=(), ignore_eos=False, trace=False):
    """vLLM's beam search written out in Python over the server's own next-token log-probabilities
    (completions of one token, 2 x width of them): the ranking, the end-of-sequence handling and the
    length penalty are checked, not the model. Returns the best `width` beams' token ids and finish reasons (with
    `trace`, also each generated token's log-probability and its step's best alternatives, a dict best first)."""
    def post(body):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                             "Authorization": "Bearer seed-key"})
        r = json.loads(c.getresponse().read().decode())
        c.close()
        return r
    def score(toks, cum):
        n = len(toks) - (1 if toks[-1] in eos else 0)
        return cum / n ** length_penalty
    live, done = [(list(prompt_ids), 0.0, [])], []
    for _ in range(max_tokens):
        new = []
        for toks, cum, tr in live:
            r = post({"prompt": toks, "max_tokens": 1, "logprobs": 2 * width, "temperature": 0, "ignore_eos": True,
                      "return_tokens_as_token_ids": True})
            top = r["choices"][0]["logprobs"]["top_logprobs"][0]
            for key, lp in top.items():
                t = int(key.split(":")[1])
                (done if t in eos and not ignore_eos else new).append((toks + [t], cum + lp, tr + [(t, lp, top)]))
        live = sorted(new, key=lambda b: score(b[0], b[1]), reverse=True)[:width]
        if not live:
            break
    best = sorted(done + live, key=lambda b: score(b[0], b[1]), reverse=True)[:width]
    return [(b[0][len(prompt_ids):], "stop" if b[0][-1] in eos and not ignore_eos else "length", *((b[2],) if trace else ()))
            for b in best]


def beam_search_checks(s):
    """use_beam_search against vLLM's algorithm written out in Python, and its refusals."""
    st, tk = s.post("/tokenize", {"prompt": "The weather today"})
    ids = tk["tokens"]
    for lp in (1.0, 0.5):
        st, bs = s.post("/v1/completions", {"prompt": [ids, ids[:2]], "max_tokens": 5, "n": 3, "use_beam_search": True,
                                            "ignore_eos": True, "length_penalty": lp})
        got = [c["text"] for c in bs.get("choices", [])]
        want = []
        for p in (ids, ids[:2]):
            for toks, _ in reference_beam_search(s.port, p, 3, 5, lp, ignore_eos=True):
                want.append(s.post("/detokenize", {"tokens": toks})[1]["prompt"])
        check(f"use_beam_search (two prompts, 3 beams, length_penalty {lp}): vLLM's algorithm's beams, best first",
              st == 200 and got == want and all(c["finish_reason"] == "length" for c in bs["choices"])
              and bs["usage"]["completion_tokens"] == 30 and "prompt_tokens_details" not in bs["usage"], (got, want))
    # llmserve generate runs beam search lines the same way (between its engine's steps).
    inp = os.path.join(BUILD, "test-out", "beam-in.jsonl")
    outp = os.path.join(BUILD, "test-out", "beam-out.jsonl")
    open(inp, "w").write(json.dumps({"prompt_token_ids": ids, "max_tokens": 5, "n": 3, "use_beam_search": True,
                                     "ignore_eos": True, "length_penalty": 0.5}) + "\n" +
                         json.dumps({"prompt_token_ids": ids[:2], "max_tokens": 3}) + "\n")
    run = subprocess.run([os.path.join(BUILD, "llmserve"), "generate", "--model", MODEL, *BACKEND_ARGS, "--max-model-len", "512",
                          "--input", inp, "--output", outp], capture_output=True, text=True)
    offline = [json.loads(l)["outputs"] for l in open(outp)] if run.returncode == 0 else []
    check("llmserve generate: a use_beam_search line gives the algorithm's beams, a plain line beside it runs as ever",
          run.returncode == 0 and [o["text"] for o in offline[0]] == want[:3] and len(offline[1][0]["token_ids"]) == 3,
          (run.stderr[-500:], offline))
    st, ev = s.stream("/v1/completions", {"prompt": ids, "max_tokens": 5, "n": 3, "use_beam_search": True, "ignore_eos": True,
                                          "stream": True})
    chunks = [json.loads(e)["choices"][0] for e in ev if e != "[DONE]" and json.loads(e)["choices"]]
    check("use_beam_search streamed: each beam whole", st == 200 and [c["text"] for c in chunks] == want[:3], chunks)
    # logprobs: each beam's tokens with their log-probabilities and their steps' best alternatives, as the
    # algorithm saw them (vLLM's beam search reports them so), up to `logprobs` of them (here fewer than 2 x n).
    st, bl = s.post("/v1/completions", {"prompt": ids, "max_tokens": 4, "n": 2, "use_beam_search": True, "ignore_eos": True,
                                        "logprobs": 3, "return_tokens_as_token_ids": True})
    ref = reference_beam_search(s.port, ids, 2, 4, ignore_eos=True, trace=True)
    got = [[(int(t.split(":")[1]), lp, top) for t, lp, top in zip(l["tokens"], l["token_logprobs"], l["top_logprobs"])]
           for l in (c.get("logprobs") or {"tokens": [], "token_logprobs": [], "top_logprobs": []} for c in bl.get("choices", []))]
    want = [[(t, lp, dict(sorted(top.items(), key=lambda kv: -kv[1])[:3])) for t, lp, top in tr] for _, _, tr in ref]
    def near(a, b):  # (the same steps' numbers, up to the batch a step ran in)
        return len(a) == len(b) and all(ta == tb and abs(la - lb) < 1e-4 and set(pa) == set(pb)
                                        and all(abs(pa[k] - pb[k]) < 1e-4 for k in pa) for (ta, la, pa), (tb, lb, pb) in zip(a, b))
    check("use_beam_search with logprobs: each beam's tokens, log-probabilities and alternatives as the algorithm's steps "
          "gave them", st == 200 and len(got) == len(want) == 2 and all(near(g, w) for g, w in zip(got, want)), (got, want))
    for name, body, msg in [("more beams than max_logprobs / 2", {"n": 11}, "at most 10 beams"),
                            ("with prompt_logprobs", {"prompt_logprobs": 2}, "does not take prompt_logprobs"),
                            ("with stop", {"stop": ["x"]}, "does not take stop"),
                            ("with a guided format", {"guided_regex": "a+"}, "does not take guided decoding"),
                            ("early_stopping", {"early_stopping": True}, "'early_stopping' is not supported")]:
        st, e = s.post("/v1/completions", {"prompt": "x", "max_tokens": 3, "use_beam_search": True, **body})
        check(f"error: use_beam_search {name}", st == 400 and msg in e["error"]["message"], e)


def responses_checks(s, msgs, tools, hist, hist_tokens):
    """The Responses API against the chat route it runs on: the same prompt (token counts) and greedy
    text; streamed events in order whose pieces make the whole answer; stored responses, chaining,
    function tools, structured output, log-probabilities and refusals."""
    def chat_text(messages, n_tokens, **kw):
        st, r = s.post("/v1/chat/completions", {"messages": messages, "max_tokens": n_tokens, "temperature": 0, **kw})
        return r["choices"][0]["message"]["content"], r["usage"]["prompt_tokens"], r["choices"][0]["finish_reason"]
    def text_of(resp):
        return "".join(p["text"] for it in resp["output"] if it["type"] == "message" for p in it["content"])
    body = {"model": "tiny", "instructions": "Answer briefly.", "input": "What is the capital of France?",
            "max_output_tokens": 8, "temperature": 0}
    st, r1 = s.post("/v1/responses", body)
    want, ptok, finish = chat_text([{"role": "system", "content": "Answer briefly."},
                                    {"role": "user", "content": "What is the capital of France?"}], 8)
    cut = finish == "length"
    check("responses: the chat route's prompt and greedy answer, as a response object",
          st == 200 and r1["object"] == "response" and r1["id"].startswith("resp_") and r1["model"] == "tiny"
          and text_of(r1) == want and r1["usage"]["input_tokens"] == ptok
          and r1["usage"]["total_tokens"] == ptok + r1["usage"]["output_tokens"]
          and r1["status"] == ("incomplete" if cut else "completed")
          and r1["incomplete_details"] == ({"reason": "max_output_tokens"} if cut else None)
          and r1["output"][0]["role"] == "assistant" and r1["instructions"] == "Answer briefly.", (r1, want, ptok))
    ev = sse_events(s.port, {**body, "stream": True})
    types = [t for t, _ in ev]
    final = ev[-1][1].get("response", {}) if ev else {}
    deltas = "".join(d["delta"] for t, d in ev if t == "response.output_text.delta")
    done = [d["text"] for t, d in ev if t == "response.output_text.done"]
    check("responses streamed: numbered events, created first, the deltas making the text of the final response",
          [d["sequence_number"] for _, d in ev] == list(range(len(ev))) and types[:3] == ["response.created", "response.in_progress",
          "response.output_item.added"] and types[-2:] == ["response.output_item.done", "response.completed"]
          and final["status"] == r1["status"]
          and deltas == text_of(r1) and done == [deltas] and text_of(final) == deltas
          and [final["usage"][k] for k in ("input_tokens", "output_tokens")] == [r1["usage"][k] for k in ("input_tokens", "output_tokens")],
          (types, deltas, final))
    # Stored: GET gives it back; the next turn continues it (the earlier instructions are not carried over).
    st, got = s.request("GET", f"/v1/responses/{r1['id']}")
    check("responses: a stored response comes back from GET", st == 200 and json.loads(got) == r1, got[:300])
    st, r2 = s.post("/v1/responses", {"input": "And of Italy?", "previous_response_id": r1["id"], "max_output_tokens": 6,
                                      "temperature": 0})
    want2, ptok2, _ = chat_text([{"role": "user", "content": "What is the capital of France?"},
                                 {"role": "assistant", "content": text_of(r1)}, {"role": "user", "content": "And of Italy?"}], 6)
    check("responses: previous_response_id continues the conversation",
          st == 200 and r2["previous_response_id"] == r1["id"] and r2["usage"]["input_tokens"] == ptok2 and text_of(r2) == want2,
          (r2, ptok2, want2))
    st, gone = s.post("/v1/responses", {"input": "x", "previous_response_id": "resp_nope"})
    check("responses: an unknown previous_response_id is 404", st == 404 and "Response with id 'resp_nope' not found." in
          gone["error"]["message"], gone)
    st, dl = s.request("DELETE", f"/v1/responses/{r2['id']}")
    st2, _ = s.request("GET", f"/v1/responses/{r2['id']}")
    st3, cn = s.post(f"/v1/responses/{r1['id']}/cancel", {})
    st4, ns = s.post("/v1/responses", {"input": "x", "max_output_tokens": 2, "store": False})
    st5, _ = s.request("GET", f"/v1/responses/{ns['id']}")
    check("responses: DELETE forgets, cancel is refused (no background mode), store false keeps nothing",
          st == 200 and json.loads(dl) == {"id": r2["id"], "object": "response.deleted", "deleted": True} and st2 == 404
          and st3 == 400 and "Cannot cancel a synchronous response." in cn["error"]["message"] and st4 == 200 and st5 == 404,
          (dl, st2, cn, st5))
    st_put, _ = s.request("PUT", f"/v1/responses/{r1['id']}", "{}")
    st_deep, _ = s.request("GET", f"/v1/responses/{r1['id']}/x")
    st_head, _ = s.request("HEAD", f"/v1/responses/{r1['id']}")
    check("responses: routes of a stored response (PUT 405, a deeper path 404, HEAD 200)",
          (st_put, st_deep, st_head) == (405, 404, 200), (st_put, st_deep, st_head))
    # Function tools in the Responses shape: history items render as the chat route's tool messages.
    rtools = [{"type": "function", **t["function"]} for t in tools]
    items = [hist[0], {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
             {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\": 21}"}]
    st, rt = s.post("/v1/responses", {"input": items, "tools": rtools, "max_output_tokens": 4})
    check("responses: function_call and function_call_output items render as the chat route's tool messages",
          st == 200 and rt["usage"]["input_tokens"] == hist_tokens, (rt, hist_tokens))
    named = {"input": msgs, "tools": rtools, "tool_choice": {"type": "function", "name": "get_weather"}, "max_output_tokens": 40,
             "temperature": 0}
    st, rn = s.post("/v1/responses", named)
    calls = [it for it in rn.get("output", []) if it["type"] == "function_call"]
    ok_args = len(calls) == 1 and (rn["status"] != "completed" or list(json.loads(calls[0]["arguments"])) == ["city"])
    ev = sse_events(s.port, {**named, "stream": True})
    args = "".join(d["delta"] for t, d in ev if t == "response.function_call_arguments.delta")
    fin = ev[-1][1].get("response", {}) if ev else {}
    check("responses: a named tool_choice gives one function_call item; streamed, its arguments in pieces",
          st == 200 and ok_args and calls[0]["name"] == "get_weather" and calls[0]["call_id"].startswith("call_")
          and args == calls[0]["arguments"] and [it["arguments"] for it in fin.get("output", [])] == [args], (rn, args))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    st, rj = s.post("/v1/responses", {"input": "A number?", "max_output_tokens": 30, "temperature": 0,
                                      "text": {"format": {"type": "json_schema", "name": "num", "schema": schema}}})
    check("responses: text.format json_schema guides the answer", st == 200 and rj["status"] == "completed"
          and type(json.loads(text_of(rj))["n"]) is int, rj)
    st, rl = s.post("/v1/responses", {"input": "Hi", "max_output_tokens": 5, "include": ["message.output_text.logprobs"],
                                      "top_logprobs": 2})
    lps = rl["output"][0]["content"][0]["logprobs"] if st == 200 and rl["output"] else []
    check("responses: include message.output_text.logprobs gives each token's with top_logprobs",
          len(lps) == rl["usage"]["output_tokens"] and all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in lps), rl)
    for name, req, code, msg in [
            ("background", {"input": "x", "background": True}, 400, "background responses are not supported"),
            ("a hosted tool", {"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools of type 'web_search' are not supported"),
            ("no input", {"instructions": "x"}, 400, "'input' (a string or a list of items) is required"),
            ("an image part", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400,
             "content parts of type 'input_image' are not supported"),
            ("an unknown include", {"input": "x", "include": ["reasoning.encrypted_content"]}, 400, "is not supported"),
            ("an unknown model", {"input": "x", "model": "gpt-9"}, 404, "does not exist")]:
        st, e = s.post("/v1/responses", req)
        check(f"responses error: {name}", st == code and msg in e.get("error", {}).get("message", ""), e)


def main():
    s = Server()
    try:
        st, _ = s.request("GET", "/health")
        check("health is 200", st == 200, st)
        st, models = s.request("GET", "/v1/models")
        m = json.loads(models)
        check("models lists the served name and max_model_len", m["data"][0]["id"] == "tiny" and m["data"][0]["max_model_len"] == 512, models)
        st, v = s.request("GET", "/version")
        check("version", st == 200 and "version" in json.loads(v), v)
        st, _ = s.request("GET", "/tokenizer_info")
        check("/tokenizer_info is not served without enable_tokenizer_info_endpoint", st == 404, st)
        st, _ = s.request("POST", "/reset_prefix_cache")
        check("/reset_prefix_cache is not served without VLLM_SERVER_DEV_MODE", st == 404, st)
        # An idle server takes no core: the worker rank waits for its next step without spinning in MPI
        # (it used to take a whole core for as long as the server was up).
        s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        idle = s.idle_cpu()
        check("an idle tp=2 server's ranks use under 10% of a core each", len(idle) == (2 if BACKEND == "cpu" else 1)
              and all(v < 0.3 for v in idle.values()), idle)

        # The same through curl.
        def curl(*args):
            return subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True).stdout.rsplit("\n", 1)
        body, code = curl(f"http://127.0.0.1:{s.port}/health")
        check("curl: health", code == "200", code)
        body, code = curl(f"http://127.0.0.1:{s.port}/v1/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0}))
        check("curl: completion", code == "200" and json.loads(body)["usage"]["completion_tokens"] == 3, body)
        body, code = curl("-N", f"http://127.0.0.1:{s.port}/v1/chat/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}))
        check("curl: streamed chat ends with [DONE]", code == "200" and body.strip().endswith("data: [DONE]"), body[-200:])

        # Many idle connections do not stall anything.
        import resource
        n_idle = max(0, min(1000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200))
        idle = []
        for _ in range(n_idle):
            try:
                idle.append(socket.create_connection(("127.0.0.1", s.port)))
            except OSError:
                break
        t0 = time.time()
        st, r_idle = s.post("/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        check(f"{len(idle)} idle connections: a request still answers", st == 200 and time.time() - t0 < 10, (st, time.time() - t0))
        for sock in idle:
            sock.close()

        # Completions: usage equals the tokenizer's count.
        st, tok = s.post("/tokenize", {"prompt": "The capital of France is"})
        st, r = s.post("/v1/completions", {"model": "tiny", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})
        check("completion usage", st == 200 and r["usage"]["prompt_tokens"] == tok["count"] and r["usage"]["completion_tokens"] == 6, r)
        st, r2 = s.post("/v1/completions", {"prompt": ["a b", "c d"], "max_tokens": 2, "n": 2, "temperature": 0.8, "seed": 3})
        check("list of prompts x n=2 gives 4 choices", st == 200 and sorted(c["index"] for c in r2["choices"]) == [0, 1, 2, 3], r2)
        st, r3 = s.post("/v1/completions", {"prompt": [9707, 11, 1879], "max_tokens": 2, "logprobs": 2})
        lp = r3["choices"][0]["logprobs"] if st == 200 else None
        check("token-id prompt with logprobs", st == 200 and lp and len(lp["tokens"]) == 2 and len(lp["top_logprobs"][0]) == 2, r3)

        # vLLM's return_token_ids: the prompt's ids and each choice's, whole and streamed (the prompt's with a
        # choice's first chunk, each chunk's new ids), the same ids log-probabilities name with token_id:<id>.
        tb = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "n": 2, "return_token_ids": True}
        st, rt = s.post("/v1/completions", {**tb, "logprobs": 0, "return_tokens_as_token_ids": True})
        _, tok_ids = s.post("/tokenize", {"prompt": tb["prompt"]})
        named = [int(t.split(":")[1]) for t in rt["choices"][0]["logprobs"]["tokens"]] if st == 200 else None
        _, ev = s.stream_chunks("/v1/completions", {**tb, "stream": True})
        per = {0: [], 1: []}
        prompt_ids_seen = {0: [], 1: []}
        for e in ev:
            for c in e.get("choices", []):
                per[c["index"]] += c.get("token_ids", [])
                prompt_ids_seen[c["index"]].append(c.get("prompt_token_ids"))
        check("return_token_ids (completions): prompt and output ids, whole and streamed",
              st == 200 and all(c["prompt_token_ids"] == tok_ids["tokens"] for c in rt["choices"])
              and rt["choices"][0]["token_ids"] == named and len(named) == 6
              and per[0] == rt["choices"][0]["token_ids"] and per[1] == rt["choices"][1]["token_ids"]
              and all(p[0] == tok_ids["tokens"] and all(x is None for x in p[1:]) for p in prompt_ids_seen.values()), (rt, ev))
        cm = [{"role": "user", "content": "Name a color."}]
        st, rc = s.post("/v1/chat/completions", {"messages": cm, "max_tokens": 5, "temperature": 0, "return_token_ids": True})
        _, chat_ids = s.post("/tokenize", {"messages": cm})
        _, ev = s.stream_chunks("/v1/chat/completions", {"messages": cm, "max_tokens": 5, "temperature": 0, "return_token_ids": True,
                                                        "stream": True})
        streamed_ids = [t for e in ev for c in e.get("choices", []) for t in c.get("token_ids", [])]
        check("return_token_ids (chat): the response's prompt_token_ids, the choice's token_ids; streamed, the prompt's on the "
              "first chunk only", st == 200 and rc["prompt_token_ids"] == chat_ids["tokens"] and len(rc["choices"][0]["token_ids"]) == 5
              and streamed_ids == rc["choices"][0]["token_ids"] and ev[0].get("prompt_token_ids") == chat_ids["tokens"]
              and all("prompt_token_ids" not in e for e in ev[1:]), (rc, ev[:2]))
        st, bad = s.post("/v1/completions", {"prompt": "x", "return_token_ids": "yes"})
        check("return_token_ids not a boolean is a 400", st == 400 and "return_token_ids" in bad["error"]["message"], bad)

        # vLLM's /invocations (SageMaker's route): a chat body answers as /v1/chat/completions, a prompt as
        # /v1/completions (the same greedy text); a body of neither is vLLM's 400.
        gb = {"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
        cb = {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 5, "temperature": 0}
        st1, ic = s.post("/invocations", gb)
        st2, rc1 = s.post("/v1/completions", gb)
        st3, ich = s.post("/invocations", cb)
        st4, rc2 = s.post("/v1/chat/completions", cb)
        st5, inv_bad = s.post("/invocations", {"max_tokens": 3})
        check("/invocations: completion and chat bodies answer as their routes; neither is a 400",
              st1 == st2 == st3 == st4 == 200 and ic["object"] == "text_completion" and ic["choices"][0]["text"] == rc1["choices"][0]["text"]
              and ich["object"] == "chat.completion" and ich["choices"][0]["message"] == rc2["choices"][0]["message"]
              and st5 == 400 and "Cannot find suitable handler for request" in inv_bad["error"]["message"], (ic, ich, inv_bad))

        # Chat: greedy output equals the engine's offline output for the same messages.
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
        st, chat = s.post("/v1/chat/completions", {"model": "tiny", "messages": msgs, "max_tokens": 10, "temperature": 0, "ignore_eos": True})
        inp = os.path.join(BUILD, "test-out", "server-offline-in.jsonl")
        outp = os.path.join(BUILD, "test-out", "server-offline-out.jsonl")
        open(inp, "w").write(json.dumps({"messages": msgs, "max_tokens": 10, "temperature": 0, "ignore_eos": True}) + "\n")
        subprocess.run([os.path.join(BUILD, "llmserve"), "generate", "--model", MODEL, *BACKEND_ARGS, "--max-model-len", "512",
                        "--input", inp, "--output", outp], check=True, capture_output=True)
        offline = json.loads(open(outp).read())["outputs"][0]["text"]
        check("chat greedy equals llmserve generate", st == 200 and chat["choices"][0]["message"]["content"] == offline,
              (chat, offline))

        # Streaming: deltas concatenate to the non-streamed text; usage chunk; [DONE].
        st, ev = s.stream("/v1/chat/completions", {"messages": msgs, "max_tokens": 10, "temperature": 0, "ignore_eos": True,
                                                   "stream": True, "stream_options": {"include_usage": True}})
        chunks = [json.loads(e) for e in ev if e != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        usage = [c for c in chunks if not c["choices"]]
        check("stream: deltas equal the whole text", text == offline, (text, offline))
        check("stream: usage chunk then [DONE]", ev[-1] == "[DONE]" and usage and usage[0]["usage"]["completion_tokens"] == 10, ev[-3:])
        # continuous_usage_stats (vLLM): every chunk carries the prompt's tokens and its choice's so far.
        st, evc = s.stream("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "n": 2,
                                               "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
        cch = [json.loads(e) for e in evc if e != "[DONE]"]
        per_choice = {}
        for c in cch:
            if c["choices"]:
                per_choice.setdefault(c["choices"][0]["index"], []).append(c["usage"]["completion_tokens"])
        check("stream: continuous usage counts each choice's tokens 1..4",
              st == 200 and all("usage" in c for c in cch) and sorted(per_choice) == [0, 1]
              and all(v == [1, 2, 3, 4] for v in per_choice.values()) and cch[-1]["usage"]["completion_tokens"] == 8, evc)
        st, ev2 = s.stream("/v1/completions", {"prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": True})
        check("completion stream ends with a finish_reason", st == 200 and json.loads(ev2[-2])["choices"][0]["finish_reason"] == "length", ev2)

        # Stop strings (taken from the greedy text) and stop_token_ids.
        st, base = s.post("/v1/completions", {"prompt": "Hello", "max_tokens": 12, "temperature": 0, "ignore_eos": True})
        full = base["choices"][0]["text"]
        stop = full[len(full) // 2: len(full) // 2 + 2]
        st, rs = s.post("/v1/completions", {"prompt": "Hello", "max_tokens": 12, "temperature": 0, "ignore_eos": True, "stop": [stop]})
        check("stop string", rs["choices"][0]["text"] == full[:full.find(stop)] and rs["choices"][0]["finish_reason"] == "stop"
              and rs["choices"][0]["stop_reason"] == stop, (full, stop, rs))

        # Errors in OpenAI's shape with the right status.
        def err(status, resp, needle=""):
            st, body = resp
            ok = st == status and isinstance(body, dict) and "error" in body and needle in body["error"]["message"]
            return ok, (st, body)
        for name, status, resp, needle in [
            ("malformed JSON", 400, s.post("/v1/completions", "{bad"), "invalid JSON"),
            ("wrong type", 400, s.post("/v1/completions", {"prompt": "x", "temperature": "hot"}), "'temperature' must be a number"),
            ("unknown model", 404, s.post("/v1/completions", {"model": "gpt-9", "prompt": "x"}), "gpt-9"),
            ("prompt too long", 400, s.post("/v1/completions", {"prompt": [1] * 600}), "maximum context length is 512"),
            ("too many tokens requested", 400, s.post("/v1/completions", {"prompt": "x", "max_tokens": 600}), "512"),
            ("bad top_p", 400, s.post("/v1/chat/completions", {"messages": msgs, "top_p": 2}), "top_p"),
            ("no messages", 400, s.post("/v1/chat/completions", {"messages": []}), "messages"),
            ("unknown route", 404, s.post("/v1/nothing", {}), "no route"),
            ("wrong method", 405, (lambda st_b: (st_b[0], json.loads(st_b[1])))(s.request("GET", "/v1/completions")), "method"),
            # Bytes that are not UTF-8 (the parser's message quotes them; answering it ended the server once).
            ("body not UTF-8", 400, s.post("/v1/completions", b'{"prompt": "\xff\xfe"}'), "invalid JSON"),
            # 50,000 nested objects in a message overflowed the stack of the thread that answered.
            ("nested too deep", 400, s.post("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x", "k": '
                                             + b'{"a": ' * 50000 + b'1' + b'}' * 50000 + b'}]}'), "deeper than 256"),
            ("negative max_tokens", 400, s.post("/v1/completions", {"prompt": "x", "max_tokens": -1}), "at least 1"),
            ("max_tokens beyond an int", 400, s.post("/v1/completions", {"prompt": "x", "max_tokens": 10 ** 12}), "out of range"),
            ("negative logprobs", 400, s.post("/v1/completions", {"prompt": "x", "logprobs": -1}), "logprobs"),
            ("logprobs over max_logprobs", 400, s.post("/v1/completions", {"prompt": "x", "logprobs": 21}),
             "greater than max allowed: 20"),
            # What llmserve cannot do is refused rather than ignored.
            ("best_of", 400, s.post("/v1/completions", {"prompt": "x", "best_of": 3}), "best_of"),
            ("logit_bias key", 400, s.post("/v1/completions", {"prompt": "x", "logit_bias": {"five": 10}}), "token ids"),
            ("logit_bias token", 400, s.post("/v1/completions", {"prompt": "x", "logit_bias": {"999999999": 10}}), "vocabulary"),
            ("response_format json_schema with uniqueItems of any values", 400, s.post("/v1/chat/completions", {"messages": msgs, "response_format": {
                "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}}),
             "uniqueItems is supported for items that are an enum of up to 10 values or booleans"),
            ("response_format json_schema with not", 400, s.post("/v1/chat/completions", {"messages": msgs, "response_format": {
                "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "not": {}}}}}),
             "'not' is not supported by llmserve's guided decoding"),
            ("response_format json_schema with a pattern no string matches", 400, s.post("/v1/chat/completions", {"messages": msgs,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "[a-z]{6}",
                                                                                                  "maxLength": 5}}}}),
             "pattern matches no string of 0 to 5 characters"),
            ("response_format json_schema without a schema", 400, s.post("/v1/chat/completions", {"messages": msgs, "response_format": {
                "type": "json_schema", "json_schema": {"name": "x"}}}), "needs a 'json_schema' object with a 'schema'"),
            ("response_format without a type", 400, s.post("/v1/completions", {"prompt": "x", "response_format": {}}),
             "must be an object with a 'type'"),
            ("guided_json that is not JSON", 400, s.post("/v1/chat/completions", {"messages": msgs, "guided_json": "{\"type\""}),
             "json_schema: not JSON"),
            ("guided_json with json_object", 400, s.post("/v1/chat/completions", {"messages": msgs, "guided_json": {"type": "object"},
                                                                                  "response_format": {"type": "json_object"}}),
             "only one kind of guided decoding"),
            ("guided_grammar in single quotes (not EBNF's literals)", 400, s.post("/v1/completions", {"prompt": "x", "guided_grammar": "root ::= 'a'"}),
             "grammar: unexpected"),
            ("guided_grammar left-recursive", 400, s.post("/v1/completions", {"prompt": "x", "guided_grammar": "root ::= a\na ::= b \"a\" | \"b\"\nb ::= a"}),
             "left-recursive"),
            ("guided_choice empty", 400, s.post("/v1/completions", {"prompt": "x", "guided_choice": []}), "non-empty list of strings"),
            ("guided_choice not strings", 400, s.post("/v1/completions", {"prompt": "x", "guided_choice": ["a", 1]}),
             "non-empty list of strings"),
            ("guided_choice with an empty string", 400, s.post("/v1/completions", {"prompt": "x", "guided_choice": ["a", ""]}),
             "must not be empty"),
            ("guided_choice with json_object", 400, s.post("/v1/completions", {
                "prompt": "x", "guided_choice": ["a"], "response_format": {"type": "json_object"}}), "only one kind of guided decoding"),
            ("structured_outputs regex with a lookahead", 400, s.post("/v1/completions", {
                "prompt": "x", "structured_outputs": {"regex": "a(?=b)"}}), "lookaround assertions are not supported"),
            ("guided_regex that Python refuses", 400, s.post("/v1/completions", {"prompt": "x", "guided_regex": "a**"}), "multiple repeat"),
            ("structured_outputs grammar without root", 400, s.post("/v1/completions", {
                "prompt": "x", "structured_outputs": {"grammar": "expr ::= \"a\""}}), "no 'root' rule"),
            ("structured_outputs structural_tag", 400, s.post("/v1/completions", {
                "prompt": "x", "structured_outputs": {"structural_tag": "{}"}}), "'structured_outputs.structural_tag' is not supported"),
            ("structured_outputs unknown field", 400, s.post("/v1/completions", {"prompt": "x", "structured_outputs": {"choise": ["a"]}}),
             "unknown 'structured_outputs' field 'choise'"),
            ("structured_outputs not an object", 400, s.post("/v1/completions", {"prompt": "x", "structured_outputs": ["a"]}),
             "'structured_outputs' must be an object"),
            ("allowed_token_ids empty", 400, s.post("/v1/completions", {"prompt": "x", "allowed_token_ids": []}), "must not be empty"),
            ("allowed_token_ids outside", 400, s.post("/v1/completions", {"prompt": "x", "allowed_token_ids": [10 ** 7]}),
             "outside the vocabulary"),
            ("bad_words not a list", 400, s.post("/v1/chat/completions", {"messages": msgs, "bad_words": "red"}),
             "'bad_words' must be a list of strings"),
            ("bad_words blank", 400, s.post("/v1/completions", {"prompt": "x", "bad_words": [" "]}), "must not be empty"),
            ("suffix", 400, s.post("/v1/completions", {"prompt": "x", "suffix": "!"}), "not supported"),
            ("priority without priority scheduling", 400, s.post("/v1/completions", {"prompt": "x", "priority": 5}),
             "Priority scheduling is not enabled"),
            ("priority not an integer", 400, s.post("/v1/chat/completions", {"messages": msgs, "priority": "high"}),
             "'priority' must be an integer"),
            ("a chat template of the request's own", 400,
             s.post("/v1/chat/completions", {"messages": msgs, "chat_template": "{{ 'x' }}"}), "untrusted chat template"),
            ("a chat template among its keyword arguments", 400,
             s.post("/tokenize", {"messages": msgs, "chat_template_kwargs": {"chat_template": "{{ 'x' }}"}}),
             "untrusted chat template"),
            ("truncate_prompt_tokens 0", 400, s.post("/v1/completions", {"prompt": "x", "truncate_prompt_tokens": 0}),
             "'truncate_prompt_tokens' must be -1"),
            ("truncate_prompt_tokens not an integer", 400,
             s.post("/v1/completions", {"prompt": "x", "truncate_prompt_tokens": "5"}), "'truncate_prompt_tokens' must be -1"),
            ("truncate_prompt_tokens past max_model_len", 400,
             s.post("/v1/completions", {"prompt": "x", "truncate_prompt_tokens": 513}), "greater than max_model_len (512)"),
            ("truncate_prompt_tokens -1 leaves no room", 400,
             s.post("/v1/completions", {"prompt": [7] * 600, "truncate_prompt_tokens": -1, "max_tokens": 1}),
             "maximum context length is 512"),
            ("echo not a boolean", 400, s.post("/v1/completions", {"prompt": "x", "echo": 1}), "'echo' must be a boolean"),
            ("prompt_logprobs with stream", 400, s.post("/v1/completions", {"prompt": "x", "stream": True, "prompt_logprobs": 1}),
             "`prompt_logprobs` are not available when `stream=True`"),
            ("prompt_logprobs over max_logprobs", 400, s.post("/v1/completions", {"prompt": "x", "prompt_logprobs": 21}),
             "Requested prompt logprobs of 21"),
            ("prompt_logprobs negative", 400, s.post("/v1/chat/completions", {"messages": msgs, "prompt_logprobs": -1}),
             "'prompt_logprobs' must be a non-negative integer"),
            ("max_tokens 0 without echo", 400, s.post("/v1/completions", {"prompt": "x", "max_tokens": 0}),
             "'max_tokens' must be at least 1"),
            ("return_tokens_as_token_ids not a boolean", 400,
             s.post("/v1/completions", {"prompt": "x", "return_tokens_as_token_ids": 1}), "must be a boolean"),
            ("chat echo not a boolean", 400, s.post("/v1/chat/completions", {"messages": msgs, "echo": "yes"}), "'echo' must be a boolean"),
            ("stream_options without stream", 400, s.post("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}),
             "only be defined when `stream=True`"),
            ("stream_options not an object", 400, s.post("/v1/completions", {"prompt": "x", "stream": True, "stream_options": True}),
             "'stream_options' must be an object"),
            ("user not a string", 400, s.post("/v1/completions", {"prompt": "x", "user": 5}), "'user' must be a string"),
            ("image content", 400, s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
             "image_url"),
        ]:
            ok, detail = err(status, resp, needle)
            check("error: " + name, ok, detail)

        st, h = s.request("GET", "/health")
        check("the server answers after the bad requests", st == 200, (st, h))
        check("/ping answers GET and POST as /health (vLLM), other methods 405",
              s.request("GET", "/ping")[0] == 200 and s.request("POST", "/ping")[0] == 200
              and s.request("DELETE", "/ping")[0] == 405, s.request("DELETE", "/ping"))
        # HEAD wherever GET is (Starlette, under vLLM, does so): the GET's status and Content-Length, no body;
        # a POST-only route still 405.
        st_h, hh = heads(s.port, "HEAD", "/v1/models", {})
        _, got = s.request("GET", "/v1/models")
        check("HEAD answers as GET without the body; POST-only routes 405",
              st_h == 200 and int(hh.get("content-length", -1)) == len(got.encode()) and heads(s.port, "HEAD", "/health", {})[0] == 200
              and heads(s.port, "HEAD", "/v1/completions", {})[0] == 405, (st_h, hh, len(got)))
        # generation_config auto (the default): a request that sets no sampling parameter gets the model's
        # generation_config.json ones (tiny-qwen2: temperature 0.7, top_p 0.8, top_k 20, repetition 1.05).
        base = {"prompt": "Hello", "max_tokens": 8, "seed": 11, "ignore_eos": True}
        st, gd = s.post("/v1/completions", base)
        st2, gx = s.post("/v1/completions", {**base, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05})
        st3, g1 = s.post("/v1/completions", {**base, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0})
        check("generation_config auto: defaults are the model's generation_config.json",
              st == st2 == st3 == 200 and gd["choices"][0]["text"] == gx["choices"][0]["text"]
              and gd["choices"][0]["text"] != g1["choices"][0]["text"], (gd, gx, g1))
        with open(s.log.name) as f:
            check("generation_config auto: logged", "default sampling parameters from the model's generation_config.json" in f.read())
        # allowed_token_ids (vLLM): only those tokens come out, greedy or sampled.
        st, yn = s.post("/tokenize", {"prompt": " yes no"})
        for temp in (0, 1.0):
            st2, al = s.post("/v1/completions", {"prompt": "Hello", "max_tokens": 6, "ignore_eos": True, "temperature": temp,
                                                 "seed": 3, "allowed_token_ids": yn["tokens"]})
            text = al["choices"][0]["text"] if st2 == 200 else ""
            check(f"allowed_token_ids (temperature {temp}): the output is made of them",
                  st == 200 and len(yn["tokens"]) == 2 and st2 == 200 and text.replace(" yes", "").replace(" no", "") == ""
                  and al["usage"]["completion_tokens"] == 6, (yn, al))
        # bad_words (vLLM): a word's last token is banned where the output ends with the tokens before it.
        def toks(body):
            st, r = s.post("/v1/completions", {"max_tokens": 4, "temperature": 0, "logprobs": 0, **body})
            return r["choices"][0]["logprobs"]["tokens"] if st == 200 else (st, r)
        plain = toks({"prompt": "The capital of France is"})
        banned = toks({"prompt": "The capital of France is", "bad_words": ["ICIENT"]})
        check("bad_words: a one-token word never appears", plain[0] == "ICIENT" and "ICIENT" not in banned, (plain, banned))
        plain = toks({"prompt": "one two three"})
        banned = toks({"prompt": "one two three", "bad_words": ["Running Também"]})
        check("bad_words: the second token of a two-token word is banned after the first",
              plain[:3] == ["Running", "Running", " Também"] and banned[:2] == ["Running", "Running"]
              and " Também" not in banned, (plain, banned))
        # Masks that leave no token: refused when the first step's are empty (as vLLM), and when a later
        # step's are (JSON mode allowing only "{": nothing may follow it), that request fails alone with
        # a 400 (streamed: an error event, then [DONE]) while the engine goes on. It used to stop the engine.
        st, ob = s.post("/tokenize", {"prompt": "{"})
        st2, r = s.post("/v1/completions", {"prompt": "x", "allowed_token_ids": ob["tokens"], "bad_words": ["{"]})
        check("no token allowed at the first step: 400", st2 == 400 and "no token could be generated" in r["error"]["message"], r)
        dead = {"prompt": "a b c", "max_tokens": 5, "n": 2, "allowed_token_ids": ob["tokens"], "response_format": {"type": "json_object"}}
        st2, r = s.post("/v1/completions", dead)
        st3, ev = s.stream("/v1/completions", {**dead, "stream": True})
        errs = [json.loads(e)["error"] for e in ev if e != "[DONE]" and "error" in json.loads(e)]
        st4, h = s.request("GET", "/health")
        st5, ok = s.post("/v1/completions", {"prompt": "a b c", "max_tokens": 3})
        check("no token allowed at a later step: that request fails alone",
              st2 == 400 and "no token can be drawn" in r["error"]["message"] and st3 == 200 and len(errs) == 1
              and errs[0]["code"] == 400 and ev[-1] == "[DONE]" and st4 == 200 and st5 == 200, (r, ev, h, ok))
        # truncate_prompt_tokens (vLLM): the last k tokens of each prompt; -1: up to max_model_len.
        long_ids = [(i * 37) % 500 + 10 for i in range(600)]
        st, tr = s.post("/v1/completions", {"prompt": long_ids, "truncate_prompt_tokens": 10, "max_tokens": 2, "echo": True,
                                            "temperature": 0})
        st2, want = s.post("/detokenize", {"tokens": long_ids[-10:]})
        check("truncate_prompt_tokens: a 600-token prompt served from its last 10 tokens",
              st == 200 and tr["usage"]["prompt_tokens"] == 10 and st2 == 200
              and tr["choices"][0]["text"].startswith(want["prompt"]), (tr, want))
        st, tq = s.post("/v1/completions", {"prompt": long_ids[-10:], "max_tokens": 2, "temperature": 0})
        check("truncate_prompt_tokens: the same completion as the last 10 tokens sent alone",
              st == 200 and tr["choices"][0]["text"] == want["prompt"] + tq["choices"][0]["text"], (tr, tq))
        st, tm = s.post("/v1/chat/completions", {"messages": msgs, "truncate_prompt_tokens": 3, "max_tokens": 1})
        check("truncate_prompt_tokens on a chat", st == 200 and tm["usage"]["prompt_tokens"] == 3, tm)
        st, tn = s.post("/v1/completions", {"prompt": long_ids[:100], "truncate_prompt_tokens": -1, "max_tokens": 1})
        check("truncate_prompt_tokens -1: a shorter prompt is kept whole", st == 200 and tn["usage"]["prompt_tokens"] == 100, tn)
        st, tf = s.post("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "text"}, "max_tokens": 2,
                                                 "best_of": 1, "bad_words": [], "use_beam_search": False, "prompt_logprobs": None,
                                                 "allowed_token_ids": None, "priority": 0})
        check("response_format text, best_of = n and no-op values of unsupported options are accepted", st == 200 and tf["usage"]["completion_tokens"] == 2, tf)
        # Prompt log-probabilities: echo with logprobs (what evaluation harnesses send to score a text) and
        # vLLM's prompt_logprobs, against transformers' goldens for the same prompt (tp=2: the vocabulary
        # split over both ranks).
        gold = json.load(open(os.path.join(FIXTURES, "golden", "tiny-qwen2.json")))["public"][1]
        ids = gold["ids"]
        st, ptext = s.post("/detokenize", {"tokens": ids})
        st2, sc = s.post("/v1/completions", {"prompt": ids, "echo": True, "logprobs": 5, "max_tokens": 0})
        c = sc["choices"][0] if st2 == 200 else {}
        lp = c.get("logprobs") or {}
        check("echo + logprobs + max_tokens 0: the prompt alone, each token with its log-probability after the first",
              st == st2 == 200 and c["text"] == ptext["prompt"] and len(lp["tokens"]) == len(ids)
              and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
              and all(isinstance(x, float) and x <= 0 for x in lp["token_logprobs"][1:])
              and all(lp["text_offset"][i + 1] - lp["text_offset"][i] == len(lp["tokens"][i]) for i in range(len(ids) - 1))
              and sc["usage"]["prompt_tokens"] == len(ids), sc)
        pl = c.get("prompt_logprobs") or []
        worst, agree = 0.0, len(pl) == len(ids) and pl[0] is None
        for t in range(len(ids) - 1):
            if not agree:
                break
            entry = pl[t + 1]
            mine = entry.get(str(ids[t + 1]))
            agree = agree and mine is not None and mine["logprob"] == lp["token_logprobs"][t + 1] and mine["rank"] >= 1
            by_rank = {e["rank"]: (int(k), e["logprob"]) for k, e in entry.items() if int(k) != ids[t + 1] or e["rank"] <= 5}
            for k in range(5):
                tid, v = by_rank.get(k + 1, (-1, 0.0))
                worst = max(worst, abs(v - gold["prefill"]["top_logprobs"][t][k]))
                agree = agree and tid == gold["prefill"]["top_ids"][t][k]
        check("echo + logprobs: prompt_logprobs as vLLM's (token id -> logprob, rank, decoded_token), the top 5 at every "
              f"position as transformers' (worst {worst:.1e})", agree and worst < 1e-3, (worst, pl[:3]))
        st, gen = s.post("/v1/completions", {"prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 1})
        st2, both = s.post("/v1/completions", {"prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 1, "echo": True})
        g, b = gen["choices"][0], both["choices"][0]
        check("echo + logprobs + max_tokens 3: the prompt's entries, then the completion's as without echo",
              st == st2 == 200 and b["text"] == ptext["prompt"] + g["text"] and len(b["logprobs"]["tokens"]) == len(ids) + 3
              and b["logprobs"]["tokens"][len(ids):] == g["logprobs"]["tokens"]
              and b["logprobs"]["token_logprobs"][len(ids):] == g["logprobs"]["token_logprobs"]
              and b["logprobs"]["text_offset"][len(ids)] == len(ptext["prompt"].encode()), (gen, both))
        st, events = s.stream("/v1/completions", {"prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 1, "echo": True,
                                                  "stream": True})
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        toks = [t for ch in chunks for t in (ch["choices"][0]["logprobs"] or {}).get("tokens", [])]
        check("echo + logprobs streamed: the prompt's entries ride on the first chunk, the same tokens in all",
              st == 200 and toks == b["logprobs"]["tokens"] and len(chunks[0]["choices"][0]["logprobs"]["tokens"]) >= len(ids),
              (toks, b["logprobs"]["tokens"]))
        st, events = s.stream("/v1/completions", {"prompt": ids, "max_tokens": 0, "logprobs": 1, "echo": True, "stream": True})
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        text = "".join(ch["choices"][0]["text"] for ch in chunks)
        toks = [t for ch in chunks for t in (ch["choices"][0]["logprobs"] or {}).get("tokens", [])]
        check("echo + max_tokens 0 streamed: the prompt alone and its entries, then the finish",
              st == 200 and text == ptext["prompt"] and toks == lp["tokens"]
              and chunks[-1]["choices"][0]["finish_reason"] == "length", chunks[-2:])
        st, ti = s.post("/v1/completions", {"prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": True,
                                            "return_tokens_as_token_ids": True})
        tl = ti["choices"][0]["logprobs"] if st == 200 else {}
        check("return_tokens_as_token_ids: completions entries name tokens token_id:<id> (prompt, then generated)",
              st == 200 and tl["tokens"][:len(ids)] == [f"token_id:{t}" for t in ids]
              and all(t.startswith("token_id:") for t in tl["tokens"])
              and all(k.startswith("token_id:") for d in tl["top_logprobs"][1:] for k in d)
              and tl["token_logprobs"] == b["logprobs"]["token_logprobs"], ti)
        st, tc = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "temperature": 0, "logprobs": True,
                                                 "top_logprobs": 1, "return_tokens_as_token_ids": True})
        content = tc["choices"][0]["logprobs"]["content"] if st == 200 else []
        check("return_tokens_as_token_ids: chat entries too, their bytes those of the name",
              st == 200 and len(content) == 2 and all(e["token"].startswith("token_id:") and bytes(e["bytes"]).decode() == e["token"]
                                                       and e["top_logprobs"][0]["token"].startswith("token_id:") for e in content), tc)
        st, pn = s.post("/v1/completions", {"prompt": ids, "max_tokens": 2, "n": 2, "seed": 5, "prompt_logprobs": 0})
        check("prompt_logprobs 0 with n 2: each choice carries the prompt's (its own token only)",
              st == 200 and pn["choices"][0]["prompt_logprobs"] == pn["choices"][1]["prompt_logprobs"]
              and len(pn["choices"][0]["prompt_logprobs"]) == len(ids)
              and all(len(e) == 1 for e in pn["choices"][0]["prompt_logprobs"][1:])
              and pn["choices"][0]["logprobs"] is None, pn)
        st, cp = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 1, "prompt_logprobs": 2})
        check("chat prompt_logprobs: one entry per prompt token at the response's top level",
              st == 200 and len(cp["prompt_logprobs"]) == cp["usage"]["prompt_tokens"] and cp["prompt_logprobs"][0] is None
              and all(1 <= len(e) <= 3 for e in cp["prompt_logprobs"][1:]), cp)
        # Guided decoding (tp=2: each rank masks its half of the vocabulary): JSON mode keeps the text a
        # JSON object, whole when the model stops; guided_choice gives one of the strings.
        st, gj = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 48, "n": 6, "temperature": 1.0, "seed": 7,
                                                 "response_format": {"type": "json_object"}})
        texts = [(c["message"]["content"], c["finish_reason"]) for c in gj.get("choices", [])]
        whole = [json.loads(t) for t, f in texts if f == "stop"]
        check("response_format json_object: a stopped answer is a JSON object, a cut one starts as one",
              st == 200 and len(texts) == 6 and all(isinstance(o, dict) for o in whole)
              and all(t.lstrip().startswith("{") for t, f in texts if t.strip()), texts)
        st, gc = s.post("/v1/completions", {"prompt": "Pick:", "max_tokens": 8, "n": 5, "temperature": 1.0, "seed": 3,
                                            "guided_choice": ["red", "green", "blue sky"]})
        picks = [(c["text"], c["finish_reason"]) for c in gc.get("choices", [])]
        check("guided_choice: every answer is one of the strings, ended by EOS",
              st == 200 and len(picks) == 5 and all(t in ("red", "green", "blue sky") and f == "stop" for t, f in picks), picks)
        st, events = s.stream("/v1/chat/completions", {"messages": msgs, "max_tokens": 8, "stream": True, "temperature": 0,
                                                       "guided_choice": ["alpha", "beta"]})
        streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events
                           if e != "[DONE]" and json.loads(e)["choices"])
        check("guided_choice streamed", st == 200 and streamed in ("alpha", "beta"), (streamed, events[-3:]))
        st, so = s.post("/v1/completions", {"prompt": "Pick:", "max_tokens": 8, "n": 5, "temperature": 1.0, "seed": 3,
                                            "structured_outputs": {"choice": ["red", "green", "blue sky"]}})
        check("structured_outputs.choice (vLLM's current name): the same answers as guided_choice",
              st == 200 and [(c["text"], c["finish_reason"]) for c in so["choices"]] == picks, (so, picks))
        st, sj = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 48, "n": 6, "temperature": 1.0, "seed": 7,
                                                 "structured_outputs": {"json_object": True}})
        check("structured_outputs.json_object: the same answers as response_format json_object",
              st == 200 and [(c["message"]["content"], c["finish_reason"]) for c in sj["choices"]] == texts, (sj, texts))
        # A regular expression (structured_outputs regex, guided_regex): every stopped answer fully matches
        # it as Python's re.fullmatch(pattern, text, re.ASCII) does, and a cut one is a prefix of a match.
        pattern = r"(\d{3}-\d{4}|[A-Z][a-z]{1,5} (?:Street|Road)|caf\u00e9 ?[!?]{1,2})"
        st, rg = s.post("/v1/completions", {"prompt": "Say something:", "max_tokens": 24, "n": 6, "temperature": 1.0, "seed": 5,
                                            "structured_outputs": {"regex": pattern}})
        answers = [(c["text"], c["finish_reason"]) for c in rg.get("choices", [])]
        check("structured_outputs.regex: answers fully match the pattern (every alternative is bounded: all stop)",
              st == 200 and len(answers) == 6 and all(f == "stop" for _, f in answers)
              and all(re.fullmatch(pattern, t, re.ASCII) for t, f in answers if f == "stop"), answers)
        st, events = s.stream("/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "stream": True, "temperature": 0,
                                                       "guided_regex": "(yes|no), [a-z]{2,4}"})
        streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events
                           if e != "[DONE]" and json.loads(e)["choices"])
        check("guided_regex streamed", st == 200 and re.fullmatch("(yes|no), [a-z]{2,4}", streamed), (streamed, events[-3:]))
        # A context-free grammar (structured_outputs grammar, guided_grammar; vLLM's example, and a
        # recursive one): every stopped answer is a text of the language (here as Python's re sees the
        # first; by a small recursive-descent reading for the second).
        sql = ('root ::= select_statement\nselect_statement ::= "SELECT " column " from " table " where " condition\n'
               'column ::= "col_1 " | "col_2 "\ntable ::= "table_1 " | "table_2 "\ncondition ::= column "= " number\n'
               'number ::= "1 " | "2 "')
        st, gr = s.post("/v1/completions", {"prompt": "Write SQL:", "max_tokens": 40, "n": 4, "temperature": 1.0, "seed": 3,
                                            "structured_outputs": {"grammar": sql}})
        sql_re = r"SELECT col_[12]  from table_[12]  where col_[12] = [12] "
        answers = [(c["text"], c["finish_reason"]) for c in gr.get("choices", [])]
        check("structured_outputs.grammar: answers are texts of vLLM's example grammar",
              st == 200 and len(answers) == 4 and all(f == "stop" and re.fullmatch(sql_re, t) for t, f in answers), answers)

        def balanced(t):  # expr ::= term (("+" | "-") term)*, term ::= [0-9]+ | "(" expr ")"
            def expr(i):
                i = term(i)
                while i is not None and i < len(t) and t[i] in "+-":
                    i = term(i + 1)
                return i
            def term(i):
                if i < len(t) and t[i].isdigit():
                    while i < len(t) and t[i].isdigit():
                        i += 1
                    return i
                if i < len(t) and t[i] == "(":
                    i = expr(i + 1)
                    return i + 1 if i is not None and i < len(t) and t[i] == ")" else None
                return None
            return expr(0) == len(t)
        arith = 'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= [0-9]{1,3} | "(" expr ")"'
        st, events = s.stream("/v1/chat/completions", {"messages": msgs, "max_tokens": 40, "stream": True, "n": 1,
                                                       "temperature": 1.0, "seed": 11, "guided_grammar": arith})
        chunks = [json.loads(e)["choices"][0] for e in events if e != "[DONE]" and json.loads(e)["choices"]]
        streamed = "".join(c["delta"].get("content") or "" for c in chunks)
        check("guided_grammar streamed: a recursive grammar's text (or, cut by max_tokens, a prefix of one)",
              st == 200 and (balanced(streamed) if chunks[-1]["finish_reason"] == "stop" else chunks[-1]["finish_reason"] == "length"),
              (streamed, chunks[-1]))
        # The same language written left-recursively (as xgrammar takes it) guides the same seeded answer.
        left = 'root ::= expr\nexpr ::= expr ("+" | "-") term | term\nterm ::= [0-9]{1,3} | "(" expr ")"'
        st, lr = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 40, "n": 1, "temperature": 1.0, "seed": 11,
                                                 "guided_grammar": left})
        check("guided_grammar with direct left recursion: the answer of the same grammar written as a repetition",
              st == 200 and lr["choices"][0]["message"]["content"] == streamed, (lr, streamed))
        # A JSON schema (response_format json_schema, guided_json, structured_outputs json): stopped answers
        # are valid under it, with the properties in the schema's order (declared out of alphabetical order).
        schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                   "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                                                   "pet": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
                  "required": ["name", "age"]}

        def valid(text):
            try:
                o = json.loads(text)
            except ValueError:
                return False
            keys = [k for k in schema["properties"] if k in o]
            return (isinstance(o, dict) and list(o) == keys and isinstance(o["name"], str) and type(o["age"]) is int
                    and all(t in ("a", "b") for t in o.get("tags", [])) and len(o.get("tags", [])) <= 2
                    and (o.get("pet") is None or isinstance(o["pet"], str)))
        for name, extra in (("response_format json_schema", {"response_format": {"type": "json_schema", "json_schema": {
                                "name": "person", "schema": schema, "strict": True}}}),
                            ("guided_json", {"guided_json": schema}),
                            ("structured_outputs.json as text", {"structured_outputs": {"json": json.dumps(schema)}})):
            st, gs = s.post("/v1/chat/completions", dict({"messages": msgs, "max_tokens": 64, "n": 6, "temperature": 1.0,
                                                          "seed": 11}, **extra))
            answers = [(c["message"]["content"], c["finish_reason"]) for c in gs.get("choices", [])]
            check(name + ": every stopped answer is valid under the schema, properties in its order",
                  st == 200 and len(answers) == 6 and all(valid(t) for t, f in answers if f == "stop")
                  and all(t.lstrip().startswith("{") for t, f in answers if t.strip()), answers)
        # Strings with a pattern, a format and length bounds: every stopped answer has them.
        coded = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$"},
                                                  "day": {"type": "string", "format": "date"},
                                                  "nick": {"type": "string", "minLength": 2, "maxLength": 5},
                                                  "age": {"type": "integer", "minimum": 18, "maximum": 99},
                                                  "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
                 "required": ["code", "day", "nick", "age", "score"]}

        def coded_ok(text):
            try:
                o = json.loads(text)
                datetime.date.fromisoformat(o["day"])
            except (ValueError, KeyError, TypeError):
                return False
            return (list(o) == ["code", "day", "nick", "age", "score"] and type(o["age"]) is int and 18 <= o["age"] <= 99
                    and 0 < o["score"] <= 1 and re.fullmatch(r"[A-Z]{3}-\d{2}", o["code"]) is not None
                    and re.fullmatch(r"\d{4}-\d\d-\d\d", o["day"]) is not None and 2 <= len(o["nick"]) <= 5)

        def sampled_answers_pass(what, schema, ok, n, max_tokens, seed):
            """n sampled chat answers under response_format json_schema: some stop, and every stopped one is ok."""
            st, g = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": max_tokens, "n": n, "temperature": 1.0, "seed": seed,
                                                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
            answers = [(c["message"]["content"], c["finish_reason"]) for c in g.get("choices", [])]
            check(what, st == 200 and len(answers) == n and any(f == "stop" for _, f in answers)
                  and all(ok(t) for t, f in answers if f == "stop"), answers)
        sampled_answers_pass("json_schema strings with pattern, format and minLength / maxLength, numbers with bounds: every stopped answer has them",
                             coded, coded_ok, 4, 120, 3)
        # A union of objects no first property tells apart (Pydantic's Union[Cat, Dog]) goes to a grammar made
        # from the schema: every stopped answer is a Cat or a Dog, its properties in the schema's order.
        pets = {"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}], "$defs": {
            "Cat": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "meows": {"type": "integer", "minimum": 0}},
                    "required": ["name", "meows"]},
            "Dog": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "barks": {"type": "boolean"},
                    "born": {"type": "string", "format": "date"}}, "required": ["name", "barks"]}}}

        def pet_ok(text):
            try:
                o = json.loads(text)
                if "born" in o:
                    datetime.date.fromisoformat(o["born"])
            except (ValueError, TypeError):
                return False
            if not isinstance(o, dict) or not isinstance(o.get("name"), str) or len(o["name"]) > 8:
                return False
            if list(o) == ["name", "meows"]:
                return type(o["meows"]) is int and o["meows"] >= 0
            return list(o) in (["name", "barks"], ["name", "barks", "born"]) and type(o["barks"]) is bool
        sampled_answers_pass("json_schema with a union of objects that begin alike (a grammar): every stopped answer is one of them",
                             pets, pet_ok, 8, 60, 7)
        # disable_any_whitespace (vLLM): no whitespace between tokens (this model otherwise opens with newlines).
        st, gw = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 24, "n": 6, "temperature": 1.0, "seed": 11,
                                                 "structured_outputs": {"json": schema, "disable_any_whitespace": True}})
        compact = [c["message"]["content"] for c in gw.get("choices", [])]
        check("structured_outputs.disable_any_whitespace: compact JSON (no whitespace before the first string)",
              st == 200 and len(compact) == 6 and all(t.startswith("{\"name\":\"") for t in compact), compact)
        st, gsc = s.post("/v1/completions", {"prompt": "Person:", "max_tokens": 64, "n": 4, "temperature": 1.0, "seed": 5,
                                             "guided_json": schema})
        check("guided_json on completions", st == 200 and all(valid(c["text"]) for c in gsc["choices"] if c["finish_reason"] == "stop"),
              gsc)
        # continue_final_message: the prompt ends with the final (assistant) message's text, open.
        cont = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "My favourite color is"}]
        st, ct = s.post("/tokenize", {"messages": cont, "continue_final_message": True})
        st2, ctext = s.post("/detokenize", {"tokens": ct["tokens"]}) if st == 200 else (st, ct)
        check("continue_final_message ends the prompt with the final message", st == 200 and ctext["prompt"].endswith("color is"), ctext)
        st, cc = s.post("/v1/chat/completions", {"messages": cont, "continue_final_message": True, "max_tokens": 2})
        check("continue_final_message: the completion counts that prompt", st == 200 and cc["usage"]["prompt_tokens"] == ct["count"], cc)
        # Chat echo (vLLM): the final message's content comes first when its role is the answer's.
        st, ce = s.post("/v1/chat/completions", {"messages": cont, "continue_final_message": True, "max_tokens": 2,
                                                 "temperature": 0, "echo": True})
        st2, cg = s.post("/v1/chat/completions", {"messages": cont, "continue_final_message": True, "max_tokens": 2,
                                                  "temperature": 0})
        check("chat echo: the continued assistant message comes first",
              st == 200 and st2 == 200 and ce["choices"][0]["message"]["role"] == "assistant"
              and ce["choices"][0]["message"]["content"] == "My favourite color is" + cg["choices"][0]["message"]["content"],
              (ce, cg))
        st, ev = s.stream("/v1/chat/completions", {"messages": cont, "continue_final_message": True, "max_tokens": 2,
                                                   "temperature": 0, "echo": True, "stream": True})
        streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in ev if e != "[DONE]")
        check("chat echo streamed: the same text", st == 200 and streamed == ce["choices"][0]["message"]["content"], (streamed, ce))
        st, cu = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "temperature": 0, "echo": True})
        st2, cn = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "temperature": 0})
        check("chat echo after a user message: nothing prepended (the answer is the assistant's)",
              st == 200 and cu["choices"][0]["message"] == cn["choices"][0]["message"], (cu, cn))
        st, cr = s.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "add_generation_prompt": False, "echo": True})
        check("no generation prompt: the answer has the final message's role, and echo prepends it",
              st == 200 and cr["choices"][0]["message"]["role"] == msgs[-1]["role"]
              and cr["choices"][0]["message"]["content"].startswith(msgs[-1]["content"]), cr)
        st, cb = s.post("/v1/chat/completions", {"messages": cont, "continue_final_message": True, "add_generation_prompt": True})
        check("error: continue_final_message with add_generation_prompt", st == 400 and "cannot both" in cb["error"]["message"], cb)

        # logit_bias: +100 on one token makes it the greedy choice every step (the raw logits are a few units apart).
        st, lb = s.post("/v1/completions", {"prompt": "Name a color.", "max_tokens": 3, "temperature": 0, "logit_bias": {"9707": 100}})
        st2, want = s.post("/detokenize", {"tokens": [9707] * 3})
        check("logit_bias steers the greedy draw", st == 200 and st2 == 200 and lb["choices"][0]["text"] == want["prompt"], (lb, want))

        # Tools: rendered into the prompt (the template lists them); OpenAI-style tool-call arguments
        # (JSON strings) in the history are parsed before rendering.
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
        hist = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}]
        st_t, with_tools = s.post("/tokenize", {"messages": hist, "tools": tools})
        st_n, no_tools = s.post("/tokenize", {"messages": hist})
        check("tools are rendered into the prompt", st_t == 200 and with_tools["count"] > no_tools["count"] + 50, (with_tools, no_tools))
        st, rt = s.post("/v1/chat/completions", {"messages": hist, "tools": tools, "max_tokens": 4})
        check("tool round trip answers", st == 200 and rt["usage"]["prompt_tokens"] == with_tools["count"], rt)
        # A message without content, or with null (how clients send back an assistant's tool calls), gives
        # the template the empty string, as vLLM does (the template's string concatenation would fail on none).
        st_e, empty = s.post("/tokenize", {"messages": [{"role": "user", "content": ""}] + hist[1:]})
        st_m, missing = s.post("/tokenize", {"messages": [{"role": "user"}, {**hist[1], "content": None}] + hist[2:]})
        check("a message without content renders as empty content", st_e == 200 and st_m == 200 and empty["tokens"] == missing["tokens"],
              (empty, missing))
        # tool_choice required: a JSON array of calls of the tools, guided by a schema made from them (the
        # calls told apart by their name), returned as tool calls; a text cut by max_tokens stays content.
        tools2 = tools + [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]
        st, rq = s.post("/v1/chat/completions", {"messages": msgs, "tools": tools2, "tool_choice": "required", "max_tokens": 60,
                                                 "n": 6, "temperature": 1.0, "seed": 4})

        def call_ok(tc):
            a = json.loads(tc["function"]["arguments"])
            if tc["function"]["name"] == "get_weather":
                return list(a) == ["city"] and isinstance(a["city"], str)
            return tc["function"]["name"] == "add" and list(a) == ["a", "b"] and all(type(a[k]) is int for k in a)
        got = [(c["message"].get("tool_calls"), c["message"]["content"], c["finish_reason"]) for c in rq.get("choices", [])]
        check("tool_choice required: stopped answers are calls of the tools with valid arguments, cut ones stay content",
              st == 200 and len(got) == 6 and all((f == "tool_calls" and tcs and content is None and all(call_ok(t) for t in tcs))
                                                  or (f == "length" and not tcs and content.lstrip().startswith("["))
                                                  for tcs, content, f in got), got)
        st, rs = s.stream("/v1/chat/completions", {"messages": msgs, "tools": tools2, "tool_choice": "required", "max_tokens": 60,
                                                   "stream": True, "temperature": 1.0, "seed": 4})
        chunks = [json.loads(e)["choices"][0] for e in rs if e != "[DONE]" and json.loads(e)["choices"]]
        scalls = [t for c in chunks for t in c["delta"].get("tool_calls", [])]
        text = "".join(c["delta"].get("content") or "" for c in chunks)
        check("tool_choice required streamed: the calls whole at the end, as the whole answer's",
              st == 200 and ([(t["function"]["name"], t["function"]["arguments"]) for t in scalls]
                             == [(t["function"]["name"], t["function"]["arguments"]) for t in (got[0][0] or [])])
              and (text == "" if got[0][0] else text == got[0][1]) and chunks[-1]["finish_reason"] == got[0][2], (chunks[-2:], got[0]))
        st, rr = s.post("/v1/chat/completions", {"messages": msgs, "tool_choice": "required"})
        check("error: tool_choice required without tools", st == 400 and "needs 'tools'" in rr["error"]["message"], rr)
        st, rb = s.post("/v1/chat/completions", {"messages": msgs, "tools": [{"type": "function"}]})
        check("error: a tool without a named function", st == 400 and "needs a 'function' with a 'name'" in rb["error"]["message"], rb)
        # A named tool_choice: the output is that function's arguments, guided by its parameters schema
        # (as vLLM), returned as the one tool call; streamed, the first chunk names the call and the
        # arguments follow in pieces.
        named = {"type": "function", "function": {"name": "get_weather"}}
        st, nt = s.post("/v1/chat/completions", {"messages": msgs, "tools": tools, "tool_choice": named, "max_tokens": 40,
                                                 "n": 4, "temperature": 1.0, "seed": 2})
        calls = [(c["message"]["tool_calls"], c["message"]["content"], c["finish_reason"]) for c in nt.get("choices", [])]

        def args_ok(a, whole):
            if not whole:
                return a.lstrip().startswith("{")
            o = json.loads(a)
            return list(o) == ["city"] and isinstance(o["city"], str)
        check("named tool_choice: one call of that function, its arguments valid under the parameters schema",
              st == 200 and len(calls) == 4 and all(len(tc) == 1 and tc[0]["function"]["name"] == "get_weather" and content is None
                                                    and tc[0]["type"] == "function" and tc[0]["id"].startswith("call_")
                                                    and args_ok(tc[0]["function"]["arguments"], f == "stop")
                                                    for tc, content, f in calls), calls)
        st, ev = s.stream("/v1/chat/completions", {"messages": msgs, "tools": tools, "tool_choice": named, "max_tokens": 40,
                                                   "stream": True, "temperature": 1.0, "seed": 2})
        deltas = [json.loads(e)["choices"][0]["delta"] for e in ev if e != "[DONE]" and json.loads(e)["choices"]]
        streamed = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls"))
        check("named tool_choice streamed: the call named first, the arguments in pieces equal to the whole answer's",
              st == 200 and deltas[0]["tool_calls"][0]["function"]["name"] == "get_weather"
              and all("name" not in d["tool_calls"][0]["function"] for d in deltas[1:] if d.get("tool_calls"))
              and streamed == calls[0][0][0]["function"]["arguments"], (deltas[:3], streamed, calls[0]))
        st, nm = s.post("/v1/chat/completions", {"messages": msgs, "tools": tools,
                                                 "tool_choice": {"type": "function", "function": {"name": "nope"}}})
        check("error: a named tool_choice not among the tools", st == 400 and "Tool 'nope' has not been passed in `tools`."
              in nm["error"]["message"], nm)
        st, nb = s.post("/v1/chat/completions", {"messages": msgs, "tools": tools, "tool_choice": named,
                                                 "response_format": {"type": "json_object"}})
        check("error: a named tool_choice with another guided format", st == 400 and "only one kind of guided decoding"
              in nb["error"]["message"], nb)

        responses_checks(s, msgs, tools, hist, with_tools["count"])
        beam_search_checks(s)

        # A body over the limit is refused from its Content-Length, before it is sent.
        raw = socket.create_connection(("127.0.0.1", s.port))
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(17 << 20).encode() + b"\r\n\r\n{")
        reply = raw.recv(4096).decode(errors="replace")
        raw.close()
        check("error: body too large is 413", reply.startswith("HTTP/1.1 413") and "exceeds" in reply, reply[:200])

        # CORS by default (vLLM's): any origin; no Origin, no CORS headers.
        st, h = heads(s.port, "GET", "/v1/models", {"Origin": "http://anywhere.example"})
        st2, h2 = heads(s.port, "GET", "/v1/models", {})
        check("CORS: any origin by default", st == 200 and h.get("access-control-allow-origin") == "*"
              and "access-control-allow-origin" not in h2, (h, h2))
        # X-Request-Id: no response header without enable_request_id_headers, but a completion's id is
        # still built on the request's header (vLLM's).
        st, h = heads(s.port, "GET", "/v1/models", {"X-Request-Id": "abc"})
        st2, xc = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1}, headers={"X-Request-Id": "abc"})
        check("X-Request-Id: no response header by default; the completion's id is cmpl-<header>",
              st == 200 and "x-request-id" not in h and st2 == 200 and xc["id"] == "cmpl-abc", (h, xc))
        st, ld = s.request("GET", "/load")
        check("/load without enable_server_load_tracking: 0", st == 200 and json.loads(ld) == {"server_load": 0}, (st, ld))

        # "Expect: 100-continue" (curl sends it for bodies over 1 MB and waits a second for the 100): the
        # server answers 100 Continue before the body is sent, then the response.
        raw = socket.create_connection(("127.0.0.1", s.port))
        raw.settimeout(5)
        body = json.dumps({"prompt": "Hello", "max_tokens": 2}).encode()
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        t0 = time.time()
        interim = raw.recv(4096).decode(errors="replace")
        waited = time.time() - t0
        raw.sendall(body)
        final = b""
        while b'"usage"' not in final:
            chunk = raw.recv(65536)
            if not chunk:
                break
            final += chunk
        raw.close()
        check("Expect: 100-continue gets 100 Continue before the body, then 200",
              interim.startswith("HTTP/1.1 100 Continue") and waited < 0.9 and final.startswith(b"HTTP/1.1 200"),
              (interim[:80], waited, final[:80]))

        # 64 concurrent streams all complete with the right token counts (three rounds: a stalled I/O
        # thread once showed up only now and then).
        for rnd in range(3):
            counts, errors = [], []
            def one(i):
                try:
                    st, ev = s.stream("/v1/completions", {"prompt": f"request {i}", "max_tokens": 8, "ignore_eos": True,
                                                          "stream": True, "stream_options": {"include_usage": True}}, timeout=30)
                    usage = [json.loads(e) for e in ev if e != "[DONE]" and not json.loads(e)["choices"]]
                    counts.append(usage[0]["usage"]["completion_tokens"] if usage else -1)
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
            threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            check(f"64 concurrent streams complete (round {rnd + 1})", len(counts) == 64 and all(c == 8 for c in counts) and not errors,
                  (errors[:2], counts[:8]))
            print(f"  (64 streams x 8 tokens in {time.time() - t0:.1f} s)")

        # A client that disconnects aborts its request: nothing stays running or in the cache. Mid-stream
        # (after the headers and the first events), and before a non-streamed answer (closing right after
        # sending the request).
        def abandon(stream):
            raw = socket.create_connection(("127.0.0.1", s.port))
            body = json.dumps({"prompt": "long", "max_tokens": 400, "ignore_eos": True, "stream": stream}).encode()
            raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
            if stream:
                raw.recv(4096)
            else:
                time.sleep(0.02)
            raw.close()
            for _ in range(100):
                time.sleep(0.1)
                if s.metric("llmserve:num_requests_running") == 0 and s.metric("llmserve:kv_cache_usage_perc") == 0:
                    return True
            return False
        for stream in (True, False):
            check(f"disconnect {'mid-stream' if stream else 'before a non-streamed answer'} frees the request (metrics)",
                  abandon(stream), (s.metric("llmserve:num_requests_running"), s.metric("llmserve:kv_cache_usage_perc")))
        check("metrics count generated tokens", (s.metric("llmserve:generation_tokens_total") or 0) > 500)
        _, mtext = s.request("GET", "/metrics")
        counts = {n: float(l.split()[-1]) for l in mtext.splitlines() for n in
                  ("time_to_first_token_seconds_count", "inter_token_latency_seconds_count", "e2e_request_latency_seconds_count")
                  if l.startswith("llmserve:" + n)}
        check("metrics: TTFT, inter-token and end-to-end histograms", all(v > 10 for v in counts.values()) and len(counts) == 3, counts)
        ours = [l[len("llmserve:"):] for l in mtext.splitlines() if l.startswith("llmserve:")]
        theirs = [l[len("vllm:"):] for l in mtext.splitlines() if l.startswith("vllm:")]
        check("metrics: every family under vLLM's names too (vllm:num_requests_running, ...), the same labels and values",
              len(ours) > 30 and ours == theirs and "vllm:generation_tokens_total{" in mtext
              and mtext.count("# TYPE vllm:") == mtext.count("# TYPE llmserve:"), (len(ours), len(theirs)))
        # vLLM's request-level metrics: success by finish reason, each finished request's sizes and phases.
        def samples(text):
            return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("vllm:")}
        before = samples(mtext)
        for mt in (3, 5):
            s.post("/v1/completions", {"prompt": "Hello there", "max_tokens": mt, "ignore_eos": True, "temperature": 0})
        after = samples(s.request("GET", "/metrics")[1])
        delta = lambda k: after.get(f'vllm:{k}{{model_name="tiny"}}', 0) - before.get(f'vllm:{k}{{model_name="tiny"}}', 0)
        length = 'request_success_total{finished_reason="length",model_name="tiny"}'
        phases = {k: after[f'vllm:request_{k}_time_seconds_sum{{model_name="tiny"}}'] for k in ("prefill", "decode", "inference", "queue")}
        finished = sum(v for k, v in after.items() if k.startswith("vllm:request_success_total{"))
        check("metrics: vLLM's request-level histograms and success by finish reason (two length-capped requests)",
              after["vllm:" + length] - before["vllm:" + length] == 2 and delta("request_generation_tokens_sum") == 8
              and delta("request_params_max_tokens_sum") == 8 and delta("request_prompt_tokens_count") == 2
              and delta("request_params_n_sum") == 2 and delta("request_max_num_generation_tokens_sum") == 8
              and delta("iteration_tokens_total_count") >= 5
              and abs(phases["prefill"] + phases["decode"] - phases["inference"]) < 1e-3 and phases["queue"] >= 0
              and after['vllm:request_queue_time_seconds_count{model_name="tiny"}'] == finished > 10,
              (phases, finished, after.get("vllm:" + length)))

        # The official client, when it can be had.
        try:
            cl = import_openai().OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none")
            resp = cl.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
            check("openai client: chat", resp.choices[0].message.content == offline, resp)
            parts = [ch.choices[0].delta.content or "" for ch in cl.chat.completions.create(
                model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}) if ch.choices]
            check("openai client: streaming chat", "".join(parts) == offline, parts)
            comp = cl.completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0)
            check("openai client: completions", comp.usage.completion_tokens == 3, comp)
        except ImportError:
            print("SKIP openai client (the package could not be installed)")
    finally:
        rc = s.stop()
    check("SIGTERM to rank 0: every rank exits 0", rc == 0, rc)

    # Authentication: /v1 needs the key, /health and /metrics stay open.
    # Also vLLM's launch flags: response_role, no access log, and the ones accepted without effect; and
    # asynchronous scheduling (this server plans each step while the one before it runs).
    a = Server("--api-key", "sekret", "--allowed-origins", '["http://app.example"]', "--allowed-methods", '["GET", "POST"]',
               "--allow-credentials", "--response-role", "bot",
               "--disable-uvicorn-access-log", "--disable-log-requests", "--disable-log-stats", "--trust-remote-code",
               "--enable-auto-tool-choice", "--max-logprobs", "3", "--generation-config", "vllm", "--chat-template", "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}",
               "--async-scheduling", "--enable-prompt-tokens-details", "--return-tokens-as-token-ids", "--trust-request-chat-template",
               "--enable-force-include-usage", "--enable-log-outputs", "--max-log-len", "100", "--enable-request-id-headers",
               "--enable-server-load-tracking", "--default-chat-template-kwargs", '{"greet": "Hi", "bye": "."}', "-asc", "4",
               env={"VLLM_SERVER_DEV_MODE": "1"})
    try:
        # Greedy and streamed answers under asynchronous scheduling equal llmserve generate's (one rank, in turn).
        body = {"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        inp = os.path.join(BUILD, "test-out", "server-async-in.jsonl")
        outp = os.path.join(BUILD, "test-out", "server-async-out.jsonl")
        open(inp, "w").write(json.dumps(body) + "\n")
        subprocess.run([os.path.join(BUILD, "llmserve"), "generate", "--model", MODEL, *BACKEND_ARGS, "--max-model-len", "512",
                        "--generation-config", "vllm", "--scheduling-policy", "priority", "--input", inp, "--output", outp],
                       check=True, capture_output=True)
        offline = json.loads(open(outp).read())["outputs"][0]["text"]
        auth = {"Authorization": "Bearer sekret"}
        # --trust-request-chat-template: a request's own template (or chat_template_kwargs') is rendered.
        own = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        turns = [{"role": "user", "content": "Hello"}]
        _, plain = a.post("/tokenize", {"prompt": "<user>Hello", "add_special_tokens": False})
        st1, t1 = a.post("/tokenize", {"messages": turns, "chat_template": own})
        st2, t2 = a.post("/tokenize", {"messages": turns, "chat_template_kwargs": {"chat_template": own}})
        st3, t3 = a.post("/v1/chat/completions", {"messages": turns, "chat_template": "{% for m in messages %}", "max_tokens": 1},
                         headers=auth)
        _, served = a.post("/tokenize", {"messages": turns})
        check("trust_request_chat_template: the request's template rendered (its own field or chat_template_kwargs'), a broken one a 400",
              st1 == st2 == 200 and t1["tokens"] == t2["tokens"] == plain["tokens"] and served["tokens"] != plain["tokens"]
              and st3 == 400 and "chat_template does not parse" in t3["error"]["message"], (t1, t2, t3, plain))
        # default_chat_template_kwargs: the template's arguments unless a request's chat_template_kwargs names them.
        greeter = "{{ greet }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{{ bye }}"
        _, want_default = a.post("/tokenize", {"prompt": "Hi<user>Hello.", "add_special_tokens": False})
        _, want_own = a.post("/tokenize", {"prompt": "Yo<user>Hello.", "add_special_tokens": False})
        _, d1 = a.post("/tokenize", {"messages": turns, "chat_template": greeter})
        _, d2 = a.post("/tokenize", {"messages": turns, "chat_template": greeter, "chat_template_kwargs": {"greet": "Yo"}})
        check("default_chat_template_kwargs: the template's arguments, a request's chat_template_kwargs over them key by key",
              d1.get("tokens") == want_default["tokens"] and d2.get("tokens") == want_own["tokens"], (d1, d2))
        st, ac = a.post("/v1/completions", body, headers=auth)
        check("async scheduling: greedy completion equals llmserve generate", st == 200 and ac["choices"][0]["text"] == offline,
              (ac, offline))
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
        c.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                  headers={"Content-Type": "application/json", **auth})
        ev = [line[6:] for line in c.getresponse().read().decode().split("\n") if line.startswith("data: ")]
        c.close()
        streamed = "".join(json.loads(e)["choices"][0]["text"] for e in ev if e != "[DONE]" and json.loads(e).get("choices"))
        check("async scheduling: streamed completion equals it too", streamed == offline, (ev, offline))
        # enable_force_include_usage (vLLM's): that stream (no stream_options) ends with a usage chunk anyway.
        forced = json.loads(ev[-2]) if len(ev) >= 2 else {}
        check("enable_force_include_usage: a stream without stream_options ends with usage",
              ev[-1:] == ["[DONE]"] and forced.get("choices") == [] and forced.get("usage", {}).get("completion_tokens") == 12, ev[-3:])
        st, rb = a.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                        headers={"Authorization": "Bearer sekret"})
        check("response_role: the chat answer's role", st == 200 and rb["choices"][0]["message"]["role"] == "bot", rb)
        # generation_config vllm: requests default to vLLM's own parameters (temperature 1, no filters).
        auth = {"Authorization": "Bearer sekret"}
        st, gv = a.post("/v1/completions", {"prompt": "Hello", "max_tokens": 8, "seed": 11, "ignore_eos": True}, headers=auth)
        st2, ge = a.post("/v1/completions", {"prompt": "Hello", "max_tokens": 8, "seed": 11, "ignore_eos": True, "temperature": 1.0,
                                             "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}, headers=auth)
        check("generation_config vllm: defaults are vLLM's own", st == 200 and st2 == 200
              and gv["choices"][0]["text"] == ge["choices"][0]["text"], (gv, ge))
        st, ml = a.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "logprobs": 4}, headers={"Authorization": "Bearer sekret"})
        st2, ok3 = a.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "logprobs": 3}, headers={"Authorization": "Bearer sekret"})
        check("max_logprobs: 4 of at most 3 is a 400, 3 is answered",
              st == 400 and "greater than max allowed: 3" in ml["error"]["message"] and st2 == 200, (ml, ok3))
        # return_tokens_as_token_ids on the server (vLLM's flag): entries name tokens "token_id:<id>" unless
        # a request says otherwise.
        named = ok3.get("choices", [{}])[0].get("logprobs", {}).get("tokens", []) if st2 == 200 else []
        st3, txt = a.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "logprobs": 3, "return_tokens_as_token_ids": False},
                          headers={"Authorization": "Bearer sekret"})
        check("return_tokens_as_token_ids: the server's default, a request's false wins",
              len(named) == 1 and named[0].startswith("token_id:") and st3 == 200
              and not txt["choices"][0]["logprobs"]["tokens"][0].startswith("token_id:"), (ok3, txt))
        st, tk = a.post("/tokenize", {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
                        headers={"Authorization": "Bearer sekret"})
        st2, dt = a.post("/detokenize", {"tokens": tk.get("tokens", [])}, headers={"Authorization": "Bearer sekret"})
        check("chat_template (inline, escapes decoded) replaces the model's",
              st == 200 and st2 == 200 and dt["prompt"] == "user: hi\nbot: yo\n", (tk, dt))
        # enable_prompt_tokens_details (vLLM's): usage names the prompt tokens served from the prefix cache,
        # whole and in a stream's usage chunk; a server without it leaves the field out.
        long_prompt = " ".join(["alpha beta gamma delta"] * 12)
        pb = {"prompt": long_prompt, "max_tokens": 2, "temperature": 0}
        st, u1 = a.post("/v1/completions", pb, headers=auth)
        st2, u2 = a.post("/v1/completions", pb, headers=auth)
        streamed = {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 2, "stream": True,
                    "stream_options": {"include_usage": True}}
        a.stream("/v1/chat/completions", streamed, headers=auth)  # (the first puts the prompt in the cache)
        _, ev = a.stream_chunks("/v1/chat/completions", streamed, headers=auth)
        su = (ev[-1].get("usage") if ev else None) or {}
        check("enable_prompt_tokens_details: cached prompt tokens in usage (whole and streamed)",
              st == st2 == 200 and u1["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
              and u2["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16
              and u2["usage"]["prompt_tokens_details"]["cached_tokens"] < u2["usage"]["prompt_tokens"]
              and su.get("prompt_tokens_details", {}).get("cached_tokens", 0) >= 16, (u1, u2, su))
        # vLLM's POST /reset_prefix_cache (VLLM_SERVER_DEV_MODE=1 on this server): an empty 200, then the prompt
        # finds nothing cached, and is cached again after; GET is a 405.
        rst, rbody = a.request("POST", "/reset_prefix_cache")
        _, u3 = a.post("/v1/completions", pb, headers=auth)
        _, u4 = a.post("/v1/completions", pb, headers=auth)
        check("/reset_prefix_cache (dev mode): no cached tokens after it, cached again on the next request",
              rst == 200 and rbody == "" and u3["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
              and u4["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16
              and a.request("GET", "/reset_prefix_cache")[0] == 405, (rst, rbody, u3.get("usage"), u4.get("usage")))
        # vLLM's cache_salt: a salted prompt finds only blocks cached under its own salt; an empty salt is a 400.
        salted = {"prompt": " ".join(["epsilon zeta eta theta"] * 12), "max_tokens": 2, "temperature": 0}  # (a prompt not cached yet)
        hits = []
        for salt in ["s1", "s2", None, "s1"]:
            st, u = a.post("/v1/completions", {**salted, **({"cache_salt": salt} if salt else {})}, headers=auth)
            hits.append(u["usage"]["prompt_tokens_details"]["cached_tokens"] if st == 200 else u)
        st, bad_salt = a.post("/v1/completions", {**salted, "cache_salt": ""}, headers=auth)
        check("cache_salt: prefix-cache hits only under the same salt (none for another salt or none); empty is a 400",
              hits[0] == hits[1] == hits[2] == 0 and isinstance(hits[3], int) and hits[3] >= 16 and st == 400
              and bad_salt["error"]["message"] == "Parameter 'cache_salt' must be a non-empty string if provided.", (hits, bad_salt))
        check("auth: no key is 401", a.request("GET", "/v1/models")[0] == 401)
        check("auth: wrong key is 401", a.request("GET", "/v1/models", headers={"Authorization": "Bearer nope"})[0] == 401)
        check("auth: right key is 200", a.request("GET", "/v1/models", headers={"Authorization": "Bearer sekret"})[0] == 200)
        check("auth: /health stays open", a.request("GET", "/health")[0] == 200)
        check("auth: /metrics stays open", a.request("GET", "/metrics")[0] == 200)

        # CORS with allowed_origins set: a preflight from a listed origin is answered without the key, and
        # answers (plain and streamed) name that origin; other origins get no CORS headers (their preflight
        # a 400, as vLLM's Starlette middleware); OPTIONS that is not a preflight stays a 405.
        app = {"Origin": "http://app.example"}
        st, h = heads(a.port, "OPTIONS", "/v1/chat/completions", {**app, "Access-Control-Request-Method": "POST",
                                                                 "Access-Control-Request-Headers": "authorization, content-type"})
        check("CORS: preflight answered without the key", st == 200 and h.get("access-control-allow-origin") == "http://app.example"
              and h.get("vary") == "Origin" and h.get("access-control-allow-methods") == "GET, POST"
              and h.get("access-control-allow-headers") == "authorization, content-type"
              and h.get("access-control-allow-credentials") == "true", (st, h))
        st, h = heads(a.port, "OPTIONS", "/v1/models", {**app, "Access-Control-Request-Method": "DELETE"})
        check("CORS: a preflight for a method not in allowed_methods is 400", st == 400 and h.get("access-control-allow-methods") == "GET, POST",
              (st, h))
        st, h = heads(a.port, "GET", "/v1/models", {**app, "Authorization": "Bearer sekret"})
        check("CORS: a listed origin is allowed", st == 200 and h.get("access-control-allow-origin") == "http://app.example", (st, h))
        st, h = heads(a.port, "POST", "/v1/completions", {**app, "Authorization": "Bearer sekret", "Content-Type": "application/json"},
                      json.dumps({"prompt": "Hello", "max_tokens": 2, "stream": True}))
        check("CORS: a streamed answer allows the origin", st == 200 and h.get("access-control-allow-origin") == "http://app.example", (st, h))
        evil = {"Origin": "http://evil.example"}
        st, h = heads(a.port, "GET", "/v1/models", {**evil, "Authorization": "Bearer sekret"})
        check("CORS: an origin not listed gets no CORS headers", st == 200 and "access-control-allow-origin" not in h, h)
        st, h = heads(a.port, "OPTIONS", "/v1/models", {**evil, "Access-Control-Request-Method": "GET"})
        check("CORS: a preflight from an origin not listed is 400", st == 400, (st, h))
        check("CORS: OPTIONS that is not a preflight is 405", heads(a.port, "OPTIONS", "/v1/models", {})[0] == 405)

        # enable_request_id_headers (vLLM's): every response carries X-Request-Id, the request's own where it
        # sent one; an answer's id is its API's prefix and that header, else the body's request_id.
        def exchange(method, path, headers, body=None):
            c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            out = r.read().decode()
            c.close()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, out
        key = {"Authorization": "Bearer sekret", "Content-Type": "application/json"}
        st, h, out = exchange("POST", "/v1/completions", {**key, "X-Request-Id": "trace-42"}, json.dumps({"prompt": "Hi", "max_tokens": 2}))
        check("request id headers: a completion echoes X-Request-Id and its id is cmpl-<header>",
              st == 200 and h.get("x-request-id") == "trace-42" and json.loads(out)["id"] == "cmpl-trace-42", (st, h, out))
        st, h, out = exchange("POST", "/v1/chat/completions", key,
                              json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "request_id": "mine-7"}))
        check("request id headers: a chat answer without the header takes the body's request_id (header and id)",
              st == 200 and h.get("x-request-id") == "mine-7" and json.loads(out)["id"] == "chatcmpl-mine-7", (st, h, out))
        st, h, out = exchange("POST", "/v1/completions", {**key, "X-Request-Id": "s-1"},
                              json.dumps({"prompt": "Hi", "max_tokens": 3, "stream": True}))
        ids = {json.loads(e[6:])["id"] for e in out.split("\n") if e.startswith("data: {")}
        check("request id headers: a stream's header and every chunk's id", st == 200 and h.get("x-request-id") == "s-1"
              and ids == {"cmpl-s-1"}, (st, h, ids))
        st, h, out = exchange("POST", "/v1/responses", key, json.dumps({"input": "hi", "max_output_tokens": 2, "request_id": "resp_mine"}))
        check("request id headers: a Responses request's request_id is its id", st == 200 and json.loads(out)["id"] == "resp_mine"
              and h.get("x-request-id") == "resp_mine", (st, h, out))
        (st, h, _), (st2, h2, _) = exchange("GET", "/health", {}), exchange("GET", "/health", {})
        st3, h3, out3 = exchange("POST", "/v1/completions", key, json.dumps({"prompt": "Hi", "max_tokens": -1}))
        st4, h4, out4 = exchange("POST", "/v1/completions", key, json.dumps({"prompt": "Hi", "max_tokens": 1, "request_id": 5}))
        st5, h5, out5 = exchange("POST", "/v1/completions", key,
                                 json.dumps({"prompt": "Hi", "max_tokens": 1, "request_id": "a\r\nSet-Cookie: x=1"}))
        check("request id headers: other routes and errors get a generated one; a request_id that is not a string, or holds "
              "control characters (a header's end), is a 400",
              st == st2 == 200 and h.get("x-request-id") and h2.get("x-request-id") and h["x-request-id"] != h2["x-request-id"]
              and st3 == 400 and h3.get("x-request-id") and st4 == 400 and "request_id" in json.loads(out4)["error"]["message"]
              and st5 == 400 and "set-cookie" not in h5 and "control characters" in json.loads(out5)["error"]["message"],
              (h, h2, st3, h3, st4, out4, st5, h5, out5))

        # enable_server_load_tracking (vLLM's): GET /load (open without the key) counts the requests in
        # flight, here three long ones, and is 0 once they are answered.
        def load():
            st, body = a.request("GET", "/load")
            return json.loads(body)["server_load"] if st == 200 else -1
        idle = load()
        longs = [threading.Thread(target=a.post, args=("/v1/completions", {"prompt": "Hi", "max_tokens": 480, "n": 8, "ignore_eos": True}),
                                  kwargs={"headers": {"Authorization": "Bearer sekret"}, "timeout": 300}) for _ in range(3)]
        for t in longs:
            t.start()
        seen, deadline = 0, time.time() + 30
        while seen < 3 and time.time() < deadline:
            seen = max(seen, load())
            time.sleep(0.002)
        for t in longs:
            t.join()
        check("server load tracking: /load counts the requests in flight, 0 before and after", idle == 0 and seen == 3 and load() == 0,
              (idle, seen, load()))
    finally:
        a.stop()
    # Asynchronous scheduling on one rank, where each step's forward pass is queued behind the draw of
    # the step before (its pending tokens filled in by the backend), and priority scheduling: concurrent
    # greedy and seeded sampled requests of mixed priorities, some streamed, answer as llmserve generate
    # does stepping in turn.
    q = Server("--async-scheduling", "--generation-config", "vllm", "--scheduling-policy", "priority", "--reasoning-parser", "qwen3",
               "--enable-tokenizer-info-endpoint", "--logprobs-mode", "processed_logprobs", np=1, tp=1)
    try:
        # enable_tokenizer_info_endpoint (vLLM's): the tokenizer's configuration as transformers loads it.
        st, ti = q.request("GET", "/tokenizer_info")
        info = json.loads(ti) if st == 200 else {}
        tc = json.load(open(os.path.join(FIXTURES, "models", "tiny-qwen2", "tokenizer_config.json")))
        check("/tokenizer_info: tokenizer_config.json's keys and values, the fast tokenizer class, the chat template",
              st == 200 and info.get("tokenizer_class") == "Qwen2TokenizerFast" and info.get("chat_template") == tc["chat_template"]
              and {k: v for k, v in info.items() if k != "tokenizer_class"} == {k: v for k, v in tc.items() if k != "tokenizer_class"}
              and q.request("POST", "/tokenizer_info")[0] == 405, ti[:300])
        # logprobs_mode processed_logprobs: those of the values drawn from, top_k 3 under a temperature
        # (at most 3 alternatives of the 5 asked for, their probabilities summing to 1); greedy: all 5.
        st, lr = q.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count"}], "max_tokens": 6, "temperature": 0.7,
                                                 "top_k": 3, "top_p": 1.0, "seed": 3, "logprobs": True, "top_logprobs": 5})
        steps = lr["choices"][0]["logprobs"]["content"] if st == 200 else []
        st2, gr = q.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count"}], "max_tokens": 3, "temperature": 0,
                                                  "logprobs": True, "top_logprobs": 5})
        gsteps = gr["choices"][0]["logprobs"]["content"] if st2 == 200 else []
        check("logprobs_mode processed_logprobs: a sampled answer's alternatives are the top_k survivors, summing to 1; greedy's all",
              len(steps) == 6 and all(1 <= len(e["top_logprobs"]) <= 3 and abs(sum(math.exp(a["logprob"]) for a in e["top_logprobs"]) - 1) < 1e-3
                                      and e["logprob"] <= e["top_logprobs"][0]["logprob"] for e in steps)
              and len(gsteps) == 3 and all(len(e["top_logprobs"]) == 5 for e in gsteps), (lr, gr))
        bodies = [{"prompt": p, "max_tokens": 10 + 3 * i, "ignore_eos": True, "priority": (2 * i) % 3 - 1,
                   **({"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "top_p": 0.9, "seed": 40 + i, "repetition_penalty": 1.2})}
                  for i, p in enumerate(["The quick brown fox", "Once upon a time", "Paris is", "1, 2, 3,", "Hello"])]
        inp = os.path.join(BUILD, "test-out", "server-queue-in.jsonl")
        outp = os.path.join(BUILD, "test-out", "server-queue-out.jsonl")
        open(inp, "w").write("".join(json.dumps(b) + "\n" for b in bodies))
        subprocess.run([os.path.join(BUILD, "llmserve"), "generate", "--model", MODEL, *BACKEND_ARGS, "--max-model-len", "512",
                        "--generation-config", "vllm", "--scheduling-policy", "priority", "--input", inp, "--output", outp],
                       check=True, capture_output=True)
        offline = [json.loads(l)["outputs"][0]["text"] for l in open(outp)]

        def ask(i):
            if i % 2:
                st, r = q.post("/v1/completions", bodies[i])
                return r["choices"][0]["text"] if st == 200 else r
            c = http.client.HTTPConnection("127.0.0.1", q.port, timeout=60)
            c.request("POST", "/v1/completions", body=json.dumps({**bodies[i], "stream": True}), headers={"Content-Type": "application/json"})
            ev = [line[6:] for line in c.getresponse().read().decode().split("\n") if line.startswith("data: ")]
            c.close()
            return "".join(json.loads(e)["choices"][0]["text"] for e in ev if e != "[DONE]" and json.loads(e).get("choices"))
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            served = list(pool.map(ask, range(len(bodies))))
        check("async and priority scheduling on one rank (steps queued behind the draw): concurrent greedy, sampled and "
              "streamed completions of mixed priorities equal llmserve generate's", served == offline, (served, offline))
        # reasoning_parser qwen3: an answer whose prompt ends with <think> (continue_final_message) is reasoning
        # until </think>, which this random model never writes: all of it is the message's reasoning, streamed
        # or not; an answer without <think> is all content.
        think = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>"}],
                 "continue_final_message": True, "add_generation_prompt": False, "max_tokens": 8, "temperature": 0}
        st, tr = q.post("/v1/chat/completions", think)
        tm = tr["choices"][0]["message"] if st == 200 else {}
        _, ev = q.stream_chunks("/v1/chat/completions", {**think, "stream": True})
        streamed = "".join(e["choices"][0]["delta"].get("reasoning", "") for e in ev if e.get("choices"))
        st2, pr = q.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0})
        st3, hidden = q.post("/v1/chat/completions", {**think, "include_reasoning": False})
        st4, bad = q.post("/v1/chat/completions", {**think, "include_reasoning": "no"})
        check("include_reasoning false leaves the reasoning out; not a boolean is a 400",
              st3 == 200 and "reasoning" not in hidden["choices"][0]["message"] and hidden["choices"][0]["message"]["content"] is None
              and st4 == 400 and "include_reasoning" in bad["error"]["message"], (hidden, bad))
        check("reasoning_parser qwen3: an answer begun inside <think> is reasoning (whole and streamed), one without is content",
              st == 200 and isinstance(tm.get("reasoning"), str) and tm["reasoning"] != "" and tm["content"] is None
              and tm["reasoning_content"] == tm["reasoning"] and streamed == tm["reasoning"]
              and st2 == 200 and pr["choices"][0]["message"]["reasoning"] is None and pr["choices"][0]["message"]["content"] != "",
              (tr, streamed, pr))
        # With the parser, guided decoding applies after the reasoning (vLLM's). A prompt that closes the
        # reasoning (Qwen3's template with thinking off ends with an empty <think>\n\n</think>) is guided from
        # the first token: each stopped answer's content is the schema's object, with no reasoning.
        closed = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\n\n</think>\n\n"}]
        st, jr = q.post("/v1/chat/completions", {"messages": closed, "continue_final_message": True, "add_generation_prompt": False,
                                                 "max_tokens": 40, "n": 6, "temperature": 1.0, "seed": 5,
                                                 "structured_outputs": {"json": {"type": "object", "properties": {"a": {"type": "boolean"}},
                                                                                 "required": ["a"]}, "disable_any_whitespace": True}})

        def json_content(m):
            try:
                return isinstance(json.loads(m["content"]), dict)
            except (TypeError, ValueError):
                return False
        stopped = [c["message"] for c in jr.get("choices", []) if c["finish_reason"] == "stop"]
        check("reasoning_parser, a prompt that closed the reasoning: guided from the first token, every stopped answer's "
              "content is the schema's object", st == 200 and stopped and all(json_content(m) and m["reasoning"] is None for m in stopped), jr)
        # A named tool choice with the parser is guided after the reasoning too (vLLM's): the reasoning
        # first, the call's arguments read from what follows it. Here the answer is all reasoning (this
        # random model never writes </think>), so the call is named with empty arguments; streamed, the
        # same reasoning, and the call named once, at the end.
        weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
        named = {**think, "tools": [weather], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
        st, nr = q.post("/v1/chat/completions", named)
        nm = nr["choices"][0]["message"] if st == 200 else {}
        _, ev = q.stream_chunks("/v1/chat/completions", {**named, "stream": True})
        deltas = [e["choices"][0]["delta"] for e in ev if e.get("choices")]
        calls = [tc for d in deltas for tc in (d.get("tool_calls") or [])]
        check("reasoning_parser and a named tool choice: the reasoning first, then the call (whole and streamed)",
              st == 200 and isinstance(nm.get("reasoning"), str) and nm["reasoning"] != "" and nm["content"] is None
              and [t["function"]["name"] for t in nm["tool_calls"]] == ["get_weather"] and nm["tool_calls"][0]["function"]["arguments"] == ""
              and "".join(d.get("reasoning", "") for d in deltas) == nm["reasoning"]
              and [t.get("function", {}).get("name") for t in calls if "id" in t] == ["get_weather"] and "tool_calls" in deltas[-1]
              and "".join(t["function"].get("arguments", "") for t in calls) == "", (nr, deltas))
        # A draw that finds no token while the next step is already planned (and queued behind it): that
        # step gets a stand-in token, the request fails alone, and the requests beside it are unchanged.
        st, ob = q.post("/tokenize", {"prompt": "{"})
        dead = {"prompt": "a b c", "max_tokens": 5, "allowed_token_ids": ob["tokens"], "response_format": {"type": "json_object"}}
        with concurrent.futures.ThreadPoolExecutor(len(bodies) + 1) as pool:
            failed = pool.submit(q.post, "/v1/completions", dead)
            again = list(pool.map(ask, range(len(bodies))))
        st2, r = failed.result()
        check("async scheduling: a request with no token to draw at a later step fails alone (400), the others unchanged",
              st == 200 and st2 == 400 and "no token can be drawn" in r["error"]["message"] and again == offline
              and q.request("GET", "/health")[0] == 200, (r, again, offline))
    finally:
        q.stop()
    # tool_call_parser mistral (Mistral 7B Instruct v0.3's [TOOL_CALLS] [...] calls), the output guided into one:
    # the calls (9-character ids, as Mistral's template wants them back), whole and streamed.
    # skip_tokenizer_init (vLLM's): token ids in and out, empty text; what needs the tokenizer is a 400.
    k = Server("--skip-tokenizer-init", np=1, tp=1)
    try:
        st, kr = k.post("/v1/completions", {"prompt": [9707, 11, 1879], "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                                            "return_token_ids": True})
        bad = [k.post("/v1/completions", {"prompt": "Hello", "max_tokens": 2}),
               k.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
               k.post("/v1/completions", {"prompt": [9707], "max_tokens": 2, "stop": ["x"]})]
        check("skip_tokenizer_init: token ids answered with empty text; text, chat and stop strings refused (400)",
              st == 200 and kr["choices"][0]["text"] == "" and len(kr["choices"][0]["token_ids"]) == 4
              and [b[0] for b in bad] == [400, 400, 400] and bad[2][1]["error"]["param"] == "stop", (kr, bad))
    finally:
        k.stop()
    mi = Server("--tool-call-parser", "mistral", np=1, tp=1)
    try:
        weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
        mb = {"messages": [{"role": "user", "content": "Weather?"}], "tools": [weather], "max_tokens": 120, "temperature": 0,
              "structured_outputs": {"regex": r'Checking\. \[TOOL_CALLS\] \[\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\]'}}
        st, mr = mi.post("/v1/chat/completions", mb)
        msg = mr["choices"][0]["message"] if st == 200 else {}
        calls = msg.get("tool_calls") or []
        _, ev = mi.stream_chunks("/v1/chat/completions", {**mb, "stream": True})
        deltas = [e["choices"][0]["delta"] for e in ev if e.get("choices")]
        streamed_calls = [tc for d in deltas for tc in (d.get("tool_calls") or [])]
        check("tool_call_parser mistral: [TOOL_CALLS] calls with 9-character ids, content before them; streamed the same",
              st == 200 and mr["choices"][0]["finish_reason"] == "tool_calls" and msg["content"] == "Checking. "
              and [c["function"]["name"] for c in calls] == ["get_weather"] and json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
              and len(calls[0]["id"]) == 9 and calls[0]["id"].isalnum()
              and "".join(d.get("content") or "" for d in deltas) == "Checking. "
              and [c["function"]["name"] for c in streamed_calls] == ["get_weather"], (mr, deltas))
    finally:
        mi.stop()
    # Speculative decoding (vLLM's speculative_config: n-gram drafts, and a draft model, here the served
    # model itself): concurrent greedy, seeded sampled (with penalties), streamed and guided requests
    # answer as llmserve generate does decoding a token a step on the same layout, and /metrics counts the
    # drafts fed and accepted.
    ranks = "1" if BACKEND == "cuda" else "2"
    prompts = ["Hello world, hello world, hello", "one two three one two three one", "a b a b a b", "The cat sat on the mat. The cat"]
    bodies = [{"prompt": p, "max_tokens": 24 + 4 * i, "ignore_eos": True,
               **({"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "seed": 7 + i, "presence_penalty": 0.3, "logprobs": 2})}
              for i, p in enumerate(prompts)]
    bodies.append({"prompt": "ab ab ab", "max_tokens": 30, "temperature": 0.7, "seed": 2,
                   "structured_outputs": {"regex": "( ab){2,8} c( ab)*"}})
    inp = os.path.join(BUILD, "test-out", "server-spec-in.jsonl")
    outp = os.path.join(BUILD, "test-out", "server-spec-out.jsonl")
    open(inp, "w").write("".join(json.dumps(b) + "\n" for b in bodies))
    subprocess.run([os.path.join(HERE, "..", "mpirun.sh"), ranks, os.path.join(BUILD, "llmserve"), "generate", "--model", MODEL,
                    *BACKEND_ARGS, "-tp", ranks, "--max-model-len", "512", "--input", inp, "--output", outp],
                   check=True, capture_output=True)
    offline = [json.loads(l)["outputs"][0]["text"] for l in open(outp)]
    for spec in ({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1},
                 {"model": MODEL, "num_speculative_tokens": 3}):
        name = spec.get("method", "draft_model")
        sp = Server("--speculative-config", json.dumps(spec))
        try:
            def ask_spec(i):
                if i != 2:
                    st, r = sp.post("/v1/completions", {**bodies[i], "model": "tiny"})
                    return r["choices"][0]["text"] if st == 200 else r
                _, ev = sp.stream_chunks("/v1/completions", {**bodies[i], "stream": True})
                return "".join(e["choices"][0]["text"] for e in ev if e.get("choices"))
            with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
                served = list(pool.map(ask_spec, range(len(bodies))))
            drafts, accepted = sp.metric("llmserve:spec_decode_num_draft_tokens_total"), sp.metric("llmserve:spec_decode_num_accepted_tokens_total")
            check(f"speculative_config {name}: concurrent greedy, sampled, streamed and guided completions equal llmserve generate's "
                  "decoding a token a step", served == offline, (served, offline))
            check(f"speculative decoding ({name}): /metrics counts drafts fed and accepted", drafts and drafts > 0 and 0 < accepted <= drafts
                  and sp.metric("llmserve:spec_decode_num_drafts_total") > 0, (drafts, accepted))
        finally:
            sp.stop()
    # stream_interval (vLLM's): a stream's chunks carry the first token alone, then at least 4 tokens each
    # until the last; the text is the whole answer's. structured_outputs_config disable_any_whitespace (same
    # server): a JSON answer without whitespace outside strings, unless the request says otherwise.
    si = Server("--stream-interval", "4", "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
                "--root-path", "/llm")
    try:
        # root_path (vLLM's, FastAPI's; same server): routes answer under the proxy's prefix and without it.
        st_a, ma = si.request("GET", "/llm/v1/models")
        st_b, mb = si.request("GET", "/v1/models")
        st_c, _ = si.request("GET", "/llmx/v1/models")
        check("root_path /llm: /llm/v1/models and /v1/models answer alike, /llmx/v1/models is a 404",
              st_a == 200 and st_b == 200 and ma == mb and st_c == 404, (st_a, st_b, st_c))
        compact = []
        for seed in (3, 4, 5):
            st, r = si.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 40,
                                                     "temperature": 0.9, "seed": seed, "response_format": {"type": "json_object"}})
            compact.append(r["choices"][0]["message"]["content"] if st == 200 else r)
        sys.path.insert(0, os.path.join(HERE, ".."))
        from json_whitespace import spaced
        check("structured_outputs_config disable_any_whitespace: JSON answers without whitespace outside strings",
              all(isinstance(t, str) and t.startswith("{") and not spaced(t) for t in compact), compact)
        body = {"model": "tiny", "prompt": "The cat sat on the mat.", "max_tokens": 15, "temperature": 0, "ignore_eos": True, "logprobs": 0}
        st, whole = si.post("/v1/completions", body)
        _, ev = si.stream_chunks("/v1/completions", {**body, "stream": True})
        counts = [len(e["choices"][0]["logprobs"]["tokens"]) for e in ev if e.get("choices") and e["choices"][0].get("logprobs")]
        text = "".join(e["choices"][0]["text"] for e in ev if e.get("choices"))
        check("stream_interval 4: the first token alone, then chunks of 4 or more tokens, the last with the rest; the whole text",
              st == 200 and counts[:1] == [1] and sum(counts) == 15 and all(c >= 4 for c in counts[1:-1]) and len(counts) < 15
              and text == whole["choices"][0]["text"], (counts, text, whole))
    finally:
        si.stop()
    # LoRA adapters (enable_lora, lora_modules; tests/model/make_tiny_lora.py's two): /v1/models lists them
    # under the base model; concurrent completions (streamed or not) and chats of the base model and of each
    # adapter answer as llmserve generate does for the same lines; an unknown model is a 404.
    lora_dir = os.path.join(BUILD, "test-out", "server-lora")
    subprocess.run([sys.executable, os.path.join(HERE, "..", "model", "make_tiny_lora.py"), FIXTURES, "tiny-qwen2", lora_dir],
                   check=True, capture_output=True)
    lora = ["--enable-lora", "--lora-modules", f"sql={lora_dir}/sql",
            json.dumps({"name": "terse", "path": f"{lora_dir}/terse", "base_model_name": "tiny"}), "--max-loras", "2"]
    lo = Server(*lora)
    try:
        _, models = lo.request("GET", "/v1/models")
        listed = {m["id"]: (m["parent"], m["root"]) for m in json.loads(models)["data"]}
        check("enable_lora: /v1/models lists the adapters under the base model, with their paths",
              listed == {"tiny": (None, MODEL), "sql": ("tiny", f"{lora_dir}/sql"), "terse": ("tiny", f"{lora_dir}/terse")}, listed)
        bodies = [{"prompt": p, "max_tokens": 10, "temperature": 0, "ignore_eos": True, **({"model": m} if m else {})}
                  for p in ("The capital of France is", "def add(a, b):") for m in (None, "sql", "terse")]
        bodies.append({"prompt": "Once upon", "max_tokens": 8, "temperature": 0.9, "seed": 3, "ignore_eos": True, "model": "sql"})
        inp, outp = (os.path.join(BUILD, "test-out", f"server-lora-{x}.jsonl") for x in ("in", "out"))
        open(inp, "w").write("".join(json.dumps(b) + "\n" for b in bodies))
        subprocess.run([os.path.join(HERE, "..", "mpirun.sh"), ranks, os.path.join(BUILD, "llmserve"), "generate", "--model", MODEL,
                        *BACKEND_ARGS, "-tp", ranks, "--max-model-len", "512", *lora, "--input", inp, "--output", outp],
                       check=True, capture_output=True)
        offline = [json.loads(l)["outputs"][0]["text"] for l in open(outp)]

        def ask_lora(i):
            if i % 2 == 0:
                st, r = lo.post("/v1/completions", bodies[i])
                return r["choices"][0]["text"] if st == 200 else r
            _, ev = lo.stream_chunks("/v1/completions", {**bodies[i], "stream": True})
            return "".join(e["choices"][0]["text"] for e in ev if e.get("choices"))
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            served = list(pool.map(ask_lora, range(len(bodies))))
        check("LoRA: concurrent completions of the base model and two adapters, streamed or not, equal llmserve generate's; "
              "the adapters change the answers", served == offline and len(set(offline[:3])) == 3, (served, offline))
        st, r = lo.post("/v1/chat/completions", {"model": "terse", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        check("LoRA: a chat completion of an adapter names it as its model", st == 200 and r["model"] == "terse", r)
        # vLLM's lora_requests_info gauge: the adapter of a running request, then none.
        def lora_info():
            _, text = lo.request("GET", "/metrics")
            line = next((l for l in text.splitlines() if l.startswith("llmserve:lora_requests_info{")), "")
            return dict(re.findall(r'(\w+)="([^"]*)"', line))
        long_req = threading.Thread(target=lambda: lo.post("/v1/completions", {"model": "sql", "prompt": "Hi", "max_tokens": 400,
                                                                                "ignore_eos": True}, timeout=300))
        long_req.start()
        seen, deadline = {}, time.time() + 60
        while long_req.is_alive() and time.time() < deadline and seen.get("running_lora_adapters") != "sql":
            seen = lora_info()
            time.sleep(0.005)
        long_req.join()
        after, deadline = lora_info(), time.time() + 5
        while after.get("running_lora_adapters") and time.time() < deadline:
            time.sleep(0.05)
            after = lora_info()
        check("LoRA: /metrics lora_requests_info names the running request's adapter, then none",
              seen.get("running_lora_adapters") == "sql" and seen.get("max_lora") == "2"
              and after.get("running_lora_adapters") == "" and after.get("waiting_lora_adapters") == "", (seen, after))
        st, r = lo.post("/v1/completions", {"model": "sqll", "prompt": "Hi", "max_tokens": 2})
        check("LoRA: an unknown model is vLLM's 404", st == 404 and r["error"]["message"] == "The model `sqll` does not exist.", r)
        st, _ = lo.post("/v1/load_lora_adapter", {"lora_name": "terse2", "lora_path": f"{lora_dir}/terse"})
        check("LoRA: without VLLM_ALLOW_RUNTIME_LORA_UPDATING there is no /v1/load_lora_adapter (404)", st == 404, st)
    finally:
        lo.stop()
    # Runtime LoRA updating (VLLM_ALLOW_RUNTIME_LORA_UPDATING, as vLLM's): /v1/load_lora_adapter puts an adapter in
    # a free slot of max_cpu_loras on every rank, and its requests answer as the same adapter loaded at start-up;
    # vLLM's errors for a name loaded twice, missing fields, a path with no adapter; no slot past max_cpu_loras;
    # /v1/unload_lora_adapter stops serving it (404 after), and an adapter loaded into its slot later does not
    # reuse its prefix-cached KV blocks.
    rt = Server("--enable-lora", "--lora-modules", f"sql={lora_dir}/sql", "--max-loras", "2", "--max-cpu-loras", "2",
                env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    try:
        st, text = rt.request("POST", "/v1/load_lora_adapter", {"lora_name": "terse", "lora_path": f"{lora_dir}/terse"})
        _, models = rt.request("GET", "/v1/models")
        listed = {m["id"]: m["root"] for m in json.loads(models)["data"]}
        check("runtime LoRA: /v1/load_lora_adapter answers vLLM's success line; /v1/models lists the adapter",
              st == 200 and text == "Success: LoRA adapter 'terse' added successfully." and listed.get("terse") == f"{lora_dir}/terse",
              (st, text, listed))
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            served_rt = list(pool.map(lambda b: rt.post("/v1/completions", b)[1]["choices"][0]["text"], bodies[:6]))
        check("runtime LoRA: completions of the base model, the start-up adapter and the loaded one equal llmserve generate's "
              "with both loaded at start-up", served_rt == offline[:6], (served_rt, offline[:6]))
        errors = [rt.post("/v1/load_lora_adapter", b) for b in (
            {"lora_name": "terse", "lora_path": f"{lora_dir}/terse"}, {"lora_name": "x"}, {"lora_name": "t3", "lora_path": f"{lora_dir}/none"},
            {"lora_name": "t3", "lora_path": lora_dir})]
        got = [(st, r["error"]["type"], r["error"]["message"]) for st, r in errors]
        check("runtime LoRA: vLLM's 400 for a name loaded twice and for missing fields, 404 for a path with nothing there, "
              "400 for a directory that is no adapter",
              got[0] == (400, "InvalidUserInput", "The lora adapter 'terse' has already been loaded.")
              and got[1] == (400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
              and got[2][:2] == (404, "NotFoundError") and "No adapter found" in got[2][2]
              and got[3][0] == 400 and "adapter_config.json" in got[3][2], got)
        # A third adapter with both max_cpu_loras slots held: served all the same, as vLLM's LoRA cache; its
        # requests load it over the least recently used adapter, whose own requests load it back.
        st, _ = rt.request("POST", "/v1/load_lora_adapter", {"lora_name": "t3", "lora_path": f"{lora_dir}/terse"})
        turns = [("t3", 2), ("sql", 1), ("terse", 2), ("t3", 5), ("sql", 4), ("t3", 2)]
        answers = [rt.post("/v1/completions", {**bodies[i], "model": m})[1]["choices"][0]["text"] for m, i in turns]
        check("runtime LoRA: past max_cpu_loras adapters, each request's adapter is loaded over the least recently used "
              "one and answers as itself", st == 200 and answers == [offline[i] for _, i in turns], (st, answers))
        # An adapter whose files go after it was loaded (served, held by no slot): its requests get a 400 naming
        # it, whether they come when a slot is free or wait for one behind two long requests; the server goes on.
        gone_dir = os.path.join(lora_dir, "gone")
        results_gone = []
        for waits in (False, True):
            shutil.copytree(f"{lora_dir}/terse", gone_dir, dirs_exist_ok=True)
            st_load, _ = rt.request("POST", "/v1/load_lora_adapter", {"lora_name": f"gone{int(waits)}", "lora_path": gone_dir})
            longs = []
            if waits:  # (both slots used until these finish: 8 sequences of 480 tokens each)
                longs = [threading.Thread(target=rt.post, args=("/v1/completions", {"model": m, "prompt": "Hi", "max_tokens": 480, "n": 8,
                                                                                     "ignore_eos": True}), kwargs={"timeout": 300})
                         for m in ("sql", "terse")]
                for t in longs:
                    t.start()
                deadline = time.time() + 30
                while (rt.metric("llmserve:num_requests_running") or 0) < 16 and time.time() < deadline:
                    time.sleep(0.002)
            else:
                shutil.rmtree(gone_dir)
            box = []
            asker = threading.Thread(target=lambda: box.append(rt.post("/v1/completions", {**bodies[2], "model": f"gone{int(waits)}"})))
            asker.start()
            if waits:  # (gone while the request waits for a slot: counted among the waiting ones)
                deadline = time.time() + 30
                while (rt.metric("llmserve:num_requests_waiting") or 0) < 1 and time.time() < deadline:
                    time.sleep(0.002)
                shutil.rmtree(gone_dir)
            asker.join()
            for t in longs:
                t.join()
            results_gone.append((st_load, box[0][0], box[0][1].get("error", {}).get("message", "") if isinstance(box[0][1], dict) else box[0][1]))
        _, after = rt.post("/v1/completions", bodies[1])
        with open(rt.log.name) as f:
            waited = "failed: LoRA adapter 'gone1' cannot be loaded any more" in f.read()  # (the waiting request's own failure)
        check("runtime LoRA: an adapter whose files went answers 400 naming it (at once and after waiting for a slot); "
              "the server answers on", all(sl == 200 and st == 400 and "cannot be loaded any more" in m for sl, st, m in results_gone)
              and waited and rt.request("GET", "/health")[0] == 200 and after["choices"][0]["text"] == offline[1],
              (results_gone, waited, after))
        # A prompt of several KV blocks, cached under the sql adapter before it goes.
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 6
        one = {"prompt": long_prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        _, r = rt.post("/v1/completions", {**one, "model": "sql"})
        sql_text = r["choices"][0]["text"]
        st, text = rt.request("POST", "/v1/unload_lora_adapter", {"lora_name": "sql"})
        st2, r2 = rt.post("/v1/completions", {**one, "model": "sql"})
        st3, r3 = rt.post("/v1/unload_lora_adapter", {"lora_name": "sql"})
        _, models = rt.request("GET", "/v1/models")
        check("runtime LoRA: /v1/unload_lora_adapter answers vLLM's success line; the adapter is then a 404 model, unlisted, "
              "and a second unload is vLLM's 404",
              st == 200 and text == "Success: LoRA adapter 'sql' removed successfully." and st2 == 404
              and st3 == 404 and r3["error"]["message"] == "The lora adapter 'sql' cannot be found."
              and "sql" not in {m["id"] for m in json.loads(models)["data"]}, (st, text, st2, r2, st3, r3))
        st, _ = rt.request("POST", "/v1/load_lora_adapter", {"lora_name": "terse2", "lora_path": f"{lora_dir}/terse"})
        _, fresh = rt.post("/v1/completions", {**one, "model": "terse2"})
        _, same = rt.post("/v1/completions", {**one, "model": "terse"})
        check("runtime LoRA: an adapter loaded into the freed slot answers as its own weights do, not from the KV blocks "
              "cached under the adapter unloaded from it",
              st == 200 and fresh["choices"][0]["text"] == same["choices"][0]["text"] != sql_text, (st, fresh, same, sql_text))
    finally:
        rt.stop()
    if BACKEND == "cpu":
        # Two pipeline stages, no adapter at start-up: both loaded at run time travel stage to stage with the
        # step and answer as llmserve generate with both at start-up on the same layout.
        pp_args = ["-tp", "1", "-pp", "2", "--max-model-len", "512", "--enable-lora", "--max-loras", "2"]
        subprocess.run([os.path.join(HERE, "..", "mpirun.sh"), "2", os.path.join(BUILD, "llmserve"), "generate", "--model", MODEL,
                        *BACKEND_ARGS, *pp_args, "--lora-modules", f"sql={lora_dir}/sql", f"terse={lora_dir}/terse",
                        "--input", inp, "--output", outp], check=True, capture_output=True)
        offline_pp = [json.loads(l)["outputs"][0]["text"] for l in open(outp)][:6]
        rp = Server("-pp", "2", "--enable-lora", "--max-loras", "2", tp=1, env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
        try:
            loads = [rp.request("POST", "/v1/load_lora_adapter", {"lora_name": n, "lora_path": f"{lora_dir}/{n}"})[0] for n in ("sql", "terse")]
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                served_pp = list(pool.map(lambda b: rp.post("/v1/completions", b)[1]["choices"][0]["text"], bodies[:6]))
            check("runtime LoRA, two pipeline stages: adapters loaded at run time answer as loaded at start-up",
                  loads == [200, 200] and served_pp == offline_pp, (loads, served_pp, offline_pp))
            idle = rp.idle_cpu()
            check("an idle pp=2 server's ranks use under 10% of a core each", len(idle) == 2 and all(v < 0.3 for v in idle.values()), idle)
        finally:
            rp.stop()
        # vLLM's data_parallel_size with internal load balancing (its default): rank 0's port is the one
        # endpoint for two replicas; each request goes to the one with fewer in flight, the other's answers
        # relayed as they are made (streams too), its errors as it gives them.
        dpi = Server("-dp", "2", np=2, tp=1, env={"LLMSERVE_LOG_ALL_RANKS": "1", "VLLM_SERVER_DEV_MODE": "1"})
        try:
            body = {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: dpi.post("/v1/completions", body), range(6)))
            texts = [a[1]["choices"][0]["text"] if a[0] == 200 else a for a in answers]
            streamed = []
            for _ in range(2):
                st, chunks = dpi.stream_chunks("/v1/completions", {**body, "stream": True})
                streamed.append("".join(c["choices"][0]["text"] for c in chunks) if st == 200 else st)
            _, metrics = dpi.request("GET", "/metrics")
            served = {e: sum(float(l.split()[-1]) for l in metrics.splitlines()
                             if l.startswith(f'vllm:request_success_total{{engine="{e}",')) for e in ("0", "1")}
            check("data_parallel_size 2, one endpoint: both replicas answer (their metrics under engine labels), alike, "
                  "streams relayed",
                  texts[0] != "" and texts == [texts[0]] * 6 and streamed == [texts[0]] * 2 and served["0"] > 0
                  and served["1"] > 0 and served["0"] + served["1"] == 8, (texts, streamed, served))
            # (Until replica 1 has refused one: which replica a request meets depends on what is still in flight.)
            bad = []
            while len(bad) < 12 and (len(bad) < 2 or "[rank 1] access POST /v1/completions 400" not in open(dpi.log.name).read()):
                bad.append(dpi.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": -3}))
            check("data_parallel_size 2: each replica's refusal reaches the client (OpenAI-style 400)",
                  all(st == 400 and "'max_tokens' must be at least 1" in json.loads(out)["error"]["message"] for st, out in bad)
                  and "[rank 1] access POST /v1/completions 400" in open(dpi.log.name).read(), bad)
            # A client that goes away mid-stream: the replica that ran it aborts it (its 499). (Until one ran
            # on replica 1.)
            for _ in range(10):
                c = dpi.connect(30)
                c.request("POST", "/v1/completions", body=json.dumps({"prompt": "Hello", "max_tokens": 480, "ignore_eos": True,
                                                                      "stream": True}), headers={"Content-Type": "application/json"})
                r = c.getresponse()
                r.fp.readline()
                r.close()
                c.close()
                time.sleep(0.5)
                aborted = [l for l in open(dpi.log.name) if "[rank 1] access POST /v1/completions 499" in l]
                if aborted:
                    break
            check("data_parallel_size 2: a client gone mid-stream is aborted on the replica that ran it",
                  aborted and int(aborted[0].split("completion_tokens=")[1].split()[0]) < 480, aborted)
            # Replica 1's server stops only for rank 0's token: without it, or with another, the route is not there.
            port1 = int(re.search(r"replica 1 of 2: .*its server on 127\.0\.0\.1:(\d+)", open(dpi.log.name).read()).group(1))
            refused = []
            for headers in ({}, {"X-Llmserve-Stop": "0" * 32}):
                c = http.client.HTTPConnection("127.0.0.1", port1, timeout=10)
                c.request("POST", "/llmserve/stop", headers=headers)
                refused.append(c.getresponse().status)
                c.close()
            check("data_parallel_size 2: a replica's stop route refuses a request without rank 0's token (404), "
                  "and the replica serves on", refused == [404, 404] and dpi.request("GET", "/health")[0] == 200, refused)
            st, _ = dpi.request("POST", "/reset_prefix_cache")
            health = dpi.request("GET", "/health")[0]
            # (the ranks' lines reach the log through mpirun's forwarding, which may lag the answers on a busy machine)
            want = ("[rank 1] prefix cache reset", "[rank 0] prefix cache reset", "[rank 1] access GET /health 200")
            for _ in range(100):
                log = open(dpi.log.name).read()
                if all(w in log for w in want):
                    break
                time.sleep(0.1)
            check("data_parallel_size 2: /reset_prefix_cache reaches every replica; /health asks them all",
                  st == 200 and health == 200 and all(w in log for w in want), (st, health, [w for w in want if w not in log]))
        finally:
            rc = dpi.stop()
        check("data_parallel_size 2: SIGTERM to rank 0 alone stops every replica, exit code 0", rc == 0, rc)
        # vLLM's data_parallel_external_lb: two replicas of 2-way tensor parallelism in one job, each a server
        # of its own (port, port + 1) answering as the other does; SIGTERM to every rank, as mpirun forwards
        # it, stops the job with exit code 0.
        dps = Server("-dp", "2", "--data-parallel-external-lb", np=4, tp=2, ports=2)
        try:
            port1 = dps.port + 1
            for _ in range(200):  # (replica 0 answers /health already: Server waited for it)
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port1, timeout=5)
                    c.request("GET", "/health")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            body = {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
            _, r0 = dps.post("/v1/completions", body)
            c = http.client.HTTPConnection("127.0.0.1", port1, timeout=60)
            c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = c.getresponse()
            r1 = json.loads(resp.read().decode())
            check("data_parallel_external_lb: each replica serves on its own port and answers alike",
                  resp.status == 200 and r0["choices"][0]["text"] == r1["choices"][0]["text"] != ""
                  and "replica 1 of 2" in open(dps.log.name).read(), (r0, r1))
        finally:
            for pid in os.listdir("/proc"):
                try:
                    if pid.isdigit() and open(f"/proc/{pid}/comm").read().strip() == "llmserve" and \
                            str(dps.port) in open(f"/proc/{pid}/cmdline").read().split("\0"):
                        os.kill(int(pid), 15)
                except OSError:
                    pass
            try:
                rc = dps.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                dps.proc.kill()
                rc = None
        check("data_parallel_external_lb: SIGTERM to the job's ranks stops every replica, exit code 0", rc == 0, rc)
    with open(a.log.name) as f:
        quiet = f.read()
    with open(s.log.name) as f:
        loud = f.read()
    check("api_server_count: 4 I/O threads serve (-asc 4; the default server 2)",
          "(OpenAI API under /v1; 4 I/O threads)" in quiet and "(OpenAI API under /v1; 2 I/O threads)" in loud, quiet[:2000])
    check("disable_uvicorn_access_log: no access lines (the default server has them)",
          " access POST /v1/chat/completions 200" in loud and " access " not in quiet, quiet[-500:])
    # The two requests whose clients left (streamed and not) have access lines too: 499, client closed request.
    gone = re.findall(r" access POST /v1/completions 499 id=cmpl-\w+ prompt_tokens=\d+ completion_tokens=(\d+)", loud)
    check("access lines of the requests whose clients left: 499 with the tokens made", len(gone) == 2 and all(int(c) < 400 for c in gone), gone)
    # A request refused before it is read (the 413 above) is logged with its own latency, not the time
    # since the clock's epoch.
    refused = re.findall(r" access .* 413 .*latency_ms=(\d+)", loud)
    check("access line of a 413: a latency of its own", refused and all(int(ms) < 10000 for ms in refused), refused)
    # The seed deployment's checks, verbatim, against the SmolLM2 demo model (when it was fetched).
    smol = os.environ.get("LLMSERVE_SMOLLM2_H5")
    if smol and os.path.exists(smol):
        d = Server("--api-key", "seed-key", "--served-model-name", "smollm2-135m-instruct", "--max-model-len", "2048",
                   np=1, tp=1, model=smol)
        try:
            h = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{d.port}/health"],
                               capture_output=True, text=True).stdout
            check("seed: curl /health", h == "200", h)
            mo = subprocess.run(["curl", "-s", f"http://127.0.0.1:{d.port}/v1/models", "-H", "Authorization: Bearer seed-key"],
                                capture_output=True, text=True).stdout
            check("seed: curl /v1/models with the key", json.loads(mo)["data"][0]["id"] == "smollm2-135m-instruct", mo)
            req = {"model": "smollm2-135m-instruct", "messages": [{"role": "system", "content": "你是一个专业的中文助手"},
                                                                   {"role": "user", "content": "用200字介绍下你自己"}]}
            ch = subprocess.run(["curl", "-s", f"http://127.0.0.1:{d.port}/v1/chat/completions", "-H", "Content-Type: application/json",
                                 "-H", "Authorization: Bearer seed-key", "-d", json.dumps(req, ensure_ascii=False)],
                                capture_output=True, text=True).stdout
            rj = json.loads(ch)
            check("seed: the chat request is answered", rj["choices"][0]["message"]["content"].strip() != "" and rj["usage"]["completion_tokens"] > 0, ch[:300])
            print("  seed chat answer:", rj["choices"][0]["message"]["content"][:160].replace("\n", " "))
            sdk_checks(d.port, "seed-key", "smollm2-135m-instruct")
        finally:
            d.stop()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
