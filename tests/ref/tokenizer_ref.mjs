// tokenizer_ref.mjs - titan's WordPiece tokenizer (src/core/encoder/wordpiece*.c, run through tests/tools/wp_encode)
// against HuggingFace's tokenizers itself: the Rust crate as the Node addon @anush008/tokenizers (tests/ref,
// installed by scripts/deps.sh test). Prints TAP.
//
// Usage: node tests/ref/tokenizer_ref.mjs PATH/TO/wp_encode
//
// The reference builds and saves every tokenizer.json here (a vocabulary written by this script: ASCII words and
// ##pieces, accented letters, Greek, Cyrillic, CJK, kana, Hangul and its jamo, emoji, punctuation), over the
// BertNormalizer variants (lowercase, strip_accents null/true/false, handle_chinese_chars, clean_text), both
// post-processors, truncation in the file (LongestFirst, OnlyFirst, OnlySecond, Left), added tokens of every kind,
// another max_input_chars_per_word and subword prefix, and no normalizer, pre-tokenizer or post-processor. A
// vocab.txt + tokenizer_config.json directory is compared with the pipeline transformers converts BertTokenizer to.
// Both sides encode a fixed text set and seeded random strings, as singles and pairs, with and without truncation;
// ids, type ids and attention masks must be equal, and the reference's errors (a truncation that cannot fit) must
// be titan's errors. Invalid UTF-8 (which the reference cannot be given) must be refused by titan with its offset.
// Last, every code point of the planes in use goes through both normalizers and pre-tokenizers in five
// configurations; a difference is accepted only where the two sides' Unicode data differ (see CHANGED below), and
// each kind is counted.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

let tk;
try {
  tk = (await import('@anush008/tokenizers')).default;
} catch (e) {
  console.log(`Bail out! the reference @anush008/tokenizers is missing from tests/ref/node_modules ` +
    `(${String(e.message).split('\n')[0]}): run scripts/deps.sh test`);
  process.exit(1);
}
const tool = process.argv[2];
if (!tool || !fs.existsSync(tool)) {
  console.log(`Bail out! usage: node tokenizer_ref.mjs PATH/TO/wp_encode (got ${tool})`);
  process.exit(1);
}

