// openai_chat.js BASE_URL MODEL MESSAGES_JSON plain|stream
// Calls POST /v1/chat/completions through the official `openai` npm client
// (v4), as an application would, and prints one JSON line: the completion
// (plain), or {"chunks": [...]} with every chunk the client's stream
// iterator yielded (stream, with stream_options.include_usage). An API
// error the client raises (an error answer, or an error event in a stream)
// is printed as {"error": {status, code, type}} beside the chunks so far.
// Used by tests/integration/test_gateway.py, which installs the package.
const { OpenAI, APIError } = require("openai");

async function main() {
  const [base, model, messagesJson, mode] = process.argv.slice(2);
  const client = new OpenAI({ apiKey: process.env.AISERVE_TEST_KEY || "none", baseURL: base + "/v1",
                              maxRetries: 0, timeout: 30000 });
  const messages = JSON.parse(messagesJson);
  const out = {};
  try {
    if (mode === "stream") {
      out.chunks = [];
      const stream = await client.chat.completions.create({ model, messages, stream: true,
                                                            stream_options: { include_usage: true } });
      for await (const chunk of stream) out.chunks.push(chunk);
    } else {
      Object.assign(out, await client.chat.completions.create({ model, messages }));
    }
  } catch (e) {
    if (!(e instanceof APIError)) throw e;
    out.error = { status: e.status, code: e.code, type: e.type };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + "\n");
  process.exit(1);
});
