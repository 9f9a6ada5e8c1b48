#!/usr/bin/env bash
# `lora eval` and `lora train --eval-before` end to end: one table with the base first and the
# change against it, the same numbers in --json, a scale-0 adapter equal to the base, the
# trained adapter beating the base, and clear errors for bad input.
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

# lora eval: base, the adapter, the same adapter at scale 0
if $LORA eval --model "$T/base" --tokenizer "$T/tok.model" --adapter capitals="$T/a" --adapter "off=$T/a:0" \
     --data "$T/val.jsonl" --template alpaca --quant none --json "$T/eval.json" > "$T/eval.out" 2> "$T/eval.err"; then
  pass eval_runs
else fail eval_runs "$(tail -n 3 "$T/eval.err")"; fi
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
exit $failed
