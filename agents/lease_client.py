"""The agent's side of a fleet lease: :class:`LeaseOwnership`, an :class:`~agents.ownership.Ownership`
that asks the controller actor for the symbol's epoch and lease and renews it.

The controller keeps the book (``controller/lease.py`` ``LeaseBook``); this is only the client of its
Ray calls (``acquire_lease``, ``renew_lease``, ``release_lease``), so agents never import the controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from agents.ownership import Grant, OwnershipLost
from fleet.vocabulary import CLOCK_SKEW_S, KillState

log = logging.getLogger("mmfleet.lease")


def grant_from_answer(answer: dict[str, Any]) -> Grant:
    """The agent-side :class:`Grant` for a granted answer; a refusal raises :class:`OwnershipLost`."""
    if not answer.get("granted"):
        raise OwnershipLost(answer.get("reason") or f"{answer.get('symbol')}: lease refused")
    return Grant(
        epoch=int(answer["epoch"]),
        lease_ttl_s=float(answer["lease_ttl_s"]),
        kill_state=str(answer["kill_state"]),
        reduce_only=bool(answer.get("reduce_only", False)),
        rate_share=float(answer.get("rate_share", 1.0)),
        kill_reason=str(answer.get("kill_reason") or "")[:500],
    )


class LeaseUnavailable(Exception):
    """The controller did not answer a lease call (restarting, overloaded): not a refusal."""


class LeaseOwnership:
    """The fleet's :class:`agents.ownership.Ownership`: a lease from the controller actor.

    ``acquire`` waits for a previous holder's lease to lapse; ``renew`` raises ``OwnershipLost``
    only when the controller refuses, and :class:`LeaseUnavailable` when it cannot be reached (the
    agent keeps its lease until it lapses locally).
    """

    def __init__(self, controller: Any, symbol: str, holder_id: str, *, renew_interval_s: float = 1.0,
                 call_timeout_s: float = 5.0) -> None:
        self.controller = controller
        self.symbol = symbol
        self.holder_id = holder_id
        self.renew_interval_s = renew_interval_s
        self.call_timeout_s = call_timeout_s
        self.grant: Grant | None = None
        self.direct: tuple[float, str] = (0, "")  # (kill_seq, state) of the last kill command delivered directly
        self.granted_seq = 0  # the newest kill_seq a granted answer carried
        self.known_at = 0.0   # when the newest numbered kill command known was issued (wall clock)
        # A kill without a number (its state not yet written): carried with every lease call until a
        # granted answer shows a newer record, so that it is written even if the controller that sent
        # it dies before the GCS takes it (``FleetController.kill_carried``).
        self.unwritten: dict[str, Any] | None = None

    def inherit(self, before: "LeaseOwnership") -> None:
        """A new incarnation of the same actor keeps what the last one knew of kill commands: ranks, and
        a kill it still carried unwritten (its process lives on; only a new process starts from the GCS)."""
        self.direct, self.granted_seq, self.unwritten = before.direct, before.granted_seq, before.unwritten
        self.known_at = before.known_at

    def note_direct_kill_state(self, seq: int | None, state: str, reason: str = "",
                               issued_at: float | None = None) -> bool:
        """A halt/flatten/resume reached the agent directly: answers older than ``seq`` must not undo it.
        False when the command is itself older than one already known, directly or with a grant (a
        resume delivered after a later kill): it must not run.

        ``seq`` None: a kill sent while its state could not be made durable (the GCS down). It ranks
        just above every number known (half a step), so neither a renewal already answered nor a
        command numbered before it undoes it, and the number its state gets once written is above it.
        Unless it was issued (``issued_at``, wall clock) more than ``CLOCK_SKEW_S`` before a numbered
        command the agent knows: Ray may deliver it seconds late (the GCS down), after a resume the
        operator gave once it was back, which it must not undo. The other way round, a numbered resume
        asked for that long before the kill the agent carries unwritten (its write landing late, in a
        GCS failover) does not undo the kill either."""
        if seq is None:
            if issued_at is not None and issued_at < self.known_at - CLOCK_SKEW_S:
                return False
            known = max(self.direct[0], self.granted_seq)
            self.direct = (known + 0.5, state)
            self.unwritten = {"state": str(state), "reason": reason, "after_seq": int(known), "issued_at": issued_at}
            return True
        if issued_at is not None:
            if state == KillState.RUNNING and self._before_carried(issued_at):
                return False
            self._knows(issued_at)
        if seq < max(self.direct[0], self.granted_seq):
            return False
        if seq > self.direct[0]:
            self.direct = (seq, state)
            self.unwritten = None   # a numbered command newer than the unwritten kill supersedes it
        return True

    def _knows(self, issued_at: float) -> None:
        """A numbered command asked for at ``issued_at``; a time ahead of this host's clock (a node's
        clock jumped) counts as now, so that it cannot outrank every kill to come."""
        self.known_at = max(self.known_at, min(float(issued_at), time.time() + CLOCK_SKEW_S))

    def _before_carried(self, issued_at: float) -> bool:
        """A command asked for well before the kill the agent carries unwritten."""
        carried = self.unwritten.get("issued_at") if self.unwritten is not None else None
        return carried is not None and issued_at < carried - CLOCK_SKEW_S

    def _grant(self, answer: dict[str, Any]) -> Grant:
        seq, state = self.direct
        if answer.get("granted"):
            self.granted_seq = max(self.granted_seq, int(answer.get("kill_seq", 0)))
            since = float(answer.get("kill_since") or 0.0)
            if self.unwritten is not None and since and self._before_carried(since):
                # the record was asked for before the kill carried (a resume written late): the kill holds
                return grant_from_answer({**answer, "kill_state": self.unwritten["state"], "kill_reason": ""})
            if since:
                self._knows(since)
            if self.unwritten is not None and self.granted_seq > self.unwritten["after_seq"]:
                self.unwritten = None   # its state written (or a newer command's): no longer carried
        if answer.get("granted") and state and int(answer.get("kill_seq", 0)) < seq:
            answer = {**answer, "kill_state": state, "kill_reason": ""}  # a renewal answered before the direct command
        return grant_from_answer(answer)

    async def _call(self, method: str, *args: Any) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(getattr(self.controller, method).remote(*args), self.call_timeout_s)
        except asyncio.TimeoutError:
            raise LeaseUnavailable(f"controller.{method} did not answer within {self.call_timeout_s:g} s") from None
        except Exception as exc:  # Ray errors: the controller is restarting or gone
            raise LeaseUnavailable(f"controller.{method} failed: {type(exc).__name__}: {str(exc)[:200]}") from None

    async def acquire(self) -> Grant:
        """Ask until granted: while a predecessor's lease lives, or the controller does not answer. The
        grant says how long that took (``waited_s``): its lease counts from the request granted."""
        began = time.monotonic()
        while True:
            sent = time.monotonic()
            try:
                answer = await self._call("acquire_lease", self.symbol, self.holder_id, self.unwritten)
            except LeaseUnavailable:
                await asyncio.sleep(0.5)
                continue
            if answer.get("granted"):
                self.grant = dataclasses.replace(self._grant(answer), waited_s=sent - began)
                return self.grant
            await asyncio.sleep(min(max(float(answer.get("wait_s", 0.2)), 0.05) + 0.02, 1.0))

    async def renew(self) -> Grant:
        if self.grant is None:
            raise OwnershipLost(f"{self.symbol}: not acquired (or already released)")
        answer = await self._call("renew_lease", self.symbol, self.holder_id, self.grant.epoch, self.unwritten)
        self.grant = self._grant(answer)
        return self.grant

    async def release(self) -> None:
        grant, self.grant = self.grant, None
        if grant is None:
            return
        try:
            await self._call("release_lease", self.symbol, self.holder_id, grant.epoch)
        except LeaseUnavailable as exc:
            # not fatal: the lease lapses on its own after its ttl, and only then may a successor trade
            log.warning("%s: lease release not confirmed (%s); it lapses on its own", self.symbol, exc)

    def describe(self) -> dict[str, object]:
        return {"kind": "lease", "holder": self.holder_id, "epoch": self.grant.epoch if self.grant else None}
