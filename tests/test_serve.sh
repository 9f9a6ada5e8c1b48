#!/usr/bin/env bash
# `lora serve`: an OpenAI-style server over one base with two adapters trained here in a few
# steps. Clients (python3 stdlib) check /v1/models, that two concurrent completions on
# different adapters each give the text of a lone request, streaming, run-time load/unload,
# and a JSON 4xx error for every bad request. The server is always killed at the end.
source tests/lib.sh
LORA=${LORA:-./lora}
T=$(tmpdir serve)
demo_task "$T" 400 || { fail serve_setup "demo data or spm_train failed"; exit 1; }
$LORA init-model --out "$T/base" --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 172 --vocab 400 \
  --seq 256 --seed 3 --std 0.05 > /dev/null || { fail serve_setup "init-model failed"; exit 1; }
mkdir -p "$T/adapters" "$T/outside"
# two different adapters: the capitals task and the languages task, a few steps each
for spec in "capitals:train.jsonl:1" "languages:train_languages.jsonl:2" "extra:train.jsonl:3"; do
  IFS=: read -r name data seed <<< "$spec"
  dir="$T/adapters/$name"; [ "$name" = extra ] && dir="$T/outside/extra"
  if ! $LORA train --model "$T/base" --tokenizer "$T/tok.model" --data "$T/$data" --val-fraction 0.1 \
        --out "$dir" --template alpaca --steps 12 --lr 1e-2 --batch-size 8 --seed "$seed" \
        --seq-len 128 --log-every 100 --threads 1 > "$T/train_$name.log" 2>&1; then
    fail serve_setup "training $name failed: $(tail -n 3 "$T/train_$name.log")"; exit 1
  fi
done
cp -r "$T/adapters/capitals" "$T/adapters/third"

$LORA serve --model "$T/base" --tokenizer "$T/tok.model" --adapter capitals="$T/adapters/capitals" \
  --adapter languages="$T/adapters/languages" --port 0 --adapter-dir "$T/adapters" --quant nf4 > "$T/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
port=""
for _ in $(seq 1 150); do
  port=$(sed -nE 's/.*listening on http:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' "$T/serve.log")
  [ -n "$port" ] && break
  kill -0 $PID 2>/dev/null || break
  sleep 0.2
done
if [ -z "$port" ]; then fail serve_start "server did not start: $(tail -n 5 "$T/serve.log")"; exit 1; fi
pass serve_start

timeout 180 python3 - "$port" <<'EOF'
import json, sys, threading, urllib.request, urllib.error
BASE = "http://127.0.0.1:%s" % sys.argv[1]

def report(ok, name, why=""):
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, why)), flush=True)

