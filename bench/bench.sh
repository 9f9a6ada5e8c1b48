#!/usr/bin/env bash
# `make bench`: one LoRA training step (rank 8, alpha 16, all seven targets, AdamW) of lora.c
# (--quant nf4 and --quant none) against PyTorch 1.13 (fp32 base; fp32 and bf16 autocast),
# on random-weight models of two shapes, plus NF4 decode speed; then decoding: `lora generate`
# against llama.cpp (node-llama-cpp) on the same Q4_0 / Q8_0 GGUF files, and serving (`lora
# serve` under bench/serve_load.py). Prints tables; never asserts.
#
#   BUILD=build bash bench/bench.sh
# Environment: LORA (the binary, default ./lora), BENCH_QUICK=1 (SmolLM2 shape only),
# BENCH_ONLY=decode (the decode and serving sections only), BENCH_STEPS_SMALL (default 4),
# BENCH_STEPS_BIG (default 3), BENCH_TIMEOUT per run in seconds (default 900),
# BENCH_MODELS (default build/bench: the random models are written there once and reused;
# the TinyLlama-shape one is 4.4 GB of fp32 safetensors), BENCH_MEM_GBS (memory bandwidth
# used for the decode fraction, default: what `lora info` measured), BENCH_TOKENIZER (the
# SentencePiece model the decode GGUFs carry; default ../shared/models' llama2 one, else one
# trained on the demo data with spm_train).
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
LORA=${LORA:-./lora}
ONLY=${BENCH_ONLY:-}
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
[ -x "$LORA" ] || { echo "bench: $LORA missing (run: make bench)"; exit 1; }

echo "== lora.c bench  $(date -u +%FT%TZ)  $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "   load now: $(cut -d' ' -f1-3 /proc/loadavg) (other processes on the machine skew the timings)"
echo "   OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset} OMP_WAIT_POLICY=$OMP_WAIT_POLICY; log: $LOG"
# the CPU, the kernels measured and chosen (lora info, which also caches the calibration)
"$LORA" info 2>&1 | sed 's/^/   /'
[ -z "$GBS" ] && GBS=$("$LORA" info | sed -n 's/^memory: *\([0-9.]*\) GB\/s.*/\1/p')
GBS=${GBS:-49}
# PyTorch's OpenBLAS (and bench_step's) gets the core `lora` gives its own at start-up: only
# when OpenBLAS would fall back to a generic one and the user set none
CT=$("$LORA" info --openblas-coretype)
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
# faster NAME [KEY CMP]: R[NAME] = the faster of R[NAME.p1] and R[NAME.p2] (a failed or missing
# one loses): by step_s, the lower (<=) unless KEY and CMP say otherwise (decode_tok_s >=)
faster() {
    local a=${R[$1.p1]:-} b=${R[$1.p2]:-}
    local ta=$(kv "$a" "${2:-step_s}") tb=$(kv "$b" "${2:-step_s}")
    if [ -n "$ta" ] && { [ -z "$tb" ] || awk -v x="$ta" -v y="$tb" "BEGIN{exit !(x ${3:-<=} y)}"; }; then R[$1]=$a
    elif [ -n "$tb" ]; then R[$1]=$b
    else R[$1]=${a:-${b:-${R[$1]:-}}}; fi
}

if [ "$ONLY" != decode ]; then  # ---- the training step (BENCH_ONLY=decode skips it) ---------
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
fi

