"""The work an ``apply`` (or a ``down``) owes, stored with the applied spec so that a controller killed
midway has it finished (docs/architecture.md, "owes"), mixed into the controller actor.

Ray runs a killed controller's call again on its successor, which reads the new spec back as the
fleet's: without the work stored beside it, the retried ``apply`` found nothing to remove and nothing
changed. The retried call finishes it; when nobody calls again (the caller died too), a task beside
the reconcile pass does, ``OWED_GRACE_S`` after the spec was read back, and also retires any agent of
the fleet's namespace whose symbol the spec does not trade.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from controller.kill_path import write_kill_states
from controller.kill_switches import journal_record
from controller.spec import SPEC_DOC, basis_changed, credentials_basis
from fleet.config import FleetConfig, SymbolParams
from fleet.vocabulary import KillState
from fleet.text import named_line

if TYPE_CHECKING:
    from controller.controller import FleetController, RetireOutcome

log = logging.getLogger("mmfleet.controller")

@dataclass
class PendingApply:
    """The work an apply (or a ``down``) still owes, stored with its spec: agents to retire (symbol ->
    account), agents to give the new parameters, a ``down`` under way (its flatten flag), the
    accounts retires reach by a key of their own (``retire_account``: key -> how the old spec reached
    it, its key sources and REST URL; never the keys themselves), the books to empty at the exchange
    only (symbol -> account: a symbol still traded, made anew elsewhere, whose old book the exchange
    did not list empty) and the retires tried once already (``still_owed``)."""

    retire: dict[str, str | None]
    push: list[str]
    down: bool | None = None
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    books: list[tuple[str, str]] = field(default_factory=list)   # (symbol, account): one symbol may owe several
    tried: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.retire or self.push or self.books) or self.down is not None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"retire": dict(self.retire), "push": list(self.push)}
        if self.down is not None:
            doc["down"] = self.down
        for name in ("accounts", "books", "tried"):
            if getattr(self, name):
                doc[name] = copy.copy(getattr(self, name))
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> PendingApply:
        if not isinstance(doc, dict):
            return cls({}, [])
        down = doc.get("down")
        return cls({str(s): (None if a is None else str(a)) for s, a in dict(doc.get("retire") or {}).items()},
                   [str(s) for s in doc.get("push") or []], None if down is None else bool(down),
                   {str(k): dict(v) for k, v in dict(doc.get("accounts") or {}).items()},
                   [(str(s), str(a)) for s, a in _pairs(doc.get("books"))],
                   [str(s) for s in doc.get("tried") or []])


def _pairs(books: Any) -> list[Any]:
    """Owed books as stored: pairs; a mapping of symbol to account as a controller of 9180285 stored them."""
    if isinstance(books, dict):
        return list(books.items())
    return [b for b in books or [] if isinstance(b, (list, tuple)) and len(b) == 2]


def retire_account(old: FleetConfig, new: FleetConfig, account: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """The name the controller's exchange clients know the account of an agent being retired by: its own
    while ``new`` reaches it the same way; else (the apply removed it, or changed its keys or the
    exchange) a key of its own, ``name#digest`` ('#' is in no account's name), with how ``old``
    reached it: the retired agent's orders are cancelled where they rest, not on what the name means now."""
    if account is None:
        return None, None
    try:
        before = credentials_basis(old, account)
    except (KeyError, ValueError):   # not in the old spec either (a stray): its name is all there is
        return account, None
    try:
        if credentials_basis(new, account) == before:
            return account, None
    except (KeyError, ValueError):
        pass
    doc = {"account": before[0], "rest_url": before[1]}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:10]
    return f"{account}#{digest}", doc


@dataclass
class ApplyPlan:
    """What an apply does to the agents running: retire (symbol -> the account's name or key), made
    anew (retired, then created by the new spec: a change an agent cannot take live), parameters
    pushed, left alone."""

    retire: dict[str, str | None]
    accounts: dict[str, dict[str, Any]]
    books: list[tuple[str, str]]
    restarted: list[str]
    updated: list[str]
    unchanged: list[str]


