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
"""

from __future__ import annotations

import ast
import functools
import math
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import simpleeval  # type: ignore[import-untyped]
from jinja2 import StrictUndefined, meta
from jinja2 import nodes as jnodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from domain.errors import BadUserInput

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

# --------------------------------------------------------------------------------------------
# Limits

ALLOWED_ROOTS = frozenset({"inputs", "nodes"})
MAX_TEMPLATE_LENGTH = 100_000  # characters of template source
MAX_EXPRESSION_LENGTH = 4_000  # characters of expression source
MAX_EXPRESSION_DEPTH = 64  # nesting depth of an expression's syntax tree
MAX_VALUE_LENGTH = 10_000_000  # characters / items of any value produced while rendering
MAX_OUTPUT_LENGTH = 10_000_000  # characters of a rendered template
MAX_INT_BITS = 10_000  # ~3000 decimal digits, below Python's int->str conversion limit
MAX_WIDTH = 10_000  # padding / width / precision arguments
MAX_LOOP_ITERATIONS = 1_000_000  # total template loop iterations per render
RENDER_TIMEOUT_SECONDS = 5.0
EVALUATE_TIMEOUT_SECONDS = 1.0

RefPath = tuple[str, ...]
"""A name read by a template/expression: ``("inputs", "score")``, ``("nodes", "a", "output")``.

Paths hold the root name followed by at most two constant attribute/key segments. A bare
``("nodes",)`` means ``nodes`` is used without a constant node id after it.
"""

SourceKind = Literal["template", "expression"]


class TemplateError(BadUserInput):
    """A template does not parse, reads something undefined or unsafe, or exceeds a limit."""


class ExpressionError(BadUserInput):
    """An expression does not parse, uses something not allowed, fails, or exceeds a limit."""


class _LimitExceeded(Exception):
    """Internal: a resource bound was hit. Converted to TemplateError / ExpressionError."""


def build_scope(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The scope templates and expressions see: ``outputs`` maps finished node ids to outputs."""
    return {
        "inputs": dict(inputs),
        "nodes": {node_id: {"output": output} for node_id, output in outputs.items()},
    }


def clear_caches() -> None:
    """Drop compiled templates and parsed sources (tests and benchmarks)."""
    _compile_template.cache_clear()
    _template_refs.cache_clear()
    _parse_expression.cache_clear()


# --------------------------------------------------------------------------------------------
# Budget (per render / evaluation) and size checks shared by both engines


@dataclass(slots=True)
class _Budget:
    deadline: float
    timeout: float
    iterations: int = 0

    def tick(self, iterations: int = 0) -> None:
        if iterations:
            self.iterations += iterations
            if self.iterations > MAX_LOOP_ITERATIONS:
                raise _LimitExceeded(f"more than {MAX_LOOP_ITERATIONS} loop iterations")
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"took longer than {self.timeout:g} s")


_BUDGET: ContextVar[_Budget | None] = ContextVar("crewgraph_flow_expression_budget", default=None)


def _tick(iterations: int = 0) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick(iterations)


def _check_size(value: Any) -> Any:
    """Reject a produced value that is too large; returns it unchanged otherwise."""
    if isinstance(value, (str, bytes, bytearray, list, tuple, dict, set, frozenset)):
        if len(value) > MAX_VALUE_LENGTH:
            raise _LimitExceeded(
                f"a value of length {len(value)} exceeds the limit of {MAX_VALUE_LENGTH}"
            )
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _LimitExceeded(f"an integer exceeds {MAX_INT_BITS} bits")
    return value


def _text_size(value: Any, limit: int) -> int:
    """Roughly how many characters ``str(value)`` has, giving up as soon as it exceeds ``limit``.

    Walks nested containers (so ``[[big] * 1000] * 1000`` is seen for what it is) but never
    allocates more than the structure's top-level lengths.
    """
    total = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item) + 3
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        else:
            total += 32
        if total > limit:
            break
    return total


