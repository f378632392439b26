"""Type stub for the compiled router (``_crouter.c``)."""

import threading
from collections.abc import Callable, Sequence
from typing import Any

class Gate:
    retiring: bool
    served: int
    table: list[Any]
    @property
    def owner(self) -> Any: ...
    @property
    def drained(self) -> threading.Event | None: ...
    @property
    def wake(self) -> threading.Event | None: ...
    def __init__(
        self,
        owner: Any,
        drained: threading.Event | None = ...,
        wake: threading.Event | None = ...,
        retiring: bool = ...,
    ) -> None: ...
    def append(self, x: object, /) -> None: ...
    def pop(self) -> None: ...
    def exited(self) -> None: ...
    def __len__(self) -> int: ...

class Route:
    gate: Gate
    def __init__(self, gate: Gate) -> None: ...

class Router:
    __name__: str
    __qualname__: str
    @property
    def arity(self) -> int: ...
    def __init__(
        self,
        route: Route,
        fname: str,
        idx: int,
        arity: int,
        slow: Callable[[str, tuple[Any, ...]], Any],
        bad_call: Callable[[Any, str, Exception, tuple[Any, ...]], Any],
        qualname: str,
    ) -> None: ...
    def __call__(self, *args: Any) -> Any: ...

class Checked:
    @property
    def fn(self) -> Callable[..., Any]: ...
    @property
    def checks(self) -> bytes: ...
    def __init__(self, fn: Callable[..., Any], checks: bytes) -> None: ...
    def __call__(self, *args: Any) -> Any: ...

def call_each(
    callables: Sequence[Callable[..., Any]],
    args: tuple[Any, ...],
    skip: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
    /,
) -> list[Any]: ...
def noop(*args: object) -> None: ...
def symbols(handle: int, names: Sequence[str], /) -> list[int | None]: ...
