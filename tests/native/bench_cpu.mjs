// CPU engine timing probe (not a test): node tests/native/bench_cpu.mjs tiny|350m B,T,prompts,generations,newTokens
// THREADS=n limits OpenMP threads; WEBGRPO_ADDON points at another build of the addon.
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const a = require(process.env.WEBGRPO_ADDON ?? new URL('../../build/Release/webgrpo.node', import.meta.url).pathname);
const threads = Number(process.env.THREADS ?? 0);
function cfgOf(kind) {
  if (kind === 'tiny') return { vocabSize: 512, hiddenSize: 64, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 16, intermediateSize: 160,
    layerTypes: ['conv','attention','conv','attention'], convKernel: 3, normEps: 1e-5, ropeTheta: 1e6, tieEmbeddings: true, bosTokenId: 1, eosTokenId: 7, padTokenId: 0, maxPositionEmbeddings: 4096, initializerRange: 0.02 };
  return { vocabSize: 65536, hiddenSize: 1024, numLayers: 16, numHeads: 16, numKvHeads: 8, headDim: 64, intermediateSize: 4608,
    layerTypes: 'ccAccAccAcAcAcAc'.split('').map(c => c === 'c' ? 'conv' : 'attention'), convKernel: 3, normEps: 1e-5, ropeTheta: 1e6, tieEmbeddings: true, bosTokenId: 1, eosTokenId: 7, padTokenId: 0, maxPositionEmbeddings: 128000, initializerRange: 0.02 };
}
const kind = process.argv[2] ?? 'tiny';
const [B, T, P, G, NEW] = (process.argv[3] ?? '32,516,4,8,16').split(',').map(Number);
const cfg = cfgOf(kind);
const m = a.createModel(JSON.stringify(cfg), { backend: 'cpu', threads });
m.initRandom(1, 0.02);
const tokens = Int32Array.from({ length: B * T }, (_, i) => 1 + (i * 7919) % (cfg.vocabSize - 1));
const mask = new Uint8Array(B * T).fill(1);
const scoreMask = new Uint8Array(B * T); for (let i = 0; i < B * T; i++) if (i % T >= T - 16) scoreMask[i] = 1;
let t0 = performance.now();
const r = await m.score({ tokens, attentionMask: mask, batchSize: B, seqLen: T, scoreMask, temperature: 1, keepActivations: true });
const tScore = performance.now() - t0; t0 = performance.now();
m.zeroGrad(); await m.backward(new Float32Array(r.logprobs.length).fill(1));
const tBack = performance.now() - t0; t0 = performance.now();
await m.adamwStep({ lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, gradScale: 1 });
const tAdam = performance.now() - t0;
console.log(`${kind} B=${B} T=${T} threads=${threads || 'all'}: score ${tScore.toFixed(0)} ms (${(B*T/tScore*1000).toFixed(0)} tok/s), backward ${tBack.toFixed(0)} ms, adamw ${tAdam.toFixed(0)} ms`);
if (P > 0) {
  const prompts = Array.from({ length: P }, (_, p) => Int32Array.from({ length: T - NEW }, (_, i) => 1 + (i * 31 + p) % (cfg.vocabSize - 1)));
  t0 = performance.now();
  const res = await m.generate({ prompts, sequencePrompt: Int32Array.from({ length: P * G }, (_, i) => Math.floor(i / G)), maxNewTokens: NEW, stopTokens: new Int32Array(0),
    sampling: { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, greedy: false, seed: 1 } });
  const tGen = performance.now() - t0;
  const n = res.reduce((s, x) => s + x.tokens.length, 0);
  console.log(`generate ${P} prompts x ${G} of ${T - NEW} tokens, ${NEW} new: ${tGen.toFixed(0)} ms (${(n / tGen * 1000).toFixed(0)} new tok/s)`);
}
