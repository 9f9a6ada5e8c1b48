#!/usr/bin/env bash
# The real stories260K model reproduces its published greedy decoding token for token,
# loaded from the GGUF file, from the llama2.c .bin, and from a HF directory converted from it.
source tests/lib.sh
M=$(models_dir) || true
if [ -z "$M" ]; then skip stories260K_greedy "no ../shared/models (set LORA_TEST_MODELS)"; exit 0; fi
S=$M/stories260K
T=$(tmpdir generate)
expected=$(tr -s ' \n' ' ' < "$S/expected_greedy_ids_first100.txt" | sed 's/^ //; s/ $//')
gen() { ./lora generate --model "$1" --tokenizer "$S/tok512.model" --prompt "" --max-tokens 100 \
          --temperature 0 --ignore-eos --print-ids 2>"$T/err"; }
for src in gguf bin; do
  got=$(gen "$S/stories260K.$src")
  if [ "$got" = "$expected" ]; then pass "stories260K_greedy_$src"
  else fail "stories260K_greedy_$src" "got [$got] want [$expected] $(cat "$T/err")"; fi
done
if ./lora convert --model "$S/stories260K.bin" --out "$T/hf" > /dev/null 2>"$T/err"; then
  got=$(gen "$T/hf")
  if [ "$got" = "$expected" ]; then pass stories260K_greedy_hf_dir
  else fail stories260K_greedy_hf_dir "got [$got] $(cat "$T/err")"; fi
else fail stories260K_greedy_hf_dir "convert failed: $(cat "$T/err")"; fi
# The text form: the decoded story starts like the reference text.
text=$(./lora generate --model "$S/stories260K.gguf" --tokenizer "$S/tok512.model" --prompt "" \
        --max-tokens 100 --temperature 0 --ignore-eos 2>"$T/err")
want=$(head -c 120 "$S/expected_greedy.txt")
case "$text" in
  "$want"*) pass stories260K_greedy_text ;;
  *) fail stories260K_greedy_text "got [$(echo "$text" | head -c 200)] want prefix [$want]" ;;
esac
# The GGUF alone (no --tokenizer): its embedded vocabulary (tokenizer.ggml.*) tokenizes and
# decodes; the same ids and the same text.
got=$(./lora generate --model "$S/stories260K.gguf" --prompt "" --max-tokens 100 --temperature 0 --ignore-eos \
        --print-ids 2>"$T/err")
if [ "$got" = "$expected" ]; then pass stories260K_greedy_gguf_vocab
else fail stories260K_greedy_gguf_vocab "got [$got] want [$expected] $(cat "$T/err")"; fi
text=$(./lora generate --model "$S/stories260K.gguf" --prompt "" --max-tokens 100 --temperature 0 2>"$T/err")
case "$text" in
  "$want"*) pass stories260K_greedy_text_gguf_vocab ;;
  *) fail stories260K_greedy_text_gguf_vocab "got [$(echo "$text" | head -c 200)] want prefix [$want] $(cat "$T/err")" ;;
esac
exit $failed
