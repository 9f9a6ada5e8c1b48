#!/usr/bin/env bash
# `make bench`: one LoRA training step (rank 8, alpha 16, all seven targets, AdamW) of lora.c
# (--quant nf4 and --quant none) against PyTorch 1.13 (fp32 base; fp32 and bf16 autocast),
# on random-weight models of two shapes, plus NF4 decode speed. Prints a table; never asserts.
#
#   BUILD=build bash bench/bench.sh
# Environment: BENCH_QUICK=1 (SmolLM2 shape only), BENCH_STEPS_SMALL (default 4),
# BENCH_STEPS_BIG (default 3), BENCH_TIMEOUT per run in seconds (default 900),
# BENCH_MODELS (default build/bench: the random models are written there once and reused;
# the TinyLlama-shape one is 4.4 GB of fp32 safetensors), BENCH_MEM_GBS (memory bandwidth
# used for the decode fraction, default: what `lora info` measured).
#
# Every configuration runs in its own process, so each peak RSS (ru_maxrss) is its own.
# Timed: the fastest warm step of each process (the first step is excluded; the 2 vCPUs are
# shared with other tenants of the host, which only ever slows a step down); at the SmolLM2 and
# TinyLlama seq-256 shapes every configuration runs in two interleaved passes and keeps the
# faster. PyTorch's thread count (1 or 2) is chosen per dtype on the small shape and reused.
# lora.c runs as `lora train` does by default: --compute-dtype auto (the GEMM kernel that
# measured fastest on this CPU, see `lora info`, printed first), gradient checkpointing with
# --memory-limit 1536 MiB (BENCH_MEMORY_LIMIT), plus one row without checkpointing and one
# with --compute-dtype fp32. PyTorch runs fp32 with OpenBLAS's proper kernels (when OpenBLAS
# would fall back to a generic core on this CPU, OPENBLAS_CORETYPE is set for it as lora sets
# it for itself) and bf16 autocast; "vs torch best" is against the faster of the two.
#
# GFLOP/s = useful FLOPs per step / step time, for both sides, with (tok = B·T)
#   4·N_lin·tok + 4·V·C·tok + 6·N_lora·tok + 6·L·B·T²·H·D
# (frozen linears forward + input gradient, lm_head likewise, LoRA forward + both gradients,
# causal attention forward + backward; checkpointing recompute not counted).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=$BUILD/bench/bench_step
PY=/usr/bin/python3
MD=${BENCH_MODELS:-build/bench}
SS=${BENCH_STEPS_SMALL:-4}
SB=${BENCH_STEPS_BIG:-3}
TO=${BENCH_TIMEOUT:-900}
GBS=${BENCH_MEM_GBS:-}
LOG=$BUILD/bench/bench.log
# as `lora` itself does (train/main.c): waiting OpenMP threads sleep instead of spinning, which
# matters whenever anything else runs on the machine; applied to PyTorch's libgomp too
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$MD" "$BUILD/bench"
: > "$LOG"

[ -x "$BIN" ] || { echo "bench: $BIN missing (run: make BUILD=$BUILD bench)"; exit 1; }
[ -x ./lora ] || { echo "bench: ./lora missing (run: make bench)"; exit 1; }

echo "== lora.c bench  $(date -u +%FT%TZ)  $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "   load now: $(cut -d' ' -f1-3 /proc/loadavg) (other processes on the machine skew the timings)"
echo "   OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset} OMP_WAIT_POLICY=$OMP_WAIT_POLICY; log: $LOG"
# the CPU, the kernels measured and chosen (lora info, which also caches the calibration)
./lora info 2>&1 | sed 's/^/   /'
[ -z "$GBS" ] && GBS=$(./lora info | sed -n 's/^memory: *\([0-9.]*\) GB\/s.*/\1/p')
GBS=${GBS:-49}
# PyTorch's OpenBLAS (and bench_step's) gets the core `lora` gives its own at start-up: only
# when OpenBLAS would fall back to a generic one and the user set none
CT=$(./lora info --openblas-coretype)
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -n "$CT" ]; then
    export OPENBLAS_CORETYPE=$CT
    echo "   OpenBLAS does not know this CPU: every process below runs with OPENBLAS_CORETYPE=$CT"
