// The official `openai` client (pinned in package.json) against our server:
// a text chat, an image chat (data: URL), a two-turn chat with the image in
// the first turn, a streamed chat and a bad request. The non-streamed answers
// must equal the gRPC API's for the same conversation (text and token ids,
// written by openai_test into EXPECTED_JSON); the streamed text must equal
// the non-streamed one.
// usage: node check.mjs BASE_URL TOKEN EXPECTED_JSON IMAGE_FILE
import fs from 'node:fs';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [baseURL, apiKey, expectedFile, imageFile] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedFile, 'utf8'));
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });
const model = 'tiny-qwen2';
const image = `data:image/png;base64,${fs.readFileSync(imageFile).toString('base64')}`;

const conversations = {
  text: [{ role: 'user', content: 'Hello, who are you?' }],
  image: [
    { role: 'system', content: 'You are a careful assistant.' },
    {
      role: 'user',
      content: [
        { type: 'image_url', image_url: { url: image } },
        { type: 'text', text: 'Describe the image.' },
      ],
    },
  ],
  two_turns: [
    {
      role: 'user',
      content: [
        { type: 'text', text: 'What is in the image?' },
        { type: 'image_url', image_url: { url: image } },
      ],
    },
    { role: 'assistant', content: 'A picture.' },
    { role: 'user', content: 'And what colour is it?' },
  ],
};

for (const [name, messages] of Object.entries(conversations)) {
  const want = expected[name];
  const reply = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
  assert.equal(reply.object, 'chat.completion', name);
  assert.equal(reply.choices.length, 1, name);
  assert.equal(reply.choices[0].message.content, want.response, `${name}: text`);
  assert.deepEqual(reply.choices[0].token_ids, want.token_ids, `${name}: token ids`);
  assert.equal(reply.usage.prompt_tokens, want.prompt_tokens, `${name}: prompt tokens`);
  console.log(`${name}: ${JSON.stringify(reply.choices[0].message.content)} (${reply.usage.completion_tokens} tokens)`);

  // Streamed: the same text, usage at the end.
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    if (chunk.choices.length === 0) continue;
    text += chunk.choices[0].delta.content ?? '';
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
  assert.equal(text, reply.choices[0].message.content, `${name}: streamed text`);
  assert.equal(finish, reply.choices[0].finish_reason, `${name}: streamed finish_reason`);
  assert.deepEqual(usage, reply.usage, `${name}: streamed usage`);
}

// A bad request: the client's own error classes, with the status.
await assert.rejects(
  client.chat.completions.create({ model: 'no-such-model', messages: conversations.text }),
  (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && typeof e.message === 'string',
);
await assert.rejects(
  client.chat.completions.create({ model, messages: [{ role: 'assistant', content: 'first' }] }),
  (e) => e instanceof OpenAI.BadRequestError && e.status === 400,
);
const wrongKey = new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 });
await assert.rejects(wrongKey.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
const models = await client.models.list();
assert.deepEqual(models.data.map((m) => m.id), [model]);
console.log('openai client: all checks passed');
