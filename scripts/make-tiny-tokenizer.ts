// Writes assets/tiny-tokenizer/: a small byte-level BPE tokenizer in Hugging Face's format (tokenizer.json +
// tokenizer_config.json) for the tiny demo model. Same special tokens and ids as LFM2 (ids 0..13), the 256 byte
// tokens, and merges learned by the small BPE trainer below from text shaped like webgrpo's prompts.
// Run: npx vite-node scripts/make-tiny-tokenizer.ts   (deterministic: same output every run)
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const VOCAB_SIZE = 512;

// LFM2's special tokens at LFM2's ids; 14 and 15 are reserved so the byte tokens start at a round 16.
const SPECIAL_TOKENS = [
  '<|pad|>',
  '<|startoftext|>',
  '<|endoftext|>',
  '<|fim_pre|>',
  '<|fim_mid|>',
  '<|fim_suf|>',
  '<|im_start|>',
  '<|im_end|>',
  '<|tool_list_start|>',
  '<|tool_list_end|>',
  '<|tool_call_start|>',
  '<|tool_call_end|>',
  '<|tool_response_start|>',
  '<|tool_response_end|>',
  '<|reserved_0|>',
  '<|reserved_1|>',
];
const FIRST_BYTE_ID = SPECIAL_TOKENS.length;

// Llama-3's split pattern (Oniguruma syntax), the one LFM2's tokenizer uses.
const SPLIT_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// The same pattern in JavaScript syntax (no inline case-insensitive group), used only to cut the training corpus.
const SPLIT_REGEX_JS =
  /'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

// LFM2's chat template format (ChatML with a leading <|startoftext|>).
const CHAT_TEMPLATE =
  "{{- bos_token -}}" +
  "{%- for message in messages -%}" +
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}" +
  "{%- endfor -%}" +
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/** GPT-2's reversible byte -> printable character map used by byte-level BPE. */
function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}

/** Deterministic PRNG (mulberry32) so the corpus, and so the merges, never change between runs. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function buildCorpus(): string[] {
  const rand = rng(1234);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo));
  const words = ['Submit', 'Click Me!', 'OK', 'Cancel', 'Yes', 'No', 'Next', 'Previous', 'Search', 'Login',
    'Username', 'Password', 'Home', 'Close', 'Enter', 'Go', 'Reply', 'Forward', 'Delete', 'Save', 'button', 'link',
    'Email', 'Date', 'Flight', 'Book', 'Open', 'Select', 'Options', 'Menu', 'Help', 'Text', 'Yes please'];
  const names = ['Alice', 'Bob', 'Carol', 'Dave', 'Emma', 'Frank', 'kasey', 'lyda', 'jerald', 'nathalie'];
  const roles = ['button', 'link', 'textbox', 'checkbox', 'radio', 'combobox', 'option', 'heading', 'paragraph',
    'StaticText', 'LabelText', 'list', 'listitem', 'generic', 'image', 'dialog', 'menuitem', 'tab', 'table', 'cell'];
  const lines: string[] = [];
  lines.push(
    'You control a web browser. Reply with exactly one action.',
    'Available actions: noop() click(bid) fill(bid, text) send_keys(text) scroll(direction)',
    'Answer with one action and nothing else.',
  );
  for (let i = 0; i < 3000; i++) {
    const bid = String(int(0, 120));
    const word = pick(words);
    const role = pick(roles);
    const indent = '\t'.repeat(int(0, 4));
    switch (int(0, 12)) {
      case 0: lines.push(`${indent}[${bid}] ${role} '${word}'`); break;
      case 1: lines.push(`${indent}[${bid}] ${role} '${word}', focused`); break;
      case 2: lines.push(`${indent}[${bid}] checkbox '${word}', checked=${pick(['true', 'false'])}`); break;
      case 3: lines.push(`click('${bid}')`); break;
      case 4: lines.push(`fill('${bid}', '${pick(names)}')`); break;
      case 5: lines.push(pick(['noop()', 'noop(wait_ms=1000)', "scroll(0, 200)", "send_keys('Enter')"])); break;
      case 6: lines.push(`Goal: Click on the "${word}" button.`); break;
      case 7: lines.push(`Goal: Enter "${pick(names)}" into the text field and press ${pick(words)}.`); break;
      case 8: lines.push(`Step ${int(1, 11)}`, 'Page structure:', `RootWebArea '${word} Task', focused`); break;
      case 9: lines.push('What action do you take?', `Previous action error: element ${bid} is not visible`); break;
      case 10: lines.push(`Select ${pick(names)} from the list and click ${word}.`, `The number is ${int(0, 10000)}.`); break;
      default: lines.push(`${indent}[${bid}] StaticText 'Click on the ${word.toLowerCase()} button'`); break;
    }
  }
  return lines;
}

/** Learns BPE merges over byte-level pieces: repeatedly merges the most frequent adjacent pair. */
function trainMerges(corpus: string[], byteChars: string[], count: number): [string, string][] {
  const encoder = new TextEncoder();
  const pieceCounts = new Map<string, number>();
  for (const line of corpus) {
    for (const m of (line + '\n').matchAll(SPLIT_REGEX_JS)) {
      const mapped = Array.from(encoder.encode(m[0]), (b) => byteChars[b]).join('');
      pieceCounts.set(mapped, (pieceCounts.get(mapped) ?? 0) + 1);
    }
  }
  const words = [...pieceCounts].map(([piece, n]) => ({ symbols: Array.from(piece), n }));
  const merges: [string, string][] = [];
  while (merges.length < count) {
    const pairCounts = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.symbols.length; i++) {
        const key = `${w.symbols[i]}\u0000${w.symbols[i + 1]}`;
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + w.n);
      }
    }
    let best: string | undefined;
    let bestCount = 0;
    for (const [key, n] of pairCounts) {
      if (n > bestCount || (n === bestCount && best !== undefined && key < best)) {
        best = key;
        bestCount = n;
      }
    }
    if (best === undefined || bestCount < 2) throw new Error(`corpus too small: only ${merges.length} merges found`);
    const [a, b] = best.split('\u0000') as [string, string];
    merges.push([a, b]);
    for (const w of words) {
      const next: string[] = [];
      for (let i = 0; i < w.symbols.length; i++) {
        if (i + 1 < w.symbols.length && w.symbols[i] === a && w.symbols[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(w.symbols[i]);
      }
      w.symbols = next;
    }
  }
  return merges;
}

