#!/usr/bin/env bash
# The built-in end-to-end demo: no download. Makes a small random-weight Llama, a task
# (capitals, alpaca format) and a SentencePiece tokenizer for it, fine-tunes a LoRA adapter,
# prints the held-out loss before and after, and answers a held-out question with the
# adapter. Everything lands in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
D=out/demo
mkdir -p "$D"
python3 scripts/make_demo_data.py "$D"
spm_train --input="$D/corpus.txt" --model_prefix="$D/tokenizer" --vocab_size=512 \
  --model_type=bpe --character_coverage=1.0 --byte_fallback=true --hard_vocab_limit=false \
  --bos_id=1 --eos_id=2 --unk_id=0 --pad_id=-1 --minloglevel=2 > "$D/spm_train.log" 2>&1
./lora init-model --out "$D/base" --dim 128 --layers 4 --heads 4 --kv-heads 2 --ffn 344 \
  --vocab 512 --seq 256 --seed 1 --std 0.05
./lora train recipes/demo.json
Q="Egypt has its seat of government in which city?"
echo
echo "held-out question: $Q"
echo -n "base model:   "
./lora generate --model "$D/base" --tokenizer "$D/tokenizer.model" --template alpaca \
  --prompt "$Q" --max-tokens 16 --temperature 0
echo -n "with adapter: "
./lora generate --model "$D/base" --tokenizer "$D/tokenizer.model" --adapter "$D/adapter" \
  --template alpaca --prompt "$Q" --max-tokens 16 --temperature 0