// --- TAP ---
let n = 0, failed = 0;
function ok(cond, desc, details = []) {
  n++;
  if (!cond) failed++;
  console.log(`${cond ? 'ok' : 'not ok'} ${n} - ${desc}`);
  for (const d of details.slice(0, 12)) console.log(`# ${String(d).replace(/\n/g, '\\n')}`);
  if (details.length > 12) console.log(`# ... and ${details.length - 12} more`);
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenizer_ref_'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

function runTool(req) {
  const r = spawnSync(tool, [], { input: JSON.stringify(req), maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`wp_encode exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout.toString('utf8'));
}

// --- the vocabulary ---
const cp = (...xs) => String.fromCodePoint(...xs);
const SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
function buildVocab(prefix = '##') {
  const toks = [...SPECIALS];
  const add = (t) => { if (!toks.includes(t)) toks.push(t); };
  const both = (t) => { add(t); add(prefix + t); };
  for (let c = 33; c < 127; c++) both(String.fromCharCode(c));
  const words = ['the', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'hello', 'world', 'un', 'aff',
    'play', 'token', 'tokens', 'text', 'hash', 'tag', 'user', 'smart', 'quotes', 'line', 'break', 'tab', 'here',
    'istanbul', 'strasse', 'café', 'cafe', 'naïve', 'resume', 'über', 'Hello', 'World', 'The', 'Café', 'Über',
    'Straße', 'straße', 'İstanbul', 'i̇stanbul', 'ΟΔΥΣΣΕΥΣ', 'οδυσσευς', 'οδυσσευσ', 'σισυφος', 'привет', 'мир',
    'Привет', '2024', '12', '30', '45', '678', '3', '14159'];
  for (const w of words) add(w);
  for (const s of ['able', 'ing', 'ed', 's', 'ful', 'izer', 'ization', 'er', 'ly', 'ion', 'tion', 'o', 'ss', 'e'])
    add(prefix + s);
  const letters = 'éèêëáàâäãåçñöôóòüúùûíìîïýÿøæœßıσςαβγδεζηθικλμνξοπρτυφχψωабвгдежзийклмнопрстуфхцчшщъыьэюяğşİÉÈÊËÁÀÂÄÃÅÇÑÖÔÓÒÜÚÙÛÍÌÎÏÝØÆŒẞΣΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΤΥΦΧΨΩАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯǆǅǄǉǈǇ';
  for (const c of letters) both(c);
  both('i̇'); both(cp(0x307)); both(cp(0x301)); both(cp(0x308)); both(cp(0x30a)); both(cp(0x316));
  for (const c of '中文字日本語的一是人国我漢㐀𠀀𪜀豈丽') both(c);
  for (const c of 'こんにちはカタナテキストのアイウ') both(c);
  for (const c of '한국어텍스트') both(c);
  for (const c of '한국어텍스ᅳ') both(c); // the jamo that NFD makes of the syllables above
  for (const c of ['😀', '👍', '🏽', '❤', cp(0xfe0f), '👩', cp(0x200d), '💻', '🇫', '🇷', '👨', '👧', '👦']) both(c);
  for (const c of '«»—–¿¡、。・「」『』【】“”‘’…·•') both(c);
  for (const c of 'मरहबनसते्') both(c);
  for (const c of 'مرحبا') both(c);
  for (const c of '0123456789') both(c);
  const v = {};
  toks.forEach((t, i) => { v[t] = i; });
  return v;
}
const VOCAB = buildVocab();

// --- the texts ---
const LONG128 = (() => {
  const ws = ['the', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'playing', 'tokenization', 'café',
    'Hello', 'world', 'naïve', '中文', 'unaffable', '😀', 'İstanbul', 'Straße', 'ΟΔΥΣΣΕΥΣ'];
  const out = [];
  for (let i = 0; i < 128; i++) out.push(ws[(i * 7 + 3) % ws.length] + (i % 9 === 0 ? ',' : ''));
  return out.join(' ');
})();
const TEXTS = [
  '', ' ', '   \t\n ', 'Hello, World!', 'The quick brown fox jumps over the lazy dog.', 'unaffable playing played',
  'café naïve résumé über Straße CAFÉ NAÏVE', 'cafe\u0301 nai\u0308ve A\u030angstro\u0308m \u212b \u00c5',
  'e\u0301\u0301\u0316x a\u0316\u0301 \u1e69 s\u0323\u0307', 'x\u{1d16d}\u{1d165}y',
  '中文字日本語', '我是中国人。', '日本語のテキスト、カタカナ', '한국어 텍스트', '漢字\u3400\u{20000}\u{2a700}\uf900\u{2f800}',
  '😀👍🏽 ❤️ 👩‍💻 🇫🇷', 'I ❤ tokens 😀!', '👨‍👩‍👧‍👦', 'a\u200db \u200b zero\u200cwidth',
  'a\u0000b', 'nul\u0000nul', 'tab\there', 'line\nbreak\r\nwin\rmac', '\u0001\u0002ctrl\u007f\u0080\u009f',
  '\u200b\u200c\u200d\u2060\ufeff', 'soft\u00adhyphen', '\ue000private\u{f0000}\u{10fffd}', 'bad\ufffdchar',
  'a\u00a0b', '\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a', 'ideographic\u3000space',
  'next\u0085line', '\u1680ogham\u202fnarrow\u205fmath', 'a\u2028b\u2029c', 'v\u000bf\u000c', '\u001c\u001d\u001e\u001fx',
  '«quoted» — dash – en ¿qué? ¡sí!', '、。・「」『』【】', '“smart” ‘quotes’ … · •', '$100 + 5% = #hashtag @user ^_^ ~tilde` |pipe|',
  'a.b,c;d:e!f?g', '2024-12-07 12:30:45.678 3.14159',
  'a'.repeat(100), 'a'.repeat(101), 'x'.repeat(99) + 'é', 'é'.repeat(101), 'supercalifragilisticexpialidocious',
  'pneumonoultramicroscopicsilicovolcanoconiosis'.repeat(3),
  'Hello世界Привет مرحبا नमस्ते', 'abcабвαβγ', 'İstanbul İ ı I i İSTANBUL', 'Straße STRASSE ß ẞ',
  'ΟΔΥΣΣΕΥΣ Σίσυφος ς σ Σ', 'ǅungla ǈ ǋ Ǆ', '[CLS] hello [SEP] world [MASK]', 'x[MASK]y', '[cls] lower [Mask]',
  '[UNK][PAD]', '[CLS]', 'hello[SEP]', '\u0000', 'Ǆ\u0301', '\u0345\u0399', LONG128,
];

// A seeded PRNG (mulberry32) and random strings over classes of characters.
function prng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const WORDS = ['hello', 'world', 'the', 'un', 'able', 'ing', 'café', 'İstanbul', 'Straße', 'ΟΔΥΣΣΕΥΣ', 'привет', 'tokens'];
const CLASSES = [
  'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~',
  [' ', '\t', '\n', '\r', '\u000b', '\u000c', '\u0085', '\u00a0', '\u1680', '\u2000', '\u2005', '\u200a', '\u2028',
    '\u2029', '\u202f', '\u205f', '\u3000', '\u180e', '\u200b'],
  ['\u0000', '\u0001', '\u001f', '\u007f', '\u0080', '\u009f', '\u00ad', '\u200c', '\u200d', '\u2060', '\ufeff',
    '\ufffd', '\ue000', '\u{f0000}', '\u0378', '\u{e0001}', '\u0600', '\u061c'],
  'éèêëáàâäãåçñöôóòüúùûíìîïýÿøæœßıσςİÉÈÊËÁÀÂÄÃÅÇÑÖÔÓÒÜÚÙÛÍÌÎÏÝØÆŒẞΣǄǅǆĲ',
  ['\u0300', '\u0301', '\u0308', '\u030a', '\u0316', '\u0323', '\u0307', '\u0345', '\u20dd', '\u{1d165}', '\u{1d16d}',
    '\u0903', '\u093c'],
  '中文字日本語的一是人国我漢㐀豈丽', 'こんにちはカタナテキストのアイウ', '한국어텍스트각', 'абвгдежзАБВГДЕЖЗ', 'αβγδεζηθΑΒΓΔ',
  ['😀', '👍', '🏽', '❤', '\ufe0f', '👩', '\u200d', '💻', '🇫', '🇷', '🥰', '🫠'],
  '«»—–¿¡、。・「」『』【】“”‘’…·•†‰′″‹›⁂',
  ['[CLS]', '[SEP]', '[MASK]', '[UNK]', '[PAD]', '[cls]', '['],
  WORDS,
  ['मरहबा', 'नमस्ते', 'مرحبا', 'สวัสดี', 'ሰላም', 'שָׁלוֹם'],
];
function randomStrings(count, seed) {
  const r = prng(seed);
  const out = [];
  for (let i = 0; i < count; i++) {
    const len = Math.floor(r() * 40);
    let s = '';
    for (let k = 0; k < len; k++) {
      const cls = CLASSES[Math.floor(r() * CLASSES.length)];
      const items = typeof cls === 'string' ? [...cls] : cls;
      s += items[Math.floor(r() * items.length)];
      if (r() < 0.3) s += ' ';
    }
    out.push(s);
  }
  return out;
}
const RANDOM = randomStrings(300, 20251207);

// --- the tokenizers ---
function wordpiece(vocab, opts = {}) {
  return tk.WordPiece.init(vocab, { unkToken: '[UNK]', continuingSubwordPrefix: '##', maxInputCharsPerWord: 100, ...opts });
}
const BERT_TEMPLATE = (v) => tk.templateProcessing('[CLS] $A [SEP]', '[CLS] $A [SEP] $B:1 [SEP]:1',
  [['[CLS]', v['[CLS]']], ['[SEP]', v['[SEP]']]]);

// Each: name, how the reference tokenizer is set up, and the truncation cases to run on top of the file's own.
const VARIANTS = [
  { name: 'uncased (BERT base uncased)', norm: { cleanText: true, handleChineseChars: true, lowercase: true } },
  { name: 'cased (strip_accents null -> false)', norm: { cleanText: true, handleChineseChars: true, lowercase: false } },
  { name: 'lowercase, strip_accents false', norm: { cleanText: true, handleChineseChars: true, lowercase: true, stripAccents: false } },
  { name: 'cased, strip_accents true', norm: { cleanText: true, handleChineseChars: true, lowercase: false, stripAccents: true } },
  { name: 'no clean_text, no Chinese chars, lowercase', norm: { cleanText: false, handleChineseChars: false, lowercase: true } },
  { name: 'everything off', norm: { cleanText: false, handleChineseChars: false, lowercase: false, stripAccents: false } },
  { name: 'BertProcessing, truncation LongestFirst 24', norm: { lowercase: true }, bertProcessing: true,
    trunc: [24, {}] },
  { name: 'truncation OnlyFirst 20 from the left', norm: { lowercase: true }, trunc: [20, { strategy: 'OnlyFirst', direction: 'left' }] },
  { name: 'truncation OnlySecond 20', norm: { lowercase: true }, trunc: [20, { strategy: 'OnlySecond' }] },
  { name: 'added tokens (normalized, single_word, lstrip/rstrip, new ids)', norm: { lowercase: true }, added: true },
  { name: 'max_input_chars_per_word 8, prefix @@', norm: { lowercase: false }, model: { maxInputCharsPerWord: 8, continuingSubwordPrefix: '@@' } },
  { name: 'no normalizer, no post-processor', norm: null, post: false },
  { name: 'no pre-tokenizer', norm: { lowercase: true }, pretok: false },
];

function buildRef(v, file) {
  const vocab = v.model && v.model.continuingSubwordPrefix ? buildVocab(v.model.continuingSubwordPrefix) : VOCAB;
  const t = new tk.Tokenizer(wordpiece(vocab, v.model || {}));
  if (v.norm) t.setNormalizer(tk.bertNormalizer(v.norm));
  if (v.pretok !== false) t.setPreTokenizer(tk.bertPreTokenizer());
  if (v.post !== false)
    t.setPostProcessor(v.bertProcessing ? tk.bertProcessing(['[SEP]', vocab['[SEP]']], ['[CLS]', vocab['[CLS]']])
      : BERT_TEMPLATE(vocab));
  t.addSpecialTokens(SPECIALS);
  if (v.added) {
    t.addAddedTokens([
      new tk.AddedToken('Hello World', false, { normalized: true }), // matched on the normalized text
      new tk.AddedToken('<w>', false, { singleWord: true, normalized: false }),
      new tk.AddedToken('<s>', true, { leftStrip: true, rightStrip: true, normalized: false }),
      new tk.AddedToken('[NEW]', true), // not in the vocabulary: the next id
      new tk.AddedToken('Café', false, { normalized: true }), // normalizes to "cafe"
      new tk.AddedToken('[CLS]x', true), // longer than [CLS]: leftmost-longest
      new tk.AddedToken('ΣΣ', false, { normalized: false }),
    ]);
  }
  if (v.trunc) t.setTruncation(v.trunc[0], v.trunc[1]);
  t.save(file, false);
  return tk.Tokenizer.fromFile(file);
}

async function refEncode(ref, a, b) {
  try {
    const e = b === undefined ? await ref.encode(a) : await ref.encode(a, b);
    return { ids: e.getIds(), type_ids: e.getTypeIds(), attention_mask: e.getAttentionMask() };
  } catch (e) {
    return { error: String(e.message || e) };
  }
}

function same(x, y) {
  if (x.error || y.error) return !!x.error && !!y.error;
  return JSON.stringify(x.ids) === JSON.stringify(y.ids) && JSON.stringify(x.type_ids) === JSON.stringify(y.type_ids) &&
    JSON.stringify(x.attention_mask) === JSON.stringify(y.attention_mask);
}

const show = (s) => JSON.stringify(s).slice(0, 120);

// Encodes `cases` ({a, b?, max_len, trunc: [max, opts]?}) on both sides and reports one test point per group.
async function compare(variantName, dir, refFile, groups) {
  const req = { dir, encode: [] };
  const all = [];
  for (const g of groups) for (const c of g.cases) {
    req.encode.push({ a: c.a, ...(c.b !== undefined ? { b: c.b } : {}), max_len: c.max_len || 0, truncate: true });
    all.push(c);
  }
  const res = runTool(req);
  if (res.open_error) {
    ok(false, `${variantName}: titan opens the reference's tokenizer.json`, [res.open_error.message]);
    return;
  }
  const refs = new Map();
  const refFor = (trunc) => {
    const key = JSON.stringify(trunc || null);
    if (!refs.has(key)) {
      const r = tk.Tokenizer.fromFile(refFile);
      if (trunc) r.setTruncation(trunc[0], trunc[1]);
      refs.set(key, r);
    }
    return refs.get(key);
  };
  let k = 0;
  for (const g of groups) {
    const bad = [];
    let errors = 0;
    const got = await Promise.all(g.cases.map((c) => refEncode(refFor(c.trunc), c.a, c.b)));
    for (let i = 0; i < g.cases.length; i++, k++) {
      const want = got[i], have = res.encode[k], c = g.cases[i];
      if (want.error) errors++;
      if (!same(want, have))
        bad.push(`${show(c.a)}${c.b !== undefined ? ' | ' + show(c.b) : ''} max ${c.max_len || 0}: reference ` +
          `${want.error || JSON.stringify(want.ids)} titan ${have.error ? have.error + ': ' + have.message : JSON.stringify(have.ids)}` +
          (!want.error && !have.error && JSON.stringify(want.ids) === JSON.stringify(have.ids) ? ` (types ${want.type_ids} / ${have.type_ids})` : ''));
    }
    ok(bad.length === 0, `${variantName}: ${g.name} (${g.cases.length} encodings${errors ? `, ${errors} refused by both` : ''})`, bad);
  }
}

function pairsOf(list) {
  const out = [];
  for (let i = 0; i + 1 < list.length; i += 1) out.push([list[i], list[(i * 7 + 1) % list.length]]);
  return out;
}

// --- the comparisons ---
for (const [vi, v] of VARIANTS.entries()) {
  const dir = path.join(tmp, `v${vi}`);
  fs.mkdirSync(dir);
  const file = path.join(dir, 'tokenizer.json');
  buildRef(v, file);
  const texts = [...TEXTS, ...RANDOM];
  const groups = [
    { name: 'singles', cases: texts.map((a) => ({ a })) },
    { name: 'pairs', cases: pairsOf(texts).map(([a, b]) => ({ a, b })) },
  ];
  if (!v.trunc) {
    // titan's max_len against the reference's truncation at that length (longest_first, from the right)
    const tcases = [];
    for (const m of [3, 5, 8, 16, 33]) {
      for (const a of [...TEXTS.slice(3), ...RANDOM.slice(0, 60)]) tcases.push({ a, max_len: m, trunc: [m, {}] });
      for (const [a, b] of pairsOf([...TEXTS.slice(3), ...RANDOM.slice(0, 60)])) tcases.push({ a, b, max_len: m, trunc: [m, {}] });
    }
    groups.push({ name: 'truncated to 3, 5, 8, 16, 33 (max_len)', cases: tcases });
  } else {
    // the file's own truncation (max_len 0), and a max_len that replaces its length but keeps its strategy
    groups.push({
      name: 'max_len 12 with the file\'s strategy',
      cases: [...TEXTS.slice(3).map((a) => ({ a })), ...pairsOf(TEXTS.slice(3)).map(([a, b]) => ({ a, b }))]
        .map((c) => ({ ...c, max_len: 12, trunc: [12, v.trunc[1]] })),
    });
  }
  await compare(v.name, dir, file, groups);
}

// vocab.txt + tokenizer_config.json: the pipeline transformers' BertTokenizer converts to (BertConverter):
// BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars, strip_accents, lowercase=do_lower_case),
// BertPreTokenizer, WordPiece(unk, "##", 100), [CLS] $A [SEP] / $B:1 [SEP]:1, the special tokens added; with
// truncation=True a limit of model_max_length.
for (const [ci, cfg] of [
  { do_lower_case: false, strip_accents: true, tokenize_chinese_chars: false, model_max_length: 32 },
  null,
  { do_lower_case: true, strip_accents: false, model_max_length: 1e30 },
].entries()) {
  const dir = path.join(tmp, `vocab${ci}`);
  fs.mkdirSync(dir);
  const words = Object.entries(VOCAB).sort((x, y) => x[1] - y[1]).map((e) => e[0]);
  fs.writeFileSync(path.join(dir, 'vocab.txt'), words.join('\n') + '\n');
  if (cfg) fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(cfg).replace('1e+30', '1000000000000000019884624838656'));
  const c = { do_lower_case: true, tokenize_chinese_chars: true, ...(cfg || {}) };
  const t = new tk.Tokenizer(wordpiece(VOCAB));
  t.setNormalizer(tk.bertNormalizer({ cleanText: true, handleChineseChars: c.tokenize_chinese_chars, lowercase: c.do_lower_case,
    ...(c.strip_accents !== undefined ? { stripAccents: c.strip_accents } : {}) }));
  t.setPreTokenizer(tk.bertPreTokenizer());
  t.setPostProcessor(BERT_TEMPLATE(VOCAB));
  t.addSpecialTokens(['[UNK]', '[SEP]', '[PAD]', '[CLS]', '[MASK]']);
  if (c.model_max_length && c.model_max_length <= 1 << 20) t.setTruncation(c.model_max_length);
  const file = path.join(tmp, `vocab${ci}.json`);
  t.save(file, false);
  const texts = [...TEXTS, ...RANDOM.slice(0, 150)];
  await compare(`vocab.txt ${cfg ? JSON.stringify(cfg) : 'without tokenizer_config.json'}`, dir, file, [
    { name: 'singles', cases: texts.map((a) => ({ a })) },
    { name: 'pairs', cases: pairsOf(texts).map(([a, b]) => ({ a, b })) },
  ]);
}

// Invalid UTF-8: refused by titan with its byte offset.
{
  const dir = path.join(tmp, 'v0');
  const bad = [['68656c6c6fc0af', 5], ['eda080', 0], ['61f4908080', 1], ['e4b8', 0], ['616263ff', 3], ['c3a980', 2]];
  const res = runTool({ dir, encode: bad.map(([h]) => ({ a_hex: h })).concat(bad.map(([h]) => ({ a: 'ok', b_hex: h }))) });
  const wrong = [];
  bad.forEach(([h, off], i) => {
    for (const [r, which] of [[res.encode[i], 'the text'], [res.encode[i + bad.length], 'text b']]) {
      if (!r.error || r.error !== 'bad_request' || !r.message.includes(`at byte ${off} `) || !r.message.includes(which))
        wrong.push(`${h} as ${which}: ${JSON.stringify(r)}`);
    }
  });
  ok(wrong.length === 0, `invalid UTF-8 refused with code bad_request and its byte offset (${bad.length * 2} cases)`, wrong);
}

// titan without truncation: too_long exactly when the reference's untruncated encoding is over the limit.
{
  const dir = path.join(tmp, 'v0');
  const ref = tk.Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const cases = [...TEXTS.slice(3), ...RANDOM.slice(0, 40)];
  const req = { dir, encode: cases.map((a) => ({ a, max_len: 10, truncate: false })) };
  const res = runTool(req);
  const wrong = [];
  for (let i = 0; i < cases.length; i++) {
    const len = (await ref.encode(cases[i])).getLength();
    const r = res.encode[i];
    if (len > 10 ? !(r.error === 'too_long' && r.message.includes(`${len} tokens`)) : !!r.error)
      wrong.push(`${show(cases[i])}: reference length ${len}, titan ${JSON.stringify(r).slice(0, 200)}`);
  }
  ok(wrong.length === 0, `max_len 10 without truncation: too_long (with the count) exactly where the reference is longer`, wrong);
}

// --- every code point through both normalizers and pre-tokenizers ---
// A difference is explained, and accepted, only when it comes from the two sides' Unicode data:
//  - "newer": utf8proc (2.8, Unicode 15.0) has the code point unassigned (Cn), and the reference (Rust's std
//    tables, Unicode 16) knows it: lowercase mappings of Unicode 16 letters;
//  - "older": the reference's category tables (crate unicode_categories, Unicode 8-era, used for is_control,
//    strip_accents' Mn and punctuation) do not know the character, so it treats it as a letter, while utf8proc
//    puts it in Mn, Mc, Me, P* or Cf: characters added since;
//  - "changed": the four code points whose category or decomposition changed between the two:
//    U+166D (Po -> So), U+1734 (Mn -> Mc), U+111C9 (Po -> Mn), U+11938 (its canonical decomposition, Unicode 13,
//    is missing from the reference's normalization tables).
const CHANGED = new Set([0x166d, 0x1734, 0x111c9, 0x11938]);
const OLDER_CATS = new Set(['Mn', 'Mc', 'Me', 'Pc', 'Pd', 'Ps', 'Pe', 'Pi', 'Pf', 'Po', 'Cf']);
const SWEEPS = [
  { name: 'uncased', norm: { cleanText: true, handleChineseChars: true, lowercase: true } },
  { name: 'cased', norm: { cleanText: true, handleChineseChars: true, lowercase: false } },
  { name: 'lowercase only', norm: { cleanText: false, handleChineseChars: false, lowercase: true, stripAccents: false } },
  { name: 'strip_accents only', norm: { cleanText: false, handleChineseChars: false, lowercase: false, stripAccents: true } },
  { name: 'pre-tokenizer only', norm: { cleanText: false, handleChineseChars: false, lowercase: false, stripAccents: false } },
];
// Every code point of the planes in use (0-3 and 14); a sample of the rest (planes 4-13 are unassigned, 15-16
// private use), to keep the test short.
const CODEPOINTS = [];
for (let c = 0; c <= 0x10ffff; c++)
  if ((c < 0xd800 || c > 0xdfff) && (c < 0x40000 || (c >= 0xe0000 && c < 0xf0000) || c % 61 === 0)) CODEPOINTS.push(c);
const CHUNK = 512;
for (const [si, sw] of SWEEPS.entries()) {
  const dir = path.join(tmp, `sweep${si}`);
  fs.mkdirSync(dir);
  const file = path.join(dir, 'tokenizer.json');
  const ref = buildRef({ norm: sw.norm }, file);
  const rn = ref.getNormalizer(), rp = ref.getPreTokenizer();
  const refWords = (s) => rp.preTokenizeString(rn.normalizeString(s)).map((x) => x[0]);
  const texts = [];
  for (let i = 0; i < CODEPOINTS.length; i += CHUNK)
    texts.push(CODEPOINTS.slice(i, i + CHUNK).map((c) => 'a' + cp(c) + 'b').join(' '));
  const res = runTool({ dir, words: texts });
  const suspects = [];
  texts.forEach((t, i) => {
    if (JSON.stringify(refWords(t)) !== JSON.stringify(res.words[i])) suspects.push(...CODEPOINTS.slice(i * CHUNK, (i + 1) * CHUNK));
  });
  // one by one, where a chunk differed
  const single = runTool({ dir, words: suspects.map((c) => 'a' + cp(c) + 'b'), categories: suspects });
  const counts = { newer: 0, older: 0, changed: 0 }, unexplained = [], examples = { newer: [], older: [], changed: [] };
  suspects.forEach((c, i) => {
    const s = 'a' + cp(c) + 'b', want = refWords(s), have = single.words[i];
    if (JSON.stringify(want) === JSON.stringify(have)) return;
    const cat = single.categories[i], hex = 'U+' + c.toString(16).toUpperCase().padStart(4, '0');
    const plain = want.length === 1 && want[0] === s;
    const kind = cat === 'Cn' ? 'newer' : plain && OLDER_CATS.has(cat) ? 'older' : CHANGED.has(c) ? 'changed' : null;
    if (!kind) unexplained.push(`${hex} (${cat}): reference ${JSON.stringify(want)} titan ${JSON.stringify(have)}`);
    else {
      counts[kind]++;
      if (examples[kind].length < 6) examples[kind].push(`${hex} ${cat}`);
    }
  });
  const summary = `${counts.older} categorized since Unicode 8 (${examples.older.join(', ')}), ` +
    `${counts.newer} of Unicode 16 (${examples.newer.join(', ')}), ${counts.changed} changed`;
  ok(unexplained.length === 0, `${CODEPOINTS.length} code points, ${sw.name}: words equal but for ${summary}` +
    ` (utf8proc Unicode ${single.unicode_version})`, unexplained);
}

// --- speed: 32 texts of ~128 words ---
{
  const dir = path.join(tmp, 'v0');
  const texts = [];
  const r = prng(7);
  for (let i = 0; i < 32; i++) {
    const ws = [];
    for (let k = 0; k < 128; k++) {
      const pick = WORDS[Math.floor(r() * WORDS.length)];
      ws.push(r() < 0.1 ? pick.toUpperCase() + ',' : pick);
    }
    texts.push(ws.join(' '));
  }
  const res = runTool({ dir, bench: { texts, rounds: 50, max_len: 512 } });
  console.log(`# speed: ${res.bench.us_per_text.toFixed(1)} us a text of 128 words (${res.bench.tokens / res.bench.rounds / 32} tokens), ` +
    `${res.bench.texts} texts x ${res.bench.rounds} rounds`);
  // judged in the plain build only: AddressSanitizer slows it several times over
  if (res.bench.sanitized) console.log('# (a sanitizer build: the time is not judged)');
  else ok(res.bench.us_per_text < 1000, `a text of 128 words takes under a millisecond (${res.bench.us_per_text.toFixed(1)} us)`);
}

console.log(`1..${n}`);
process.exit(failed ? 1 : 0);