# ---- decoding: lora generate against llama.cpp on the same GGUF files -------------------------
# Random-weight GGUFs of both shapes in Q4_0 and Q8_0, written once into $MD by `lora init-model
# --outtype` (the weights of the HF directories above: same seed, std and draw order), carrying
# a SentencePiece vocabulary. Each file: `lora generate --verbose` (its timing line) under
# /usr/bin/time (peak RSS), then llama.cpp through node-llama-cpp (bench/llamacpp_bench.mjs,
# timed in JS around the evaluation), with 2 and with 1 thread, interleaved, two passes, the
# faster decode of each kept. Plus `lora generate --quant nf4` on the fp32 HF directory of the
# same weights.
source tests/lib.sh  # models_dir, demo_task
NLC=build/node-llama-cpp
DEC_P=64 DEC_N=64 DEC_THREADS=2
# both run with DEC_THREADS and with 1 thread (the 2 vCPUs may share one core); the table keeps
# each one's better figure
DEC_TSET=$DEC_THREADS
[ "$DEC_THREADS" != 1 ] && DEC_TSET="$DEC_THREADS 1"
DEC_PROMPT=$(printf 'the %.0s' $(seq $((DEC_P - 2))))the  # BOS + 63 x "▁the" with llama2's vocabulary
SMOL_SHAPE=(--dim 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536 --vocab 49152 --tied)
TINY_SHAPE=(--dim 2048 --layers 22 --heads 32 --kv-heads 4 --ffn 5632 --vocab 32000)

# the tokenizer the GGUFs carry -> TOK
dec_tokenizer() {
    TOK=${BENCH_TOKENIZER:-}
    local shared
    shared=$(models_dir)/tokenizers/llama2/tokenizer.model
    [ -z "$TOK" ] && [ -f "$shared" ] && TOK=$shared
    if [ -z "$TOK" ]; then
        TOK=$MD/tok-demo/tok.model
        [ -f "$TOK" ] || { mkdir -p "$MD/tok-demo" && demo_task "$MD/tok-demo" 2000; } || return 1
    fi
    TOK=$(realpath "$TOK")
}

# dec_gguf NAME FMT SHAPE...: $MD/NAME-FMT.gguf, written unless it exists for this tokenizer
dec_gguf() {
    local f=$MD/$1-$2.gguf
    if [ -f "$f" ] && [ "$(cat "$f.tokenizer" 2> /dev/null)" = "$TOK" ]; then return 0; fi
    echo "   writing $f (once)" >&2
    "$LORA" init-model --out "$f" --outtype "$2" "${@:3}" --seq 2048 --seed 1 --std 0.02 --tokenizer "$TOK" \
        >> "$LOG" 2>&1 && echo "$TOK" > "$f.tokenizer"
}

# parse_timing TEXT: `lora generate --verbose`'s timing line (+ /usr/bin/time's maxrss_kb=N) ->
# "prompt=64 prefill_tok_s=520.3 steps=63 decode_tok_s=51.9 rss_mb=123.4", empty without it
parse_timing() {
    local t rss
    t=$(sed -n 's/^timing: prompt \([0-9]*\) tok [0-9.]* s (\([0-9.]*\) tok\/s), decode \([0-9]*\) tok [0-9.]* s (\([0-9.]*\) tok\/s).*/prompt=\1 prefill_tok_s=\2 steps=\3 decode_tok_s=\4/p' <<< "$1" | tail -1)
    rss=$(sed -n 's/^maxrss_kb=\([0-9]*\)$/\1/p' <<< "$1" | tail -1)
    [ -n "$t" ] && echo "$t rss_mb=$(awk -v k="${rss:-0}" 'BEGIN{printf "%.1f", k / 1024}')"
}

# parse_lcpp TEXT: bench/llamacpp_bench.mjs's JSON line (+ maxrss_kb=N) -> the same keys
parse_lcpp() {
    local j rss
    j=$(grep '^{' <<< "$1" | tail -1)
    rss=$(sed -n 's/^maxrss_kb=\([0-9]*\)$/\1/p' <<< "$1" | tail -1)
    [ -n "$j" ] && "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); print("prompt=%d prefill_tok_s=%.2f steps=%d decode_tok_s=%.3f rss_mb=%.1f" % (d["prompt_tokens"], d["prefill_tok_s"], d["decode_steps"], d["decode_tok_s"], int(sys.argv[2]) / 1024))' "$j" "${rss:-0}" 2> /dev/null
}

# busy CPU seconds of the whole machine so far, all cores (/proc/stat: user nice system irq
# softirq steal)
cpu_busy_s() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{print ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit}' /proc/stat; }

