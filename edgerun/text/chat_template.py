"""Chat templates rendered in a bounded jinja2 sandbox: an artifact's template is data, so a
render is limited in time and in the size of what it makes, and fails with one EdgerunError.

The sandbox is transformers' (ImmutableSandboxedEnvironment, no attribute access to internals)
plus budgets checked cooperatively: at every call, attribute or item lookup, intercepted operator
(`* ** + %`), filter, `range` step, loop over the messages and output chunk. A check costs a
clock read; what a template builds between two checks is bounded by the size limits below.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgerun.core.errors import EdgerunError

TIME_S = 2.0  # a real template renders a long chat in milliseconds
MAX_CHARS = 1 << 22  # rendered text, and any one string or list the template builds
MAX_POWER_BITS = 1 << 16  # `a ** b` results
_BIG_WIDTH = re.compile(r"\d{7,}")  # a format width of a million or more


class TemplateLimit(Exception):
    """A render went past its time or size budget."""


@dataclass
class Budget:
    """What one render may spend: a monotonic deadline and a size cap."""

    deadline: float
    max_chars: int

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit("it ran past its time limit")

    def size(self, value: Any, what: str = "a value") -> Any:
        if isinstance(value, (str, list, tuple, dict, range)) and len(value) > self.max_chars:
            raise TemplateLimit(f"{what} of {len(value)} items is over {self.max_chars}")
        return value


_BUDGET: contextvars.ContextVar[Budget] = contextvars.ContextVar("edgerun_template_budget")


def _budget() -> Budget:
    budget = _BUDGET.get(None)
    if budget is None:  # only render() renders; this is a template compiled outside it
        raise TemplateLimit("it ran outside a budget")
    budget.tick()
    return budget


def render(
    source: str,
    messages: Sequence[dict[str, Any]],
    variables: dict[str, Any],
    time_s: float | None = None,
    max_chars: int | None = None,
) -> str:
    """Render the chat template `source` over `messages` within `time_s` seconds and
    `max_chars` characters (module defaults when None). Raises EdgerunError on any failure."""
    time_s = TIME_S if time_s is None else time_s
    budget = Budget(time.monotonic() + time_s, MAX_CHARS if max_chars is None else max_chars)
    token = _BUDGET.set(budget)
    try:
        parts, size = [], 0
        stream = _compiled(source).generate(messages=_Messages(messages), **variables)
        for part in stream:
            size += len(part)
            if size > budget.max_chars:
                raise TemplateLimit(f"its output passed {budget.max_chars} characters")
            budget.tick()
            parts.append(part)
        return "".join(parts)
    except TemplateLimit as exc:
        raise EdgerunError(
            f"the chat template was stopped: {exc} ({time_s:g} s, {budget.max_chars} characters)",
            "the artifact's chat template is broken or hostile: fix or replace it",
        ) from None
    except Exception as exc:  # jinja2 raises many types; the template is user data
        raise EdgerunError(
            f"the chat template failed to render: {type(exc).__name__}: {exc}"[:500],
            "check the messages' roles and contents, or pass a plain prompt",
        ) from None
    finally:
        _BUDGET.reset(token)


class _Messages(list):  # type: ignore[type-arg]
    """The messages, with the time budget checked at each step of a loop over them."""

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            _budget()
            yield item


class _Range:
    """range() for templates: its length is bounded and each step checks the time budget."""

    def __init__(self, *args: int) -> None:
        from jinja2.sandbox import MAX_RANGE

        self._range = range(*args)
        _budget()
        if len(self._range) > MAX_RANGE:  # jinja2's own sandbox limit
            raise TemplateLimit(f"a range of {len(self._range)} items is over {MAX_RANGE}")

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __iter__(self) -> Iterator[int]:
        for i in self._range:
            _budget()
            yield i

    def __reversed__(self) -> Iterator[int]:
        for i in reversed(self._range):
            _budget()
            yield i


def _binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would pass the budget, before it is computed."""
    budget = _budget()
    seq = (str, list, tuple)
    if operator == "*":
        for a, b in ((left, right), (right, left)):
            if isinstance(a, seq) and isinstance(b, int) and len(a) * b > budget.max_chars:
                raise TemplateLimit(f"'*' would make {len(a) * b} items")
    elif operator == "+" and isinstance(left, seq) and isinstance(right, seq):
        if len(left) + len(right) > budget.max_chars:
            raise TemplateLimit(f"'+' would make {len(left) + len(right)} items")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > MAX_POWER_BITS:
            raise TemplateLimit(f"'**' would make a number of over {MAX_POWER_BITS} bits")
    elif operator == "%" and isinstance(left, str):
        args = right if isinstance(right, tuple) else (right,)
        _widths(left, args)


def _widths(fmt: str, args: Sequence[Any]) -> None:
    """Refuse formatting with a width or an int argument a million or more wide."""
    if _BIG_WIDTH.search(fmt) or any(
        isinstance(a, int) and abs(a) >= 10**6 for a in args if not isinstance(a, bool)
    ):
        raise TemplateLimit("a format width of a million or more")


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses huge int arguments and oversized results."""

    from jinja2.utils import _PassArg

    skip = 1 + (_PassArg.from_obj(func) is not None)  # the context, then the filtered value

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        ints = [a for a in (*args[skip:], *kwargs.values()) if isinstance(a, int)]
        if any(abs(a) > 1 << 16 for a in ints if not isinstance(a, bool)):
            raise TemplateLimit(f"the filter '{name}' got an argument over {1 << 16}")
        return budget.size(func(*args, **kwargs), f"the result of '{name}'")

    return run


def _compiled(source: str) -> Any:
    """Compile a chat template once, in the bounded sandbox, with transformers' helpers."""
    if source not in _TEMPLATES:
        _TEMPLATES[source] = _environment().from_string(source)
    return _TEMPLATES[source]


_TEMPLATES: dict[str, Any] = {}


@functools.cache
def _environment() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class BoundedNamespace(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            super().__setitem__(name, _budget().size(value, f"'{name}'"))

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def getattr(self, obj: Any, attribute: str) -> Any:
            _budget()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            _budget()
            return super().getitem(obj, argument)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            budget = _budget()
            for value in (*args, *kwargs.values()):
                budget.size(value, "an argument")
            receiver = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
            if isinstance(receiver, str):  # str.format / ljust / center / zfill ...
                _widths(receiver if "format" in getattr(__obj, "__name__", "") else "", args)
            return budget.size(super().call(__context, __obj, *args, **kwargs), "a result")

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(
        x, ensure_ascii=False, indent=indent
    )
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)
    env.globals.update(
        range=_Range,
        namespace=BoundedNamespace,
        raise_exception=raise_exception,
        strftime_now=lambda fmt: datetime.now().strftime(fmt),
    )
    return env