fi

# init DIR DIM LAYERS HEADS KV FFN VOCAB TIED
init_model() {
    [ -f "$1/model.safetensors" ] && return 0
    local need_kb=$(( $2 * $2 * 8 * $3 / 1024 + $2 * $7 * 8 / 1024 + $2 * $6 * 12 * $3 / 1024 ))
    local free_kb=$(df -Pk "$MD" | awk 'NR==2{print $4}')
    if [ "$free_kb" -lt "$need_kb" ]; then
        echo "bench: not enough disk for $1 (need ~$((need_kb / 1048576)) GB, have $((free_kb / 1048576)) GB)"
        return 1
    fi
    echo "   writing random model $1 (~$((need_kb / 1024)) MB fp32, once)"
    "$BIN" init "$@" >> "$LOG" 2>&1
}

# kv LINE KEY -> value
kv() { sed -n "s/.*[[:space:]]$2=\([^[:space:]]*\).*/\1/p; s/^$2=\([^[:space:]]*\).*/\1/p" <<< "$1" | head -1; }

# run NAME CMD... : the result line (or "failed") into R_NAME
declare -A R
run() {
    local name=$1; shift
    echo "-- $name: $*" >> "$LOG"
    local out
    out=$(timeout "$TO" "$@" 2>> "$LOG")
    local rc=$?
    echo "$out" >> "$LOG"
    out=$(grep '^mode=' <<< "$out" | tail -1)
    if [ $rc -ne 0 ] || [ -z "$out" ]; then R[$name]="failed rc=$rc"; else R[$name]=$out; fi
    local st=$(kv "${R[$name]}" step_s) what
    if [ -n "$st" ]; then what="${st}s/step"; else what="$(kv "${R[$name]}" tok_s) tok/s"; fi
    printf '   %-28s %s\n' "$name" "$what (load after: $(cut -d' ' -f1 /proc/loadavg))" >&2
}

fmt() { awk -v x="$1" -v f="$2" 'BEGIN{ if (x == "") print "-"; else printf f, x }'; }

# table for one shape: SHAPE_LABEL KEY_PREFIX
declare -A BEST_T
table() {
    local label=$1 p=$2
    local flop=$(kv "${R[$p.nf4]:-}" step_gflop)
    [ -z "$flop" ] && flop=$(kv "${R[$p.none]:-}" step_gflop)
    local t32=$(kv "${R[$p.torch.fp32]:-}" tok_s) t16=$(kv "${R[$p.torch.bf16]:-}" tok_s)
    local ref_tok=$(awk -v a="$t32" -v b="$t16" 'BEGIN{ if (a == "" && b == "") print ""; else print (a + 0 > b + 0 ? a : b) }')
    echo
    echo "$label   (useful work per step: ${flop:-?} GFLOP)"
    printf '  %-40s %10s %10s %10s %12s %14s\n' configuration "tok/s" "s/step" "GFLOP/s" "peak RSS MB" "vs torch best"
    for c in nf4 nf4nc nf4f32 none torch.fp32 torch.bf16; do
        local line=${R[$p.$c]:-}
        local name
        case $c in
            nf4) name="lora.c --quant nf4 [$(kv "$line" kernel)]";;
            nf4nc) name="  ... no checkpointing";;
            nf4f32) name="  ... --compute-dtype fp32 [$(kv "$line" kernel)]";;
            none) name="lora.c --quant none [$(kv "$line" kernel)]";;
            torch.fp32) name="torch fp32 (${BEST_T[fp32]:-?} thr)";;
            torch.bf16) name="torch bf16 autocast (${BEST_T[bf16]:-?} thr)";;
        esac
        [ "$c" = nf4f32 ] && [ -z "$line" ] && continue
        if [ -z "$line" ] || [[ $line == failed* ]]; then
            printf '  %-40s %s\n' "$name" "${line:-not run}"
            continue
        fi
        local tok=$(kv "$line" tok_s) st=$(kv "$line" step_s) rss=$(kv "$line" peak_rss_mb)
        local gf=$(awk -v f="$flop" -v s="$st" 'BEGIN{ if (f == "") print ""; else printf "%.1f", f / s }')
        local ratio=$(awk -v a="$tok" -v b="$ref_tok" 'BEGIN{ if (b == "" || b == 0) print "-"; else printf "%.2fx", a / b }')
        printf '  %-40s %10s %10s %10s %12s %14s\n' "$name" "$(fmt "$tok" %.1f)" "$(fmt "$st" %.2f)" "${gf:--}" "$(fmt "$rss" %.0f)" "$ratio"
    done
}

