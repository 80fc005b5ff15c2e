"""Bounds on rendering and evaluation, and the checks both engines share.

Every bound is a user error when exceeded: source length, size of every intermediate
string/collection, integer size, padding widths, total loop iterations, rendered output
size and wall-clock time. The helpers raise :class:`OverLimit`, which the engines turn into
:class:`TemplateError` / :class:`ExpressionError`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from domain.errors import BadUserInput

MAX_TEMPLATE_LENGTH = 100_000  # characters of template source
MAX_EXPRESSION_LENGTH = 4_000  # characters of expression source
MAX_EXPRESSION_DEPTH = 64  # nesting depth of an expression's syntax tree
MAX_VALUE_LENGTH = 10_000_000  # characters / items of any value produced while rendering
MAX_OUTPUT_LENGTH = 10_000_000  # characters of a rendered template
MAX_INT_BITS = 10_000  # ~3000 decimal digits, below Python's int->str conversion limit
MAX_WIDTH = 10_000  # padding / width / precision arguments
MAX_LOOP_ITERATIONS = 1_000_000  # total template loop iterations per render
MAX_OPERATIONS = 5_000_000  # operations (filters, calls, operators, nodes) per render / evaluation
RENDER_TIMEOUT_SECONDS = 5.0
EVALUATE_TIMEOUT_SECONDS = 1.0


class TemplateError(BadUserInput):
    """A template does not parse, reads something undefined or unsafe, or exceeds a limit."""


class ExpressionError(BadUserInput):
    """An expression does not parse, uses something not allowed, fails, or exceeds a limit."""


class OverLimit(Exception):
    """Internal: a resource bound was hit. Converted to TemplateError / ExpressionError."""


# When the whole job a render / evaluation belongs to must end (the expression pool sets
# it per call, e.g. for a config of many templates); None: only each one's own timeout.
JOB_DEADLINE: ContextVar[float | None] = ContextVar("crewgraph_expression_job", default=None)


@dataclass(slots=True)
class Budget:
    deadline: float
    timeout: float
    iterations: int = 0
    operations: int = 0

    @classmethod
    def start(cls, timeout: float) -> Budget:
        """A budget of `timeout` seconds from now, ending no later than the job's."""
        deadline = time.monotonic() + timeout
        job = JOB_DEADLINE.get()
        if job is not None and job < deadline:
            return cls(deadline=job, timeout=max(0.0, job - time.monotonic()))
        return cls(deadline=deadline, timeout=timeout)

    def tick(self, iterations: int = 0) -> None:
        if iterations:
            self.iterations += iterations
            if self.iterations > MAX_LOOP_ITERATIONS:
                raise OverLimit(f"more than {MAX_LOOP_ITERATIONS} loop iterations")
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise OverLimit(f"more than {MAX_OPERATIONS} operations")
        if time.monotonic() > self.deadline:
            raise OverLimit(f"took longer than {self.timeout:g} s")


BUDGET: ContextVar[Budget | None] = ContextVar("crewgraph_flow_expression_budget", default=None)


def tick(iterations: int = 0) -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.tick(iterations)


def check_size(value: Any) -> Any:
    """Reject a produced value that is too large; returns it unchanged otherwise."""
    if isinstance(value, (str, bytes, bytearray, list, tuple, dict, set, frozenset)):
        if len(value) > MAX_VALUE_LENGTH:
            raise OverLimit(
                f"a value of length {len(value)} exceeds the limit of {MAX_VALUE_LENGTH}"
            )
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise OverLimit(f"an integer exceeds {MAX_INT_BITS} bits")
    return value


def text_size(value: Any, limit: int) -> int:
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


def safe_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if text_size(value, MAX_VALUE_LENGTH) > MAX_VALUE_LENGTH:
        raise OverLimit(f"the text of a value would exceed {MAX_VALUE_LENGTH} characters")
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_width(value: Any, what: str) -> None:
    if isinstance(value, int) and value > MAX_WIDTH:
        raise OverLimit(f"{what} {value} exceeds the limit of {MAX_WIDTH}")


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_DIGITS = re.compile(r"\d+")


def check_printf(fmt: str) -> None:
    for match in _PRINTF_SPEC.finditer(fmt):
        for group in match.groups():
            if group == "*":
                raise OverLimit("'*' widths are not allowed in format strings")
            if group and (len(group) > 6 or int(group) > MAX_WIDTH):
                raise OverLimit(f"format width {group} exceeds the limit of {MAX_WIDTH}")


def check_format_spec(spec: str) -> None:
    for digits in _DIGITS.findall(spec):
        if len(digits) > 6 or int(digits) > MAX_WIDTH:
            raise OverLimit(f"format width {digits} exceeds the limit of {MAX_WIDTH}")


def safe_add(left: Any, right: Any) -> Any:
    if (
        hasattr(left, "__len__")
        and hasattr(right, "__len__")
        and len(left) + len(right) > MAX_VALUE_LENGTH
    ):
        raise OverLimit(f"a value would exceed the limit of {MAX_VALUE_LENGTH}")
    return left + right


def safe_mult(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise OverLimit(f"an integer would exceed {MAX_INT_BITS} bits")
        return left * right
    for seq, count in ((left, right), (right, left)):
        if isinstance(count, int) and hasattr(seq, "__len__") and count > 0:
            budget = MAX_VALUE_LENGTH // count
            if count * len(seq) > MAX_VALUE_LENGTH or text_size(seq, budget) > budget:
                raise OverLimit(f"a repeated value would exceed the limit of {MAX_VALUE_LENGTH}")
    return left * right


def safe_pow(base: Any, exponent: Any) -> Any:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_INT_BITS
    ):
        raise OverLimit(f"{base!r} ** {exponent!r} is too large")
    return base**exponent


def safe_mod(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        check_printf(left)
    return left % right


def safe_lshift(left: Any, right: Any) -> Any:
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right > MAX_INT_BITS
    ):
        raise OverLimit(f"an integer would exceed {MAX_INT_BITS} bits")
    return left << right


def checked_str_replace(text: str) -> Callable[..., str]:
    def replace(old: str, new: str, count: int = -1) -> str:
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            hits = text.count(old) if old else len(text) + 1
            if 0 <= count < hits:
                hits = count
            if len(text) + hits * (len(new) - len(old)) > MAX_VALUE_LENGTH:
                raise OverLimit(f"replace() would exceed the limit of {MAX_VALUE_LENGTH}")
        return text.replace(old, new, count)

    return replace


def _checked_str_join(separator: str) -> Callable[[Iterable[Any]], str]:
    def join(items: Iterable[Any]) -> str:
        materialised = list(items)
        total = len(separator) * max(len(materialised) - 1, 0)
        for item in materialised:
            total += len(item) if isinstance(item, str) else 0
            if total > MAX_VALUE_LENGTH:
                raise OverLimit(f"join() would exceed the limit of {MAX_VALUE_LENGTH}")
        return separator.join(materialised)

    return join


def _checked_str_pad(text: str, name: str) -> Callable[..., str]:
    method = getattr(text, name)

    def pad(*args: Any) -> str:
        for arg in args:
            check_width(arg, f"{name}() width")
        return str(method(*args))

    return pad


_PAD_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def checked_str_method(text: str, name: str) -> Callable[..., Any] | None:
    if name == "replace":
        return checked_str_replace(text)
    if name == "join":
        return _checked_str_join(text)
    if name in _PAD_METHODS:
        return _checked_str_pad(text, name)
    return None
