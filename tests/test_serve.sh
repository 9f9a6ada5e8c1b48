#!/usr/bin/env bash
# `lora serve`: an OpenAI-style server over one base with two adapters trained here in a few
# steps. Clients (python3 stdlib) check /v1/models, that two concurrent completions on
# different adapters each give the text of a lone request, streaming, run-time load/unload,
# and a JSON 4xx error for every bad request; then continuous batching: 8 random adapters
# and the base at once, each the text of a lone request, while another adapter is loaded and
# unloaded; the same 403 for every path outside --adapter-dir. A second server over a slower
# model (--max-batch 1 --queue 1): a full queue gets 503; a client that goes away is
# cancelled (queued or running, streamed or not) and the server then idles; 64 idle
# connections do not lock a 65th client out; SIGTERM with a request in flight exits within
# 2 s. Every server is killed at the end.
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
# nine random PEFT adapters r0..r8 (rank 8, every projection, A and B non-zero)
python3 scripts/random_adapters.py "$T/adapters" --n 9 --prefix r --first 0 --rank 8 --dim 64 --layers 2 --heads 4 \
  --kv-heads 2 --ffn 172 --std 0.1 --seed 100
[ -f "$T/adapters/r8/adapter_model.safetensors" ] || { fail serve_setup "writing random adapters failed"; exit 1; }

# wait_port LOG PID: the port a server prints on its "listening" line (empty if it died)
wait_port() {
  local port=""
  for _ in $(seq 1 150); do
    port=$(sed -nE 's/.*listening on http:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' "$1")
    [ -n "$port" ] && break
    kill -0 "$2" 2>/dev/null || break
    sleep 0.2
  done
  echo "$port"
}

$LORA serve --model "$T/base" --tokenizer "$T/tok.model" --adapter capitals="$T/adapters/capitals" \
  --adapter languages="$T/adapters/languages" --port 0 --adapter-dir "$T/adapters" --quant nf4 > "$T/serve.log" 2>&1 &
PID=$!
PID2=
trap 'kill $PID $PID2 2>/dev/null; wait $PID $PID2 2>/dev/null' EXIT
port=$(wait_port "$T/serve.log" $PID)
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

# continuous batching: the base and 8 random adapters at once (streamed and not), each the
# text of a lone request, while adapter r8 is loaded, used and unloaded over and over; then
# the same 403 for every path outside --adapter-dir, whether or not it exists
timeout 300 python3 - "$port" "$(cd "$T/adapters" && pwd -P)" "$(cd "$T/outside" && pwd -P)" <<'EOF'
import http.client, json, sys, threading, time
PORT, ADIR, OUTSIDE = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def report(ok, name, why=""):
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, why)), flush=True)

