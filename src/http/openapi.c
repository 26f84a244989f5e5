/*
 * openapi.c - the API described from the route table: GET /openapi.json
 * (an OpenAPI 3.1 document; GET /docs shows it with Swagger UI).
 *
 * The document is made from the rows of http_routes (routes.c) and from
 * the body schemas below, and nothing else: each row gives its path and
 * method (one operation per method), its scope (the operation's security:
 * none for open rows, an API key with that scope for the others), its
 * placeholders (path parameters) and its doc (summary, request schema,
 * answers, query parameters). Every row with a scope also answers 401 and
 * 403, every row with a body 400 and 413; error answers have the one error
 * shape. The answers' descriptions name the error codes of HTTP_ERROR_MAP
 * with that status. Inference rows (the pipeline's) take the
 * X-Model-Version request header and send it back on success.
 *
 * The text is made on the first request and kept (it depends only on
 * the table and the server's version: the first server's, in a process
 * that runs several); a lock makes that safe from every loop thread. Not
 * freed: they live as long as the process.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

/* The body schemas (components/schemas), written with ' for " so that they
 * read as JSON (their text has no '). Shapes: docs/http.md, docs/batch.md
 * and, for chat, OpenAI's API (its main fields; others are forwarded). */
static const char schemas_text[] =
    "{"
    "'Error': {'type': 'object', 'required': ['error', 'detail'], 'properties': {"
    "  'error': {'type': 'object', 'required': ['message', 'type', 'code', 'request_id'], 'properties': {"
    "    'message': {'type': 'string'}, 'type': {'type': 'string', 'description': 'OpenAI error type'},"
    "    'code': {'type': 'string', 'description': 'the error code (docs/http.md, Errors)'},"
    "    'request_id': {'type': 'string'}}},"
    "  'detail': {'type': 'string', 'description': 'the message again, for clients of the FastAPI service'}}},"
    "'PredictRequest': {'description': 'Exactly one of text and texts; other fields are ignored.', 'oneOf': ["
    "  {'type': 'object', 'required': ['text'], 'properties': {'text': {'type': 'string', 'minLength': 1}}},"
    "  {'type': 'object', 'required': ['texts'], 'properties': {"
    "    'texts': {'type': 'array', 'minItems': 1, 'items': {'type': 'string', 'minLength': 1}}}}]},"
    "'PredictionItem': {'type': 'object', 'required': ['label', 'confidence'], 'properties': {"
    "  'label': {'type': 'string'}, 'confidence': {'type': 'number', 'description': 'the probability of the "
    "label; for a regression model (problem_type regression) its raw value'},"
    "  'model_version': {'type': 'string', 'description': 'in a cascaded list: the version that answered'}}},"
    "'Prediction': {'oneOf': ["
    "  {'type': 'object', 'required': ['label', 'confidence', 'model', 'model_version'], 'properties': {"
    "    'label': {'type': 'string'}, 'confidence': {'type': 'number'},"
    "    'model': {'type': 'string'}, 'model_version': {'type': 'string'}}},"
    "  {'type': 'object', 'required': ['predictions', 'model', 'model_version'], 'properties': {"
    "    'predictions': {'type': 'array', 'items': {'$ref': '#/components/schemas/PredictionItem'}},"
    "    'model': {'type': 'string'}, 'model_version': {'type': 'string'}}}]},"
    "'Status': {'type': 'object', 'required': ['status'], 'properties': {'status': {'type': 'string'}}},"
    "'Health': {'type': 'object', 'required': ['status', 'model_loaded'], 'properties': {"
    "  'status': {'type': 'string', 'enum': ['healthy', 'degraded', 'loading', 'unhealthy', 'shutting_down']},"
    "  'model_loaded': {'type': 'boolean'}, 'ready': {'type': 'boolean'},"
    "  'models': {'type': 'object', 'additionalProperties': {'type': 'string'}},"
    "  'version': {'type': 'string'}, 'uptime_seconds': {'type': 'number'},"
    "  'dependencies': {'type': 'object'},"
    "  'error': {'type': 'object', 'description': 'on 503: the error object'}, 'detail': {'type': 'string'}}},"
    "'ModelVersion': {'type': 'object', 'required': ['version', 'state'], 'properties': {"
    "  'version': {'type': 'string'},"
    "  'state': {'type': 'string', 'enum': ['loading', 'available', 'unloading', 'failed']},"
    "  'error': {'type': 'string'}, 'architecture': {'type': 'string'}, 'model_type': {'type': 'string'},"
    "  'task': {'type': 'string'}, 'labels': {'type': 'array', 'items': {'type': 'string'}},"
    "  'max_length': {'type': 'integer'}, 'parameters': {'type': 'integer'}, 'dtype': {'type': 'string'},"
    "  'sha256': {'type': ['string', 'null']},"
    "  'quantization': {'type': 'string', 'enum': ['none', 'bf16', 'int8'], 'description': 'what runs'},"
    "  'weight_memory_bytes': {'type': 'integer'}}},"
    "'Model': {'type': 'object', 'required': ['id', 'name', 'object', 'owned_by'], 'properties': {"
    "  'id': {'type': 'string'}, 'name': {'type': 'string'}, 'object': {'const': 'model'},"
    "  'owned_by': {'type': 'string'}, 'created': {'type': 'integer'}, 'default': {'type': 'boolean'},"
    "  'traffic': {'$ref': '#/components/schemas/TrafficSplit'},"
    "  'aliases': {'type': 'object', 'additionalProperties': {'type': 'string'}},"
    "  'shadow': {'type': ['object', 'null']},"
    "  'cascade': {'type': ['object', 'null'], 'description': 'first, then, threshold; null when off'},"
    "  'versions': {'type': 'array', 'items': {'$ref': '#/components/schemas/ModelVersion'}}}},"
    "'ModelList': {'type': 'object', 'required': ['object', 'data'], 'properties': {"
    "  'object': {'const': 'list'}, 'data': {'type': 'array', 'items': {'$ref': '#/components/schemas/Model'}}}},"
    "'EmbeddingsRequest': {'type': 'object', 'required': ['input'], 'properties': {"
    "  'model': {'type': 'string', 'description': 'the default model when absent'},"
    "  'input': {'oneOf': [{'type': 'string'}, {'type': 'array', 'minItems': 1, 'items': {'type': 'string'}}]},"
    "  'encoding_format': {'type': 'string', 'enum': ['float', 'base64'], 'default': 'float'},"
    "  'prompt_name': {'type': 'string', 'description': 'a prompt of the model (config_sentence_transformers.json), "
    "prepended to every input'}}},"
    "'TeiEmbedRequest': {'type': 'object', 'required': ['inputs'], 'properties': {"
    "  'inputs': {'oneOf': [{'type': 'string'}, {'type': 'array', 'minItems': 1, 'items': {'type': 'string'}}]},"
    "  'normalize': {'type': 'boolean', 'default': true, 'description': 'L2-normalised vectors; false only for "
    "a model whose sentence-transformers files do not normalise'},"
    "  'truncate': {'type': 'boolean', 'description': 'accepted; texts are always truncated'},"
    "  'truncation_direction': {'type': 'string', 'enum': ['Right', 'right']},"
    "  'prompt_name': {'type': ['string', 'null'], 'description': 'a prompt of the model "
    "(config_sentence_transformers.json), prepended to every input'},"
    "  'model': {'type': 'string', 'description': 'not in TEI: a model of the repository (default: the default model)'}}},"
    "'TeiEmbedResponse': {'type': 'array', 'description': 'one vector per input, in order', 'items': {"
    "  'type': 'array', 'items': {'type': 'number'}}},"
    "'TeiRerankRequest': {'type': 'object', 'required': ['query', 'texts'], 'properties': {"
    "  'query': {'type': 'string'}, 'texts': {'type': 'array', 'minItems': 1, 'items': {'type': 'string'}},"
    "  'raw_scores': {'type': 'boolean', 'description': 'the logit instead of its sigmoid'},"
    "  'return_text': {'type': 'boolean'}, 'truncate': {'type': 'boolean'},"
    "  'model': {'type': 'string', 'description': 'not in TEI: a model of the repository (default: the default model)'}}},"
    "'TeiRerankResponse': {'type': 'array', 'description': 'best first', 'items': {'type': 'object',"
    "  'required': ['index', 'score'], 'properties': {'index': {'type': 'integer'}, 'score': {'type': 'number'},"
    "  'text': {'type': 'string'}}}},"
    "'RerankRequest': {'type': 'object', 'required': ['query', 'documents'], 'properties': {"
    "  'model': {'type': 'string'}, 'query': {'type': 'string'},"
    "  'documents': {'type': 'array', 'minItems': 1, 'items': {'oneOf': [{'type': 'string'}, {'type': 'object',"
    "    'required': ['text'], 'properties': {'text': {'type': 'string'}}}]}},"
    "  'top_n': {'type': 'integer', 'minimum': 1}, 'return_documents': {'type': 'boolean'}}},"
    "'RerankResponse': {'type': 'object', 'required': ['id', 'model', 'results'], 'properties': {"
    "  'id': {'type': 'string'}, 'model': {'type': 'string'},"
    "  'results': {'type': 'array', 'description': 'best first', 'items': {'type': 'object',"
    "    'required': ['index', 'relevance_score'], 'properties': {'index': {'type': 'integer'},"
    "    'relevance_score': {'type': 'number'}, 'document': {'type': 'object', 'properties': {"
    "      'text': {'type': 'string'}}}}}},"
    "  'usage': {'type': 'object', 'properties': {'total_tokens': {'type': 'integer'}}},"
    "  'meta': {'type': 'object'}}},"
    "'EmbeddingList': {'type': 'object', 'required': ['object', 'data', 'model', 'usage'], 'properties': {"
    "  'object': {'const': 'list'},"
    "  'data': {'type': 'array', 'items': {'type': 'object', 'required': ['object', 'index', 'embedding'],"
    "    'properties': {'object': {'const': 'embedding'}, 'index': {'type': 'integer'},"
    "      'embedding': {'oneOf': [{'type': 'array', 'items': {'type': 'number'}},"
    "        {'type': 'string', 'description': 'base64 of little-endian float32'}]}}}},"
    "  'model': {'type': 'string'},"
    "  'usage': {'type': 'object', 'properties': {'prompt_tokens': {'type': 'integer'},"
    "    'total_tokens': {'type': 'integer'}}}}},"
    "'ChatMessage': {'type': 'object', 'required': ['role'], 'properties': {"
    "  'role': {'type': 'string', 'enum': ['system', 'developer', 'user', 'assistant', 'tool', 'function']},"
    "  'content': {'oneOf': [{'type': 'string'}, {'type': 'array', 'items': {'type': 'object'}},"
    "    {'type': 'null'}]},"
    "  'name': {'type': 'string'}}},"
    "'ChatCompletionRequest': {'type': 'object', 'required': ['model', 'messages'],"
    "  'description': 'OpenAI chat completions request; fields not listed are forwarded untouched.',"
    "  'properties': {"
    "  'model': {'type': 'string', 'description': 'a model or a route of the gateway'},"
    "  'messages': {'type': 'array', 'minItems': 1, 'items': {'$ref': '#/components/schemas/ChatMessage'}},"
    "  'temperature': {'type': ['number', 'null'], 'minimum': 0, 'maximum': 2},"
    "  'top_p': {'type': ['number', 'null'], 'minimum': 0, 'maximum': 1},"
    "  'n': {'type': ['integer', 'null'], 'minimum': 1},"
    "  'max_tokens': {'type': ['integer', 'null'], 'minimum': 1},"
    "  'stop': {'oneOf': [{'type': 'string'}, {'type': 'array', 'maxItems': 4, 'items': {'type': 'string'}},"
    "    {'type': 'null'}]},"
    "  'stream': {'type': ['boolean', 'null'], 'description': 'true: server-sent events of chat.completion.chunk'},"
    "  'stream_options': {'type': ['object', 'null']}}},"
    "'ChatCompletion': {'type': 'object', 'required': ['id', 'object', 'created', 'model', 'choices'],"
    "  'properties': {"
    "  'id': {'type': 'string'}, 'object': {'const': 'chat.completion'}, 'created': {'type': 'integer'},"
    "  'model': {'type': 'string'},"
    "  'choices': {'type': 'array', 'items': {'type': 'object', 'properties': {'index': {'type': 'integer'},"
    "    'message': {'$ref': '#/components/schemas/ChatMessage'}, 'finish_reason': {'type': ['string', 'null']}}}},"
    "  'usage': {'type': 'object', 'properties': {'prompt_tokens': {'type': 'integer'},"
    "    'completion_tokens': {'type': 'integer'}, 'total_tokens': {'type': 'integer'}}}}},"
    "'BudgetUsd': {'type': ['object', 'null'], 'description': 'null: no such limit',"
    "  'required': ['limit_usd', 'spent_usd', 'left_usd', 'resets_in_s'], 'properties': {"
    "  'limit_usd': {'type': 'number'}, 'spent_usd': {'type': 'number', 'description': 'answers settled plus "
    "the reservations of requests still running'}, 'left_usd': {'type': 'number', 'minimum': 0},"
    "  'resets_in_s': {'type': 'integer', 'description': 'until the period renews (UTC)'}}},"
    "'BudgetList': {'type': 'object', 'required': ['object', 'data'], 'description': 'the gateway budgets of the "
    "key that asks; with scope admin, of every key of budgets.keys and of requests without a key (key null); "
    "empty without a budgets section', 'properties': {"
    "  'object': {'const': 'list'}, 'data': {'type': 'array', 'items': {'type': 'object',"
    "    'required': ['key', 'budget', 'daily', 'monthly', 'tokens_per_minute'], 'properties': {"
    "    'key': {'type': ['string', 'null'], 'description': 'the API key name; null: requests without a key'},"
    "    'budget': {'type': 'string', 'enum': ['keys', 'default'], 'description': 'its own entry of budgets.keys, "
    "or the default budget'},"
    "    'daily': {'$ref': '#/components/schemas/BudgetUsd'}, 'monthly': {'$ref': '#/components/schemas/BudgetUsd'},"
    "    'tokens_per_minute': {'type': ['object', 'null'], 'required': ['limit', 'used', 'left', 'resets_in_s'],"
    "      'properties': {'limit': {'type': 'integer'}, 'used': {'type': 'integer'},"
    "      'left': {'type': 'integer', 'minimum': 0}, 'resets_in_s': {'type': 'integer'}}}}}}}},"
    "'SeedBatchRequest': {'oneOf': [{'type': 'array', 'minItems': 1, 'items': {'type': 'string'}},"
    "  {'type': 'object', 'required': ['texts'], 'properties': {"
    "    'texts': {'type': 'array', 'minItems': 1, 'items': {'type': 'string'}}}}]},"
    "'SeedBatchSubmitted': {'type': 'object', 'required': ['task_id', 'status'], 'properties': {"
    "  'task_id': {'type': 'string'}, 'status': {'const': 'pending'}}},"
    "'SeedBatchResult': {'type': 'object', 'required': ['status'], 'properties': {"
    "  'status': {'type': 'string', 'enum': ['pending', 'completed', 'failed', 'cancelled']},"
    "  'results': {'type': 'array', 'items': {'$ref': '#/components/schemas/PredictionItem'}},"
    "  'error': {'type': 'string'}}},"
    "'BatchRequest': {'type': 'object', 'required': ['inputs'],"
    "  'description': 'Or JSON Lines (Content-Type application/jsonl): a string or {text} per line.',"
    "  'properties': {'model': {'type': 'string', 'description': 'the default model when absent'},"
    "  'inputs': {'type': 'array', 'minItems': 1, 'items': {'type': 'string'}}}},"
    "'BatchJob': {'type': 'object', 'required': ['id', 'object', 'model', 'status', 'progress'], 'properties': {"
    "  'id': {'type': 'string'}, 'object': {'const': 'batch'}, 'model': {'type': 'string'},"
    "  'model_version': {'type': ['string', 'null']},"
    "  'status': {'type': 'string', 'enum': ['queued', 'running', 'completed', 'failed', 'cancelled']},"
    "  'progress': {'type': 'object', 'properties': {'done': {'type': 'integer'}, 'total': {'type': 'integer'}}},"
    "  'created_at': {'type': 'string'}, 'started_at': {'type': ['string', 'null']},"
    "  'finished_at': {'type': ['string', 'null']}, 'error': {'type': ['string', 'null']}}},"
    "'BatchList': {'type': 'object', 'required': ['object', 'data', 'first_id', 'last_id', 'has_more'],"
    "  'description': 'the jobs of the key that asks, newest first', 'properties': {"
    "  'object': {'const': 'list'}, 'data': {'type': 'array', 'items': {'$ref': '#/components/schemas/BatchJob'}},"
    "  'first_id': {'type': ['string', 'null']}, 'last_id': {'type': ['string', 'null'],"
    "    'description': 'pass it as after for the next page'}, 'has_more': {'type': 'boolean'}}},"
    "'BatchResults': {'type': 'object', 'required': ['object', 'id', 'status', 'data'], 'properties': {"
    "  'object': {'const': 'list'}, 'id': {'type': 'string'}, 'status': {'type': 'string'},"
    "  'data': {'type': 'array', 'items': {'type': 'object', 'properties': {'index': {'type': 'integer'},"
    "    'result': {'oneOf': [{'$ref': '#/components/schemas/Prediction'}, {'type': 'null'}]}}}},"
    "  'offset': {'type': 'integer'}, 'limit': {'type': 'integer'}, 'total': {'type': 'integer'},"
    "  'has_more': {'type': 'boolean'}}},"
    "'KServeServer': {'type': 'object', 'required': ['name', 'version', 'extensions'], 'properties': {"
    "  'name': {'type': 'string'}, 'version': {'type': 'string'},"
    "  'extensions': {'type': 'array', 'items': {'type': 'string'}}}},"
    "'KServeLive': {'type': 'object', 'required': ['live'], 'properties': {'live': {'type': 'boolean'}}},"
    "'KServeReady': {'type': 'object', 'required': ['ready'], 'properties': {'ready': {'type': 'boolean'}}},"
    "'KServeModelReady': {'type': 'object', 'required': ['name', 'ready'], 'properties': {"
    "  'name': {'type': 'string'}, 'ready': {'type': 'boolean'}}},"
    "'KServeTensorMetadata': {'type': 'object', 'required': ['name', 'datatype', 'shape'], 'properties': {"
    "  'name': {'type': 'string'}, 'datatype': {'type': 'string'},"
    "  'shape': {'type': 'array', 'items': {'type': 'integer'}}}},"
    "'KServeModel': {'type': 'object', 'required': ['name', 'versions', 'platform', 'inputs', 'outputs'],"
    "  'properties': {'name': {'type': 'string'}, 'versions': {'type': 'array', 'items': {'type': 'string'}},"
    "  'platform': {'type': 'string'},"
    "  'inputs': {'type': 'array', 'items': {'$ref': '#/components/schemas/KServeTensorMetadata'}},"
    "  'outputs': {'type': 'array', 'items': {'$ref': '#/components/schemas/KServeTensorMetadata'}}}},"
    "'KServeTensor': {'type': 'object', 'required': ['name', 'datatype', 'shape', 'data'], 'properties': {"
    "  'name': {'type': 'string'}, 'datatype': {'type': 'string'},"
    "  'shape': {'type': 'array', 'items': {'type': 'integer'}}, 'data': {'type': 'array'}}},"
    "'KServeInferRequest': {'type': 'object', 'required': ['inputs'], 'properties': {"
    "  'id': {'type': 'string'},"
    "  'inputs': {'type': 'array', 'minItems': 1, 'maxItems': 1,"
    "    'items': {'$ref': '#/components/schemas/KServeTensor'}, 'description': 'one BYTES input of N texts'},"
    "  'outputs': {'type': 'array', 'items': {'type': 'object', 'required': ['name'], 'properties': {"
    "    'name': {'type': 'string', 'enum': ['label', 'probabilities']}}}}}},"
    "'KServeInferResponse': {'type': 'object', 'required': ['model_name', 'model_version', 'outputs'],"
    "  'properties': {'model_name': {'type': 'string'}, 'model_version': {'type': 'string'},"
    "  'id': {'type': 'string'},"
    "  'outputs': {'type': 'array', 'items': {'$ref': '#/components/schemas/KServeTensor'}}}},"
    "'TrafficSplit': {'type': 'object', 'description': 'version: weight; the weights sum to 100',"
    "  'additionalProperties': {'type': 'integer', 'minimum': 0, 'maximum': 100}},"
    "'Traffic': {'type': 'object', 'required': ['model', 'traffic'], 'properties': {"
    "  'model': {'type': 'string'}, 'traffic': {'$ref': '#/components/schemas/TrafficSplit'}}},"
    "'VersionNumber': {'oneOf': [{'type': 'integer', 'minimum': 1}, {'type': 'string', 'pattern': '^[0-9]+$'}]},"
    "'AliasRequest': {'type': 'object', 'required': ['version'], 'properties': {"
    "  'version': {'$ref': '#/components/schemas/VersionNumber'}}},"
    "'Aliases': {'type': 'object', 'required': ['model', 'aliases'], 'properties': {"
    "  'model': {'type': 'string'}, 'aliases': {'type': 'object', 'additionalProperties': {'type': 'string'}}}},"
    "'ShadowRequest': {'type': 'object', 'description': '{} turns the shadow off', 'properties': {"
    "  'version': {'$ref': '#/components/schemas/VersionNumber'},"
    "  'percent': {'type': 'integer', 'minimum': 1, 'maximum': 100}}},"
    "'Shadow': {'type': 'object', 'required': ['model', 'shadow'], 'properties': {"
    "  'model': {'type': 'string'}, 'shadow': {'type': 'object', 'description': '{} when off', 'properties': {"
    "    'version': {'type': 'string'}, 'percent': {'type': 'integer'}}}}},"
    "'CascadeRequest': {'type': 'object', 'description': '{} turns the cascade off', 'properties': {"
    "  'first': {'$ref': '#/components/schemas/VersionNumber'},"
    "  'then': {'$ref': '#/components/schemas/VersionNumber'},"
    "  'threshold': {'type': 'number', 'exclusiveMinimum': 0, 'maximum': 1}}},"
    "'Cascade': {'type': 'object', 'required': ['model', 'cascade'], 'properties': {"
    "  'model': {'type': 'string'}, 'cascade': {'type': 'object', 'description': '{} when off', 'properties': {"
    "    'first': {'type': 'string'}, 'then': {'type': 'string'}, 'threshold': {'type': 'number'}}}}},"
    "'VersionAction': {'type': 'object', 'required': ['model', 'version', 'action'], 'properties': {"
    "  'model': {'type': 'string'}, 'version': {'type': 'string'},"
    "  'action': {'type': 'string', 'enum': ['load', 'unload']}}},"
    "'History': {'type': 'object', 'required': ['interval_ms', 'seconds', 't', 'series', 'dropped_series'],"
    "  'description': 'Samples of the console metrics (docs/console.md): t holds the sample times (ms since the "
    "epoch); each series has arrays aligned with t (null: no sample, or no observation): rate (counters, per "
    "second), value (gauges), or count, mean, p50, p90, p99 (histograms; labels null: over every series of "
    "the family)', 'properties': {"
    "  'interval_ms': {'type': 'integer'}, 'seconds': {'type': 'integer'},"
    "  't': {'type': 'array', 'items': {'type': 'integer'}},"
    "  'series': {'type': 'array', 'items': {'type': 'object', 'required': ['name', 'type', 'labels'],"
    "    'properties': {'name': {'type': 'string'}, 'type': {'type': 'string', 'enum': ['counter', 'gauge', "
    "'histogram']}, 'labels': {'type': ['object', 'null'], 'additionalProperties': {'type': 'string'}}},"
    "    'additionalProperties': {'type': 'array', 'items': {'type': ['number', 'null']}}}},"
    "  'dropped_series': {'type': 'integer'}}}"
    "}";

