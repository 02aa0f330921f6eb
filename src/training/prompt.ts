// Prompt construction: one chat per browser step, built from that step's observation, so each training
// sample is exactly the context its completion was generated in.

export interface StepContext {
  goal: string;
  axtree: string;
  error: string;
  step: number;
  /** Actions already taken in this episode, oldest first. */
  previousActions: readonly string[];
}

export interface PromptSettings {
  axtreeMaxChars: number;
  history: number;
  systemPrompt?: string;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

// The examples use placeholders, not a real bid: the reference pipeline's example leaked click-test's answer.
export const DEFAULT_SYSTEM_PROMPT = [
  'You control a web browser to reach a goal. Elements in the page structure carry ids in brackets.',
  'Answer with exactly one action and nothing else. Actions:',
  "click('id')  fill('id', 'text')  select_option('id', 'option')  press('id', 'Enter')  noop()",
].join('\n');

export function buildMessages(ctx: StepContext, s: PromptSettings): ChatMessage[] {
  const lines = [`Step ${ctx.step + 1}`, `Goal: ${ctx.goal}`];
  const history = s.history > 0 ? ctx.previousActions.slice(-s.history) : [];
  if (history.length) lines.push(`Previous actions: ${history.join('; ')}`);
  if (ctx.error) lines.push(`Previous action error: ${ctx.error}`);
  const tree = ctx.axtree.length > s.axtreeMaxChars ? `${ctx.axtree.slice(0, s.axtreeMaxChars)}\n...` : ctx.axtree;
  lines.push('Page structure:', tree, 'What action do you take?');
  return [
    { role: 'system', content: s.systemPrompt ?? DEFAULT_SYSTEM_PROMPT },
    { role: 'user', content: lines.join('\n') },
  ];
}
