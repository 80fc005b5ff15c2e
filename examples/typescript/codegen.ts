// Types for the example's operations, generated from the server's exported schema
// (`make schema` writes ../../graphql/schema.graphql). The output is not checked in:
// `npm run build` (and the tests) regenerate it, so a schema change that breaks an
// operation below fails the type check instead of drifting silently.
import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  schema: "../../graphql/schema.graphql",
  documents: ["src/operations/*.graphql"],
  generates: {
    "src/generated/graphql.ts": {
      plugins: ["typescript", "typescript-operations", "typed-document-node"],
      config: {
        // JSON is any JSON value; DateTime and Date travel as ISO-8601 strings.
        scalars: { DateTime: "string", Date: "string", JSON: "unknown" },
        enumsAsTypes: true,
        useTypeImports: true,
        avoidOptionals: { field: true, inputValue: false, object: false },
      },
    },
  },
  silent: true,
  errorsOnly: true,
};

export default config;
