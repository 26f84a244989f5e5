// openai_embeddings.js BASE_URL MODEL INPUT_JSON [ENCODING]
// Calls POST /v1/embeddings through the official `openai` npm client (v4),
// as an application would, and prints the response it returns as one JSON
// line. Used by tests/integration/test_embeddings.py, which installs the
// package. The client asks for base64 by default and decodes it to floats.
const { OpenAI } = require("openai");

async function main() {
  const [base, model, inputJson, encoding] = process.argv.slice(2);
  const client = new OpenAI({ apiKey: process.env.AISERVE_TEST_KEY || "none", baseURL: base + "/v1",
                              maxRetries: 0, timeout: 30000 });
  const req = { model, input: JSON.parse(inputJson) };
  if (encoding) req.encoding_format = encoding;
  const res = await client.embeddings.create(req);
  process.stdout.write(JSON.stringify(res) + "\n");
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + "\n");
  process.exit(1);
});
