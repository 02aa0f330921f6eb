import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TINY_VOCAB_SIZE } from '../../src/model/config.js';
import { ChatTokenizer } from '../../src/model/tokenizer.js';

const TINY = join(import.meta.dirname, '..', '..', 'assets', 'tiny-tokenizer');
const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'tiny-tokenizer-ids.json');

let tok: ChatTokenizer;
beforeAll(async () => {
  tok = await ChatTokenizer.load(TINY);
});

/** Seeded random strings over ASCII, Latin, CJK, emoji (astral) and whitespace. */
function randomText(seed: number, length: number): string {
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const ranges: [number, number][] = [
    [0x20, 0x7e],
    [0x20, 0x7e],
    [0x09, 0x0a],
    [0xc0, 0x17f],
    [0x391, 0x3c9],
    [0x4e00, 0x4fff],
    [0x1f300, 0x1f64f],
    [0x600, 0x6ff],
  ];
  let out = '';
  for (let i = 0; i < length; i++) {
    const [lo, hi] = ranges[Math.floor(next() * ranges.length)];
    out += String.fromCodePoint(lo + Math.floor(next() * (hi - lo + 1)));
  }
  return out;
}

describe('tiny tokenizer', () => {
  it('has LFM2 special ids and the vocabulary size of the tiny preset', () => {
    expect([tok.padId, tok.bosId, tok.eosId, tok.vocabSize]).toEqual([0, 1, 7, TINY_VOCAB_SIZE]);
    expect(tok.tokenToId('<|im_start|>')).toBe(6);
    expect(tok.tokenToId('<|im_end|>')).toBe(7);
    expect(tok.tokenToId('<|startoftext|>')).toBe(1);
    expect(tok.isSpecial(6)).toBe(true);
    expect(tok.isSpecial(100)).toBe(false);
    expect(() => tok.tokenToId('<|no_such_token|>')).toThrow(/token "<\|no_such_token\|>" is not in the vocabulary/);
  });

  it('round-trips arbitrary unicode exactly', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const text = randomText(seed, 5 + seed * 3);
      const ids = tok.encode(text);
      expect(ids.every((id) => id >= 0 && id < tok.vocabSize)).toBe(true);
      expect(tok.decode(ids)).toBe(text);
    }
    expect(() => tok.decode([tok.vocabSize])).toThrow(/cannot decode token id 512: ids must be integers in \[0, 512\)/);
    for (const text of ['', ' ', '\n\n', '  a  ', 'e\u0301', '\u{10FFFF}', 'x\u0000y']) expect(tok.decode(tok.encode(text))).toBe(text);
  });

  it('encodes special-token text as single ids and adds no BOS of its own', () => {
    expect(tok.encode('<|im_start|>user\n')[0]).toBe(6);
    expect(tok.encode('hi<|im_end|>').at(-1)).toBe(7);
    expect(tok.encode('hello')[0]).not.toBe(tok.bosId);
    expect(tok.decode(tok.encode('<|im_start|>x<|im_end|>'), { skipSpecialTokens: true })).toBe('x');
  });

  it('keeps prompts short: typical AXTree lines and actions take few tokens', () => {
    const line = "[12] button 'Click Me!'";
    expect(tok.encode(line).length).toBeLessThan(new TextEncoder().encode(line).length / 2);
    expect(tok.encode("click('12')").length).toBeLessThanOrEqual(6);
  });

  it('renders the LFM2 chat template with exactly one BOS', () => {
    const messages = [
      { role: 'system', content: 'Reply with one action.' },
      { role: 'user', content: 'Goal: click' },
    ];
    const text = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
    expect(text).toBe(
      '<|startoftext|><|im_start|>system\nReply with one action.<|im_end|>\n' +
        '<|im_start|>user\nGoal: click<|im_end|>\n<|im_start|>assistant\n',
    );
    const ids = tok.encodeChat(messages, { addGenerationPrompt: true });
    expect(ids[0]).toBe(1);
    expect(ids.filter((id) => id === 1)).toHaveLength(1);
    const tail = [6, ...tok.encode('assistant'), ...tok.encode('\n')];
    expect(ids.slice(-tail.length)).toEqual(tail);
    expect(tok.applyChatTemplate([{ role: 'user', content: 'a' }], { addGenerationPrompt: false })).toBe(
      '<|startoftext|><|im_start|>user\na<|im_end|>\n',
    );
    expect(() => tok.applyChatTemplate([{ role: 'user' } as never], { addGenerationPrompt: true })).toThrow(
      /chat message 0 must have string role and content/,
    );
  });

  it('matches the committed ids fixture that check_tokenizer.py compares with Python', () => {
    const fixture = JSON.parse(readFileSync(FIXTURE, 'utf8'));
    const raw = new Tokenizer(
      JSON.parse(readFileSync(join(TINY, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(join(TINY, 'tokenizer_config.json'), 'utf8')),
    );
    expect(fixture.vocabSize).toBe(tok.vocabSize);
    for (const s of fixture.strings) {
      expect(tok.encode(s.text)).toEqual(s.ids);
      expect(raw.encode(s.text).ids).toEqual(s.idsWithSpecialTokens);
    }
    for (const c of fixture.chats) {
      expect(tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.addGenerationPrompt })).toBe(c.text);
      expect(tok.encode(c.text)).toEqual(c.ids);
    }
  });
});

describe('tokenizer folder errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'webgrpo-tok-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names the missing or broken file', async () => {
    await expect(ChatTokenizer.load(join(dir, 'none'))).rejects.toThrow(/tokenizer.json not found: .*none\/tokenizer.json/);
    copyFileSync(join(TINY, 'tokenizer.json'), join(dir, 'tokenizer.json'));
    writeFileSync(join(dir, 'tokenizer_config.json'), '{"bos_token": ');
    await expect(ChatTokenizer.load(dir)).rejects.toThrow(/tokenizer_config.json: not a valid tokenizer_config.json/);
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|im_end|>' }));
    await expect(ChatTokenizer.load(dir)).rejects.toThrow(/tokenizer_config.json: bos_token is missing/);
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: { content: '<|startoftext|>' }, eos_token: '<|im_end|>' }));
    const t = await ChatTokenizer.load(dir);
    expect(t.padId).toBe(t.eosId); // no pad_token: pad with eos
    expect(() => t.applyChatTemplate([], { addGenerationPrompt: true })).toThrow(/has no chat_template/);
  });
});
