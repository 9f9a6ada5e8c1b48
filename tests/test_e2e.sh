#!/usr/bin/env bash
# End to end: LoRA fine-tuning on a small JSONL task lowers the held-out loss clearly, and
# the saved adapter reloads (lora eval) with the same held-out loss. Runs on a random-weight
# model the test writes itself — as QLoRA (--quant nf4, the default of `lora train`) and as
# plain LoRA (--quant none), whose held-out losses must agree within 5% — and, as QLoRA, on
# the real stories260K when ../shared/models is there.
source tests/lib.sh
T=$(tmpdir e2e)
demo_task "$T" 512 || { fail e2e_setup "demo data or spm_train failed"; exit 1; }

# eval_loss JSON NAME: the loss of row NAME of a `lora eval --json` file
eval_loss() {
  python3 -c 'import json,sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r["name"] == sys.argv[2]: print(r["loss"])' "$1" "$2" 2>/dev/null
}

# check_run NAME MODEL TOKENIZER OUT QUANT EXTRA_FLAGS...: train with --quant QUANT, then
# compare before/after and reload with `lora eval` given no --quant: it takes the adapter's
# (its train_config.json), so the base is loaded as training loaded it: like with like.
check_run() {
  local name=$1 model=$2 tok=$3 out=$4 quant=$5; shift 5
  if ! ./lora train --model "$model" --tokenizer "$tok" --data "$T/train.jsonl" \
        --val-data "$T/val.jsonl" --out "$out" --template alpaca --quant "$quant" "$@" > "$out.log" 2>&1; then
    fail "${name}_train" "lora train failed: $(tail -n 5 "$out.log")"; return
  fi
  local wtype=f32; [ "$quant" = nf4 ] && wtype=nf4
  if grep -q "base linear weights .* $wtype," "$out.log"; then pass "${name}_memory_plan"
  else fail "${name}_memory_plan" "no memory plan with $wtype weights in $out.log"; fi
  local before after
  before=$(grep '"event":"eval","step":0,' "$out/metrics.jsonl" | sed -E 's/.*"val_loss":([-0-9.eE+]+).*/\1/')
  after=$(last_json_number "$out/metrics.jsonl" val_loss)
  echo "$name: held-out loss before $before, after $after"
  eval "${name}_after=$after"
  if awk -v b="$before" -v a="$after" 'BEGIN{exit !(a < 0.75*b)}'; then
    pass "${name}_heldout_loss_drops (before $before, after $after)"
  else fail "${name}_heldout_loss_drops" "before $before after $after (want after < 0.75 before)"; fi
  for f in adapter_model.safetensors adapter_config.json metrics.jsonl train_config.json; do
    [ -s "$out/$f" ] || fail "${name}_files" "missing $out/$f"
  done
  if grep -q '"peft_type": *"LORA"' "$out/adapter_config.json"; then pass "${name}_adapter_config"
  else fail "${name}_adapter_config" "no peft_type LORA in adapter_config.json"; fi
  # every metrics line is one JSON object with step and loss
  if python3 -c 'import json,sys
for l in open(sys.argv[1]):
    o=json.loads(l); assert "step" in o and "loss" in o, l' "$out/metrics.jsonl" 2> "$out.json.err"; then
    pass "${name}_metrics_jsonl"
  else fail "${name}_metrics_jsonl" "$(cat "$out.json.err")"; fi
  # base and adapter on the held-out file, loaded the way training loaded them
  ./lora eval --model "$model" --tokenizer "$tok" --adapter "adapter=$out" --data "$T/val.jsonl" \
    --template alpaca --batch-size 8 --no-generate --json "$out.eval.json" > "$out.eval.log" 2>&1
  if grep -q "base weights $quant, as adapter adapter was trained" "$out.eval.log"; then pass "${name}_eval_takes_adapter_quant"
  else fail "${name}_eval_takes_adapter_quant" "no 'base weights $quant' line: $(grep 'base weights' "$out.eval.log")"; fi
  local reload base
  reload=$(eval_loss "$out.eval.json" adapter)
  if awk -v x="$reload" -v y="$after" 'BEGIN{d=x-y; if(d<0)d=-d; exit !(x!="" && d <= 1e-4*y)}'; then
    pass "${name}_adapter_reload_same_loss ($reload vs $after)"
  else fail "${name}_adapter_reload_same_loss" "reloaded adapter gives [$reload], training ended at $after: $(tail -n 3 "$out.eval.log")"; fi
  base=$(eval_loss "$out.eval.json" base)
  if awk -v x="$base" -v y="$before" 'BEGIN{d=x-y; if(d<0)d=-d; exit !(x!="" && d <= 1e-4*y)}'; then
    pass "${name}_base_eval_matches_step0 ($base)"
  else fail "${name}_base_eval_matches_step0" "base eval [$base] vs step-0 held-out loss $before"; fi
}

./lora init-model --out "$T/base" --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 172 --vocab 512 \
  --seq 256 --seed 3 --std 0.05 > /dev/null || fail e2e_init "init-model failed"
RANDOM_FLAGS=(--steps 120 --lr 3e-3 --batch-size 8 --grad-accum 2 --warmup-steps 5 --dropout 0.05
              --seq-len 160 --log-every 20)
check_run random_qlora "$T/base" "$T/tok.model" "$T/run_qlora" nf4 "${RANDOM_FLAGS[@]}"
check_run random_lora "$T/base" "$T/tok.model" "$T/run_lora" none "${RANDOM_FLAGS[@]}"
# QLoRA (4-bit base) and LoRA (fp32 base) on the same task end within 5% of each other
if awk -v q="$random_qlora_after" -v l="$random_lora_after" \
     'BEGIN{d=q-l; if(d<0)d=-d; exit !(q!="" && l!="" && d <= 0.05*l)}'; then
  pass "qlora_vs_lora_heldout_within_5pct (nf4 $random_qlora_after, fp32 $random_lora_after)"
else fail "qlora_vs_lora_heldout_within_5pct" "nf4 [$random_qlora_after] vs fp32 [$random_lora_after]"; fi

M=$(models_dir) || true
if [ -n "$M" ]; then
  check_run stories260K_qlora "$M/stories260K/stories260K.gguf" "$M/stories260K/tok512.model" \
    "$T/run_stories" nf4 --steps 80 --lr 3e-3 --batch-size 8 --warmup-steps 5 --seq-len 160 --log-every 20
else
  skip stories260K_finetune "no ../shared/models"
fi
exit $failed
