// What the user sees during training: a live progress bar on a terminal, one plain line per step elsewhere
// (CI logs, pipes).
import cliProgress from 'cli-progress';
import type { StepMetrics } from '../training/metrics.js';

export interface StepReporter {
  update(m: StepMetrics): void;
  stop(): void;
}

function pct(x: number): string {
  return `${(x * 100).toFixed(0)}%`;
}

export function createStepReporter(totalSteps: number, startStep: number, stream: NodeJS.WriteStream = process.stderr):
  StepReporter {
  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: 'train |{bar}| {value}/{total} | success {success} | reward {reward} | {stepTime}s/step | {tps} tok/s',
        hideCursor: true,
        stream,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(totalSteps, startStep, { success: '-', reward: '-', stepTime: '-', tps: '-' });
    return {
      update: (m) =>
        bar.update(m.step, {
          success: pct(m.success_rate),
          reward: m.reward_mean.toFixed(2),
          stepTime: m.step_seconds.toFixed(1),
          tps: Math.round(m.tokens_per_s),
        }),
      stop: () => bar.stop(),
    };
  }
  return {
    update: (m) =>
      stream.write(
        `step ${m.step}/${totalSteps}  success ${pct(m.success_rate)}  reward ${m.reward_mean.toFixed(2)}  ` +
          `loss ${m.loss.toFixed(4)}  entropy ${m.entropy.toFixed(3)}  grad ${m.grad_norm.toFixed(3)}  ` +
          `${m.step_seconds.toFixed(1)}s (sample ${m.sample_seconds.toFixed(1)} env ${m.env_seconds.toFixed(1)} ` +
          `update ${m.update_seconds.toFixed(1)})  ${Math.round(m.tokens_per_s)} tok/s\n`,
      ),
    stop: () => undefined,
  };
}
