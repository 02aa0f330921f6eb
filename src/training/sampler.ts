// Continuous batching for rollouts: callers ask for completions whenever their episode is ready, and their
// sequences join the model's running decode batch at its next step instead of waiting for a batch to finish.
import type { GenerateResult, GenerationSettings, NativeModel, TokenTrie } from '../native/addon.js';

export interface SampleRequest {
  prompt: Int32Array;
  trie?: TokenTrie;
}

interface Pending {
  requests: SampleRequest[];
  seed: number;
  resolve: (results: GenerateResult[]) => void;
  reject: (error: unknown) => void;
}

interface Waiter {
  results: GenerateResult[];
  left: number;
  resolve: (results: GenerateResult[]) => void;
  reject: (error: unknown) => void;
}

/**
 * One generation session of a NativeModel, fed from many callers. Requests made in the same turn of the event loop
 * join together, and identical prompts among them are prefilled once. The model is busy for the sampler's whole
 * life: nothing else may call it until close().
 */
export class ContinuousSampler {
  private pending: Pending[] = [];
  private waiters = new Map<number, { waiter: Waiter; index: number }>();
  private pumping = false;
  private closed = false;
  private busySince = 0n;
  /** Wall time during which some sequence was queued or decoding. */
  busySeconds = 0;

  constructor(private readonly model: NativeModel, private readonly constrained: boolean, settings: GenerationSettings) {
    model.startGeneration(settings);
  }

  /** Samples one completion per request; sequence i draws from stream i of `seed`. */
  sample(requests: SampleRequest[], seed: number): Promise<GenerateResult[]> {
    if (this.closed) return Promise.reject(new Error('ContinuousSampler: sample() after close()'));
    if (requests.length === 0) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      this.pending.push({ requests, seed, resolve, reject });
      if (!this.pumping) {
        this.pumping = true;
        this.busySince = process.hrtime.bigint();
        // Deferred, so that requests made in the same turn join one batch.
        setImmediate(() => void this.pump());
      }
    });
  }

  /** Ends the session; pending requests must have settled. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.model.endGeneration();
  }

  private admit(p: Pending): void {
    const promptIndex = new Map<string, number>();
    const prompts: Int32Array[] = [];
    const sequencePrompt = new Int32Array(p.requests.length);
    p.requests.forEach((r, i) => {
      const key = r.prompt.join(',');
      let k = promptIndex.get(key);
      if (k === undefined) {
        k = prompts.length;
        promptIndex.set(key, k);
        prompts.push(r.prompt);
      }
      sequencePrompt[i] = k;
    });
    const first = this.model.addSequences({
      prompts,
      sequencePrompt,
      constraints: this.constrained ? p.requests.map((r) => r.trie ?? null) : undefined,
      seed: p.seed,
    });
    const waiter: Waiter = { results: new Array(p.requests.length), left: p.requests.length, resolve: p.resolve, reject: p.reject };
    for (let i = 0; i < p.requests.length; i++) this.waiters.set(first + i, { waiter, index: i });
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        for (const p of this.pending.splice(0)) {
          try {
            this.admit(p);
          } catch (e) {
            p.reject(e);  // a bad request fails alone; nothing of it was queued
          }
        }
        if (this.waiters.size === 0) break;
        for (const f of await this.model.stepGeneration()) {
          const entry = this.waiters.get(f.id)!;
          this.waiters.delete(f.id);
          const { id: _id, ...result } = f;
          entry.waiter.results[entry.index] = result;
          if (--entry.waiter.left === 0) entry.waiter.resolve(entry.waiter.results);
        }
      }
    } catch (e) {
      // The session is unusable after a failed step: fail everything in it.
      const failed = new Set<Waiter>();
      for (const { waiter } of this.waiters.values()) failed.add(waiter);
      this.waiters.clear();
      for (const w of failed) w.reject(e);
      for (const p of this.pending.splice(0)) p.reject(e);
    } finally {
      this.pumping = false;
      this.busySeconds += Number(process.hrtime.bigint() - this.busySince) / 1e9;
    }
  }
}
