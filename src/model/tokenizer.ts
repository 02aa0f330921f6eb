// Tokenizer and chat template of a Hugging Face model folder: tokenizer.json through @huggingface/tokenizers,
// the chat template (tokenizer_config.json or chat_template.jinja) through @huggingface/jinja.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplateOptions {
  /** End with the opening of an assistant turn, so the model writes the reply. */
  addGenerationPrompt: boolean;
}

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
  if (!existsSync(path)) throw new Error(`${what} not found: ${path}`);
  const text = await readFile(path, 'utf8');
  try {
    const value: unknown = JSON.parse(text);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new Error('expected a JSON object');
    }
    return value as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${path}: not a valid ${what}: ${(err as Error).message}`);
  }
}

/** tokenizer_config.json writes special tokens either as a string or as an AddedToken object. */
function specialTokenText(config: Record<string, unknown>, key: string): string | undefined {
  const value = config[key];
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return undefined;
}

function pickTemplate(config: Record<string, unknown>, path: string): string | undefined {
  const t = config.chat_template;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const named = t as { name?: unknown; template?: unknown }[];
    const chosen = named.find((x) => x.name === 'default') ?? named[0];
    if (chosen && typeof chosen.template === 'string') return chosen.template;
    throw new Error(`${path}: chat_template is a list without a usable "default" entry`);
  }
  return undefined;
}

export class ChatTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly vocabSize: number;
  private readonly specialIds: Set<number>;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly template: Template | undefined,
    private readonly specialTexts: { bos: string; eos: string; pad: string },
    readonly dir: string,
  ) {
    this.bosId = this.tokenToId(specialTexts.bos);
    this.eosId = this.tokenToId(specialTexts.eos);
    this.padId = this.tokenToId(specialTexts.pad);
    let maxId = -1;
    for (const id of tokenizer.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.specialIds = new Set(
      [...tokenizer.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id),
    );
  }

  /** Loads tokenizer.json + tokenizer_config.json (and chat_template.jinja when present) from a model folder. */
  static async load(dir: string): Promise<ChatTokenizer> {
    const tokenizerPath = join(dir, 'tokenizer.json');
    const configPath = join(dir, 'tokenizer_config.json');
    const tokenizerJson = await readJson(tokenizerPath, 'tokenizer.json');
    const config = await readJson(configPath, 'tokenizer_config.json');
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(tokenizerJson, config);
    } catch (err) {
      throw new Error(`${tokenizerPath}: @huggingface/tokenizers cannot load it: ${(err as Error).message}`);
    }
    const jinjaPath = join(dir, 'chat_template.jinja');
    const templateText = existsSync(jinjaPath) ? await readFile(jinjaPath, 'utf8') : pickTemplate(config, configPath);
    let template: Template | undefined;
    if (templateText !== undefined) {
      try {
        template = new Template(templateText);
      } catch (err) {
        throw new Error(`${configPath}: chat_template does not parse: ${(err as Error).message}`);
      }
    }
    const bos = specialTokenText(config, 'bos_token');
    const eos = specialTokenText(config, 'eos_token');
    if (!bos) throw new Error(`${configPath}: bos_token is missing`);
    if (!eos) throw new Error(`${configPath}: eos_token is missing`);
    const pad = specialTokenText(config, 'pad_token') ?? eos;
    const result = new ChatTokenizer(tokenizer, template, { bos, eos, pad }, dir);
    return result;
  }

  /** Token ids of the text. Adds no BOS (chat templates write their own); special-token text maps to its id. */
  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: ArrayLike<number>, opts: { skipSpecialTokens?: boolean } = {}): string {
    const list = Array.from(ids);
    if (list.length === 0) return '';
    for (const id of list) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new Error(`cannot decode token id ${id}: ids must be integers in [0, ${this.vocabSize})`);
      }
    }
    return this.tokenizer.decode(list, {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: false,
    });
  }

  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions): string {
    if (!this.template) throw new Error(`${this.dir}: the tokenizer has no chat_template`);
    for (const [i, m] of messages.entries()) {
      if (typeof m?.role !== 'string' || typeof m?.content !== 'string') {
        throw new Error(`chat message ${i} must have string role and content (got ${JSON.stringify(m)})`);
      }
    }
    return this.template.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt,
      bos_token: this.specialTexts.bos,
      eos_token: this.specialTexts.eos,
      pad_token: this.specialTexts.pad,
    });
  }

  /** The chat rendered and encoded: exactly one BOS, the one the template writes. */
  encodeChat(messages: ChatMessage[], opts: ChatTemplateOptions): number[] {
    return this.encode(this.applyChatTemplate(messages, opts));
  }

  tokenToId(token: string): number {
    const id = this.tokenizer.token_to_id(token);
    if (id === undefined) throw new Error(`${this.dir}: token ${JSON.stringify(token)} is not in the vocabulary`);
    return id;
  }

  idToToken(id: number): string {
    const token = this.tokenizer.id_to_token(id);
    if (token === undefined) throw new Error(`${this.dir}: token id ${id} is not in the vocabulary`);
    return token;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }
}
