"""Strawberry types, inputs and enums per resource, permissions, error codes, extensions,
the request context the types rely on, and their DataLoaders. The root types and the
Schema are assembled in server/graphql_schema.py (this package never imports resolvers)."""