/* The path placeholders as parameters (routes.c has their rules). */
static const struct {
    const char *name, *description, *pattern;
} placeholders[] = {
    {"name", "a model name", NULL},
    {"version", "a version number", "^[1-9][0-9]{0,11}$"},
    {"ref", "a version number or an alias", NULL},
    {"id", "a batch job id", NULL},
    {"alias", "an alias name", NULL},
    {"file", "a file name", "^[A-Za-z0-9_-][A-Za-z0-9._-]*$"},
};

/* Query parameters a row's doc may name (http_route_doc.query: names
 * separated by spaces), each a row here: the first whose name is the same
 * and whose route is the row's pattern, or NULL for any route (a name means
 * different things on different routes: limit). Integers have a minimum,
 * a maximum (0: none) and a default; the others are strings. */
static const struct {
    const char *name, *route, *description;
    bool integer;
    json_int_t minimum, maximum, fallback;
} queries[] = {
    {"offset", NULL, "the index of the first result of the page", true, 0, 0, 0},
    {"limit", "/v1/batch/{id}/results", "results on the page", true, 1, HTTP_RESULTS_PAGE_MAX,
     HTTP_RESULTS_PAGE_DEFAULT},
    {"limit", "/v1/batch", "jobs on the page", true, 1, HTTP_JOBS_PAGE_MAX, HTTP_JOBS_PAGE_DEFAULT},
    {"after", NULL,
     "a job id (the last_id of the page before): the page starts with the job after it. Not one of your jobs "
     "(unknown, another key's, deleted by retention): 422",
     false, 0, 0, 0},
};

