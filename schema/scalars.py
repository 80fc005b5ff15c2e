"""Scalars of the contract: DateTime (ISO 8601) and JSON."""

from strawberry.scalars import JSON

__all__ = ["JSON"]
