"""Shipped flow templates: flow documents (see domain.flow_documents), one per file."""