#define VERSION_HEADER_DOC                                                                     \
    "the version to answer with: a number (2) or an alias (production); a version in the path " \
    "wins. Unknown: 404 version_not_found; not a number or an alias name: 422"

static const struct {
    unsigned bit;
    const char *name; /* the operation's key in a path item */
} methods[] = {{HTTP_GET, "get"}, {HTTP_POST, "post"}, {HTTP_PUT, "put"}, {HTTP_DELETE, "delete"}};

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

static json_t *schema_ref(const char *name) {
    char ref[128];
    snprintf(ref, sizeof ref, "#/components/schemas/%s", name);
    return json_pack("{s:s}", "$ref", ref);
}

/* {"<media type>": {"schema": ...}, ...} for a list of schema names and
 * media types separated by ',' ("ChatCompletion,text/event-stream"). */
static json_t *content(const char *what) {
    json_t *c = json_object();
    while (*what) {
        char one[96];
        size_t n = strcspn(what, ",");
        snprintf(one, sizeof one, "%.*s", (int)n, what);
        if (!strchr(one, '/'))
            json_object_set_new(c, "application/json", json_pack("{s:o}", "schema", schema_ref(one)));
        else
            json_object_set_new(c, one, json_pack("{s:{s:s}}", "schema", "type",
                                                  strcmp(one, "application/json") ? "string" : "object"));
        what += n + (what[n] == ',');
    }
    return c;
}

