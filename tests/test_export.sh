#!/usr/bin/env bash
# The merge / export / resume commands end to end on a random-weight model the test writes:
#  - `lora merge` (HF f32 and GGUF) generates the same greedy tokens as base + adapter;
#  - `lora export --to gguf` gives the same tokens and held-out loss as the PEFT adapter, and
#    `--to peft` brings back a byte-identical adapter_model.safetensors;
#  - `--resume` from a checkpoint, and after `kill -9` mid-run, ends with an adapter byte-for-byte
#    equal to the uninterrupted run's (cmp), and the same metrics.jsonl (timings aside).
source tests/lib.sh
L=${LORA:-./lora}
T=$(tmpdir export_cli)
demo_task "$T" 512 || { fail export_setup "demo data or spm_train failed"; exit 1; }
"$L" init-model --out "$T/base" --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 172 --vocab 512 \
  --seq 256 --seed 3 --std 0.05 > /dev/null || { fail export_setup "init-model failed"; exit 1; }

# train OUT EXTRA...: the same run every time (dropout on, so the RNG state matters); exec, so
# that a background `train` is the lora process itself and kill -9 hits it
train() {
  local out=$1; shift
  exec "$L" train --model "$T/base" --tokenizer "$T/tok.model" --data "$T/train.jsonl" --val-data "$T/val.jsonl" \
    --out "$out" --template alpaca --steps 40 --lr 3e-3 --batch-size 8 --grad-accum 2 --warmup-steps 5 \
    --seq-len 160 --log-every 7 --eval-every 15 --dropout 0.1 --save-every 5 "$@"
}
# metrics.jsonl without the timings
metrics() { sed -E 's/,"tokens_per_s":[-0-9.eE+]+//' "$1"; }

(train "$T/full") > "$T/full.log" 2>&1 || { fail resume_full_run "$(tail -n 3 "$T/full.log")"; exit 1; }
[ -d "$T/full/checkpoint-35" ] && [ ! -e "$T/full/checkpoint-40" ] && pass checkpoints_written \
  || fail checkpoints_written "$(ls "$T/full")"

# 1. resume from an explicit checkpoint into another directory
if "$L" train --resume "$T/full/checkpoint-20" --out "$T/from20" > "$T/from20.log" 2>&1 &&
   cmp -s "$T/full/adapter_model.safetensors" "$T/from20/adapter_model.safetensors"; then
  pass resume_from_checkpoint_bit_identical
else fail resume_from_checkpoint_bit_identical "$(tail -n 3 "$T/from20.log")"; fi

# 2. kill -9 mid-run, then --resume OUT (its latest checkpoint)
train "$T/killed" > "$T/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 3000); do
  [ -d "$T/killed/checkpoint-5" ] && break
  kill -0 $pid 2> /dev/null || break
  sleep 0.01
done
kill -9 $pid 2> /dev/null
wait $pid 2> /dev/null
[ "$(cat /proc/$pid/comm 2> /dev/null)" = "" ] || fail resume_after_kill "process $pid still running"
latest=$(ls "$T/killed" | sed -nE 's/^checkpoint-([0-9]+)$/\1/p' | sort -n | tail -n 1)
if [ -e "$T/killed/adapter_model.safetensors" ] || [ -z "$latest" ]; then
  fail resume_after_kill "the run was not stopped mid-way (checkpoints: [$latest]); see $T/killed.log"
else
  echo "killed after checkpoint-$latest of 40 steps"
  if "$L" train --resume "$T/killed" > "$T/resumed.log" 2>&1 &&
     cmp "$T/full/adapter_model.safetensors" "$T/killed/adapter_model.safetensors"; then
    pass "resume_after_kill_bit_identical (killed after step $latest)"
  else fail resume_after_kill_bit_identical "$(tail -n 3 "$T/resumed.log")"; fi
  if diff <(metrics "$T/full/metrics.jsonl") <(metrics "$T/killed/metrics.jsonl") > "$T/metrics.diff"; then
    pass resume_metrics_continue
  else fail resume_metrics_continue "$(head -n 4 "$T/metrics.diff")"; fi
fi

# a checkpoint of other LoRA settings, or other data, is refused with a reason
if ! "$L" train --resume "$T/full/checkpoint-20" --out "$T/bad" --rank 4 > "$T/bad.log" 2>&1 &&
   grep -q "differs from this run's LoRA settings" "$T/bad.log"; then pass resume_other_rank_refused
