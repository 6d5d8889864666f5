"""The agent's lifecycle as plain data: what blocks quoting, which state that makes, and the lease clock.

Pure and clock-injected (times are passed in, seconds on a monotonic clock); the runtime
(``agents/agent.py``) reads and writes them, the tests drive them with tables.

Rules:

- Quoting needs an empty set of blocks. Each block has one cause and one remedy: ``starting``
  (until the start completes), ``user_stream`` (lost: reconnect and resync), ``market_stream`` (lost:
  reconnect), ``market_stale`` (no book for ``market_stale_sec``: the next book), ``market_lag`` (a
  book older at the exchange than ``market_lag_max_ms``: a book within it), ``resync`` (a REST
  snapshot under way), ``lease`` (lapsed: renewed, and the dead-man switch re-armed first unless still armed long enough),
  ``asking`` (orders of ours cancelled by another hand while quoting: the owner's answer to a renewal
  sent after that, which carries a kill state made durable before any kill route acted), ``deadman`` (the exchange's
  dead-man countdown ran out, no heartbeat taken: a heartbeat taken), ``key_refused`` (the exchange
  refused the account's API key, -2015/-2014/-1022/-1002, while trading: the hold's end, and then a
  request it takes), ``stopping`` (for good).
- The state an operator sees follows from the blocks and the kill state, first match wins:

  ========================================  ==============
  condition                                 state
  ========================================  ==============
  stopped                                   ``stopped``
  not started yet                           ``starting``
  ``resync`` or ``user_stream`` blocks      ``resyncing``
  kill state flattening                     ``flattening``
  stopping, ownership lost, or halted       ``halted``
  ``market_*``, ``lease``, ``asking``,     ``paused``
  ``deadman``, ``key_refused``
  otherwise                                 ``quoting``
  ========================================  ==============

- The lease is treated as lapsed ``margin_s`` before it really does; once ownership is lost it never
  comes back for this incarnation.
"""

from __future__ import annotations

import math
from enum import StrEnum

from fleet.vocabulary import KillState


class Block(StrEnum):
    """A reason quoting is stopped (any one blocks)."""

    STARTING = "starting"
    USER_STREAM = "user_stream"
    MARKET_STREAM = "market_stream"
    MARKET_STALE = "market_stale"
    MARKET_LAG = "market_lag"
    RESYNC = "resync"
    LEASE = "lease"
    ASKING = "asking"
    DEADMAN = "deadman"
    KEY_REFUSED = "key_refused"
    STOPPING = "stopping"


class State(StrEnum):
    """What ``status()["state"]`` says."""

    STARTING = "starting"
    QUOTING = "quoting"
    PAUSED = "paused"
    HALTED = KillState.HALTED.value          # the kill state's word, shown as the agent's state
    FLATTENING = KillState.FLATTENING.value
    RESYNCING = "resyncing"
    STOPPED = "stopped"


RESYNCING_BLOCKS = frozenset({Block.RESYNC, Block.USER_STREAM})
PAUSE_BLOCKS = frozenset({Block.MARKET_STREAM, Block.MARKET_STALE, Block.MARKET_LAG, Block.LEASE, Block.ASKING,
                          Block.DEADMAN, Block.KEY_REFUSED})


def derive_state(
    blocks: set[str] | frozenset[str],
    *,
    started: bool,
    stopped: bool,
    stopping: bool,
    ownership_lost: bool,
    kill_state: KillState | str,
) -> State:
    """The state table of the module docstring."""
    if stopped:
        return State.STOPPED
    if not started:
        return State.STARTING
    if blocks & RESYNCING_BLOCKS:
        return State.RESYNCING
    if kill_state == KillState.FLATTENING:
        return State.FLATTENING
    if stopping or ownership_lost or kill_state == KillState.HALTED:
        return State.HALTED
    if blocks & PAUSE_BLOCKS:
        return State.PAUSED
    return State.QUOTING


class LeaseClock:
    """When this incarnation's lease lapses, on the runtime's monotonic clock."""

    def __init__(self, margin_s: float) -> None:
        self.margin_s = margin_s
        self.valid_until = -math.inf
        self.lost = False

    def granted(self, sent_at: float, ttl_s: float) -> None:
        """A grant answered a request sent at ``sent_at``: valid ``ttl_s`` from the send, less the margin."""
        if not self.lost:
            self.valid_until = sent_at + ttl_s - self.margin_s

    def lose(self) -> None:
        """The owner refused a renewal: never valid again in this incarnation."""
        self.lost = True
        self.valid_until = -math.inf

    def ok(self, now: float) -> bool:
        return not self.lost and now < self.valid_until

    def left(self, now: float) -> float | None:
        """Seconds of lease left (negative once lapsed); None before the first grant."""
        return self.valid_until - now if math.isfinite(self.valid_until) else None