# dec_run KEY loraTHREADS|lcppTHREADS MODEL [lora flags...]: R[KEY] = the parsed line plus others=N
# (the cores other processes kept busy on average while it ran: llama.cpp's threads spin while
# they wait, so its figures collapse when anything else runs), or "failed ..."
dec_run() {
    local key=$1 who=$2 model=$3 out line b0 b1
    local tf='maxrss_kb=%M\ncpu=%U %S %e'
    shift 3
    b0=$(cpu_busy_s)
    if [ "${who#lora}" != "$who" ]; then
        echo "-- $key: $LORA generate --model $model --tokenizer $TOK $* (prompt ${DEC_P}, $DEC_N new)" >> "$LOG"
        out=$( { /usr/bin/time -f "$tf" timeout "$TO" "$LORA" generate --model "$model" --tokenizer "$TOK" \
            --prompt "$DEC_PROMPT" --max-tokens $DEC_N --temperature 0 --threads "${who#lora}" --ignore-eos --verbose \
            --print-ids "$@" > /dev/null; } 2>&1 )
        line=$(parse_timing "$out")
    else
        echo "-- $key: node $NLC/llamacpp_bench.mjs $model $DEC_P $DEC_N ${who#lcpp}" >> "$LOG"
        out=$( { /usr/bin/time -f "$tf" timeout "$TO" node "$NLC/llamacpp_bench.mjs" "$(realpath "$model")" \
            $DEC_P $DEC_N "${who#lcpp}" "$DEC_PROMPT"; } 2>&1 )
        line=$(parse_lcpp "$out")
    fi
    b1=$(cpu_busy_s)
    local others=$(sed -n 's/^cpu=\([0-9.]*\) \([0-9.]*\) \([0-9.]*\)$/\1 \2 \3/p' <<< "$out" | tail -1 |
        awk -v b="$(awk -v x="$b0" -v y="$b1" 'BEGIN{print y - x}')" '{ o = (b - $1 - $2) / ($3 > 0 ? $3 : 1); printf "%.2f", o < 0 ? 0 : o }')
    echo "$out" | cut -c1-400 >> "$LOG"
    if [ -n "$line" ]; then R[$key]="$line others=${others:-?}"; else R[$key]="failed: $(tail -n 1 <<< "$out" | cut -c1-120)"; fi
    printf '   %-28s %s\n' "$key" "$(kv "${R[$key]}" decode_tok_s) tok/s decode (other processes: ${others:-?} cores)" >&2
}

HAVE_NLC=0
if [ -f "$NLC/node_modules/node-llama-cpp/package.json" ] && command -v node > /dev/null; then
    cp bench/llamacpp_bench.mjs "$NLC/llamacpp_bench.mjs" && HAVE_NLC=1
fi
DEC_SHAPES="smol"
[ "${BENCH_QUICK:-0}" != 1 ] && DEC_SHAPES="smol tiny"
if dec_tokenizer; then
    for sh in $DEC_SHAPES; do
        if [ $sh = smol ]; then name=smollm2-135m hf=$SMOL shape=("${SMOL_SHAPE[@]}")
        else name=tinyllama-1.1b hf=$TINY shape=("${TINY_SHAPE[@]}"); init_model "$TINY" 2048 22 32 4 5632 32000 0; fi
        for fmt in q4_0 q8_0; do dec_gguf $name $fmt "${shape[@]}" || R[dec.$sh.$fmt.lora]="failed: init-model"; done
        for pass in 1 2; do
            for th in $DEC_TSET; do
                for fmt in q4_0 q8_0; do
                    [ -f "$MD/$name-$fmt.gguf" ] || continue
                    dec_run dec.$sh.$fmt.lora$th.p$pass lora$th "$MD/$name-$fmt.gguf"
                    [ $HAVE_NLC = 1 ] && dec_run dec.$sh.$fmt.lcpp$th.p$pass lcpp$th "$MD/$name-$fmt.gguf"
                done
                # NF4: the fp32 HF directory of the same weights, quantized at load
                [ -f "$hf/model.safetensors" ] && dec_run dec.$sh.nf4.lora$th.p$pass lora$th "$hf" --quant nf4
            done
        done
        for th in $DEC_TSET; do
            for c in q4_0.lora q8_0.lora nf4.lora q4_0.lcpp q8_0.lcpp; do faster dec.$sh.$c$th decode_tok_s ">="; done
        done
    done