/* One answer: its description (for an error: the codes with that status)
 * and body. */
static json_t *response(int status, const char *what) {
    if (status < 400 && !what) /* a redirect: no body, where to go in Location */
        return json_pack("{s:s, s:{s:{s:s, s:{s:s}}}}", "description", reason(status), "headers", "Location",
                         "description", "where to go", "schema", "type", "string");
    char desc[512];
    snprintf(desc, sizeof desc, "%s%s", reason(status), what ? "" : "; the error codes with this status");
    if (!what) {
        size_t n = strlen(desc);
        const char *sep = ": ";
#define HTTP_ERROR_CODE(name, st, type, code)                                    \
        if (st == status && n < sizeof desc) {                                   \
            n += (size_t)snprintf(desc + n, sizeof desc - n, "%s%s", sep, code); \
            sep = ", ";                                                          \
        }
        HTTP_ERROR_MAP(HTTP_ERROR_CODE)
#undef HTTP_ERROR_CODE
    }
    return json_pack("{s:s, s:o}", "description", desc, "content", content(what ? what : "Error"));
}

/* Adds "<status>[=<schema>]" answers from text to responses. */
static void add_responses(json_t *responses, const char *text) {
    while (*text) {
        char tok[96];
        size_t n = strcspn(text, " ");
        snprintf(tok, sizeof tok, "%.*s", (int)n, text);
        char *eq = strchr(tok, '=');
        if (eq)
            *eq++ = '\0';
        json_object_set_new(responses, tok, response(atoi(tok), eq));
        text += n + (text[n] == ' ');
    }
}

