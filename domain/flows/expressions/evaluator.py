"""Expressions (CONDITION nodes) evaluated with simpleeval, never ``eval``.

Only a whitelist of syntax, functions and per-type attributes is allowed, and every step is
bounded by `limits`. Attribute access on mappings reads keys first, as in templates.
"""

from __future__ import annotations

import ast
import functools
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import simpleeval  # type: ignore[import-untyped]

from domain.flows.expressions.limits import (
    EVALUATE_TIMEOUT_SECONDS,
    MAX_EXPRESSION_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_VALUE_LENGTH,
    Budget,
    ExpressionError,
    OverLimit,
    check_format_spec,
    check_size,
    checked_str_method,
    is_number,
    safe_add,
    safe_lshift,
    safe_mod,
    safe_mult,
    safe_pow,
    safe_str,
    text_size,
)


def _safe_sum(values: Iterable[Any], start: Any = 0) -> Any:
    if not is_number(start):
        raise OverLimit("sum() only adds numbers")
    total = start
    for value in values:
        if not is_number(value):
            raise OverLimit("sum() only adds numbers")
        total += value
    return total


def _str_function(value: Any = "") -> str:
    return safe_str(value)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "all": all,
    "any": any,
    "bool": bool,
    "float": float,
    "int": int,
    "len": len,
    "max": max,
    "min": min,
    "round": round,
    "sorted": sorted,
    "str": _str_function,
    "sum": _safe_sum,
}
# EvalWithCompoundTypes adds list / tuple / dict / set itself.
EXPRESSION_FUNCTIONS = frozenset({*_FUNCTIONS, "list", "tuple", "dict", "set"})

_OPERATORS: dict[type, Callable[..., Any]] = {
    **simpleeval.DEFAULT_OPERATORS,
    ast.Add: safe_add,
    ast.Mult: safe_mult,
    ast.Pow: safe_pow,
    ast.Mod: safe_mod,
    ast.LShift: safe_lshift,
}

_MAPPING_METHODS = frozenset({"get", "keys", "values", "items"})
_ALLOWED_ATTRS: dict[type | None, frozenset[str]] = {
    str: frozenset(
        {
            "capitalize",
            "casefold",
            "center",
            "count",
            "endswith",
            "find",
            "index",
            "isalnum",
            "isalpha",
            "isascii",
            "isdecimal",
            "isdigit",
            "islower",
            "isnumeric",
            "isspace",
            "istitle",
            "isupper",
            "join",
            "ljust",
            "lower",
            "lstrip",
            "partition",
            "removeprefix",
            "removesuffix",
            "replace",
            "rfind",
            "rindex",
            "rjust",
            "rpartition",
            "rsplit",
            "rstrip",
            "split",
            "splitlines",
            "startswith",
            "strip",
            "swapcase",
            "title",
            "upper",
            "zfill",
        }
    ),
    int: frozenset({"bit_length", "real", "imag", "numerator", "denominator"}),
    float: frozenset({"is_integer", "real", "imag"}),
    bool: frozenset(),
    type(None): frozenset(),
    dict: _MAPPING_METHODS,
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
    set: frozenset({"difference", "intersection", "isdisjoint", "issubset", "issuperset", "union"}),
}

_EXPRESSION_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.IfExp,
    ast.Compare,
    ast.Call,
    ast.keyword,
    ast.Constant,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.Name,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.Set,
    ast.ListComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.comprehension,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.expr_context,
    ast.boolop,
    ast.unaryop,
    ast.cmpop,
)


def _expression_error(what: str, source: str) -> ExpressionError:
    return ExpressionError(f"{what} in expression {source[:200]!r}")


