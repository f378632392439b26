"""Type stub for the shared-memory channel's hot path (``_spin.c``)."""

from typing import Any

AGAIN: object
WHY_PACK: int
WHY_SOCKET: int
WHY_TIMEOUT: int
WHY_REPLY: int
WHY_CLOSED: int
SERVES: int

class Channel:
    seq: int
    why: int
    window_ns: int
    def __init__(self, mapping: Any, peer: int, own: int, sock: int, host: bool) -> None: ...
    def call(self, spec: bytes, args: tuple[Any, ...], timeout: float | None) -> Any: ...
    def bind(self, table: list[tuple[bytes, int] | None]) -> int: ...
    def serve(self) -> int: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, int]: ...