# the machine's state before and after (the host may co-schedule the two vCPUs on one core)
peak() { "$BIN" peak | sed -n 's/.*bf16_gflops=\([0-9]*\) fp32_gflops=\([0-9]*\).*/bf16 dot products \1 GFLOP\/s, fp32 FMA \2 GFLOP\/s (2 threads)/p'; }
PEAK_BEFORE=$(peak)
echo "   peak now: $PEAK_BEFORE"

SMOL=$MD/smollm2-135m
TINY=$MD/tinyllama-1.1b
init_model "$SMOL" 576 30 9 3 1536 49152 1 || exit 1

echo "   running (each line is one process; progress in $LOG)" >&2
# faster NAME: R[NAME] = the faster of R[NAME.p1] and R[NAME.p2] (a failed or missing one loses)
faster() {
    local a=${R[$1.p1]:-} b=${R[$1.p2]:-}
    local ta=$(kv "$a" step_s) tb=$(kv "$b" step_s)
    if [ -n "$ta" ] && { [ -z "$tb" ] || awk -v x="$ta" -v y="$tb" 'BEGIN{exit !(x <= y)}'; }; then R[$1]=$a
    elif [ -n "$tb" ]; then R[$1]=$b
    else R[$1]=${a:-$b}; fi
}

# Each configuration of the two shorter shapes runs twice, in two interleaved passes, and keeps
# its faster process: the host's co-scheduling of the two vCPUs comes and goes for minutes.
# ---- SmolLM2-135M shape, batch 4 x seq 256 ---------------------------------------------------
for pass in 1 2; do
    run s.nf4.p$pass "$BIN" train "$SMOL" nf4 4 256 "$SS"
    run s.nf4nc.p$pass "$BIN" train "$SMOL" nf4 4 256 "$SS" 0
    run s.none.p$pass "$BIN" train "$SMOL" none 4 256 "$SS"
    run s.nf4f32.p$pass env BENCH_COMPUTE=fp32 "$BIN" train "$SMOL" nf4 4 256 "$SS"
    for dt in fp32 bf16; do
        if [ $pass = 2 ]; then
            run "s.torch.$dt.p2" "$PY" bench/torch_step.py smollm2-135m 4 256 "$SS" "$dt" "${BEST_T[$dt]}"
            continue
        fi
        best=""
        for th in 2 1; do  # the thread count is chosen in pass 1 and reused everywhere after
            run "s.torch.$dt.t$th" "$PY" bench/torch_step.py smollm2-135m 4 256 "$SS" "$dt" "$th"
            tok=$(kv "${R[s.torch.$dt.t$th]}" tok_s)
            if [ -n "$tok" ] && { [ -z "$best" ] || awk -v a="$tok" -v b="$(kv "${R[s.torch.$dt.t$best]}" tok_s)" 'BEGIN{exit !(a > b)}'; }; then
                best=$th
            fi
        done
        BEST_T[$dt]=${best:-2}
        R[s.torch.$dt.p1]=${R[s.torch.$dt.t${BEST_T[$dt]}]}
    done