else
    echo "bench: no tokenizer for the decode GGUFs (set BENCH_TOKENIZER=FILE.model)" >&2
fi

# serve_adapters DIR N R: N random PEFT adapters of the SmolLM2 shape in DIR/a1..aN (once): rank
# R on all seven targets, A and B ~ N(0, 0.02²) (B nonzero, so each changes the output)
serve_adapters() {
    [ -f "$1/a$2/adapter_model.safetensors" ] && return 0
    "$PY" scripts/random_adapters.py "$1" --n "$2" --rank "$3" --dim 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536
}

# serve_bench MODEL: `lora serve` with 8 adapters of rank $SERVE_RANK; bench/serve_load.py (one
# stream alone on a1, then 8 streams on a1..a8) -> its --json figures, empty on failure
SERVE_RANK=${BENCH_SERVE_RANK:-8}
serve_bench() {
    local ad=$MD/adapters-smollm2-r$SERVE_RANK slog=$BUILD/bench/serve.log sjson=$BUILD/bench/serve_load.json names="" flags=()
    serve_adapters "$ad" 8 "$SERVE_RANK" >> "$LOG" 2>&1 || { echo "bench: writing the random adapters failed" >&2; return 1; }
    for i in 1 2 3 4 5 6 7 8; do names+=${names:+,}a$i; flags+=(--adapter "a$i=$ad/a$i"); done
    "$LORA" serve --model "$1" --tokenizer "$TOK" "${flags[@]}" --port 0 --threads $DEC_THREADS --max-batch 8 \
        --max-conn-per-client 64 > "$slog" 2>&1 &
    local pid=$! port="" k
    for k in $(seq 600); do  # up to 60 s to load
        port=$(sed -nE 's/.*listening on http:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' "$slog" | head -1)
        [ -n "$port" ] || ! kill -0 $pid 2> /dev/null && break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        echo "bench: lora serve did not start: $(tail -n 2 "$slog" | tr '\n' ' ')" >&2
        kill $pid 2> /dev/null; wait $pid 2> /dev/null
        return 1
    fi
    rm -f "$sjson"
    echo "-- serve: serve_load.py --url http://127.0.0.1:$port --streams 8 --adapters $names --single" >> "$LOG"
    timeout "$TO" "$PY" bench/serve_load.py --url "http://127.0.0.1:$port" --streams 8 --adapters "$names" \
        --max-tokens $DEC_N --requests-per-stream 4 --single --json "$sjson" >> "$LOG" 2>&1
    echo "   serve_load done (load after: $(cut -d' ' -f1 /proc/loadavg))" >&2
    kill $pid 2> /dev/null; wait $pid 2> /dev/null
    [ -f "$sjson" ] && cat "$sjson"
}

# ---- serving: lora serve under bench/serve_load.py, SmolLM2 shape, 8 random adapters ----------
# on the fp32 HF directory as loaded (the base of the issue that asked for batching) and on the
# Q4_0 file
declare -A SERVE_OUT=()
SERVE_BASES="f32 q4_0"
if [ -f bench/serve_load.py ]; then
    [ -f "$SMOL/config.json" ] && SERVE_OUT[f32]=$(serve_bench "$SMOL")
    [ -f "$MD/smollm2-135m-q4_0.gguf" ] && SERVE_OUT[q4_0]=$(serve_bench "$MD/smollm2-135m-q4_0.gguf")
fi

