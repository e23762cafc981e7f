export interface RouteDoc {
  method: string;
  url: string;
  summary: string;
  scope: string;
  schema: Record<string, unknown>;
}

const ERROR_SCHEMA = {
  type: 'object',
  required: ['code', 'message', 'requestId'],
  properties: {
    code: { type: 'string' },
    message: { type: 'string' },
    requestId: { type: 'string' },
    details: { type: 'object' },
  },
};

/** Builds the OpenAPI 3.1 document from the very schemas Fastify validates with. */
export function buildOpenApi(
  routes: readonly RouteDoc[],
  version: string,
): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const path = route.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const parameters: unknown[] = [];
    for (const where of ['params', 'querystring'] as const) {
      const s = route.schema[where] as
        { properties?: Record<string, unknown>; required?: string[] } | undefined;
      for (const [name, schema] of Object.entries(s?.properties ?? {})) {
        parameters.push({
          name,
          in: where === 'params' ? 'path' : 'query',
          required: where === 'params' || (s?.required ?? []).includes(name),
          schema,
        });
      }
    }
    const op: Record<string, unknown> = {
      summary: route.summary,
      ...(route.scope === 'public' ? { security: [] } : { 'x-palisade-scope': route.scope }),
      parameters,
      responses: {
        '2XX': {
          description: 'Success',
          content: { 'application/json': { schema: { type: 'object' } } },
        },
        default: {
          description: 'Error',
          content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
        },
      },
    };
    if (route.schema.body) {
      op.requestBody = {
        required: true,
        content: { 'application/json': { schema: route.schema.body } },
      };
    }
    // Raw-bytes routes (the files API) declare their media types instead of a JSON schema.
    const binary = { type: 'string', format: 'binary' };
    const consumes = route.schema.consumes as string[] | undefined;
    if (!route.schema.body && consumes) {
      op.requestBody = {
        required: true,
        content: Object.fromEntries(consumes.map((type) => [type, { schema: binary }])),
      };
    }
    const produces = route.schema.produces as string[] | undefined;
    if (produces) {
      (op.responses as Record<string, unknown>)['2XX'] = {
        description: 'Success',
        content: Object.fromEntries(produces.map((type) => [type, { schema: binary }])),
      };
    }
    (paths[path] ??= {})[route.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Palisade control plane',
      version,
      description:
        'Authenticated API for sandboxes and exec. Send Authorization: Bearer <key>. Errors are {code, message, requestId}.',
    },
    security: [{ bearer: [] }],
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: { Error: ERROR_SCHEMA },
    },
    paths,
  };
}
