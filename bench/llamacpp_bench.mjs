// llama.cpp's CPU speed on a GGUF file, through the npm package node-llama-cpp (its prebuilt
// llama.cpp), for bench/bench.sh:
//   node llamacpp_bench.mjs MODEL.gguf PROMPT_TOKENS NEW_TOKENS THREADS TEXT
// The prompt is BOS + TEXT as llama.cpp tokenizes it, cut (or TEXT's tokens repeated) to
// exactly PROMPT_TOKENS ids. Then NEW_TOKENS greedy tokens (temperature 0, no repeat penalty),
// end-of-generation tokens included (as `lora generate --ignore-eos`). Timed in JS with
// performance.now() around the evaluation, as `lora generate --verbose` counts:
//   prefill: from the start of the evaluation to the first new token (the prompt in one batch,
//            its last logits, the first greedy pick);
//   decode:  from the first new token to the last one: NEW_TOKENS - 1 single-token steps.
// Prints one JSON line: {"prompt_tokens", "decode_steps", "load_s", "prefill_s", "prefill_tok_s",
// "decode_s", "decode_tok_s", "rss_mb", "tokens"}. Run it from the directory node-llama-cpp is
// installed in (bench.sh copies it into build/node-llama-cpp).
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, nPromptArg, nNewArg, threadsArg, text] = process.argv.slice(2);
const nPrompt = Number(nPromptArg), nNew = Number(nNewArg), threads = Number(threadsArg);
if (!modelPath || !(nPrompt >= 1) || !(nNew >= 2) || !(threads >= 1) || text === undefined) {
    console.error("usage: node llamacpp_bench.mjs MODEL.gguf PROMPT_TOKENS NEW_TOKENS THREADS TEXT");
    process.exit(2);
}
const llama = await getLlama({build: "never", gpu: false, logLevel: LlamaLogLevel.error, maxThreads: threads});
let t = performance.now();
const model = await llama.loadModel({modelPath});
const loadS = (performance.now() - t) / 1000;
const context = await model.createContext({
    contextSize: nPrompt + nNew + 16,
    batchSize: Math.max(512, nPrompt),  // the whole prompt in one batch
    threads: {ideal: threads, min: threads},
    sequences: 1,
});
const sequence = context.getSequence();

const textIds = model.tokenize(text);
if (textIds.length === 0 && nPrompt > 1) throw new Error("TEXT tokenizes to nothing");
const prompt = [model.tokens.bos];
while (prompt.length < nPrompt) prompt.push(textIds[(prompt.length - 1) % textIds.length]);

const tokens = [];
let tFirst = 0;
t = performance.now();
for await (const tok of sequence.evaluate(prompt, {temperature: 0})) {
    tokens.push(tok);
    if (tokens.length === 1) tFirst = performance.now();
    if (tokens.length >= nNew) break;
}
const tEnd = performance.now();
const prefillS = (tFirst - t) / 1000, decodeS = (tEnd - tFirst) / 1000, steps = tokens.length - 1;
console.log(JSON.stringify({
    prompt_tokens: prompt.length,
    decode_steps: steps,
    load_s: +loadS.toFixed(3),
    prefill_s: +prefillS.toFixed(4),
    prefill_tok_s: +(prompt.length / prefillS).toFixed(2),
    decode_s: +decodeS.toFixed(4),
    decode_tok_s: +(steps / decodeS).toFixed(3),
    rss_mb: +(process.memoryUsage().rss / 1048576).toFixed(1),
    tokens,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
