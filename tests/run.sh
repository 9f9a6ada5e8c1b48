#!/usr/bin/env bash
# Runs every test: each build/tests/test_* binary and each tests/test_*.sh script, from the
# project root. Checks print "PASS name", "FAIL name: why" or "SKIP name: why"; a program
# that exits non-zero without printing a FAIL counts as one failure.
# Closing line: "N passed, M failed, K skipped"; exit status non-zero on any failure.
cd "$(dirname "$0")/.." || exit 2
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
pass=0; fail=0; skip=0
mkdir -p build/tmp build/logs
run_one() {
  local name=$1; shift
  local log=build/logs/$name.log
  local t0=$(date +%s)
  "$@" > "$log" 2>&1
  local rc=$?
  local p f s
  p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1; echo "FAIL $name: exited with status $rc" >> "$log"
  fi
  grep -E '^(PASS|FAIL|SKIP) ' "$log" | sed "s/^/  [$name] /"
  if [ "$f" -ne 0 ]; then echo "  [$name] --- last lines of $log:"; tail -n 25 "$log" | sed 's/^/    /'; fi
  echo "$name: $p passed, $f failed, $s skipped ($(( $(date +%s) - t0 ))s)"
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
}
for t in "${BUILD:-build}"/tests/test_*; do
  [ -x "$t" ] || continue
  run_one "$(basename "$t")" "$t"
done
for t in tests/test_*.sh; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t" .sh)" bash "$t"
done
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