def plan_apply(old_cfg: FleetConfig | None, old_params: dict[str, SymbolParams], cfg: FleetConfig,
               params: dict[str, SymbolParams], owed: PendingApply, live: set[str]) -> ApplyPlan:
    """The symbols the old spec traded and the new one does not are retired; an agent whose account, keys,
    exchange, runtime, journal or CPU class the apply changes (``basis_changed``) is made anew; one
    whose parameters change gets them live. A retire left unfinished is finished, also for a symbol
    traded again (its agent is stopped); after a down cut short, every agent is made anew."""
    new_symbols = [e.symbol for e in cfg.symbols]
    old_symbols = {e.symbol for e in old_cfg.symbols} if old_cfg else set()
    retire: dict[str, str | None] = {s: old_cfg.entry(s).account for s in old_symbols - set(new_symbols)
                                     if s not in owed.retire} if old_cfg else {}   # (an owed one keeps its own)
    restarted = [s for s in new_symbols if s in old_symbols and s in live and s not in owed.retire
                 and old_cfg is not None and basis_changed(old_cfg, cfg, s)]
    retire.update({s: old_cfg.entry(s).account for s in restarted if old_cfg is not None})
    if owed.down is not None:   # a down cut short: its agents may be stopped but alive; each is made anew
        retire.update({s: (old_cfg.entry(s).account if s in old_symbols and old_cfg else None)
                       for s in live if s not in retire and s not in owed.retire})
    retire.update({s: a for s, a in owed.retire.items() if s not in retire})
    accounts: dict[str, dict[str, Any]] = {}

    def reached(account: str | None) -> str | None:
        """The account by how the old spec reached it, an owed one's too (still named plainly: the old
        spec reached it; an apply changing its keys or exchange would have its retry list another book)."""
        if old_cfg is None:
            return account
        key, doc = retire_account(old_cfg, cfg, account)
        if doc is not None:
            accounts[str(key)] = doc
        return key

    retire = {symbol: reached(account) for symbol, account in retire.items()}
    books = [(symbol, str(reached(account))) for symbol, account in owed.books]
    keys = set(retire.values()) | {a for _, a in books}
    accounts.update({k: d for k, d in owed.accounts.items() if k in keys})
    updated, unchanged = [], []
    for symbol in new_symbols:
        if symbol not in live or symbol in retire:
            continue
        if old_cfg is None or old_params.get(symbol) != params[symbol] or symbol in owed.push:
            updated.append(symbol)
        else:
            unchanged.append(symbol)
    return ApplyPlan(retire, accounts, books, restarted, updated, unchanged)


def still_owed(retire: dict[str, str | None], outcomes: list[Any], cfg: FleetConfig,
               accounts: dict[str, dict[str, Any]], books: list[tuple[str, str]] | None = None) -> PendingApply:
    """What to try again, the exchange not having listed the book empty (its cancels refused, the
    check failed): the retire of a symbol no longer traded; the old book of a symbol made anew on
    another account (or keys, or exchange), emptied at the exchange only (its new agent trades
    elsewhere); ``books`` still left; with the keys of the accounts they reach. Written off as done,
    nothing would reach those orders again: no kill or ``down`` reaches a symbol, or an account of a
    symbol, the spec does not name. (A symbol made anew on its account is its new agent's, which
    cancels an older epoch's orders at its start; an account of no key source, None, is left to the
    exchange's dead-man switch.)"""
    traded = {e.symbol: e.account for e in cfg.symbols}
    left: dict[str, str | None] = {}
    left_books = list(books or [])
    for (symbol, account), outcome in zip(retire.items(), outcomes):
        if account is None or outcome.open_orders == 0:
            continue
        if outcome.key_refused:   # no try reaches that account again (``empty_books`` alike)
            log.error("%s: its retire on %s written off, its key refused or gone: what rests there is left to the "
                      "dead-man switch", symbol, account)
            continue
        if symbol not in traded:
            left[symbol] = account
        elif account != traded[symbol] and (symbol, account) not in left_books:
            left_books.append((symbol, account))
    keys = set(left.values()) | {a for _, a in left_books}
    return PendingApply(left, [], accounts={k: d for k, d in accounts.items() if k in keys}, books=left_books,
                        tried=sorted(left))


