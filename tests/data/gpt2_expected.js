// Generates the expected GPT-2 token ids embedded in tests/data/tokenizer_test.cpp.
//
//   mkdir -p /tmp/gpt2tok && cd /tmp/gpt2tok && npm install gpt-3-encoder@1.1.4
//   NODE_PATH=/tmp/gpt2tok/node_modules node tests/data/gpt2_expected.js
//
// gpt-3-encoder is a JavaScript port of openai/gpt-2's src/encoder.py that
// ships GPT-2's encoder.json and vocab.bpe. Its regex uses JavaScript's \s,
// which differs from GPT-2's (Python `regex`: Unicode White_Space) only on
// U+0085 and U+FEFF, so the cases below avoid those two characters; the test
// covers U+0085 separately. It knows nothing of special tokens: text around
// "<|endoftext|>" is encoded piecewise and 50256 inserted, which is what
// kiln's encode(text, allow_special=true) promises.
const { encode } = require('gpt-3-encoder');

const cases = [
  ['empty', ''],
  ['hello', 'Hello world'],
  ['english', 'The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.'],
  ['contractions', "I'm sure you'll see they've done it, haven't they? She'd say it's John's. We're here."],
  ['upper_contractions', "DON'T YOU'LL I'M 'S"],
  ['code', 'def foo(x):\n    return x**2 + 1  # comment\n\n\tif (a != b) { printf("%d\\n", a); }\n'],
  ['emoji', 'I love \u{1F355} and \u{1F44D}\u{1F3FD}! \u{1F468}\u200D\u{1F469}\u200D\u{1F467}\u200D\u{1F466} \u2764\uFE0F'],
  ['cjk', '\u4F60\u597D\uFF0C\u4E16\u754C\uFF01\u65E5\u672C\u8A9E\u306E\u30C6\u30AD\u30B9\u30C8\u3002 \uD55C\uAD6D\uC5B4 \uD14D\uC2A4\uD2B8'],
  ['spaces', 'a          b   c \n  d\n\n\n   leading and trailing   '],
  ['space_runs', ' '.repeat(40) + 'x' + '\t'.repeat(7) + '\n' + ' '.repeat(3)],
  ['numbers', '3.14159 1,000,000 2024-05-20 0x1F 12345678901234567890 \u0661\u0662\u0663 \u00BD \u00B2'],
  ['accents', 'na\u00EFve caf\u00E9 r\u00E9sum\u00E9 \u03A9mega \u00DF \u0130stanbul'],
  ['whitespace_kinds', 'tab\there\r\nwindows\u00A0nbsp\u3000ideographic\u2028line\u000Bvt'],
  // [name, unit, repeat]: the text is `unit` repeated (long pieces take
  // kiln's heap path; GPT-2's loop gives the reference).
  ['long_a', 'a', 300],
  ['long_word', 'supercalifragilisticexpialidocious', 10],
  ['long_cjk', '\u6625\u7720\u4E0D\u89BA\u6653\u5904\u5904\u95FB\u557C\u9E1F\u591C\u6765\u98CE\u96E8\u58F0\u82B1\u843D\u77E5\u591A\u5C11', 6],
  ['long_spaces', ' ', 500],
  ['special_middle', 'Hello<|endoftext|>World'],
  ['special_twice', '<|endoftext|><|endoftext|>'],
  ['special_spaced', ' <|endoftext|> x <|endoftext'],
];

const EOT = 50256;
function encode_special(text) {
  const parts = text.split('<|endoftext|>');
  let ids = [];
  parts.forEach((p, i) => {
    if (i > 0) ids.push(EOT);
    if (p.length > 0) ids = ids.concat(encode(p));
  });
  return ids;
}

function cxx_string(s) {
  // Printable characters as themselves (the test file is UTF-8), everything
  // invisible or special as \x escapes of its UTF-8 bytes (each closed with
  // "" so a following hex digit is not swallowed).
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0);
    const visible = (cp >= 0x21 && cp <= 0x7e && ch !== '"' && ch !== '\\') || cp === 0x20 ||
                    (cp > 0xa0 && !/[\s\u200d\ufe0f]/u.test(ch));
    if (visible) out += ch;
    else for (const b of Buffer.from(ch, 'utf8')) out += '\\x' + b.toString(16).padStart(2, '0') + '""';
  }
  return out.replace(/(\\x[0-9a-f]{2})""$/, '$1') + '"';
}

function wrap_ids(ids) {
  const lines = [];
  let line = '';
  for (const id of ids) {
    const item = String(id) + ', ';
    if (line.length + item.length > 100) { lines.push(line.trimEnd()); line = ''; }
    line += item;
  }
  if (line) lines.push(line.replace(/, $/, ''));
  return lines.join('\n      ');
}

if (process.argv.includes('--json')) {  // for cross-checking with another implementation
  console.log(JSON.stringify(cases.map(([name, unit, rep = 1]) => {
    const text = unit.repeat(rep);
    return {name, text, ids: encode_special(text)};
  })));
  process.exit(0);
}
for (const [name, unit, rep = 1] of cases) {
  const ids = encode_special(unit.repeat(rep));
  console.log(`    {"${name}", ${cxx_string(unit)}, ${rep},\n     {${wrap_ids(ids)}}},`);
}