if [ "$ONLY" != decode ]; then
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
fi
# ---- the decode and serving tables ------------------------------------------------------------
echo
echo "== decode: lora generate vs llama.cpp (node-llama-cpp $(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$NLC/node_modules/node-llama-cpp/package.json" 2> /dev/null | head -1)), batch 1,"
echo "   ${DEC_P}-token prompt, $DEC_N new tokens (greedy); random weights; faster of two passes"
echo "   tokenizer: ${TOK:-none}"
[ $HAVE_NLC = 1 ] || echo "   (llama.cpp columns empty: no node or no $NLC; tests/test_llamacpp.sh installs node-llama-cpp there)"
printf '  %-15s %-6s %8s %13s %13s %12s %12s %7s %9s %14s %10s\n' model format "file MB" "lora prefill" "llama.cpp pf" \
    "lora decode" "llama.cpp dc" ratio "lora RSS" "RSS/(file+KV)" "others"
# best_of PREFIX KEY: "value threads others rss_mb" of the run PREFIX<threads> with the higher KEY
best_of() {
    local th v best="" line=""
    for th in $DEC_TSET; do
        v=$(kv "${R[$1$th]:-}" "$2")
        if [ -n "$v" ] && { [ -z "$best" ] || awk -v a="$v" -v b="$best" 'BEGIN{exit !(a > b)}'; }; then
            best=$v line="$v $th $(kv "${R[$1$th]}" others) $(kv "${R[$1$th]}" rss_mb)"
        fi
    done
    [ -n "$line" ] && echo "$line"
}
cell() { [ -n "$1" ] && awk -v v="${1%% *}" -v t="$(cut -d' ' -f2 <<< "$1")" 'BEGIN{printf "%.1f (%st)", v, t}' || echo -; }
for sh in $DEC_SHAPES; do
    if [ $sh = smol ]; then name=smollm2-135m kvpos=$((2 * 30 * 192 * 4)); else name=tinyllama-1.1b kvpos=$((2 * 22 * 256 * 4)); fi
    for fmt in q4_0 q8_0 nf4; do
        # each side's better thread count for prefill and for decode: "value threads others rss"
        lop=$(best_of dec.$sh.$fmt.lora prefill_tok_s) lod=$(best_of dec.$sh.$fmt.lora decode_tok_s)
        lcp=$(best_of dec.$sh.${fmt/nf4/q4_0}.lcpp prefill_tok_s) lcd=$(best_of dec.$sh.${fmt/nf4/q4_0}.lcpp decode_tok_s)
        if [ $fmt = nf4 ]; then
            label="NF4*"
            fmb=$(awk -v b="$(du -b "$MD/$name-q4_0.gguf" 2> /dev/null | cut -f1)" 'BEGIN{ if (b > 0) printf "%.1f", b / 1048576 }')
        else
            label=${fmt^^}
            fmb=$(awk -v b="$(du -b "$MD/$name-$fmt.gguf" 2> /dev/null | cut -f1)" 'BEGIN{ if (b > 0) printf "%.1f", b / 1048576 }')
        fi
        if [ -z "$lod" ]; then
            printf '  %-15s %-6s %s\n' $name "$label" "lora: ${R[dec.$sh.$fmt.lora$DEC_THREADS]:-not run}"
            continue
        fi
        ld=${lod%% *} cd=${lcd%% *} rss=$(cut -d' ' -f4 <<< "$lod")
        kvmb=$(awk -v p="$kvpos" -v n=$((DEC_P + DEC_N)) 'BEGIN{printf "%.1f", p * n / 1048576}')
        printf '  %-15s %-6s %8s %13s %13s %12s %12s %7s %9s %14s %10s\n' $name "$label" "${fmb:--}" \
            "$(cell "$lop")" "$(cell "$lcp")" "$(cell "$lod")" "$(cell "$lcd")" "$(awk -v a="$ld" -v b="$cd" 'BEGIN{ if (b == "" || b == 0) print "-"; else printf "%.2fx", a / b }')" \
            "$(fmt "$rss" %.0f)" "$(awk -v r="$rss" -v f="$fmb" -v k="$kvmb" -v q=$fmt 'BEGIN{ if (f == "" || q == "nf4") print "-"; else printf "%.2f", r / (f + k) }')" \
            "$(cut -d' ' -f3 <<< "$lod")/$(cut -d' ' -f3 <<< "$lcd")"
    done