done
for c in nf4 nf4nc nf4f32 none torch.fp32 torch.bf16; do faster "s.$c"; done

if [ "${BENCH_QUICK:-0}" != 1 ]; then
    init_model "$TINY" 2048 22 32 4 5632 32000 0 || exit 1
    # ---- TinyLlama-1.1B shape, batch 1 x seq 256 (two passes) and 1024 (one) ------------------
    for T in 256 1024; do
        passes="1 2"
        [ $T = 1024 ] && passes=1
        for pass in $passes; do
            run "t$T.nf4.p$pass" "$BIN" train "$TINY" nf4 1 "$T" "$SB"
            run "t$T.torch.bf16.p$pass" "$PY" bench/torch_step.py tinyllama-1.1b 1 "$T" "$SB" bf16 "${BEST_T[bf16]}"
            run "t$T.nf4nc.p$pass" "$BIN" train "$TINY" nf4 1 "$T" "$SB" 0
            run "t$T.none.p$pass" "$BIN" train "$TINY" none 1 "$T" "$SB"
            run "t$T.torch.fp32.p$pass" "$PY" bench/torch_step.py tinyllama-1.1b 1 "$T" "$SB" fp32 "${BEST_T[fp32]}"
        done
        for c in nf4 nf4nc none torch.fp32 torch.bf16; do faster "t$T.$c"; done
    done
    run dec.nf4 "$BIN" decode "$TINY" nf4 16 32
fi

echo
echo "== training step: rank 8, alpha 16, q,k,v,o,gate,up,down, AdamW; lora.c with gradient checkpointing"
table "SmolLM2-135M shape (dim 576, 30 layers, 9/3 heads, FFN 1536, vocab 49152, tied), batch 4 x seq 256" s
echo "  torch thread sweep: fp32 2thr $(kv "${R[s.torch.fp32.t2]}" tok_s) / 1thr $(kv "${R[s.torch.fp32.t1]}" tok_s) tok/s;" \
     "bf16 2thr $(kv "${R[s.torch.bf16.t2]}" tok_s) / 1thr $(kv "${R[s.torch.bf16.t1]}" tok_s) tok/s"
if [ "${BENCH_QUICK:-0}" != 1 ]; then
    for T in 256 1024; do
        table "TinyLlama-1.1B shape (dim 2048, 22 layers, 32/4 heads, FFN 5632, vocab 32000), batch 1 x seq $T" "t$T"
    done
    echo
    line=${R[dec.nf4]}
    if [[ $line == failed* ]]; then
        echo "== decode (TinyLlama shape, nf4): $line"
    else
        echo "== decode (TinyLlama shape, --quant nf4, batch 1, 16-token prompt, 32 new tokens)"
        printf '  %.2f tok/s   weights streamed per token %s MB   %.1f GB/s = %.0f%% of %s GB/s   prefill %s tok/s   peak RSS %s MB\n' \
            "$(kv "$line" tok_s)" "$(kv "$line" weight_mb)" "$(kv "$line" gb_s)" \
            "$(awk -v g="$(kv "$line" gb_s)" -v p="$GBS" 'BEGIN{print 100 * g / p}')" "$GBS" \
            "$(kv "$line" prefill_tok_s)" "$(kv "$line" peak_rss_mb)"
    fi
fi
echo
echo "machine peak before: $PEAK_BEFORE"
echo "machine peak after:  $(peak)"
echo "lora.c: --compute-dtype auto (the kernel in brackets: the fastest measured on this CPU, see lora info above);"
echo "  gradient checkpointing on (the default) unless the row says otherwise"
echo "targets: lora.c nf4 tok/s >= 1.3x torch's best (fp32 or bf16 autocast) at the SmolLM2 and TinyLlama seq-256 shapes,"
echo "  peak RSS <= 25% of torch's; TinyLlama nf4 seq 1024 peak RSS <= 1536 MB"
