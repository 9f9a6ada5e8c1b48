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