def call(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    return r.status, text

def completion(model, prompt, stream=False, **kw):
    body = dict(model=model, prompt=prompt, max_tokens=24, temperature=0, stream=stream)
    body.update(kw)
    if not stream:
        code, text = call("POST", "/v1/completions", body)
        if code != 200:
            raise RuntimeError("%s: %d %s" % (model, code, text))
        return json.loads(text)["choices"][0]["text"]
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError("%s: %d %s" % (model, r.status, r.read().decode()))
    out, done = [], False
    for line in r:
        line = line.decode().strip()
        if line == "data: [DONE]":
            done = True
            break
        if line.startswith("data: "):
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError("%s: %s" % (model, ev))
            out.append(ev["choices"][0]["text"])
    c.close()
    if not done:
        raise RuntimeError("%s: stream ended without [DONE]" % model)
    return "".join(out)

def health():
    return json.loads(call("GET", "/health")[1])

P = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nWhat is the capital of Egypt?\n\n### Response:\n"
models = ["r%d" % i for i in range(8)] + ["base"]
loaded = [call("POST", "/adapters", dict(name=m, path=m))[0] for m in models[:8]]
report(loaded == [201] * 8, "serve_load_random_adapters", repr(loaded))
LONG = dict(max_tokens=160, ignore_eos=True)
lone = {m: completion(m, P, **LONG) for m in models}
report(len(set(lone.values())) == len(models), "serve_random_adapters_differ",
       "%d distinct of %d" % (len(set(lone.values())), len(models)))

stop, churn, churn_err = threading.Event(), [0], []
def churner():  # r8: loaded, used, unloaded, again and again
    while not stop.is_set():
        try:
            code, text = call("POST", "/adapters", dict(name="r8", path="r8"))
            if code != 201:
                raise RuntimeError("load %d %s" % (code, text))
            completion("r8", P, max_tokens=4)
            code, text = call("DELETE", "/adapters/r8")
            if code != 200:
                raise RuntimeError("unload %d %s" % (code, text))
            churn[0] += 1
        except Exception as ex:
            churn_err.append(repr(ex))
            return

results, errors, bad = {}, [], []
def worker(i, m):
    try:
        results[i] = completion(m, P, stream=i % 2 == 1, **LONG)
    except Exception as ex:
        errors.append(repr(ex))
ch = threading.Thread(target=churner)
ch.start()
for rnd in range(2):
    results.clear()
    threads = [threading.Thread(target=worker, args=(i, m)) for i, m in enumerate(models)]
    for t in threads: t.start()
    for t in threads: t.join()
    bad = [(models[i], t, lone[models[i]]) for i, t in results.items() if t != lone[models[i]]]
    if errors or bad:
        break
stop.set()
ch.join()
h = health()
report(not errors and not bad and len(results) == len(models) and not churn_err and churn[0] > 0,
       "serve_batched_equals_lone", "errors %s, differing %s, churn %d %s" % (errors, bad[:2], churn[0], churn_err))
report(h["peak_batch"] >= 2 and h["active"] == 0 and h["queued"] == 0, "serve_health_batching", repr(h))
unloaded = [call("DELETE", "/adapters/" + m)[0] for m in models[:8]]
report(unloaded == [200] * 8, "serve_unload_random_adapters", repr(unloaded))

# every path outside the adapter directory: one answer, existing or not, before any look
outside = ["/etc", "/etc/no-such-file-here", "/", "../outside/extra", "../outside/no-such", "r0/../../outside/extra",
           OUTSIDE + "/extra", OUTSIDE + "/no-such", ADIR + "/../outside/extra", ADIR + "/../no-such", ADIR, ".."]
answers = {(call("POST", "/adapters", dict(name="x", path=p))) for p in outside}
report(len(answers) == 1 and next(iter(answers))[0] == 403 and
       json.loads(next(iter(answers))[1])["error"]["code"] == 403, "serve_adapter_outside_same_403", repr(answers))
code, text = call("POST", "/adapters", dict(name="absolute", path=ADIR + "/r0"))
code2, _ = call("DELETE", "/adapters/absolute")
code3, text3 = call("POST", "/adapters", dict(name="x", path="no-such-adapter"))
report(code == 201 and code2 == 200 and code3 == 404, "serve_adapter_inside_paths", "%d %s / %d / %d %s" % (code, text, code2, code3, text3))
EOF
rc=$?
[ $rc -ne 0 ] && fail serve_batching_clients "python client exited with $rc"
# the load generator of the benchmark (bench/serve_load.py), briefly
if python3 bench/serve_load.py --url "http://127.0.0.1:$port" --streams 3 --adapters capitals,languages,base \
     --max-tokens 8 --requests-per-stream 2 --single --json "$T/serve_load.json" > "$T/serve_load.log" 2>&1 &&
   python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(not (r["tokens"] == 48 and r["errors"] == 0 and r["single"]["tokens"] == 16 and r["ttft_ms"]["p50"] > 0))' "$T/serve_load.json"; then
  pass serve_load_generator
else
  fail serve_load_generator "$(tail -n 5 "$T/serve_load.log")"
fi
kill $PID 2>/dev/null
wait $PID 2>/dev/null
if grep -q "stopping" "$T/serve.log"; then pass serve_clean_shutdown
else fail serve_clean_shutdown "$(tail -n 5 "$T/serve.log")"; fi

# a slower model (long requests) behind one batch row and one queue place, short timeouts
$LORA init-model --out "$T/slow" --dim 256 --layers 4 --heads 4 --kv-heads 2 --ffn 688 --vocab 400 \
  --seq 8192 --seed 5 --std 0.05 > /dev/null || { fail serve_setup "init-model (slow) failed"; exit 1; }
$LORA serve --model "$T/slow" --tokenizer "$T/tok.model" --port 0 --quant none --max-batch 1 --queue 1 \
  --ctx 8192 --timeout 2 --max-conn-per-client 16 --threads 1 > "$T/serve2.log" 2>&1 &
PID2=$!
port2=$(wait_port "$T/serve2.log" $PID2)
if [ -z "$port2" ]; then fail serve2_start "server did not start: $(tail -n 5 "$T/serve2.log")"; exit 1; fi
if grep -qE "KV cache .*= 32\.0 MiB" "$T/serve2.log"; then pass serve_kv_budget
else fail serve_kv_budget "$(head -n 3 "$T/serve2.log")"; fi
timeout 300 python3 - "$port2" "$PID2" "$T/serve2.log" <<'EOF'
import http.client, json, os, select, signal, socket, sys, time
PORT, PID, LOG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
LONG = dict(prompt="hello", max_tokens=8000, ignore_eos=True, temperature=0)

def report(ok, name, why=""):
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, why)), flush=True)