else fail resume_other_rank_refused "$(tail -n 2 "$T/bad.log")"; fi
head -n 100 "$T/train.jsonl" > "$T/less.jsonl"
if ! "$L" train --resume "$T/full/checkpoint-20" --out "$T/bad2" --data "$T/less.jsonl" > "$T/bad2.log" 2>&1 &&
   grep -q "training data differs" "$T/bad2.log"; then pass resume_other_data_refused
else fail resume_other_data_refused "$(tail -n 2 "$T/bad2.log")"; fi

# 3. merge and export against base + adapter, all on the fp32 base (--quant none: a PEFT
# adapter trained as QLoRA would otherwise be run over the 4-bit base its train_config.json names)
A=$T/full
gen() { "$L" generate --tokenizer "$T/tok.model" --template alpaca --prompt "Name the capital city of France." \
          --temperature 0 --max-tokens 16 --print-ids --ignore-eos --quant none "$@" 2> /dev/null | tail -n 1; }
# held-out loss of the last model evaluated (base + ADAPTER)
evl() { "$L" eval --tokenizer "$T/tok.model" --template alpaca --data "$T/val.jsonl" --no-generate --quant none \
          --json "$T/eval.json" "$@" > /dev/null 2>&1 &&
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][-1]["loss"])' "$T/eval.json"; }
want=$(gen --model "$T/base" --adapter "$A")
base_ids=$(gen --model "$T/base")
echo "base + adapter: [$want]; base: [$base_ids]"
[ -n "$want" ] && [ "$want" != "$base_ids" ] && pass adapter_changes_generation \
  || fail adapter_changes_generation "adapter [$want] base [$base_ids]"

"$L" merge --model "$T/base" --adapter "$A" --tokenizer "$T/tok.model" --out "$T/merged" > "$T/merge.log" 2>&1 \
  || fail merge_hf "$(tail -n 2 "$T/merge.log")"
[ -s "$T/merged/tokenizer.model" ] && grep -q '"torch_dtype": "float32"' "$T/merged/config.json" \
  && pass merge_hf_files || fail merge_hf_files "$(ls "$T/merged")"
got=$(gen --model "$T/merged")
[ -n "$got" ] && [ "$got" = "$want" ] && pass merge_hf_same_greedy_tokens || fail merge_hf_same_greedy_tokens "[$got]"

"$L" merge --model "$T/base" --adapter "$A" --tokenizer "$T/tok.model" --out "$T/merged.gguf" > "$T/mergeg.log" 2>&1 \
  || fail merge_gguf "$(tail -n 2 "$T/mergeg.log")"
got=$(gen --model "$T/merged.gguf")
[ -n "$got" ] && [ "$got" = "$want" ] && pass merge_gguf_same_greedy_tokens || fail merge_gguf_same_greedy_tokens "[$got]"

"$L" export --adapter "$A" --model "$T/base" --out "$T/adapter.gguf" > "$T/export.log" 2>&1 \
  || fail export_gguf "$(tail -n 2 "$T/export.log")"
got=$(gen --model "$T/base" --adapter "$T/adapter.gguf")
[ -n "$got" ] && [ "$got" = "$want" ] && pass gguf_adapter_same_greedy_tokens || fail gguf_adapter_same_greedy_tokens "[$got]"
lp=$(evl --model "$T/base" --adapter "$A")
lg=$(evl --model "$T/base" --adapter "$T/adapter.gguf")
if [ -n "$lp" ] && [ "$lp" = "$lg" ]; then pass "gguf_adapter_same_heldout_loss ($lg)"
else fail gguf_adapter_same_heldout_loss "PEFT [$lp] GGUF [$lg]"; fi

"$L" export --adapter "$T/adapter.gguf" --model "$T/base" --to peft --out "$T/back" > "$T/back.log" 2>&1 \
  && cmp -s "$A/adapter_model.safetensors" "$T/back/adapter_model.safetensors" \
  && pass gguf_to_peft_byte_identical || fail gguf_to_peft_byte_identical "$(tail -n 2 "$T/back.log")"

if ! "$L" merge --model "$T/base" --adapter "$T/base/config.json" --out "$T/x" > "$T/x.log" 2>&1 &&
   grep -q "not an adapter" "$T/x.log"; then pass merge_bad_adapter_error
else fail merge_bad_adapter_error "$(tail -n 2 "$T/x.log")"; fi
exit $failed
