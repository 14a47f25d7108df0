"""An error→status table: how one door answers each class of medserve's error tree.

Every door keeps exactly one (HTTP status codes, gRPC status codes, WebSocket close codes, DICOM
statuses). A table is keyed by error class and resolved along the raised error's MRO, so a subclass
answers as its nearest listed ancestor; it must list :class:`MedserveError` itself, which answers
for a subclass nobody listed, so every error of the tree resolves to a status.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from medserve.values.errors import MedserveError

S = TypeVar("S")


class StatusTable(Generic[S]):
    """``MedserveError`` subclass → status, the nearest listed class of an error winning."""

    def __init__(self, door: str, entries: Mapping[type[MedserveError], S]) -> None:
        if MedserveError not in entries:
            raise ValueError(f"the {door} door's status table must map MedserveError itself")
        self.door = door
        self._entries = dict(entries)

    def of(self, error: MedserveError) -> S:
        """The status the door answers ``error`` with."""
        return self.for_class(type(error))

    def for_class(self, cls: type[MedserveError]) -> S:
        """The status for errors of class ``cls``: its nearest ancestor's in the table."""
        for ancestor in cls.__mro__:
            if ancestor in self._entries:
                return self._entries[ancestor]
        raise TypeError(f"{cls.__name__} is not a MedserveError")

    def extended(self, door: str, more: Mapping[type[MedserveError], S]) -> StatusTable[S]:
        """This table with ``more`` entries added (or overriding), for a door built on another."""
        return StatusTable(door, {**self._entries, **more})

    def __iter__(self) -> Iterator[tuple[type[MedserveError], S]]:
        return iter(self._entries.items())


__all__ = ["StatusTable"]