done
echo "  each side: the better of $(sed 's/ / and /' <<< "$DEC_TSET") thread(s) (in brackets), for prefill and decode each; RSS and"
echo "  others of the better decode run."
echo "  tok/s: prefill = prompt tokens / (prompt pass + first pick), decode = the $((DEC_N - 1)) single-token steps after"
echo "  the first token / their time (lora: its --verbose timing line; llama.cpp: performance.now() in JS around"
echo "  sequence.evaluate, so node-llama-cpp's per-token overhead is in its figure). ratio = the two decode columns."
echo "  RSS: peak (/usr/bin/time), MB; KV = lora's fp32 cache of $((DEC_P + DEC_N)) positions."
echo "  others: cores other processes kept busy during the lora / llama.cpp decode run (of $(nproc)); llama.cpp's"
echo "  threads spin while they wait for each other, so its 2-thread figures collapse when that is not ~0."
echo "  Q4_0 files: output matrix (SmolLM2: the tied token_embd) Q8_0 where llama.cpp's quantize would use Q6_K."
echo "  NF4*: lora --quant nf4 on the fp32 HF directory of the same weights (quantized at load; RSS includes"
echo "  reading the fp32 file), against llama.cpp on the Q4_0 file"
if [ -f bench/serve_load.py ]; then
  for base in $SERVE_BASES; do
    echo
    echo "== serving: lora serve (SmolLM2 shape, base ${base/f32/fp32 as loaded}, 8 random rank-$SERVE_RANK adapters, --max-batch 8,"
    echo "   $DEC_THREADS threads), bench/serve_load.py: streamed greedy completions of $DEC_N tokens, 4 per stream"
    if [ -z "${SERVE_OUT[$base]:-}" ]; then
        echo "  failed or not run (see $LOG and $BUILD/bench/serve.log)"
    else
        "$PY" -c '
import json, sys
d = json.loads(sys.argv[1])
est = []
def rate(r):  # no usage chunk from the server: requests x max_tokens (ignore_eos) over the wall time
    if r["tokens"] or not r["wall_s"]: return r["tok_s"]
    est.append(1)
    return (r["requests"] - r["errors"]) * r["max_tokens"] / r["wall_s"]
def row(label, r):
    print("  %-28s %8.1f tok/s%s  TTFT p50 %7.1f ms  p99 %7.1f ms   per token p50 %6.1f ms  p99 %6.1f ms   errors %d" % (
        label, rate(r), "*" if not r["tokens"] else " ", r["ttft_ms"]["p50"], r["ttft_ms"]["p99"], r["token_ms"]["p50"],
        r["token_ms"]["p99"], r.get("errors", 0)))
s = d.get("single")
if s: row("1 stream, adapter a1", s)
row("%d streams, adapters a1..a8" % d["streams"], d)
if s and rate(s): print("  aggregate %.2fx the single stream" % (rate(d) / rate(s)))
if est: print("  *: the server sent no usage chunk: tokens taken as requests x max_tokens (ignore_eos)")
' "${SERVE_OUT[$base]}" || echo "  unreadable serve_load.py output: ${SERVE_OUT[$base]}"
    fi
  done
fi
echo
echo "machine peak before: $PEAK_BEFORE"
echo "machine peak after:  $(peak)"
[ "$ONLY" = decode ] && exit 0
echo "lora.c: --compute-dtype auto (the kernel in brackets: the fastest measured on this CPU, see lora info above);"
echo "  gradient checkpointing on (the default) unless the row says otherwise"
echo "targets: lora.c nf4 tok/s >= 1.3x torch's best (fp32 or bf16 autocast) at the SmolLM2 and TinyLlama seq-256 shapes,"
echo "  peak RSS <= 25% of torch's; TinyLlama nf4 seq 1024 peak RSS <= 1536 MB"