def key_refused(exc: BaseException) -> bool:
    """The exchange refuses the account's key (revoked, its IP not allowed), or the key's source is gone:
    no try reaches that account again."""
    from agents.agent_base import KEY_REFUSALS
    from fleet.binance.credentials import CredentialsError
    from fleet.binance.errors import BinanceError

    return isinstance(exc, CredentialsError) or (isinstance(exc, BinanceError) and exc.code in KEY_REFUSALS)


async def empty_books(desk: Any, books: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each old book emptied at the exchange (cancel-all, confirmed by its listing); those left. One
    whose old key the exchange refuses, or whose key source is gone, is written off, said as an ERROR:
    no try would reach it again (the usual case, keys rotated and the old one revoked: the same
    account's new agent cancels an older epoch's orders at its start), and it kept every later apply
    owing; what it left rests until the dead-man switch its agent armed cancels it."""
    left = []
    for symbol, account in books:
        try:
            if await desk.confirm_empty(symbol, account, cancel_first=True) == 0:
                continue
        except Exception as exc:  # noqa: BLE001 - tried again with the owed work, but for a refused key
            if key_refused(exc):
                log.error("%s: its old book on %s written off, its key refused or gone (%s): what rests there is "
                          "left to the dead-man switch", symbol, account, named_line(exc))
                continue
            log.warning("%s: its old book on %s not emptied yet: %s", symbol, account, named_line(exc))
        left.append((symbol, account))
    return left


def down_accounts(strays: dict[str, str | None], owed: dict[str, str | None], traded: dict[str, str | None]
                  ) -> tuple[dict[str, str | None], dict[str, str]]:
    """The accounts a down retires each agent by: a retire still owed keeps its own (the agent it
    retires may be alive and trading there: an apply that made it anew was cut short), else the
    spec's; and the spec's accounts of those symbols besides, where they differ, to be emptied too
    (the agent made anew may trade there already)."""
    accounts = {**strays, **traded, **owed}
    also = {s: a for s, a in traded.items() if s in owed and a is not None and a != owed[s]}
    return accounts, also


async def empty_also(desk: Any, also: dict[str, str], close: Callable[..., Awaitable[Any]] | None = None) -> None:
    """The down's second look: each symbol's book on the other account emptied and confirmed, and with
    ``close`` (a flatten: ``close_left``) its position there closed (said if not)."""
    for symbol, account in also.items():
        try:
            left = await desk.confirm_empty(symbol, account, cancel_first=True)
            if left:
                log.error("%s: %d open orders left on %s after the down", symbol, left, account)
            if close is not None:
                await close(symbol, account, None)
        except Exception as exc:  # noqa: BLE001 - said; the dead-man switch is the last net
            log.error("%s: its book or position on %s not cleared by the down: %s", symbol, account, named_line(exc))


async def hold_added(ctl: FleetController, traded: list[str], added: list[str]) -> list[str]:
    """The symbols an apply adds start halted when every symbol the fleet traded is halted or flattening:
    a fleet halted as a whole stays halted (``resume`` them, or the fleet, to trade). Before, a symbol
    added to a halted fleet quoted at once. Returns those held."""
    if not added or not traded:
        return []
    records = await ctl.book.akill_records(traded)
    if len(records) < len(traded) or not all(KillState.stopped(r.state) for r in records.values()):
        return []
    reason = f"added while the fleet was halted ({records[traded[0]].reason})"[:200]
    written = await write_kill_states(ctl.book, added, KillState.HALTED, reason, issued_at=time.time(),
                                      unless_newer=True)
    log.warning("%s: added to a fleet halted as a whole: halted until resumed", ", ".join(sorted(written)))
    return sorted(written)


async def refuse_flattening(ctl: FleetController, symbols: list[str]) -> None:
    """An apply may not retire or make anew an agent closing its position (a flatten under way, the
    exchange not flat yet): its stop would cut the flatten short and leave the position to nobody.
    (A symbol stays "flattening" once flat when its kill answered before, or its agent flattened it
    for a delisting: the exchange's position decides.) Raises ValueError naming them."""
    if not symbols:
        return
    records = await ctl.book.akill_records(symbols)
    busy = [s for s, r in sorted(records.items()) if r.state == KillState.FLATTENING]
    closing = [s for s in busy if not await _flat_at_exchange(ctl, s)]
    if closing:
        raise ValueError(f"{', '.join(closing)} being flattened, not flat at the exchange: nothing applied; an "
                         f"apply that removes or restarts an agent waits until its position is flat, or until it is "
                         f"halted (python -m fleet kill --symbol S) or resumed")


async def _flat_at_exchange(ctl: FleetController, symbol: str) -> bool:
    """The symbol's position, read at the exchange (positionRisk, 5 weight), is zero; False if not read."""
    account = ctl._account_of(symbol)
    if account is None:
        return False
    try:
        client = await ctl.desk.client(account)
        return bool((await client.position(symbol, risk=True)).amount == 0)
    except Exception as exc:  # noqa: BLE001 - not known to be flat: the apply is refused
        log.warning("%s: position not read before an apply: %s", symbol, named_line(exc))
        return False


# The reconcile pass finishes the work of an apply a killed controller left only this long after its
# successor read the spec back: Ray runs the apply's call again on it first, and that call reports it.
OWED_GRACE_S = 5.0
# A retire the exchange did not confirm (its book not listed empty) is tried again this often.
RETRY_LEFT_S = 10.0


class OwedWork:
    """The work the applied spec's apply (or a down) still owes: stored with the spec, finished by the
    retried call or beside the reconcile pass. A part of the controller, which it acts through (its
    retire, pushes, down, agents and the lock that runs applies one at a time)."""

    def __init__(self, ctl: FleetController) -> None:
        self.ctl = ctl
        self.pending = PendingApply({}, [])
        self.read_at = 0.0                       # when the spec was read back (monotonic)
        self.task: asyncio.Task | None = None    # the finishing beside the reconcile pass
        # a down cut short, read back: leases are refused (an agent its stop never reached must not quote on)
        # until it is finished, but for a flatten, whose agents need them to close their positions
        self.holding = False
        self.left: set[str] = set()   # owed retires done once, the book unconfirmed: no lease for them
        self.retry_at = 0.0           # ... tried again from then on (monotonic)

    def read(self, doc: dict[str, Any] | None) -> None:
        """The work the stored spec holds (after a restart)."""
        self.pending = PendingApply.from_doc((doc or {}).get("pending"))
        self.left = set(self.pending.tried)   # (a left-over agent gets no lease after a restart either)
        self.read_at = time.monotonic()
        self.holding = self.pending.down is False   # (True: a flatten, whose agents keep their leases)

    def store(self, cfg: FleetConfig, params: dict[str, SymbolParams], pending: PendingApply) -> None:
        """The applied spec and the work still owed for it, in one write (nothing noted if it fails)."""
        doc = {"fleet": cfg.model_dump(mode="json"),
               "params": {s: p.model_dump(mode="json") for s, p in params.items()}}
        if pending:
            doc["pending"] = pending.to_doc()
        self.ctl.book.put_doc(SPEC_DOC, doc)
        self.pending = pending

    def owing(self) -> set[tuple[str, str | None]]:
        """The retires and old books still owed, as (symbol, account) (tried again every ``RETRY_LEFT_S``)."""
        return {*self.pending.retire.items(), *self.pending.books}

    def retiring(self, symbol: str) -> bool:
        """An owed retire of ``symbol`` is to run or running (its agent's stop keeps the lease); not one
        that ran and left the book unconfirmed (an agent left over must stop)."""
        return symbol in self.pending.retire and symbol not in self.left

    def keep(self, cfg: FleetConfig, params: dict[str, SymbolParams], retire: dict[str, str | None],
             outcomes: list[Any], accounts: dict[str, dict[str, Any]],
             books: list[tuple[str, str]]) -> PendingApply:
        """The spec stored with what is still owed (``still_owed``), said loudly; returns that."""
        left = still_owed(retire, outcomes, cfg, accounts, books)
        self.store(cfg, params, left)
        self.left = set(left.retire)
        unconfirmed = sorted({s for s, _ in self.owing()})
        if unconfirmed:
            self.retry_at = time.monotonic() + RETRY_LEFT_S
            log.error("%s: open orders not confirmed cancelled at the exchange after the retire: tried again "
                      "every %.0f s until it lists none", ", ".join(unconfirmed), RETRY_LEFT_S)
        return left

    async def retire(self, symbol: str, account: str | None, *, again: bool) -> RetireOutcome:
        """A retire the apply owes; for a symbol traded again, with agent creation held, so that the
        reconcile pass does not create its new agent while the old one's lease is being forgotten."""
        from controller.controller import retire_agent

        self.left.discard(symbol)
        if not again:
            return await retire_agent(self.ctl, symbol, flatten=False, account=account)
        async with self.ctl.creating:
            return await retire_agent(self.ctl, symbol, flatten=False, account=account)

    def beside(self) -> None:
        """Started by each reconcile pass unless one runs: it never holds the pass (the fleet's risk)."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._finish_logged())

    async def _finish_logged(self) -> None:
        try:
            await self.finish()
        except Exception as exc:  # noqa: BLE001 - the next reconcile pass tries again
            self.ctl.last_error = named_line(exc)
            log.error("finishing an apply's work failed: %s", self.ctl.last_error)

    async def finish(self) -> None:
        """The work a killed controller's apply or down left, when nobody called it again; and an agent of
        a symbol the spec does not trade, retired with its book confirmed empty."""
        ctl = self.ctl
        now = time.monotonic()
        if ctl.applying.locked() or ctl.cfg is None or now - self.read_at < OWED_GRACE_S or now < self.retry_at:
            return   # (after a restart, Ray runs the killed call again first: it reports what it does)
        if self.pending.down is not None:
            async with ctl.applying:
                if self.pending.down is not None and ctl.cfg is not None:
                    log.warning("a down whose controller was killed, its caller gone: finished (agents retired, "
                                "spec forgotten); python -m fleet down removes the endpoint and the simulator")
                    self.holding = self.holding and not self.pending.down
                    await ctl._down(self.pending.down)
            return
        if ctl.stopping:
            return
        async with ctl.applying:
            if ctl.cfg is not None and not ctl.stopping:
                await self._finish_apply(ctl.cfg, ctl.params)

    async def _finish_apply(self, cfg: FleetConfig, params: dict[str, SymbolParams]) -> None:
        ctl, owed = self.ctl, self.pending
        traded = {e.symbol for e in cfg.symbols}
        strays = await self.strays(traded)
        if not owed and not strays:
            return
        books = await empty_books(ctl.desk, owed.books)
        if strays:
            log.warning("agents of symbols the fleet does not trade: retired: %s", ", ".join(sorted(strays)))
        retire = {**strays, **owed.retire}
        outcomes = await asyncio.gather(*(self.retire(s, a, again=s in traded) for s, a in retire.items()))
        for symbol, outcome in zip(retire, outcomes):
            if outcome.error or outcome.open_orders != 0:
                log.error("%s: retired with %s open orders at the exchange: %s", symbol, outcome.open_orders,
                          outcome.error or "not confirmed")
        errors, _ = await ctl._push_params([s for s in owed.push if s in traded and s not in retire])
        for symbol, error in errors.items():
            log.error("%s: the new parameters not pushed: %s", symbol, error)
        left = self.keep(cfg, params, retire, list(outcomes), owed.accounts, books)
        await ctl.desk.drop({k: d for k, d in owed.accounts.items() if k not in left.accounts})
        done = sorted(set(retire) - set(left.retire)) + sorted({s for s, _ in set(owed.books) - set(left.books)})
        if done or owed.push:   # (not each try of a retire still unconfirmed: that is logged)
            journal_record(ctl, "apply_finished", detail={"retired": done, "pushed": owed.push,
                                                          "unconfirmed": sorted(left.retire)})

    async def strays(self, traded: set[str]) -> dict[str, str | None]:
        """The fleet's agents that neither the spec trades nor the owed work retires, with their accounts."""
        return {s: await self.stray_account(s) for s in self.ctl.agents.live() - traded - set(self.pending.retire)}

    async def stray_account(self, symbol: str) -> str | None:
        """The account an agent the spec does not name traded on: its carried books name it; else the
        fleet's only account (None: its book is left to its stop and the exchange's dead-man switch)."""
        from agents.carry import read_carry

        names = [a.name for a in self.ctl.cfg.accounts] if self.ctl.cfg else []
        try:
            carried = await asyncio.to_thread(read_carry, self.ctl.fleet_name, symbol)
        except Exception:  # noqa: BLE001 - the fleet's accounts decide
            carried = None
        if carried is not None and carried.account in names:
            return carried.account
        return names[0] if len(names) == 1 else None
