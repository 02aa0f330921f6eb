// A small seeded PRNG (splitmix32) whose whole state is one number, so checkpoints can store and restore it.

export class Rng {
  constructor(private state: number) {
    this.state = state >>> 0;
  }

  /** Uniform 32-bit unsigned integer. */
  nextUint32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }

  /** Uniform integer in [0, n). */
  below(n: number): number {
    return this.nextUint32() % n;
  }

  getState(): number {
    return this.state;
  }
}