def call(method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

def completion(model, prompt, **kw):
    body = dict(model=model, prompt=prompt, max_tokens=24, temperature=0)
    body.update(kw)
    code, text = call("POST", "/v1/completions", body)
    if code != 200:
        raise RuntimeError("%d %s" % (code, text))
    return json.loads(text)["choices"][0]["text"]

def stream(path, body):
    req = urllib.request.Request(BASE + path, data=json.dumps(dict(body, stream=True)).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    events, done = [], False
    with urllib.request.urlopen(req, timeout=60) as r:
        ctype = r.headers.get("Content-Type", "")
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            events.append(json.loads(line[6:]))
    return ctype, events, done

# /v1/models
code, text = call("GET", "/v1/models")
ids = [m["id"] for m in json.loads(text)["data"]] if code == 200 else []
report(code == 200 and ids == ["base", "capitals", "languages"], "serve_models", "%d %s" % (code, text))

P = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nWhat is the capital of Egypt?\n\n### Response:\n"
lone = {m: completion(m, P) for m in ("capitals", "languages", "base")}
report(len(set(lone.values())) == 3, "serve_adapters_differ", repr(lone))
sampled = completion("capitals", P, temperature=0.9, seed=5, top_p=0.9)
report(sampled == completion("capitals", P, temperature=0.9, seed=5, top_p=0.9), "serve_seeded_sampling")

# concurrent requests on different adapters (long enough to overlap): each gets the text of
# a lone request
LONG = dict(max_tokens=96, ignore_eos=True)
lone_long = {m: completion(m, P, **LONG) for m in ("capitals", "languages")}
results, errors = {}, []
def worker(i, model):
    try:
        results[i] = (model, completion(model, P, **LONG))
    except Exception as ex:
        errors.append(repr(ex))
bad = []
for rnd in range(3):
    results.clear()
    threads = [threading.Thread(target=worker, args=(i, m)) for i, m in
               enumerate(["capitals", "languages", "capitals", "languages"])]
    for t in threads: t.start()
    for t in threads: t.join()
    bad = [(i, m, t) for i, (m, t) in results.items() if t != lone_long[m]]
    if errors or bad:
        break
report(not errors and not bad and len(results) == 4 and lone_long["capitals"] != lone_long["languages"],
       "serve_concurrent_equals_lone", "%s %s" % (errors, bad))

# streaming: the chunks add up to the non-streamed text
ctype, ev, done = stream("/v1/completions", dict(model="languages", prompt=P, max_tokens=24, temperature=0))
text = "".join(e["choices"][0]["text"] for e in ev)
report(ctype.startswith("text/event-stream") and done and text == lone["languages"] and
       ev[-1]["choices"][0]["finish_reason"] in ("stop", "length"), "serve_stream_completion",
       "%r vs %r" % (text, lone["languages"]))
msgs = [{"role": "user", "content": "What is the capital of Egypt?"}]
code, body = call("POST", "/v1/chat/completions", dict(model="capitals", messages=msgs, max_tokens=24, temperature=0))
chat = json.loads(body)["choices"][0]["message"]["content"] if code == 200 else None
ctype, ev, done = stream("/v1/chat/completions", dict(model="capitals", messages=msgs, max_tokens=24, temperature=0))
stext = "".join(e["choices"][0]["delta"].get("content", "") for e in ev)
report(code == 200 and chat == lone["capitals"] and done and stext == chat and
       ev[0]["choices"][0]["delta"].get("role") == "assistant", "serve_chat_completion",
       "%d chat %r stream %r lone %r" % (code, chat, stext, lone["capitals"]))

# bad requests: a JSON error with a 4xx status, never a crash
def expect(name, want, method, path, body=None, raw=None):
    code, text = call(method, path, body, raw)
    try:
        msg = json.loads(text)["error"]["message"]
    except Exception:
        msg = None
    report(code == want and msg, name, "%d %s" % (code, text))
expect("serve_bad_json_400", 400, "POST", "/v1/completions", raw=b'{"model": "capitals", "prompt": ')
expect("serve_not_object_400", 400, "POST", "/v1/completions", raw=b'[1, 2]')
expect("serve_empty_body_400", 400, "POST", "/v1/chat/completions", raw=b'')
expect("serve_unknown_model_404", 404, "POST", "/v1/completions", dict(model="nope", prompt="hi"))
expect("serve_bad_field_400", 400, "POST", "/v1/completions", dict(model="capitals", prompt="hi", max_tokens="x"))
expect("serve_bad_temperature_400", 400, "POST", "/v1/completions", dict(prompt="hi", temperature=-1))
expect("serve_missing_prompt_400", 400, "POST", "/v1/completions", dict(model="capitals"))
expect("serve_bad_messages_400", 400, "POST", "/v1/chat/completions", dict(model="capitals", messages=[{"role": "user"}]))
expect("serve_bad_role_400", 400, "POST", "/v1/chat/completions", dict(messages=[{"role": "robot", "content": "x"}]))
expect("serve_prompt_too_long_400", 400, "POST", "/v1/completions", dict(prompt="Paris " * 2000))
expect("serve_unknown_path_404", 404, "GET", "/v2/nothing")
expect("serve_wrong_method_405", 405, "GET", "/v1/completions")
expect("serve_adapter_outside_403", 403, "POST", "/adapters", dict(name="x", path="../outside/extra"))
expect("serve_adapter_abs_outside_403", 403, "POST", "/adapters", dict(name="x", path="/etc"))
expect("serve_adapter_missing_404", 404, "POST", "/adapters", dict(name="x", path="nothing-here"))
expect("serve_adapter_name_taken_409", 409, "POST", "/adapters", dict(name="capitals", path="third"))
expect("serve_adapter_bad_name_400", 400, "POST", "/adapters", dict(name="a b", path="third"))
expect("serve_unload_unknown_404", 404, "DELETE", "/adapters/nope")

# run-time load and unload (also while a request is using the adapter)
code, text = call("POST", "/adapters", dict(name="third", path="third"))
ok = code == 201 and completion("third", P) == lone["capitals"]
report(ok, "serve_load_adapter", "%d %s" % (code, text))
# a stream in progress on "third" (its first event read) while "third" is unloaded: the
# stream still ends normally, and afterwards the name is gone
req = urllib.request.Request(BASE + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
                             data=json.dumps(dict(model="third", prompt=P, max_tokens=200, temperature=0.8,
                                                  ignore_eos=True, stream=True)).encode())
done, first, n_events = False, False, 0
with urllib.request.urlopen(req, timeout=60) as r:
    for line in r:
        line = line.decode().strip()
        if line.startswith("data: {"):
            n_events += 1
            if not first:
                first = True
                code, text = call("DELETE", "/adapters/third")
        if line == "data: [DONE]":
            done = True
            break
code2, _ = call("POST", "/v1/completions", dict(model="third", prompt="hi"))
report(code == 200 and code2 == 404 and done and n_events > 1, "serve_unload_adapter",
       "delete %d, after %d, done %s, %d events" % (code, code2, done, n_events))
code, text = call("GET", "/v1/models")
report(code == 200 and [m["id"] for m in json.loads(text)["data"]] == ["base", "capitals", "languages"],
       "serve_alive_after_errors", "%d %s" % (code, text))
EOF
rc=$?
[ $rc -ne 0 ] && fail serve_clients "python client exited with $rc"
kill $PID 2>/dev/null
wait $PID 2>/dev/null
if grep -q "stopping" "$T/serve.log"; then pass serve_clean_shutdown
else fail serve_clean_shutdown "$(tail -n 5 "$T/serve.log")"; fi
trap - EXIT
exit $failed
