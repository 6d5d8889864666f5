"""The journal sink: the small interface the agent runtime calls (no database code, no imports).

:class:`JournalSink` does nothing; ``journal.recorder.AgentJournal`` is the one that records. The
agent holds one sink in ``agent.journal`` and calls these hooks; each returns at once (it hands the
event to a queue) so that none of them sits on the quote path.
"""

from __future__ import annotations

from typing import Any


class JournalSink:
    """No journal: every hook is a no-op."""

    enabled = False

    def status(self) -> dict[str, Any] | None:
        """The journal's writer as ``status()`` shows it (None: no journal)."""
        return None

    def on_sent(self, agent: Any, batch: Any) -> None:
        """A batch of requests (place, amend, cancel) is about to be sent."""

    def on_results(self, agent: Any, batch: Any, results: list[Any]) -> None:
        """The exchange's answers to a batch (an OrderInfo or an error per item)."""

    def on_user_event(self, agent: Any, ev: Any) -> None:
        """A user-stream event the store has just applied (order update, fill, funding)."""

    def on_log_event(self, agent: Any, event: str, msg: str, fields: dict[str, Any]) -> None:
        """A named agent event (halted, resumed, params_applied, reconcile_repair, ownership ...)."""

    def on_income_rows(self, agent: Any, rows: list[dict[str, Any]]) -> None:
        """FUNDING_FEE income rows of this symbol the agent read itself (its cross-margin fee look-up)."""

    def on_resync(self, agent: Any, initial: bool) -> None:
        """A REST snapshot was taken (at start and at every resync): time to backfill the journal."""

    async def on_stop(self, agent: Any, within_s: float = 5.0) -> None:
        """The agent is stopping, its client still open: last backfill, last snapshot, within ``within_s``."""

    async def close(self) -> None:
        """The agent's stop has ended (its ``stopped`` event said): what is left written, the writer closed."""


NULL_SINK = JournalSink()
