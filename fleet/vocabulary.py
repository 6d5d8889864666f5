"""The fleet's own vocabulary: words the controller, the agents and the pure core share.

Floor 0 (see docs/architecture.md): it imports nothing of the project, so the pure core, the
runtime, the journal, the controller and the commands may all import it. Binance's wire vocabulary
(sides, order types, statuses, error codes) is not here: it belongs to ``fleet/binance/``.

Each member is a ``StrEnum``: it equals its string (``KillState.HALTED == "halted"``), so JSON, Ray
calls, the GCS records and the HTTP answers carry the same strings as before.
"""

from __future__ import annotations

from enum import StrEnum

# Kill commands asked for on different nodes are ordered by their wall clocks (``issued_at``, a kill
# record's ``since``) only when they are further apart than this: a command is taken as older than
# another only if it was asked for more than CLOCK_SKEW_S before it (clocks kept by NTP are ms apart).
CLOCK_SKEW_S = 1.0


class KillState(StrEnum):
    """A symbol's durable kill state: the controller's (or a standalone agent's kill file)."""

    RUNNING = "running"        # quoting as usual
    HALTED = "halted"          # nothing that adds exposure; every order cancelled
    FLATTENING = "flattening"  # reduce-only orders only, until the position is closed

    @classmethod
    def stopped(cls, value: object) -> bool:
        """Whether ``value`` is halted or flattening (nothing that adds exposure); any other word is not."""
        return value in (cls.HALTED, cls.FLATTENING)

    @classmethod
    def parse(cls, value: object, what: str = "kill state") -> KillState:
        """``value`` as a kill state; ValueError naming ``what`` and the allowed spellings otherwise."""
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        raise ValueError(f"{what} must be one of {tuple(s.value for s in cls)}, not {value!r}")

    @classmethod
    def read(cls, value: object) -> KillState:
        """A stored kill state, failing safe: anything unreadable is ``halted``."""
        try:
            return cls.parse(value)
        except ValueError:
            return cls.HALTED