@functools.lru_cache(maxsize=4096)
def parse_expression(source: str) -> ast.expr:
    """Parse (never evaluate) ``source``; rejects syntax the evaluator will not run."""
    if not isinstance(source, str):
        raise ExpressionError("an expression must be a string")
    if not source.strip():
        raise ExpressionError("expression is empty")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ExpressionError(f"expression syntax error{where}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError("expression is nested too deeply or invalid") from None
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise _expression_error("nesting is too deep", source)
        if isinstance(node, ast.BinOp) and type(node.op) not in _OPERATORS:
            raise _expression_error(f"operator {type(node.op).__name__} is not allowed", source)
        if not isinstance(node, _EXPRESSION_NODES) and not isinstance(node, ast.operator):
            raise _expression_error(f"{type(node).__name__} is not allowed", source)
        if isinstance(node, ast.Attribute) and (
            node.attr.startswith(tuple(simpleeval.DISALLOW_PREFIXES))
            or node.attr in simpleeval.DISALLOW_METHODS
        ):
            raise _expression_error(f"attribute {node.attr!r} is not allowed", source)
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise _expression_error(f"name {node.id!r} is not allowed", source)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree.body


class _Evaluator(simpleeval.EvalWithCompoundTypes):  # type: ignore[misc]
    def __init__(self, names: dict[str, Any], budget: Budget) -> None:
        super().__init__(
            operators=_OPERATORS,
            functions=dict(_FUNCTIONS),
            names=names,
            allowed_attrs=_ALLOWED_ATTRS,
        )
        self._budget = budget

    def _eval(self, node: ast.AST) -> Any:
        self._budget.tick()
        return check_size(super()._eval(node))

    def _check_disallowed_items(self, item: Any) -> None:
        # Names are plain data and attributes are whitelisted per type, so a shallow check is
        # enough (simpleeval's default walks every container on every node).
        if isinstance(item, types.ModuleType):
            raise simpleeval.FeatureNotAvailable("modules are not allowed")
        if callable(item) and item in simpleeval.DISALLOW_FUNCTIONS:
            raise simpleeval.FeatureNotAvailable("this function is not allowed")

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        attr = node.attr
        if attr.startswith(tuple(simpleeval.DISALLOW_PREFIXES)) or attr in (
            simpleeval.DISALLOW_METHODS
        ):
            raise simpleeval.FeatureNotAvailable(f"access to '.{attr}' is not allowed")
        obj = self._eval(node.value)
        if isinstance(obj, Mapping):
            try:
                return obj[attr]
            except KeyError:
                pass
            if attr in _MAPPING_METHODS:
                return getattr(obj, attr)
            raise simpleeval.AttributeDoesNotExist(attr, self.expr)
        allowed = _ALLOWED_ATTRS.get(type(obj))
        if allowed is None or attr not in allowed:
            raise simpleeval.FeatureNotAvailable(
                f"'.{attr}' is not available on {type(obj).__name__} values"
            )
        if isinstance(obj, str):
            checked = checked_str_method(obj, attr)
            if checked is not None:
                return checked
        return getattr(obj, attr)

    def _eval_formattedvalue(self, node: ast.FormattedValue) -> Any:
        value = self._eval(node.value)
        if node.format_spec is not None:
            spec = str(self._eval(node.format_spec))
            check_format_spec(spec)
            return format(value, spec)  # never str.format: no field lookups
        return safe_str(value)


def evaluate(
    expression: str, scope: Mapping[str, Any], *, timeout: float = EVALUATE_TIMEOUT_SECONDS
) -> Any:
    """Evaluate ``expression`` against ``scope`` safely; raises :class:`ExpressionError`."""
    if not isinstance(expression, str):
        raise ExpressionError("an expression must be a string")
    tree = parse_expression(expression)
    budget = Budget.start(timeout)
    evaluator = _Evaluator(dict(scope), budget)
    try:
        result = evaluator.eval(expression, previously_parsed=tree)
        if text_size(result, MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
            raise OverLimit(f"the result would exceed {MAX_VALUE_LENGTH} characters")
        return result
    except simpleeval.NameNotDefined as exc:
        raise _expression_error(f"unknown name {exc.name!r}", expression) from None
    except simpleeval.AttributeDoesNotExist as exc:
        raise _expression_error(f"no attribute or key {exc.attr!r}", expression) from None
    except simpleeval.FunctionNotDefined as exc:
        raise _expression_error(f"unknown function {exc.func_name!r}", expression) from None
    except (simpleeval.NumberTooHigh, simpleeval.IterableTooLong, OverLimit) as exc:
        raise _expression_error(f"limit exceeded ({exc})", expression) from None
    except simpleeval.InvalidExpression as exc:
        raise _expression_error(f"not allowed ({exc})", expression) from None
    except RecursionError:
        raise _expression_error("nesting is too deep", expression) from None
    except Exception as exc:  # user expressions failing on user data are user errors
        raise _expression_error(f"{type(exc).__name__}: {exc}", expression) from None
