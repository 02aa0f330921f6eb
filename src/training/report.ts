// The run report: a self-contained HTML page (inline SVG, no scripts, no network) with the learning curves
// from metrics.jsonl and, when present, the evaluation table from eval.json.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EvalRow } from './evaluate.js';
import { readMetrics, type StepMetrics } from './metrics.js';

interface Series {
  label: string;
  color: string;
  values: number[];
}

const WIDTH = 560;
const HEIGHT = 220;
const PAD = { left: 48, right: 12, top: 24, bottom: 28 };

function escapeHtml(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
}

function niceNumber(x: number): string {
  if (x === 0) return '0';
  const a = Math.abs(x);
  return a >= 1000 || a < 0.01 ? x.toExponential(1) : Number(x.toPrecision(3)).toString();
}

/** A line chart of one or more series against the step number. */
function lineChart(title: string, steps: number[], series: Series[], range?: [number, number]): string {
  const all = series.flatMap((s) => s.values).filter(Number.isFinite);
  let [lo, hi] = range ?? [Math.min(...all), Math.max(...all)];
  if (!all.length) [lo, hi] = [0, 1];
  if (hi === lo) [lo, hi] = [lo - 1, hi + 1];
  const x0 = steps[0] ?? 0;
  const x1 = steps[steps.length - 1] ?? 1;
  const sx = (x: number) => PAD.left + ((x - x0) / Math.max(x1 - x0, 1)) * (WIDTH - PAD.left - PAD.right);
  const sy = (y: number) => HEIGHT - PAD.bottom - ((y - lo) / (hi - lo)) * (HEIGHT - PAD.top - PAD.bottom);
  const grid = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const v = lo + f * (hi - lo);
    return `<line x1="${PAD.left}" x2="${WIDTH - PAD.right}" y1="${sy(v)}" y2="${sy(v)}" stroke="#eee"/>` +
      `<text x="${PAD.left - 4}" y="${sy(v) + 4}" text-anchor="end" font-size="10">${niceNumber(v)}</text>`;
  });
  const lines = series.map((s) => {
    const pts = s.values.map((v, i) => (Number.isFinite(v) ? `${sx(steps[i]).toFixed(1)},${sy(v).toFixed(1)}` : ''))
      .filter(Boolean).join(' ');
    return `<polyline fill="none" stroke="${s.color}" stroke-width="1.8" points="${pts}"/>`;
  });
  const legend = series.map((s, i) =>
    `<text x="${PAD.left + 8 + i * 140}" y="14" font-size="11" fill="${s.color}">■ ${escapeHtml(s.label)}</text>`);
  return `<figure><figcaption>${escapeHtml(title)}</figcaption>` +
    `<svg width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif">` +
    grid.join('') + lines.join('') + legend.join('') +
    `<text x="${WIDTH / 2}" y="${HEIGHT - 6}" text-anchor="middle" font-size="10">step ${x0}–${x1}</text>` +
    `</svg></figure>`;
}

export function renderReport(metrics: StepMetrics[], evalRows?: EvalRow[], title = 'webgrpo run'): string {
  const steps = metrics.map((m) => m.step);
  const col = (k: keyof StepMetrics) => metrics.map((m) => m[k]);
  const charts = [
    lineChart('Success rate and mean reward', steps, [
      { label: 'success rate', color: '#1b7f3b', values: col('success_rate') },
      { label: 'reward mean', color: '#2060c0', values: col('reward_mean') },
    ], [0, 1]),
    lineChart('Loss', steps, [{ label: 'loss', color: '#a03020', values: col('loss') }]),
    lineChart('Entropy and KL', steps, [
      { label: 'entropy', color: '#7040a0', values: col('entropy') },
      { label: 'kl', color: '#c08000', values: col('kl') },
    ]),
    lineChart('Gradient norm', steps, [{ label: 'grad norm', color: '#404040', values: col('grad_norm') }]),
    lineChart('Step time split (s)', steps, [
      { label: 'sampling', color: '#2060c0', values: col('sample_seconds') },
      { label: 'browser', color: '#1b7f3b', values: col('env_seconds') },
      { label: 'update', color: '#a03020', values: col('update_seconds') },
    ]),
    lineChart('Tokens per second', steps, [{ label: 'tokens/s', color: '#404040', values: col('tokens_per_s') }]),
  ];
  const last = metrics[metrics.length - 1];
  const summary = last
    ? `<p>${metrics.length} steps; last step: success ${(last.success_rate * 100).toFixed(1)}%, ` +
      `reward ${last.reward_mean.toFixed(3)}, ${last.step_seconds.toFixed(2)} s/step.</p>`
    : '<p>No steps recorded yet.</p>';
  const table = evalRows?.length
    ? '<h2>Evaluation</h2><table><tr><th>task</th><th>episodes</th><th>success</th><th>95% CI</th></tr>' +
      evalRows.map((r) => `<tr><td>${escapeHtml(r.task)}</td><td>${r.episodes}</td>` +
        `<td>${(r.success_rate * 100).toFixed(1)}%</td>` +
        `<td>${(r.ci_low * 100).toFixed(1)}–${(r.ci_high * 100).toFixed(1)}%</td></tr>`).join('') + '</table>'
    : '';
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font-family:sans-serif;margin:24px;color:#222}figure{display:inline-block;margin:8px}
figcaption{font-weight:bold;font-size:13px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>
</head><body><h1>${escapeHtml(title)}</h1>${summary}${charts.join('\n')}${table}</body></html>\n`;
}

/** Writes <runDir>/report.html from the run's metrics (and eval.json if an evaluation ran). */
export function writeReport(runDir: string): string {
  const metrics = readMetrics(join(runDir, 'metrics.jsonl'));
  const evalPath = join(runDir, 'eval.json');
  const evalRows = existsSync(evalPath) ? (JSON.parse(readFileSync(evalPath, 'utf8')).tasks as EvalRow[]) : undefined;
  const out = join(runDir, 'report.html');
  writeFileSync(out, renderReport(metrics, evalRows, `webgrpo run ${runDir}`));
  return out;
}
