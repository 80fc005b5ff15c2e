"""The names a template or expression reads, found by parsing (never evaluating) it.

Flow validation uses them to allow only ``inputs`` and ``nodes.<upstream node id>.output``.
"""

from __future__ import annotations

import ast
import functools
import re
from typing import Literal

from jinja2 import meta
from jinja2 import nodes as jnodes
from jinja2.exceptions import TemplateSyntaxError

from domain.flows.expressions.evaluator import EXPRESSION_FUNCTIONS, parse_expression
from domain.flows.expressions.limits import MAX_TEMPLATE_LENGTH, ExpressionError, TemplateError
from domain.flows.expressions.templates import TEMPLATE_GLOBALS, parse_template, syntax_message

ALLOWED_ROOTS = frozenset({"inputs", "nodes"})

RefPath = tuple[str, ...]
"""A name read by a template/expression: ``("inputs", "score")``, ``("nodes", "a", "output")``.

Paths hold the root name followed by at most two constant attribute/key segments. A bare
``("nodes",)`` means ``nodes`` is used without a constant node id after it.
"""

SourceKind = Literal["template", "expression"]


def _jinja_chain(node: jnodes.Node) -> tuple[jnodes.Node, list[str | None], list[jnodes.Node]]:
    """Unwind ``a.b['c'][x]`` into (base, keys inner→outer with None for dynamic, dynamic parts)."""
    keys: list[str | None] = []
    dynamic: list[jnodes.Node] = []
    while True:
        if isinstance(node, jnodes.Getattr):
            keys.append(node.attr)
            node = node.node
        elif isinstance(node, jnodes.Getitem):
            arg = node.arg
            if isinstance(arg, jnodes.Const) and isinstance(arg.value, str):
                keys.append(arg.value)
            else:
                keys.append(None)
                dynamic.append(arg)
            node = node.node
        else:
            keys.reverse()
            return node, keys, dynamic


def _constant_prefix(root: str, keys: list[str | None]) -> RefPath:
    path: list[str] = [root]
    for key in keys[:2]:
        if key is None:
            break
        path.append(key)
    return tuple(path)


def _walk_template(node: jnodes.Node, roots: frozenset[str], refs: set[RefPath]) -> None:
    stack: list[jnodes.Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, (jnodes.Getattr, jnodes.Getitem)):
            base, keys, dynamic = _jinja_chain(current)
            if isinstance(base, jnodes.Name) and base.ctx == "load" and base.name in roots:
                refs.add(_constant_prefix(base.name, keys))
            else:
                stack.append(base)
            stack.extend(dynamic)
        elif isinstance(current, jnodes.Name):
            if current.ctx == "load" and current.name in roots:
                refs.add((current.name,))
        else:
            stack.extend(current.iter_child_nodes())


# Fast path for the common template shape: text plus ``{{ inputs.x }}`` / ``{{ nodes['id'].output }}``
# placeholders. Anything else (filters, tags, comments, other names, odd spacing) takes the full
# Jinja parse; both give the same answer for templates this recognises.
_SIMPLE_PLACEHOLDER = re.compile(
    r"\{\{-?[ \t]*(inputs|nodes)((?:\.[A-Za-z_][A-Za-z0-9_]*|\['[^'\\{}\n]*'\]|\[\"[^\"\\{}\n]*\"\])*)[ \t]*-?\}\}"
)
_SIMPLE_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\['([^']*)'\]|\[\"([^\"]*)\"\]")
_JINJA_OPENERS = ("{{", "{%", "{#")


def simple_template_refs(source: str) -> frozenset[RefPath] | None:
    refs: set[RefPath] = set()
    position = 0
    for match in _SIMPLE_PLACEHOLDER.finditer(source):
        text = source[position : match.start()]
        if text.endswith("{") or any(opener in text for opener in _JINJA_OPENERS):
            return None
        keys: list[str | None] = [
            next(group for group in segment.groups() if group is not None)
            for segment in _SIMPLE_SEGMENT.finditer(match.group(2))
        ]
        refs.add(_constant_prefix(match.group(1), keys))
        position = match.end()
    tail = source[position:]
    if any(opener in tail for opener in _JINJA_OPENERS):
        return None
    return frozenset(refs)