def _safe_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if _text_size(value, MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
        raise _LimitExceeded(f"the text of a value would exceed {MAX_VALUE_LENGTH} characters")
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_width(value: Any, what: str) -> None:
    if isinstance(value, int) and value > MAX_WIDTH:
        raise _LimitExceeded(f"{what} {value} exceeds the limit of {MAX_WIDTH}")


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_DIGITS = re.compile(r"\d+")


def _check_printf(fmt: str) -> None:
    for match in _PRINTF_SPEC.finditer(fmt):
        for group in match.groups():
            if group == "*":
                raise _LimitExceeded("'*' widths are not allowed in format strings")
            if group and (len(group) > 6 or int(group) > MAX_WIDTH):
                raise _LimitExceeded(f"format width {group} exceeds the limit of {MAX_WIDTH}")


def _check_format_spec(spec: str) -> None:
    for digits in _DIGITS.findall(spec):
        if len(digits) > 6 or int(digits) > MAX_WIDTH:
            raise _LimitExceeded(f"format width {digits} exceeds the limit of {MAX_WIDTH}")


def _safe_add(left: Any, right: Any) -> Any:
    if (
        hasattr(left, "__len__")
        and hasattr(right, "__len__")
        and len(left) + len(right) > MAX_VALUE_LENGTH
    ):
        raise _LimitExceeded(f"a value would exceed the limit of {MAX_VALUE_LENGTH}")
    return left + right


def _safe_mult(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise _LimitExceeded(f"an integer would exceed {MAX_INT_BITS} bits")
        return left * right
    for seq, count in ((left, right), (right, left)):
        if isinstance(count, int) and hasattr(seq, "__len__") and count > 0:
            budget = MAX_VALUE_LENGTH // count
            if count * len(seq) > MAX_VALUE_LENGTH or _text_size(seq, budget) > budget:
                raise _LimitExceeded(
                    f"a repeated value would exceed the limit of {MAX_VALUE_LENGTH}"
                )
    return left * right


def _safe_pow(base: Any, exponent: Any) -> Any:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_INT_BITS
    ):
        raise _LimitExceeded(f"{base!r} ** {exponent!r} is too large")
    return base**exponent


def _safe_mod(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _check_printf(left)
    return left % right


def _safe_lshift(left: Any, right: Any) -> Any:
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right > MAX_INT_BITS
    ):
        raise _LimitExceeded(f"an integer would exceed {MAX_INT_BITS} bits")
    return left << right


def _checked_str_replace(text: str) -> Callable[..., str]:
    def replace(old: str, new: str, count: int = -1) -> str:
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            hits = text.count(old) if old else len(text) + 1
            if 0 <= count < hits:
                hits = count
            if len(text) + hits * (len(new) - len(old)) > MAX_VALUE_LENGTH:
                raise _LimitExceeded(f"replace() would exceed the limit of {MAX_VALUE_LENGTH}")
        return text.replace(old, new, count)

    return replace


def _checked_str_join(separator: str) -> Callable[[Iterable[Any]], str]:
    def join(items: Iterable[Any]) -> str:
        materialised = list(items)
        total = len(separator) * max(len(materialised) - 1, 0)
        for item in materialised:
            total += len(item) if isinstance(item, str) else 0
            if total > MAX_VALUE_LENGTH:
                raise _LimitExceeded(f"join() would exceed the limit of {MAX_VALUE_LENGTH}")
        return separator.join(materialised)

    return join


def _checked_str_pad(text: str, name: str) -> Callable[..., str]:
    method = getattr(text, name)

    def pad(*args: Any) -> str:
        for arg in args:
            _check_width(arg, f"{name}() width")
        return str(method(*args))

    return pad


_PAD_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _checked_str_method(text: str, name: str) -> Callable[..., Any] | None:
    if name == "replace":
        return _checked_str_replace(text)
    if name == "join":
        return _checked_str_join(text)
    if name in _PAD_METHODS:
        return _checked_str_pad(text, name)
    return None


# --------------------------------------------------------------------------------------------
# Templates


class _CodeGenerator(CodeGenerator):
    """Routes ``a ~ b`` through a size-checked join (exponential ``{% set %}`` doubling)."""

    def visit_Concat(self, node: jnodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_LOOP_GUARD_FILTER = "_crewgraph_loop_guard"


def _loop_guard(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.tick(1)
        yield item


def _arg(args: list[Any], kwargs: dict[str, Any], position: int, name: str, default: Any) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _pre_center(args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_width(_arg(args, kwargs, 1, "width", 80), "center width")


def _pre_indent(args: list[Any], kwargs: dict[str, Any]) -> None:
    text = _safe_str(_arg(args, kwargs, 0, "s", ""))
    width = _arg(args, kwargs, 1, "width", 4)
    per_line = width if isinstance(width, int) else len(str(width))
    _check_width(per_line, "indent width")
    if len(text) + (text.count("\n") + 1) * per_line > MAX_VALUE_LENGTH:
        raise _LimitExceeded(f"indent would exceed the limit of {MAX_VALUE_LENGTH}")


def _pre_wordwrap(args: list[Any], kwargs: dict[str, Any]) -> None:
    text = _safe_str(_arg(args, kwargs, 0, "s", ""))
    width = _arg(args, kwargs, 1, "width", 79)
    wrap = _arg(args, kwargs, 3, "wrapstring", None)
    if isinstance(width, int) and width > 0:
        lines = len(text) // width + text.count("\n") + 1
        if len(text) + lines * len(str(wrap or "\n")) > MAX_VALUE_LENGTH:
            raise _LimitExceeded(f"wordwrap would exceed the limit of {MAX_VALUE_LENGTH}")


def _pre_slice(args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_width(_arg(args, kwargs, 1, "slices", 1), "slice count")


def _pre_batch(args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_width(_arg(args, kwargs, 1, "linecount", 1), "batch size")


def _pre_format(args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_printf(_safe_str(_arg(args, kwargs, 0, "value", "")))


def _pre_join(args: list[Any], kwargs: dict[str, Any]) -> None:
    if not args:
        return
    items = list(args[0])
    args[0] = items
    separator = _safe_str(_arg(args, kwargs, 1, "d", ""))
    total = len(separator) * max(len(items) - 1, 0)
    for item in items:
        total += _text_size(item, MAX_VALUE_LENGTH)
        if total > MAX_VALUE_LENGTH:
            raise _LimitExceeded(f"join would exceed the limit of {MAX_VALUE_LENGTH}")


def _pre_replace(args: list[Any], kwargs: dict[str, Any]) -> None:
    text = _safe_str(_arg(args, kwargs, 0, "s", ""))
    count = _arg(args, kwargs, 3, "count", None)
    _checked_str_replace(text)(
        _safe_str(_arg(args, kwargs, 1, "old", "")),
        _safe_str(_arg(args, kwargs, 2, "new", "")),
        -1 if count is None else count,
    )


def _pre_text(args: list[Any], kwargs: dict[str, Any]) -> None:
    if args and _text_size(args[0], MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
        raise _LimitExceeded(f"the text of a value would exceed {MAX_VALUE_LENGTH} characters")


def _pre_sum(args: list[Any], kwargs: dict[str, Any]) -> None:
    start = _arg(args, kwargs, 2, "start", 0)
    if not _is_number(start):
        raise _LimitExceeded("sum() only adds numbers")


_FILTER_PRECHECKS: dict[str, Callable[[list[Any], dict[str, Any]], None]] = {
    "center": _pre_center,
    "indent": _pre_indent,
    "wordwrap": _pre_wordwrap,
    "slice": _pre_slice,
    "batch": _pre_batch,
    "format": _pre_format,
    "join": _pre_join,
    "replace": _pre_replace,
    "string": _pre_text,
    "pprint": _pre_text,
    "tojson": _pre_text,
    "sum": _pre_sum,
}


# Filters that work on the structure of their value; every other filter turns its value into
# text first, so a value whose text would be huge (``[[big] * 1000] * 1000``) is refused.
_STRUCTURAL_FILTERS = frozenset(
    {
        "attr",
        "batch",
        "count",
        "default",
        "d",
        "dictsort",
        "first",
        "groupby",
        "items",
        "join",
        "last",
        "length",
        "list",
        "map",
        "max",
        "min",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    precheck = _FILTER_PRECHECKS.get(name)
    # pass_context / pass_eval_context / pass_environment filters get one extra leading argument
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    textual = name not in _STRUCTURAL_FILTERS

    @functools.wraps(func)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if textual and len(args) > skip and not isinstance(args[skip], (str, int, float)):
            _pre_text([args[skip]], {})
        if precheck is not None:
            rest = list(args[skip:])
            precheck(rest, kwargs)
            args = (*args[:skip], *rest)
        return _check_size(func(*args, **kwargs))

    return guarded


def _finalize(value: Any) -> Any:
    if not isinstance(value, str) and _text_size(value, MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
        raise _LimitExceeded(f"the text of a value would exceed {MAX_VALUE_LENGTH} characters")
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=False,
            optimized=False,  # never run filters at compile time
            finalize=_finalize,
            keep_trailing_newline=True,
        )
        # lipsum is useless here; namespace() is the only way to carry state across loop
        # iterations, which would make the iteration budget a CPU budget squared.
        self.globals.pop("lipsum", None)
        self.globals.pop("namespace", None)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_GUARD_FILTER] = _loop_guard

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            result = _safe_mult(left, right)
        elif operator == "**":
            result = _safe_pow(left, right)
        elif operator == "%":
            result = _safe_mod(left, right)
        elif operator == "+":
            result = _safe_add(left, right)
        else:  # pragma: no cover - only the operators above are intercepted
            result = super().call_binop(context, operator, left, right)
        return _check_size(result)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(obj, "__self__", None)
        if isinstance(obj, types.BuiltinMethodType) and isinstance(owner, str):
            checked = _checked_str_method(owner, obj.__name__)
            if checked is not None:
                obj = checked
        return _check_size(super().call(context, obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in ("format", "format_map"):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # str.format / format_map are refused outright (see is_safe_attribute)

    def checked_concat(self, parts: Iterable[Any]) -> str:
        _tick()
        texts = [_safe_str(part) for part in parts]
        if sum(len(text) for text in texts) > MAX_VALUE_LENGTH:
            raise _LimitExceeded(f"a value would exceed the limit of {MAX_VALUE_LENGTH}")
        return "".join(texts)


_ENV = _Sandbox()
_TEMPLATE_GLOBALS = frozenset(_ENV.globals)


def _syntax_message(exc: TemplateSyntaxError) -> str:
    where = f" on line {exc.lineno}" if exc.lineno else ""
    return f"template syntax error{where}: {exc.message}"


def _parse_template(source: str) -> jnodes.Template:
    if not isinstance(source, str):
        raise TemplateError("a template must be a string")
    if len(source) > MAX_TEMPLATE_LENGTH:
        raise TemplateError(f"template is longer than {MAX_TEMPLATE_LENGTH} characters")
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(_syntax_message(exc)) from None
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None
    for _ in tree.find_all((jnodes.Extends, jnodes.Include, jnodes.Import, jnodes.FromImport)):
        raise TemplateError("templates cannot extend, include or import other templates")
    return tree


@functools.lru_cache(maxsize=512)
def _compile_template(source: str) -> Template:
    tree = _parse_template(source)
    for loop in tree.find_all(jnodes.For):
        guarded = jnodes.Filter(loop.iter, _LOOP_GUARD_FILTER, [], [], None, None)
        guarded.set_lineno(loop.lineno)
        loop.iter = guarded
    try:
        return _ENV.from_string(tree)
    except TemplateSyntaxError as exc:  # includes TemplateAssertionError (unknown filter, ...)
        raise TemplateError(_syntax_message(exc)) from None
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None


def render(
    template: str, scope: Mapping[str, Any], *, timeout: float = RENDER_TIMEOUT_SECONDS
) -> str:
    """Render ``template`` with ``scope`` in the sandbox; raises :class:`TemplateError`."""
    if not isinstance(template, str):
        raise TemplateError("a template must be a string")
    compiled = _compile_template(template)
    budget = _Budget(deadline=time.monotonic() + timeout, timeout=timeout)
    token = _BUDGET.set(budget)
    try:
        parts: list[str] = []
        size = 0
        for chunk in compiled.generate(dict(scope)):
            size += len(chunk)
            if size > MAX_OUTPUT_LENGTH:
                raise _LimitExceeded(f"rendered text exceeds {MAX_OUTPUT_LENGTH} characters")
            parts.append(chunk)
            budget.tick()
        return "".join(parts)
    except SecurityError as exc:
        raise TemplateError(f"template tried an unsafe operation: {exc}") from None
    except UndefinedError as exc:
        raise TemplateError(f"template uses an undefined value: {exc}") from None
    except _LimitExceeded as exc:
        raise TemplateError(f"template exceeded a limit: {exc}") from None
    except RecursionError:
        raise TemplateError("template recursed too deeply") from None
    except Exception as exc:  # user template code failing on user data is a user error
        raise TemplateError(f"template failed: {type(exc).__name__}: {exc}") from None
    finally:
        _BUDGET.reset(token)


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


def _simple_template_refs(source: str) -> frozenset[RefPath] | None:
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
def _template_refs(source: str) -> frozenset[RefPath]:
    if len(source) <= MAX_TEMPLATE_LENGTH:
        simple = _simple_template_refs(source)
        if simple is not None:
            return simple
    return _parsed_template_refs(source)


def _parsed_template_refs(source: str) -> frozenset[RefPath]:
    tree = _parse_template(source)
    try:
        undeclared = meta.find_undeclared_variables(tree)
    except TemplateSyntaxError as exc:  # e.g. an unknown filter or test
        raise TemplateError(_syntax_message(exc)) from None
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None
    refs: set[RefPath] = {(name,) for name in undeclared - ALLOWED_ROOTS - _TEMPLATE_GLOBALS}
    roots = frozenset(undeclared & ALLOWED_ROOTS)
    if roots:
        _walk_template(tree, roots, refs)
    return frozenset(refs)


# --------------------------------------------------------------------------------------------
# Expressions


def _safe_sum(values: Iterable[Any], start: Any = 0) -> Any:
    if not _is_number(start):
        raise _LimitExceeded("sum() only adds numbers")
    total = start
    for value in values:
        if not _is_number(value):
            raise _LimitExceeded("sum() only adds numbers")
        total += value
    return total


def _str_function(value: Any = "") -> str:
    return _safe_str(value)


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
_EXPRESSION_FUNCTIONS = frozenset({*_FUNCTIONS, "list", "tuple", "dict", "set"})

_OPERATORS: dict[type, Callable[..., Any]] = {
    **simpleeval.DEFAULT_OPERATORS,
    ast.Add: _safe_add,
    ast.Mult: _safe_mult,
    ast.Pow: _safe_pow,
    ast.Mod: _safe_mod,
    ast.LShift: _safe_lshift,
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
def _parse_expression(source: str) -> ast.expr:
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
        if node.id not in local and node.id not in _EXPRESSION_FUNCTIONS:
            refs.add((node.id,))
    elif isinstance(node, ast.Call):
        func = node.func
        if not (
            isinstance(func, ast.Name) and func.id in _EXPRESSION_FUNCTIONS and func.id not in local
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


class _Evaluator(simpleeval.EvalWithCompoundTypes):  # type: ignore[misc]
    def __init__(self, names: dict[str, Any], budget: _Budget) -> None:
        super().__init__(
            operators=_OPERATORS,
            functions=dict(_FUNCTIONS),
            names=names,
            allowed_attrs=_ALLOWED_ATTRS,
        )
        self._budget = budget

    def _eval(self, node: ast.AST) -> Any:
        self._budget.tick()
        return _check_size(super()._eval(node))

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
            checked = _checked_str_method(obj, attr)
            if checked is not None:
                return checked
        return getattr(obj, attr)

    def _eval_formattedvalue(self, node: ast.FormattedValue) -> Any:
        value = self._eval(node.value)
        if node.format_spec is not None:
            spec = str(self._eval(node.format_spec))
            _check_format_spec(spec)
            return format(value, spec)  # never str.format: no field lookups
        return _safe_str(value)


def evaluate(
    expression: str, scope: Mapping[str, Any], *, timeout: float = EVALUATE_TIMEOUT_SECONDS
) -> Any:
    """Evaluate ``expression`` against ``scope`` safely; raises :class:`ExpressionError`."""
    if not isinstance(expression, str):
        raise ExpressionError("an expression must be a string")
    tree = _parse_expression(expression)
    budget = _Budget(deadline=time.monotonic() + timeout, timeout=timeout)
    evaluator = _Evaluator(dict(scope), budget)
    try:
        result = evaluator.eval(expression, previously_parsed=tree)
        if _text_size(result, MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
            raise _LimitExceeded(f"the result would exceed {MAX_VALUE_LENGTH} characters")
        return result
    except simpleeval.NameNotDefined as exc:
        raise _expression_error(f"unknown name {exc.name!r}", expression) from None
    except simpleeval.AttributeDoesNotExist as exc:
        raise _expression_error(f"no attribute or key {exc.attr!r}", expression) from None
    except simpleeval.FunctionNotDefined as exc:
        raise _expression_error(f"unknown function {exc.func_name!r}", expression) from None
    except (simpleeval.NumberTooHigh, simpleeval.IterableTooLong, _LimitExceeded) as exc:
        raise _expression_error(f"limit exceeded ({exc})", expression) from None
    except simpleeval.InvalidExpression as exc:
        raise _expression_error(f"not allowed ({exc})", expression) from None
    except RecursionError:
        raise _expression_error("nesting is too deep", expression) from None
    except Exception as exc:  # user expressions failing on user data are user errors
        raise _expression_error(f"{type(exc).__name__}: {exc}", expression) from None


# --------------------------------------------------------------------------------------------
# Validation support


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
        return _template_refs(source)
    if not isinstance(source, str):
        raise ExpressionError("an expression must be a string")
    refs: set[RefPath] = set()
    try:
        _expression_refs(_parse_expression(source), frozenset(), refs)
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    return frozenset(refs)
