// Learning-rate schedule: linear warmup, then constant or cosine decay to min_lr_ratio · lr.

export interface ScheduleSettings {
  lr: number;
  warmupSteps: number;
  totalSteps: number;
  schedule: 'constant' | 'cosine';
  minLrRatio: number;
}

/** Learning rate for optimizer step `step` (0-based). Warmup starts above zero so no update is wasted. */
export function learningRate(step: number, s: ScheduleSettings): number {
  if (step < s.warmupSteps) return (s.lr * (step + 1)) / s.warmupSteps;
  if (s.schedule === 'constant') return s.lr;
  const decaySteps = Math.max(1, s.totalSteps - s.warmupSteps);
  const progress = Math.min(1, (step - s.warmupSteps) / decaySteps);
  const cosine = 0.5 * (1 + Math.cos(Math.PI * progress));
  return s.lr * (s.minLrRatio + (1 - s.minLrRatio) * cosine);
}