@functools.lru_cache(maxsize=4096)
def template_refs(source: str) -> frozenset[RefPath]:
    if len(source) <= MAX_TEMPLATE_LENGTH:
        simple = simple_template_refs(source)
        if simple is not None:
            return simple
    return parsed_template_refs(source)


def parsed_template_refs(source: str) -> frozenset[RefPath]:
    tree = parse_template(source)
    try:
        undeclared = meta.find_undeclared_variables(tree)
    except TemplateSyntaxError as exc:  # e.g. an unknown filter or test
        raise TemplateError(syntax_message(exc)) from None
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None
    refs: set[RefPath] = {(name,) for name in undeclared - ALLOWED_ROOTS - TEMPLATE_GLOBALS}
    roots = frozenset(undeclared & ALLOWED_ROOTS)
    if roots:
        _walk_template(tree, roots, refs)
    return frozenset(refs)


def _target_names(target: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(target) if isinstance(node, ast.Name)}


def _python_chain(node: ast.expr) -> tuple[ast.expr, list[str | None], list[ast.expr]]:
    keys: list[str | None] = []
    dynamic: list[ast.expr] = []
    while True:
        if isinstance(node, ast.Attribute):
            keys.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            index = node.slice
            if isinstance(index, ast.Constant) and isinstance(index.value, str):
                keys.append(index.value)
            else:
                keys.append(None)
                dynamic.append(index)
            node = node.value
        else:
            keys.reverse()
            return node, keys, dynamic


def _expression_refs(node: ast.expr, local: frozenset[str], refs: set[RefPath]) -> None:
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        base, keys, dynamic = _python_chain(node)
        if isinstance(base, ast.Name) and base.id not in local:
            refs.add(_constant_prefix(base.id, keys))
        else:
            _expression_refs(base, local, refs)
        for part in dynamic:
            _expression_refs(part, local, refs)
    elif isinstance(node, ast.Name):
        if node.id not in local and node.id not in EXPRESSION_FUNCTIONS:
            refs.add((node.id,))
    elif isinstance(node, ast.Call):
        func = node.func
        if not (
            isinstance(func, ast.Name) and func.id in EXPRESSION_FUNCTIONS and func.id not in local
        ):
            _expression_refs(func, local, refs)
        for arg in node.args:
            _expression_refs(arg, local, refs)
        for keyword in node.keywords:
            _expression_refs(keyword.value, local, refs)
    elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        inner = set(local)
        for generator in node.generators:
            _expression_refs(generator.iter, frozenset(inner), refs)
            inner |= _target_names(generator.target)
            for condition in generator.ifs:
                _expression_refs(condition, frozenset(inner), refs)
        scope = frozenset(inner)
        if isinstance(node, ast.DictComp):
            _expression_refs(node.key, scope, refs)
            _expression_refs(node.value, scope, refs)
        else:
            _expression_refs(node.elt, scope, refs)
    else:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                _expression_refs(child, local, refs)


def referenced_names(source: str, kind: SourceKind = "template") -> frozenset[RefPath]:
    """The names a template or expression reads, found by parsing only.

    Each path starts with a top-level name: ``("inputs", "score")``, ``("nodes", "a",
    "output")``, ``("nodes",)`` (nodes used without a constant id) or ``("foo",)`` for any
    other name. Template globals (``range``, ``dict``, ...) and expression functions (``len``,
    ...) are not reported. Raises :class:`TemplateError` / :class:`ExpressionError` when the
    source does not parse or uses constructs that are never allowed.
    """
    if kind == "template":
        if not isinstance(source, str):
            raise TemplateError("a template must be a string")
        return template_refs(source)
    if not isinstance(source, str):
        raise ExpressionError("an expression must be a string")
    refs: set[RefPath] = set()
    try:
        _expression_refs(parse_expression(source), frozenset(), refs)
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    return frozenset(refs)