static json_t *parameters(const http_route *r) {
    const char *pattern = r->pattern;
    json_t *list = json_array();
    for (const char *p = strchr(pattern, '{'); p; p = strchr(p + 1, '{')) {
        size_t n = strcspn(p + 1, "}");
        for (size_t i = 0; i < sizeof placeholders / sizeof placeholders[0]; i++) {
            if (strlen(placeholders[i].name) != n || strncmp(placeholders[i].name, p + 1, n) != 0)
                continue;
            json_t *schema = json_pack("{s:s}", "type", "string");
            if (placeholders[i].pattern)
                json_object_set_new(schema, "pattern", json_string(placeholders[i].pattern));
            json_array_append_new(list, json_pack("{s:s, s:s, s:b, s:s, s:o}", "name", placeholders[i].name, "in",
                                                  "path", "required", 1, "description",
                                                  placeholders[i].description, "schema", schema));
        }
    }
    for (const char *q = r->doc.query; q && *q;) {
        size_t n = strcspn(q, " ");
        for (size_t i = 0; i < sizeof queries / sizeof queries[0]; i++) {
            if (strlen(queries[i].name) != n || strncmp(queries[i].name, q, n) != 0 ||
                (queries[i].route && strcmp(queries[i].route, r->pattern) != 0))
                continue;
            json_t *schema = queries[i].integer ? json_pack("{s:s, s:I, s:I}", "type", "integer", "minimum",
                                                            queries[i].minimum, "default", queries[i].fallback)
                                                : json_pack("{s:s}", "type", "string");
            if (queries[i].maximum)
                json_object_set_new(schema, "maximum", json_integer(queries[i].maximum));
            json_array_append_new(list, json_pack("{s:s, s:s, s:b, s:s, s:o}", "name", queries[i].name, "in",
                                                  "query", "required", 0, "description", queries[i].description,
                                                  "schema", schema));
            break;
        }
        q += n + (q[n] == ' ');
    }
    if (r->infer)
        json_array_append_new(list, json_pack("{s:s, s:s, s:b, s:s, s:{s:s}}", "name", "X-Model-Version", "in",
                                              "header", "required", 0, "description", VERSION_HEADER_DOC,
                                              "schema", "type", "string"));
    return list;
}

