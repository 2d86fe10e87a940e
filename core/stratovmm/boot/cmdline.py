"""Kernel command line assembly.

The user's ``-append`` comes first; devices add their own words after it
(``virtio_mmio.device=4K@0xADDR:IRQ``, one per transport), so a user can see
and override nothing by accident.  The result must fit the kernel's
``cmdline_size`` and contain no NUL.
"""

from __future__ import annotations

from stratovmm.errors import ConfigError


class Cmdline:
    """An ordered list of kernel command line words."""

    def __init__(self, base: str = "") -> None:
        if "\0" in base:
            raise ConfigError("-append: the kernel command line may not contain NUL")
        self._words = base.split()
        self._base = base.strip()
        self._extra: list[str] = []

    def append(self, word: str) -> None:
        """Add one word (no spaces, no NUL) after the user's arguments."""
        if not word or any(c.isspace() for c in word) or "\0" in word:
            raise ValueError(f"bad kernel command line word {word!r}")
        self._extra.append(word)

    def has_key(self, key: str) -> bool:
        """True if the user's arguments set ``key`` (as ``key`` or ``key=...``)."""
        return any(w == key or w.startswith(key + "=") for w in self._words)

    def render(self, limit: int) -> bytes:
        """The NUL-terminated command line; ``limit`` counts the bytes before the NUL."""
        text = " ".join([self._base, *self._extra] if self._base else self._extra)
        raw = text.encode()
        if len(raw) > limit:
            raise ConfigError(
                f"-append: kernel command line is {len(raw)} bytes, the kernel accepts {limit}"
            )
        return raw + b"\0"

    def __str__(self) -> str:
        return self.render(1 << 20)[:-1].decode()
