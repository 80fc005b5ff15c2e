"""Jinja2 templates rendered in an immutable sandbox, within the bounds of `limits`.

Attribute access on mappings reads keys first, so ``inputs.items`` is the input called
``items`` rather than ``dict.items``; ``str.format``, ``__dunder__`` access and mutation of
the scope are refused.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jinja2 import StrictUndefined
from jinja2 import nodes as jnodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from domain.flows.expressions.limits import (
    BUDGET,
    MAX_OUTPUT_LENGTH,
    MAX_TEMPLATE_LENGTH,
    MAX_VALUE_LENGTH,
    RENDER_TIMEOUT_SECONDS,
    Budget,
    OverLimit,
    TemplateError,
    check_printf,
    check_size,
    check_width,
    checked_str_method,
    checked_str_replace,
    is_number,
    safe_add,
    safe_mod,
    safe_mult,
    safe_pow,
    safe_str,
    text_size,
    tick,
)


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
    budget = BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.tick(1)
        yield item


def _arg(args: list[Any], kwargs: dict[str, Any], position: int, name: str, default: Any) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _pre_center(args: list[Any], kwargs: dict[str, Any]) -> None:
    check_width(_arg(args, kwargs, 1, "width", 80), "center width")


def _pre_indent(args: list[Any], kwargs: dict[str, Any]) -> None:
    text = safe_str(_arg(args, kwargs, 0, "s", ""))
    width = _arg(args, kwargs, 1, "width", 4)
    per_line = width if isinstance(width, int) else len(str(width))
    check_width(per_line, "indent width")
    if len(text) + (text.count("\n") + 1) * per_line > MAX_VALUE_LENGTH:
        raise OverLimit(f"indent would exceed the limit of {MAX_VALUE_LENGTH}")


def _pre_wordwrap(args: list[Any], kwargs: dict[str, Any]) -> None:
    text = safe_str(_arg(args, kwargs, 0, "s", ""))
    width = _arg(args, kwargs, 1, "width", 79)
    wrap = _arg(args, kwargs, 3, "wrapstring", None)
    if isinstance(width, int) and width > 0:
        lines = len(text) // width + text.count("\n") + 1
        if len(text) + lines * len(str(wrap or "\n")) > MAX_VALUE_LENGTH:
            raise OverLimit(f"wordwrap would exceed the limit of {MAX_VALUE_LENGTH}")


def _pre_slice(args: list[Any], kwargs: dict[str, Any]) -> None:
    check_width(_arg(args, kwargs, 1, "slices", 1), "slice count")


def _pre_batch(args: list[Any], kwargs: dict[str, Any]) -> None:
    check_width(_arg(args, kwargs, 1, "linecount", 1), "batch size")


def _pre_format(args: list[Any], kwargs: dict[str, Any]) -> None:
    check_printf(safe_str(_arg(args, kwargs, 0, "value", "")))


def _pre_join(args: list[Any], kwargs: dict[str, Any]) -> None:
    if not args:
        return
    items = list(args[0])
    args[0] = items
    separator = safe_str(_arg(args, kwargs, 1, "d", ""))
    total = len(separator) * max(len(items) - 1, 0)
    for item in items:
        total += text_size(item, MAX_VALUE_LENGTH)
        if total > MAX_VALUE_LENGTH:
            raise OverLimit(f"join would exceed the limit of {MAX_VALUE_LENGTH}")


def _pre_replace(args: list[Any], kwargs: dict[str, Any]) -> None:
    text = safe_str(_arg(args, kwargs, 0, "s", ""))
    count = _arg(args, kwargs, 3, "count", None)
    checked_str_replace(text)(
        safe_str(_arg(args, kwargs, 1, "old", "")),
        safe_str(_arg(args, kwargs, 2, "new", "")),
        -1 if count is None else count,
    )


def _pre_text(args: list[Any], kwargs: dict[str, Any]) -> None:
    if args and text_size(args[0], MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
        raise OverLimit(f"the text of a value would exceed {MAX_VALUE_LENGTH} characters")


def _pre_sum(args: list[Any], kwargs: dict[str, Any]) -> None:
    start = _arg(args, kwargs, 2, "start", 0)
    if not is_number(start):
        raise OverLimit("sum() only adds numbers")


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
        tick()
        if textual and len(args) > skip and not isinstance(args[skip], (str, int, float)):
            _pre_text([args[skip]], {})
        if precheck is not None:
            rest = list(args[skip:])
            precheck(rest, kwargs)
            args = (*args[:skip], *rest)
        return check_size(func(*args, **kwargs))

    return guarded


def _finalize(value: Any) -> Any:
    if not isinstance(value, str) and text_size(value, MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
        raise OverLimit(f"the text of a value would exceed {MAX_VALUE_LENGTH} characters")
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
        tick()
        if operator == "*":
            result = safe_mult(left, right)
        elif operator == "**":
            result = safe_pow(left, right)
        elif operator == "%":
            result = safe_mod(left, right)
        elif operator == "+":
            result = safe_add(left, right)
        else:  # pragma: no cover - only the operators above are intercepted
            result = super().call_binop(context, operator, left, right)
        return check_size(result)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        tick()
        owner = getattr(obj, "__self__", None)
        if isinstance(obj, types.BuiltinMethodType) and isinstance(owner, str):
            checked = checked_str_method(owner, obj.__name__)
            if checked is not None:
                obj = checked
        return check_size(super().call(context, obj, *args, **kwargs))

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
        tick()
        texts = [safe_str(part) for part in parts]
        if sum(len(text) for text in texts) > MAX_VALUE_LENGTH:
            raise OverLimit(f"a value would exceed the limit of {MAX_VALUE_LENGTH}")
        return "".join(texts)


_ENV = _Sandbox()
TEMPLATE_GLOBALS = frozenset(_ENV.globals)


def syntax_message(exc: TemplateSyntaxError) -> str:
    where = f" on line {exc.lineno}" if exc.lineno else ""
    return f"template syntax error{where}: {exc.message}"


def parse_template(source: str) -> jnodes.Template:
    if not isinstance(source, str):
        raise TemplateError("a template must be a string")
    if len(source) > MAX_TEMPLATE_LENGTH:
        raise TemplateError(f"template is longer than {MAX_TEMPLATE_LENGTH} characters")
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(syntax_message(exc)) from None
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None
    for _ in tree.find_all((jnodes.Extends, jnodes.Include, jnodes.Import, jnodes.FromImport)):
        raise TemplateError("templates cannot extend, include or import other templates")
    return tree


@functools.lru_cache(maxsize=512)
def compile_template(source: str) -> Template:
    tree = parse_template(source)
    for loop in tree.find_all(jnodes.For):
        guarded = jnodes.Filter(loop.iter, _LOOP_GUARD_FILTER, [], [], None, None)
        guarded.set_lineno(loop.lineno)
        loop.iter = guarded
    try:
        return _ENV.from_string(tree)
    except TemplateSyntaxError as exc:  # includes TemplateAssertionError (unknown filter, ...)
        raise TemplateError(syntax_message(exc)) from None
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None


def render(
    template: str, scope: Mapping[str, Any], *, timeout: float = RENDER_TIMEOUT_SECONDS
) -> str:
    """Render ``template`` with ``scope`` in the sandbox; raises :class:`TemplateError`."""
    if not isinstance(template, str):
        raise TemplateError("a template must be a string")
    compiled = compile_template(template)
    budget = Budget.start(timeout)
    token = BUDGET.set(budget)
    try:
        parts: list[str] = []
        size = 0
        for chunk in compiled.generate(dict(scope)):
            size += len(chunk)
            if size > MAX_OUTPUT_LENGTH:
                raise OverLimit(f"rendered text exceeds {MAX_OUTPUT_LENGTH} characters")
            parts.append(chunk)
            budget.tick()
        return "".join(parts)
    except SecurityError as exc:
        raise TemplateError(f"template tried an unsafe operation: {exc}") from None
    except UndefinedError as exc:
        raise TemplateError(f"template uses an undefined value: {exc}") from None
    except OverLimit as exc:
        raise TemplateError(f"template exceeded a limit: {exc}") from None
    except RecursionError:
        raise TemplateError("template recursed too deeply") from None
    except Exception as exc:  # user template code failing on user data is a user error
        raise TemplateError(f"template failed: {type(exc).__name__}: {exc}") from None
    finally:
        BUDGET.reset(token)
