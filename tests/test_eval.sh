#!/usr/bin/env bash
# `lora eval` and `lora train --eval-before` end to end: one table with the base first and the
# change against it, the same numbers in --json, a scale-0 adapter equal to the base, the
# trained adapter beating the base, the base's quantisation taken from the adapter's
# train_config.json unless --quant is given, messages rows in the model's own chat template
# (as training lays them out), and clear errors for bad input.
source tests/lib.sh
LORA=${LORA:-./lora}
T=$(tmpdir eval)
demo_task "$T" 400 || { fail eval_setup "demo data or spm_train failed"; exit 1; }
$LORA init-model --out "$T/base" --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 172 --vocab 400 \
  --seq 256 --seed 3 --std 0.1 > /dev/null || { fail eval_setup "init-model failed"; exit 1; }
if ! $LORA train --model "$T/base" --tokenizer "$T/tok.model" --data "$T/train.jsonl" --val-data "$T/val.jsonl" \
      --out "$T/a" --template alpaca --quant none --steps 60 --lr 1e-2 --batch-size 8 --seq-len 128 \
      --log-every 100 --threads 1 --eval-before > "$T/train.log" 2>&1; then
  fail eval_train "$(tail -n 3 "$T/train.log")"; exit 1
fi
# --eval-before: the table in the log, base then adapter in OUT/eval.json
if grep -q "vs base" "$T/train.log" && python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))["results"]
assert [x["name"] for x in r] == ["base", "adapter"], r
assert r[1]["loss"] < 0.8 * r[0]["loss"] and r[1]["token_accuracy"] > r[0]["token_accuracy"], r' \
    "$T/a/eval.json" 2> "$T/err"; then pass eval_before_table
else fail eval_before_table "$(tail -n 3 "$T/err")"; fi

# lora eval: base, the adapter, the same adapter at scale 0 (no --quant: the adapters' own, none)
if $LORA eval --model "$T/base" --tokenizer "$T/tok.model" --adapter capitals="$T/a" --adapter "off=$T/a:0" \
     --data "$T/val.jsonl" --template alpaca --json "$T/eval.json" > "$T/eval.out" 2> "$T/eval.err"; then
  pass eval_runs
else fail eval_runs "$(tail -n 3 "$T/eval.err")"; fi
if grep -q "base weights none, as adapter capitals was trained ($T/a/train_config.json" "$T/eval.err"; then
  pass eval_quant_from_adapter
else fail eval_quant_from_adapter "$(grep 'base weights' "$T/eval.err")"; fi
rows=$(grep -cE "^(base|capitals|off) " "$T/eval.out")
deltas=$(grep -c "vs base" "$T/eval.out")
if [ "$rows" = 3 ] && [ "$deltas" = 2 ] && head -n 3 "$T/eval.out" | grep -q "^base "; then pass eval_table
else fail eval_table "$(cat "$T/eval.out")"; fi
if python3 -c 'import json,sys
r = {x["name"]: x for x in json.load(open(sys.argv[1]))["results"]}
t = {x["name"]: x for x in json.load(open(sys.argv[2]))["results"]}
keys = ("loss", "perplexity", "token_accuracy", "exact_match", "starts_with", "contains", "f1")
assert list(r) == ["base", "capitals", "off"], list(r)
assert all(r["off"][k] == r["base"][k] for k in keys), "scale 0 differs from the base"
assert abs(r["capitals"]["loss"] - t["adapter"]["loss"]) <= 1e-4 * t["adapter"]["loss"], "reloaded loss differs"
assert r["capitals"]["exact_match"] == t["adapter"]["exact_match"], "reloaded exact match differs"
assert r["base"]["n_examples"] == 40 and r["base"]["n_generated"] == 40, r["base"]
assert r["capitals"]["f1"] > r["base"]["f1"], (r["capitals"]["f1"], r["base"]["f1"])' \
    "$T/eval.json" "$T/a/eval.json" 2> "$T/err"; then pass eval_json_consistent
else fail eval_json_consistent "$(tail -n 3 "$T/err")"; fi

# --quant auto with adapters trained on different bases: the first one's, said so; --quant wins
mkdir -p "$T/a4" && cp "$T/a"/adapter_* "$T/a4/" &&
  sed 's/"quant": *"none"/"quant": "nf4"/' "$T/a/train_config.json" > "$T/a4/train_config.json"
quick=(--model "$T/base" --tokenizer "$T/tok.model" --data "$T/val.jsonl" --template alpaca --no-generate
       --max-examples 8)