def call(method, path, body=None, src="127.0.0.1", timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout, source_address=(src, 0))
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    return r.status, text, r

def health():
    return json.loads(call("GET", "/health")[1])

def wait_for(pred, secs):
    t0 = time.time()
    while time.time() - t0 < secs:
        h = health()
        if pred(h):
            return h
        time.sleep(0.05)
    return health()

def open_request(body, path="/v1/completions"):  # a raw connection: we decide when it goes
    s = socket.create_connection(("127.0.0.1", PORT))
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (path.encode(), len(data)) + data)
    return s

def read_until(s, marker, count=1, secs=30):
    buf, t0 = b"", time.time()
    s.settimeout(secs)
    while buf.count(marker) < count and time.time() - t0 < secs:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    return buf

def log():
    with open(LOG) as f:
        return f.read()

def cpu_ticks():
    with open("/proc/%d/stat" % PID) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return int(v[11]) + int(v[12])  # utime + stime

# a full queue: one request running (streamed), one waiting, the next gets 503
a = open_request(dict(LONG, stream=True))
h1 = wait_for(lambda h: h["active"] == 1, 10)
first = read_until(a, b"data: {", 2)
b = open_request(LONG)
h2 = wait_for(lambda h: h["queued"] == 1, 10)
code, text, r = call("POST", "/v1/completions", dict(LONG, max_tokens=4))
try:
    err = json.loads(text)["error"]
except Exception:
    err = {}
report(h1["active"] == 1 and h2["queued"] == 1 and code == 503 and err.get("type") == "server_error" and
       err.get("code") == 503 and err.get("message") and r.getheader("Retry-After"), "serve_queue_full_503",
       "%s %s %d %s %s" % (h1, h2, code, text, r.getheaders()))

# clients that go away: the queued one, the streamed one while it generates, a non-streamed
# one while it generates; each cancelled at the next step, then the server idles
b.close()
h = wait_for(lambda h: h["queued"] == 0, 3)
report(h["queued"] == 0 and h["active"] == 1 and "cancelled (client gone) in the queue" in log(),
       "serve_cancel_queued", "%s %s" % (h, log()[-300:]))
a.close()
h = wait_for(lambda h: h["active"] == 0, 3)
report(h["active"] == 0 and "cancelled (client gone) while generating" in log(), "serve_cancel_streamed",
       "%s %s" % (h, log()[-300:]))
d = open_request(LONG)
wait_for(lambda h: h["active"] == 1, 10)
time.sleep(0.3)
d.close()
h = wait_for(lambda h: h["active"] == 0 and h["cancelled"] >= 3, 3)
report(h["active"] == 0 and h["queued"] == 0 and h["cancelled"] == 3 and h["served"] == 0, "serve_cancel_waiting",
       "%s" % h)