/* "post_v1_models_name_predict" */
static json_t *operation_id(const char *method, const char *pattern) {
    char id[256];
    size_t k = (size_t)snprintf(id, sizeof id, "%s", method);
    for (const char *p = pattern; *p && k + 1 < sizeof id; p++) {
        if (isalnum((unsigned char)*p))
            id[k++] = *p;
        else if (id[k - 1] != '_')
            id[k++] = '_';
    }
    while (id[k - 1] == '_')
        k--;
    id[k] = '\0';
    return json_string(id);
}

static json_t *operation(const http_route *r, const char *method) {
    json_t *responses = json_object();
    add_responses(responses, r->doc.responses);
    json_t *op = json_pack("{s:s, s:o, s:o}", "summary", r->doc.summary, "operationId",
                           operation_id(method, r->pattern), "responses", responses);
    json_t *params = parameters(r);
    if (json_array_size(params))
        json_object_set_new(op, "parameters", params);
    else
        json_decref(params);
    if (r->infer) { /* the success says which version answered */
        json_t *ok = json_object_get(responses, "200");
        json_object_set_new(ok, "headers", json_pack("{s:{s:s, s:{s:s}}}", "X-Model-Version", "description",
                                                     "the version that answered", "schema", "type", "string"));
    }
    if (r->doc.request) {
        json_object_set_new(op, "requestBody", json_pack("{s:b, s:o}", "required", 1, "content",
                                                         content(r->doc.request)));
        add_responses(responses, "400 413");
    }
    if (r->scope == HTTP_SCOPE_OPEN) {
        json_object_set_new(op, "security", json_array());
    } else {
        /* OpenAPI 3.1: roles in a non-OAuth requirement; ours are scopes. */
        json_t *roles = r->scope == GUARD_SCOPE_ANY ? json_array() : json_pack("[s]", guard_scope_name(r->scope));
        json_object_set_new(op, "security", json_pack("[{s:O}, {s:O}]", "ApiKey", roles, "Bearer", roles));
        json_decref(roles);
        add_responses(responses, "401 403");
    }
    return op;
}