$LORA eval "${quick[@]}" --adapter q4="$T/a4" --adapter f32="$T/a" > "$T/mix.out" 2> "$T/mix.err"
if grep -q "warning: the adapters were trained on different bases: q4 (nf4) but f32 (none); using nf4" "$T/mix.err" &&
   grep -q "^q4 " "$T/mix.out"; then pass eval_quant_disagreeing_adapters
else fail eval_quant_disagreeing_adapters "$(cat "$T/mix.err" | head -n 5)"; fi
$LORA eval "${quick[@]}" --adapter q4="$T/a4" --quant none > "$T/q.out" 2> "$T/q.err"
if grep -q "base weights none (--quant)" "$T/q.err" && ! grep -q "as adapter" "$T/q.err"; then pass eval_explicit_quant_wins
else fail eval_explicit_quant_wins "$(grep 'base weights' "$T/q.err")"; fi
$LORA eval "${quick[@]}" > "$T/q.out" 2> "$T/q.err"
if grep -q "base weights none (no adapter with a train_config.json" "$T/q.err"; then pass eval_quant_default_none
else fail eval_quant_default_none "$(grep 'base weights' "$T/q.err")"; fi

# messages rows: eval lays them out in the model's own chat template as training does, so the
# base's loss equals training's step-0 held-out loss (a zephyr chat_template beside the model)
cp -r "$T/base" "$T/zbase"
cat > "$T/zbase/tokenizer_config.json" <<'JSON'
{"chat_template": "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}\n{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}"}
JSON
python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                   {"role": "assistant", "content": r["output"]}]}))' "$T/val.jsonl" > "$T/chat.jsonl"
if $LORA train --model "$T/zbase" --tokenizer "$T/tok.model" --data "$T/chat.jsonl" --val-data "$T/chat.jsonl" \
     --out "$T/z" --quant none --steps 1 --batch-size 8 --seq-len 128 --threads 1 > "$T/z.log" 2>&1 &&
   $LORA eval --model "$T/zbase" --tokenizer "$T/tok.model" --data "$T/chat.jsonl" --no-generate \
     --json "$T/z.json" > "$T/z.out" 2> "$T/z.err"; then
  step0=$(grep '"event":"eval","step":0,' "$T/z/metrics.jsonl" | sed -E 's/.*"val_loss":([-0-9.eE+]+).*/\1/')
  got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["loss"])' "$T/z.json")
  if grep -q "chat template (messages data): zephyr" "$T/z.log" && grep -q "chat template (messages rows): zephyr" "$T/z.err" &&
     awk -v x="$got" -v y="$step0" 'BEGIN{d=x-y; if(d<0)d=-d; exit !(x!="" && y!="" && d <= 1e-4*y)}'; then
    pass "eval_messages_in_model_template ($got vs step-0 $step0)"
  else fail eval_messages_in_model_template "eval base loss [$got] vs training's step-0 [$step0]: $(grep -h 'chat template' "$T/z.log" "$T/z.err")"; fi
else fail eval_messages_in_model_template "$(tail -n 3 "$T/z.log" "$T/z.err")"; fi

expect_error() {  # NAME PATTERN CMD...
  local name=$1 pat=$2; shift 2
  "$@" > "$T/out" 2> "$T/err"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q -- "$pat" "$T/err"; then pass "$name"
  else fail "$name" "rc=$rc, stderr: $(head -c 300 "$T/err")"; fi
}
expect_error eval_needs_data "needs --model and --data" $LORA eval --model "$T/base"
expect_error eval_missing_adapter "$T/nope" $LORA eval --model "$T/base" --tokenizer "$T/tok.model" \
  --adapter "$T/nope" --data "$T/val.jsonl"
expect_error eval_duplicate_name "already loaded" $LORA eval --model "$T/base" --tokenizer "$T/tok.model" \
  --adapter x="$T/a" --adapter x="$T/a" --data "$T/val.jsonl"
expect_error eval_bad_max_tokens "max-tokens" $LORA eval --model "$T/base" --tokenizer "$T/tok.model" \
  --data "$T/val.jsonl" --max-tokens -3
expect_error eval_bad_quant "expected auto, nf4 or none" $LORA eval "${quick[@]}" --quant nf5
mkdir -p "$T/bad" && cp "$T/a"/adapter_* "$T/bad/" && echo '{"quant": 4}' > "$T/bad/train_config.json"
expect_error eval_bad_train_config "$T/bad/train_config.json" $LORA eval "${quick[@]}" --adapter "$T/bad"
exit $failed
