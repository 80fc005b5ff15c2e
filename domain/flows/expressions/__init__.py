"""Safe templates and expressions for flow node configs.

Templates (prompts, tasks, tool/crew inputs, OUTPUT values) are Jinja2 templates rendered in
an immutable sandbox; expressions (CONDITION nodes) are evaluated with simpleeval. Neither ever
reaches ``eval``. Both see the same scope (see :func:`build_scope`)::

    {"inputs": {...execution inputs...}, "nodes": {"<node id>": {"output": ...}}}

and attribute access on mappings reads keys first, so ``inputs.items`` is the input called
``items`` rather than ``dict.items``.

Besides the sandbox's own protection against escapes (no ``__dunder__`` access, no mutation of
the scope, no ``str.format``), rendering and evaluation are bounded: source length, size of
every intermediate string/collection, integer size, padding widths, total loop iterations,
rendered output size and wall-clock time. Exceeding a bound is a :class:`TemplateError` /
:class:`ExpressionError` like any other user mistake.

:func:`referenced_names` parses (never evaluates) a template or expression and returns the
top-level names it reads, used by flow validation to allow only ``inputs`` and
``nodes.<upstream node id>.output``.

Modules: ``limits`` (the bounds, the checks both engines share, the errors), ``templates``
(:func:`render`), ``evaluator`` (:func:`evaluate`), ``references`` (:func:`referenced_names`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.flows.expressions import evaluator, references, templates
from domain.flows.expressions.evaluator import evaluate
from domain.flows.expressions.limits import (
    EVALUATE_TIMEOUT_SECONDS,
    MAX_EXPRESSION_LENGTH,
    MAX_INT_BITS,
    MAX_LOOP_ITERATIONS,
    MAX_OUTPUT_LENGTH,
    MAX_TEMPLATE_LENGTH,
    MAX_VALUE_LENGTH,
    MAX_WIDTH,
    RENDER_TIMEOUT_SECONDS,
    ExpressionError,
    TemplateError,
)
from domain.flows.expressions.references import (
    ALLOWED_ROOTS,
    RefPath,
    SourceKind,
    referenced_names,
)
from domain.flows.expressions.templates import render

__all__ = [
    "ALLOWED_ROOTS",
    "EVALUATE_TIMEOUT_SECONDS",
    "MAX_EXPRESSION_LENGTH",
    "MAX_INT_BITS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT_LENGTH",
    "MAX_TEMPLATE_LENGTH",
    "MAX_VALUE_LENGTH",
    "MAX_WIDTH",
    "RENDER_TIMEOUT_SECONDS",
    "ExpressionError",
    "RefPath",
    "SourceKind",
    "TemplateError",
    "build_scope",
    "clear_caches",
    "evaluate",
    "referenced_names",
    "render",
]


def build_scope(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The scope templates and expressions see: ``outputs`` maps finished node ids to outputs."""
    return {
        "inputs": dict(inputs),
        "nodes": {node_id: {"output": output} for node_id, output in outputs.items()},
    }


def clear_caches() -> None:
    """Drop compiled templates and parsed sources (tests and benchmarks)."""
    templates.compile_template.cache_clear()
    references.template_refs.cache_clear()
    evaluator.parse_expression.cache_clear()
