#!/usr/bin/env bash
# The built-in end-to-end demo: no download. Makes a small random-weight Llama, two tasks
# (capitals of countries as a sentence; their languages as a JSON record; alpaca format) and
# a SentencePiece tokenizer for them; fine-tunes one QLoRA adapter per task (NF4 base); prints the
# before/after evaluation on each task's held-out questions (`lora eval`: the base and both
# adapters); then answers one held-out question with each adapter and with the bare base,
# all from one loaded base (`lora chat` fed a script). Everything lands in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
D=out/demo
mkdir -p "$D"
python3 scripts/make_demo_data.py "$D"
spm_train --input="$D/corpus.txt" --model_prefix="$D/tokenizer" --vocab_size=512 \
  --model_type=bpe --character_coverage=1.0 --byte_fallback=true --hard_vocab_limit=false \
  --bos_id=1 --eos_id=2 --unk_id=0 --pad_id=-1 --minloglevel=2 > "$D/spm_train.log" 2>&1
./lora init-model --out "$D/base" --dim 128 --layers 4 --heads 4 --kv-heads 2 --ffn 344 \
  --vocab 512 --seq 256 --seed 1 --std 0.1

echo; echo "== task 1: capitals (\"The capital of Egypt is Cairo.\")"
./lora train recipes/demo.json
echo; echo "== task 2: languages ({\"country\": \"Egypt\", \"language\": \"Arabic\"}), same recipe, other data"
./lora train recipes/demo.json --data "$D/train_languages.jsonl" --val-data "$D/val_languages.jsonl" \
  --out "$D/languages"

ADAPTERS=(--adapter capitals="$D/capitals" --adapter languages="$D/languages")
for task in capitals languages; do
  val=$D/val.jsonl; [ $task = languages ] && val=$D/val_languages.jsonl
  echo; echo "== before/after on the $task task's held-out questions"
  ./lora eval --model "$D/base" --tokenizer "$D/tokenizer.model" "${ADAPTERS[@]}" --data "$val" \
    --template alpaca --quant nf4 --json "$D/eval_$task.json" 2>/dev/null
done

Q="What is the capital of Egypt?"   # held out: training asked about Egypt only in other words
echo; echo "== one base in memory, one question, each adapter in turn (lora chat, a script on stdin)"
printf '%s\n' "$Q" "/reset" "/adapter languages" "$Q" "/reset" "/adapter base" "$Q" "/quit" |
  ./lora chat --model "$D/base" --tokenizer "$D/tokenizer.model" "${ADAPTERS[@]}" --template alpaca \
    --quant nf4 --temperature 0 --max-tokens 20