static const char info_description[] =
    "aiserve: text classification, embeddings, batch jobs, the KServe v2 protocol and an LLM gateway. "
    "Once API keys are configured, every operation with a security requirement needs a key with the "
    "scope it names (any valid key where it names none), sent as X-API-Key or Authorization: Bearer. "
    "A path that takes other methods answers 405 with Allow; HEAD is answered wherever GET is. "
    "Errors have one shape (Error). docs/http.md has the details.";

static json_t *document(const char *version) {
    json_error_t err;
    char *text = strdup(schemas_text);
    if (!text)
        return NULL;
    for (char *p = text; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_t *schemas = json_loads(text, 0, &err);
    free(text);
    if (!schemas)
        return NULL;
    json_t *paths = json_object();
    for (size_t i = 0; i < http_n_routes; i++) {
        const http_route *r = &http_routes[i];
        json_t *item = json_object_get(paths, r->pattern);
        if (!item) {
            item = json_object();
            json_object_set_new(paths, r->pattern, item);
        }
        for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++)
            if (r->methods & methods[m].bit)
                json_object_set_new(item, methods[m].name, operation(r, methods[m].name));
    }
    return json_pack("{s:s, s:{s:s, s:s, s:s}, s:[{s:s}], s:o, s:{s:o, s:{s:{s:s, s:s, s:s}, s:{s:s, s:s}}}}",
                     "openapi", "3.1.0", "info", "title", "aiserve", "version", version, "description",
                     info_description, "servers", "url", "/", "paths", paths, "components", "schemas", schemas,
                     "securitySchemes", "ApiKey", "type", "apiKey", "in", "header", "name", "X-API-Key", "Bearer",
                     "type", "http", "scheme", "bearer");
}

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static char *cached_json; /* set once, never changed */

void http_openapi(http_call *call) {
    pthread_mutex_lock(&cache_lock);
    if (!cached_json) {
        json_t *doc = document(call->loop->server->version);
        if (doc)
            cached_json = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(doc);
    }
    const char *text = cached_json;
    pthread_mutex_unlock(&cache_lock);
    if (!text) { /* out of memory: tried again on the next request */
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
        return;
    }
    http_reply_text(call, 200, "application/json", text, strlen(text));
}
