"""A tiny name -> factory registry used by models, losses and optimizers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from harness.config import ConfigError, close_match

T = TypeVar("T")


class UnknownName(ConfigError):
    """A name that is not registered; the message lists the valid ones."""


class Registry(Generic[T]):
    """Maps names to factories; `@REG.register("name")` adds one, `REG["name"]` gets it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The one-line message for an unknown name, with a close match when there is one."""
        hint = close_match(name, self._items)
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(sorted(self._items))}"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
