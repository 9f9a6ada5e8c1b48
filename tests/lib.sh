# Helpers for the shell tests: pass/fail/skip lines counted by tests/run.sh.
# Sourced from the project root.
failed=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; failed=1; }
skip() { echo "SKIP $1: $2"; }
models_dir() {
  local d=${LORA_TEST_MODELS:-../shared/models}
  [ -d "$d" ] && echo "$d"
}
tmpdir() { local d="${BUILD:-build}/tmp/$1"; rm -rf "$d"; mkdir -p "$d"; echo "$d"; }
# json_field FILE KEY: value of a numeric field in the last line of a JSONL file containing KEY
last_json_number() { grep "\"$2\"" "$1" | tail -n 1 | sed -E "s/.*\"$2\":([-0-9.eE+]+).*/\1/"; }
# demo_task DIR VOCAB: the built-in task (DIR/train.jsonl, DIR/val.jsonl, DIR/corpus.txt) and a
# SentencePiece BPE tokenizer of VOCAB pieces trained on it (DIR/tok.model). Non-zero on failure.
demo_task() {
  python3 scripts/make_demo_data.py "$1" > /dev/null &&
  spm_train --input="$1/corpus.txt" --model_prefix="$1/tok" --vocab_size="$2" --model_type=bpe \
    --character_coverage=1.0 --byte_fallback=true --hard_vocab_limit=false --bos_id=1 --eos_id=2 \
    --unk_id=0 --pad_id=-1 --minloglevel=2 > "$1/spm.log" 2>&1
}