function main(): void {
  const byteChars = bytesToUnicode();
  const vocab: Record<string, number> = {};
  SPECIAL_TOKENS.forEach((t, id) => (vocab[t] = id));
  byteChars.forEach((c, b) => (vocab[c] = FIRST_BYTE_ID + b));
  const merges = trainMerges(buildCorpus(), byteChars, VOCAB_SIZE - FIRST_BYTE_ID - 256);
  for (const [a, b] of merges) {
    if (vocab[a + b] !== undefined) throw new Error(`merge ${a} ${b} produced a duplicate token`);
    vocab[a + b] = Object.keys(vocab).length;
  }
  if (Object.keys(vocab).length !== VOCAB_SIZE) throw new Error(`vocab has ${Object.keys(vocab).length} tokens`);

  const bos = SPECIAL_TOKENS[1];
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: SPLIT_PATTERN }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    // Like LFM2: plain encoding prepends <|startoftext|>; the chat template writes it itself.
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [1], tokens: [bos] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const tokenizerConfig = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: bos,
    eos_token: '<|im_end|>',
    pad_token: '<|pad|>',
    add_bos_token: true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: 4096,
    legacy: false,
    added_tokens_decoder: Object.fromEntries(
      SPECIAL_TOKENS.map((content, id) => [
        String(id),
        { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true },
      ]),
    ),
    chat_template: CHAT_TEMPLATE,
  };
  const here = dirname(fileURLToPath(import.meta.url));
  const outDir = join(here, '..', 'assets', 'tiny-tokenizer');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'tokenizer.json'), JSON.stringify(tokenizerJson, null, 1) + '\n');
  writeFileSync(join(outDir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig, null, 2) + '\n');
  writeFileSync(
    join(outDir, 'special_tokens_map.json'),
    JSON.stringify({ bos_token: bos, eos_token: '<|im_end|>', pad_token: '<|pad|>' }, null, 2) + '\n',
  );
  console.log(`wrote ${outDir}: ${VOCAB_SIZE} tokens, ${merges.length} merges`);
}

// Strings and chats whose ids (from @huggingface/tokenizers) tests/parity/check_tokenizer.py compares with
// Python's tokenizers / transformers; tests/model/tokenizer.test.ts checks the file is not stale.
const TOKENIZER_SAMPLES = [
  "[12] button 'Click Me!'",
  "\t\t[7] textbox 'Username', focused",
  "click('12')",
  "fill('7', 'Hello, world')",
  'noop()',
  'Goal: Click on the "Submit" button.',
  'Step 3\nPage structure:\nRootWebArea \'Click Test Task\', focused\n\t[5] button \'Click Me!\'',
  'The number is 1234567 and 3.14159.',
  "It's what we've done, they'll say I'd re-do it.",
  'héllo wörld — naïve café, 日本語のテキスト, emoji 🎉👍🏽, Ελληνικά, العربية',
  '  leading spaces\r\nand CRLF\n\n\ttabs   trailing  ',
  '<|im_start|>user\nhi<|im_end|>\n<|pad|><|tool_call_start|>',
];
const CHAT_SAMPLES = [
  { messages: [{ role: 'user', content: 'Hi' }], addGenerationPrompt: true },
  {
    messages: [
      { role: 'system', content: 'You control a web browser. Reply with exactly one action.' },
      { role: 'user', content: "Step 1\nGoal: Click on the button.\nPage structure:\n[3] button 'ONE'" },
      { role: 'assistant', content: "click('3')" },
    ],
    addGenerationPrompt: false,
  },
];

async function writeIdsFixture(): Promise<void> {
  const here = dirname(fileURLToPath(import.meta.url));
  const dir = join(here, '..', 'assets', 'tiny-tokenizer');
  const { ChatTokenizer } = await import('../src/model/tokenizer.js');
  const { Tokenizer } = await import('@huggingface/tokenizers');
  const { readFileSync } = await import('node:fs');
  const raw = new Tokenizer(
    JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')),
    JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')),
  );
  const tok = await ChatTokenizer.load(dir);
  const fixture = {
    vocabSize: tok.vocabSize,
    strings: TOKENIZER_SAMPLES.map((text) => ({
      text,
      ids: tok.encode(text),
      idsWithSpecialTokens: raw.encode(text).ids,
    })),
    chats: CHAT_SAMPLES.map((c) => {
      const text = tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.addGenerationPrompt });
      return { ...c, text, ids: tok.encode(text) };
    }),
  };
  const out = join(here, '..', 'tests', 'fixtures', 'tiny-tokenizer-ids.json');
  mkdirSync(dirname(out), { recursive: true });
  // One line per id list keeps the file short and diffs readable.
  const text = JSON.stringify(fixture, null, 1).replace(/\[\s+([\d,\s]+?)\s+\]/g, (_m, inner: string) => `[${inner.replace(/\s+/g, '')}]`);
  writeFileSync(out, text + '\n');
  console.log(`wrote ${out}`);
}

main();
await writeIdsFixture();
