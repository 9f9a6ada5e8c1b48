#!/usr/bin/env bash
# The whole test suite for other x86-64 builds than the native one, each in a copy of the
# tracked sources under $VARIANT_ROOT (default build/variants/NAME), so that its ./lora and
# build folder are its own:
#   v3     -march=x86-64-v3 (AVX2 + FMA: Intel Core 12th-14th gen, AMD Zen 2/3), run with
#          LORA_ISA=avx2: the AVX-512 kernel variants this CPU may have are not used, as on
#          such a laptop
#   x86-64 plain -march=x86-64 (SSE2), run with LORA_ISA=c: the portable kernels only
# Usage: scripts/ci-x86-variants.sh [NAME ...]  (default: v3 x86-64). Prints each suite's
# lines prefixed with [NAME] and a closing "N passed, M failed, K skipped"; non-zero on failure.
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)
models=${LORA_TEST_MODELS:-$root/../shared/models}
case "$models" in /*) ;; *) models="$root/$models" ;; esac
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(v3 x86-64)
pass=0; fail=0; skip=0
for name in "${names[@]}"; do
  case "$name" in
    v3) march=-march=x86-64-v3; cap=avx2 ;;
    x86-64) march=-march=x86-64; cap=c ;;
    *) echo "FAIL variant $name: unknown (v3 or x86-64)"; fail=$((fail + 1)); continue ;;
  esac
  dst=${VARIANT_ROOT:-$root/build/variants}/$name
  rm -rf "$dst"; mkdir -p "$dst"
  git ls-files -z | xargs -0 cp --parents -t "$dst" || { echo "FAIL variant $name: copy"; fail=$((fail + 1)); continue; }
  echo "== $name: building with EXTRA_CFLAGS=$march in $dst"
  t0=$(date +%s)
  if ! make -C "$dst" -j"$(nproc)" EXTRA_CFLAGS="$march" tests > "$dst/build.log" 2>&1; then
    tail -n 30 "$dst/build.log" | sed "s/^/  [$name] /"
    echo "FAIL variant $name: build"; fail=$((fail + 1)); continue
  fi
  echo "== $name: built in $(( $(date +%s) - t0 ))s; tests with LORA_ISA=$cap"
  (cd "$dst" && LORA_ISA=$cap LORA_TEST_MODELS="$models" bash tests/run.sh) > "$dst/test.log" 2>&1
  sed "s/^/  [$name] /" "$dst/test.log" | grep -vE '^\s+\[[^]]+\] +\[[^]]+\] PASS ' || true
  line=$(tail -n 1 "$dst/test.log")
  p=$(echo "$line" | sed -nE 's/^([0-9]+) passed.*/\1/p'); f=$(echo "$line" | sed -nE 's/.* ([0-9]+) failed.*/\1/p')
  s=$(echo "$line" | sed -nE 's/.* ([0-9]+) skipped.*/\1/p')
  if [ -z "$p" ] || [ -z "$f" ]; then echo "FAIL variant $name: no summary line"; fail=$((fail + 1)); continue; fi
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + ${s:-0}))
  echo "== $name: done in $(( $(date +%s) - t0 ))s: $line"
done
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
