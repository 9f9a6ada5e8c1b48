// Greedy generation in llama.cpp (the prebuilt binaries of the npm package node-llama-cpp), for
// tests/test_llamacpp.sh: node llamacpp_generate.mjs MODEL.gguf LORA.gguf|- PROMPT N
// prints {"prompt": [ids], "tokens": [ids], "text": "..."} — BOS, then the prompt as llama.cpp
// tokenizes it, then up to N argmax tokens (temperature 0: llama.cpp's greedy sampler; no
// repeat penalty is configured), stopping at end-of-generation like `lora generate`.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, loraPath, prompt, nText] = process.argv.slice(2);
const llama = await getLlama({build: "never", gpu: false, logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
const ctxOptions = {contextSize: 256, threads: 2};
if (loraPath && loraPath !== "-") ctxOptions.lora = {adapters: [{filePath: loraPath, scale: 1}]};
const context = await model.createContext(ctxOptions);
const sequence = context.getSequence();
const promptIds = [model.tokens.bos, ...model.tokenize(prompt)];
const tokens = [];
for await (const t of sequence.evaluate(promptIds, {temperature: 0})) {
    tokens.push(t);
    if (tokens.length >= Number(nText)) break;
}
const text = model.detokenize(tokens);
console.log(JSON.stringify({prompt: Array.from(promptIds), tokens: Array.from(tokens), text}));
await context.dispose();
await model.dispose();
await llama.dispose();