h = wait_for(lambda h: h["connections"] == 1, 3)  # the cancelled requests' connections are gone too
report(h["connections"] == 1, "serve_cancelled_connections_closed", "%s" % h)
time.sleep(0.3)
t0 = cpu_ticks()
time.sleep(1.0)
used = cpu_ticks() - t0
report(used <= 5, "serve_idle_after_clients_gone", "%d CPU ticks in 1 s with no clients" % used)

# 64 idle connections (64 clients: nothing sent) and 20 from one more client (16 allowed
# per client): another client is answered at once, and a short completion too
idle = [socket.create_connection(("127.0.0.1", PORT), source_address=("127.0.0.%d" % (10 + i), 0)) for i in range(64)]
same = [socket.create_connection(("127.0.0.1", PORT), source_address=("127.0.0.3", 0)) for i in range(20)]
time.sleep(0.3)
t0 = time.time()
code, text, _ = call("GET", "/health", src="127.0.0.2", timeout=5)
t_health = time.time() - t0
code2, text2, _ = call("POST", "/v1/completions", dict(prompt="hello", max_tokens=8, temperature=0), src="127.0.0.2",
                       timeout=10)
t_total = time.time() - t0
report(code == 200 and code2 == 200 and t_health < 1.0 and t_total < 5.0, "serve_idle_connections_no_lockout",
       "%d in %.2fs, %d %s in %.2fs" % (code, t_health, code2, text2, t_total))
def closed_by_server(socks, secs):
    n, left, t0 = 0, list(socks), time.time()
    while left and time.time() - t0 < secs:
        rd, _, _ = select.select(left, [], [], 0.2)
        for s in rd:
            try:
                gone = s.recv(1) == b""
            except OSError:
                gone = True
            if gone:
                n += 1
                left.remove(s)
    return n
refused = closed_by_server(same, 1.0)
report(refused == 4, "serve_per_client_limit", "%d of 20 connections from one client closed (16 allowed)" % refused)
# idle connections time out (--timeout 2); a request waiting longer than that for its tokens
# (its connection suspended) does not
w = open_request(LONG)
wait_for(lambda h: h["active"] == 1, 10)
timed_out = closed_by_server(idle, 3.5)
w.setblocking(False)
try:
    got = w.recv(65536, socket.MSG_PEEK)
    waited = "answered" if got.startswith(b"HTTP/1.1 200") else "closed" if got == b"" else repr(got[:100])
except BlockingIOError:
    waited = "waiting"
h = health()
report(timed_out == 64, "serve_idle_timeout", "%d of 64 idle connections closed" % timed_out)
report(waited == "answered" or (waited == "waiting" and h["active"] == 1), "serve_waiting_request_not_timed_out",
       "%s %s" % (waited, h))
w.close()
wait_for(lambda h: h["active"] == 0, 3)
for s in idle + same:
    s.close()

# SIGTERM with a streamed request running and one waiting: both answered, exit within 2 s
e = open_request(dict(LONG, stream=True))
wait_for(lambda h: h["active"] == 1, 10)
read_until(e, b"data: {", 2)
f = open_request(LONG)
wait_for(lambda h: h["queued"] == 1, 10)
t0 = time.time()
os.kill(PID, signal.SIGTERM)
tail = read_until(e, b"data: [DONE]", 1, 5)
waiting = read_until(f, b"}}", 1, 5)
def exited():
    try:
        with open("/proc/%d/stat" % PID) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
while not exited() and time.time() - t0 < 10:
    time.sleep(0.02)
took = time.time() - t0
report(exited() and took <= 2.0, "serve_sigterm_exits", "%.2fs" % took)
report(b"data: [DONE]" in tail and b'"error"' in tail and b" 503 " in waiting.split(b"\r\n")[0] and
       b'"server_error"' in waiting, "serve_sigterm_answers", "%r / %r" % (tail[-300:], waiting[:300]))
EOF
rc=$?
[ $rc -ne 0 ] && fail serve2_clients "python client exited with $rc"
wait $PID2 2>/dev/null
if grep -q "stopping" "$T/serve2.log"; then pass serve2_clean_shutdown
else fail serve2_clean_shutdown "$(tail -n 5 "$T/serve2.log")"; fi
trap - EXIT
exit $failed
