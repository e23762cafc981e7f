/**
 * The JSON Schema subset the MCP tool inputs use, and a checker for it. Tool arguments come
 * from a model, so they are checked against the very schemas the client was shown before any
 * request is made; the server checks again (its own schemas) on every HTTP route.
 */
export interface JsonSchema {
  type: 'object' | 'string' | 'integer' | 'number' | 'boolean' | 'array';
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  /** false, or the schema of every value (maps such as labels and env). */
  additionalProperties?: false | JsonSchema;
  items?: JsonSchema;
  enum?: readonly string[];
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
  maxProperties?: number;
}

/** Returns a message for the first problem found, or undefined when `value` matches. */
export function checkValue(
  schema: JsonSchema,
  value: unknown,
  at = 'arguments',
): string | undefined {
  switch (schema.type) {
    case 'string': {
      if (typeof value !== 'string') return `${at} must be a string.`;
      if (schema.minLength !== undefined && value.length < schema.minLength)
        return `${at} must have at least ${schema.minLength} character(s).`;
      if (schema.maxLength !== undefined && value.length > schema.maxLength)
        return `${at} is too long (at most ${schema.maxLength} characters).`;
      if (schema.enum && !schema.enum.includes(value))
        return `${at} must be one of ${schema.enum.join(', ')}.`;
      if (schema.pattern !== undefined && !new RegExp(schema.pattern).test(value))
        return `${at} has the wrong format (expected ${schema.pattern}).`;
      return undefined;
    }
    case 'integer':
    case 'number': {
      if (typeof value !== 'number' || !Number.isFinite(value)) return `${at} must be a number.`;
      if (schema.type === 'integer' && !Number.isInteger(value))
        return `${at} must be a whole number.`;
      if (schema.minimum !== undefined && value < schema.minimum)
        return `${at} must be at least ${schema.minimum}.`;
      if (schema.maximum !== undefined && value > schema.maximum)
        return `${at} must be at most ${schema.maximum}.`;
      return undefined;
    }
    case 'boolean':
      return typeof value === 'boolean' ? undefined : `${at} must be true or false.`;
    case 'array': {
      if (!Array.isArray(value)) return `${at} must be an array.`;
      if (schema.minItems !== undefined && value.length < schema.minItems)
        return `${at} must have at least ${schema.minItems} item(s).`;
      if (schema.maxItems !== undefined && value.length > schema.maxItems)
        return `${at} has too many items (at most ${schema.maxItems}).`;
      if (schema.items) {
        for (let i = 0; i < value.length; i++) {
          const problem = checkValue(schema.items, value[i], `${at}[${i}]`);
          if (problem) return problem;
        }
      }
      return undefined;
    }
    case 'object': {
      if (typeof value !== 'object' || value === null || Array.isArray(value))
        return `${at} must be an object.`;
      const record = value as Record<string, unknown>;
      const keys = Object.keys(record);
      if (schema.maxProperties !== undefined && keys.length > schema.maxProperties)
        return `${at} has too many entries (at most ${schema.maxProperties}).`;
      for (const name of schema.required ?? [])
        if (!Object.hasOwn(record, name)) return `${at}.${name} is required.`;
      for (const name of keys) {
        const sub =
          schema.properties && Object.hasOwn(schema.properties, name)
            ? schema.properties[name]
            : schema.additionalProperties;
        if (sub === undefined || sub === false)
          return `${at}.${name.slice(0, 64)} is not a known argument.`;
        const problem = checkValue(sub, record[name], `${at}.${name.slice(0, 64)}`);
        if (problem) return problem;
      }
      return undefined;
    }
  }
}
