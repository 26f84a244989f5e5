/* docs.js - starts Swagger UI on /docs over the server's own /openapi.json,
 * as FastAPI's /docs does: "Try it out" sends real requests to this server,
 * and "Authorize" takes an API key (X-API-Key or Bearer) for them. */
'use strict';
window.ui = SwaggerUIBundle({
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: 'BaseLayout',
  tryItOutEnabled: false,
  persistAuthorization: false,
  validatorUrl: null
});
