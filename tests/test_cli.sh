#!/usr/bin/env bash
# User mistakes give one clear message and a non-zero exit, never a crash.
source tests/lib.sh
T=$(tmpdir cli)
expect_error() {  # NAME PATTERN CMD...
  local name=$1 pat=$2; shift 2
  "$@" > "$T/out" 2> "$T/err"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q -- "$pat" "$T/err"; then pass "$name"
  else fail "$name" "rc=$rc, stderr: $(head -c 300 "$T/err")"; fi
}
echo '{"rank": 8, "lr": ' > "$T/bad.json"
expect_error recipe_bad_json "bad.json" ./lora train "$T/bad.json"
echo '{"rnak": 8}' > "$T/typo.json"
expect_error recipe_unknown_key 'unknown setting "rnak"' ./lora train "$T/typo.json"
expect_error flag_bad_number '"abc"' ./lora train --lr abc
expect_error no_model "no model" ./lora train --data x.jsonl
expect_error missing_model "$T/nope" ./lora train --model "$T/nope" --data x.jsonl --out "$T/o"
expect_error generate_missing_model "$T/nope" ./lora generate --model "$T/nope" --prompt hi
expect_error unknown_command "unknown command" ./lora frobnicate
expect_error bad_target 'unknown LoRA target "qq"' ./lora train --targets qq
expect_error bad_compute_dtype 'expected auto, fp32 or bf16, got "fp8"' ./lora train --compute-dtype fp8
expect_error bad_memory_limit 'memory_limit: expected a whole number' ./lora train --memory-limit -5
./lora init-model --out "$T/m" --dim 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64 --vocab 300 > /dev/null
printf 'hello world\n' > "$T/c.txt"
spm_train --input="$T/c.txt" --model_prefix="$T/tok" --vocab_size=270 --model_type=bpe --byte_fallback=true \
  --hard_vocab_limit=false --minloglevel=2 > /dev/null 2>&1
printf '{"instruction":"a","output":"b"}\n{"instruction": oops}\n' > "$T/bad.jsonl"
expect_error jsonl_bad_line "bad.jsonl:2" ./lora train --model "$T/m" --tokenizer "$T/tok.model" \
  --data "$T/bad.jsonl" --out "$T/o2" --steps 1
printf '{"instruction":"a"}\n' > "$T/missing.jsonl"
expect_error jsonl_missing_field "missing.jsonl:1" ./lora train --model "$T/m" --tokenizer "$T/tok.model" \
  --data "$T/missing.jsonl" --out "$T/o3" --steps 1
# the compute dtype and the memory limit are reported at start-up and recorded in the config
printf '{"instruction":"a","output":"b"}\n{"instruction":"c","output":"d"}\n' > "$T/ok.jsonl"
if ./lora train --model "$T/m" --tokenizer "$T/tok.model" --data "$T/ok.jsonl" --val-data "$T/ok.jsonl" \
    --out "$T/o4" --steps 1 --compute-dtype fp32 --memory-limit 0 > "$T/o4.log" 2>&1 &&
    grep -q "^compute: fp32" "$T/o4.log" && grep -q '"compute_dtype": *"fp32"' "$T/o4/train_config.json" &&
    grep -q '"memory_limit": *0' "$T/o4/train_config.json" && grep -q "0 of 1 blocks keep" "$T/o4.log"; then
  pass compute_dtype_and_memory_limit_flags
else
  fail compute_dtype_and_memory_limit_flags "$(grep -i "compute\|keep\|error" "$T/o4.log" | head -5)"
fi
head -c 100 "$T/m/model.safetensors" > "$T/trunc.safetensors"; mkdir -p "$T/trunc"
cp "$T/m/config.json" "$T/trunc/"; mv "$T/trunc.safetensors" "$T/trunc/model.safetensors"
expect_error truncated_model "model.safetensors" ./lora generate --model "$T/trunc" --tokenizer "$T/tok.model" --prompt hi
# lora info: the CPU, every kernel variant of this build, the choice, the cache; the calibration
# is cached (a second run reads it) and LORA_KERNEL forces a choice without measuring
export XDG_CACHE_HOME="$T/cache"
if ./lora info > "$T/info1" 2>&1 && ./lora info > "$T/info2" 2>&1 &&
    grep -q "^cpu: " "$T/info1" && grep -q "f32-c" "$T/info1" && grep -q "^chosen: *--compute-dtype auto -> " "$T/info1" &&
    grep -q "(measured now)" "$T/info1" && grep -q "(cached)" "$T/info2" && grep -q "^cache: *$T/cache/lora/kernels-" "$T/info1" &&
    ls "$T/cache/lora/"kernels-*.txt > /dev/null 2>&1 &&
    ./lora info --recalibrate > "$T/info5" 2>&1 && grep -q "(measured now)" "$T/info5" &&
    ./lora info > "$T/info6" 2>&1 && grep -q "(cached)" "$T/info6"; then
  pass lora_info_measures_then_reads_the_cache
else
  fail lora_info_measures_then_reads_the_cache "$(head -c 600 "$T/info1"; head -c 300 "$T/info2")"
fi
if LORA_KERNEL=f32-c ./lora info > "$T/info3" 2>&1 && grep -q "auto -> f32-c; fp32 -> f32-c" "$T/info3" &&
    LORA_KERNEL=nonsense ./lora info > "$T/info4" 2>&1 && grep -q "LORA_KERNEL=nonsense is not a kernel" "$T/info4"; then
  pass lora_kernel_env_forces_the_choice
else
  fail lora_kernel_env_forces_the_choice "$(head -c 400 "$T/info3"; head -c 300 "$T/info4")"
fi
if ./lora train --model "$T/m" --tokenizer "$T/tok.model" --data "$T/ok.jsonl" --val-data "$T/ok.jsonl" \
    --out "$T/o5" --steps 1 > "$T/o5.log" 2>&1 && grep -q "^compute: .* kernel" "$T/o5.log"; then
  pass train_reports_the_kernel
else
  fail train_reports_the_kernel "$(grep -i "compute\|error" "$T/o5.log" | head -5)"
fi
unset XDG_CACHE_HOME
exit $failed
