"""A symbol's books carried from one agent to the next: P&L, funding, fills and the drawdown peak.

An agent that is restarted (SIGKILLed and recreated by Ray, fenced as hung, moved off a lost node,
or a new incarnation after a lost lease) used to start its books at 0: its realized P&L, commission
and funding in ``/exposure`` and on ``/metrics`` began again, and so did the drawdown's peak, so a
symbol 10 % below its peak got a fresh peak at the restart and its next drawdown band acted only 6 %
further down. Now every agent of the fleet publishes what its books hold (``carry/<SYMBOL>`` in the
GCS key-value store, beside its snapshot, every ``metrics_publish_s``) and the next agent of the
symbol starts from it:

- the figures of the last record (realized P&L, commission, funding, fills, the peak of the symbol's
  own P&L, the deepest drawdown), counted since ``since_ms``, the exchange time the symbol's first
  agent of this run started (a run: from the symbol's ``up`` or ``apply`` to its retirement, which
  forgets the record);
- the trades the exchange booked after the record's newest trade (``GET /fapi/v1/userTrades`` from
  its id on, weight 5 a page), read once, after the start's snapshot: those not booked from a frame
  already add their realized P&L, commission and fill (``Position.carry_trade``); a frame of one of
  them that comes later still moves the position, but counts neither again;
- the funding fees the exchange booked after the record's newest fee and after the run began
  (``GET /fapi/v1/income``, weight 30, once a restart: a record published just after a settlement may
  not hold its fee yet), and the liquidation clearance fees after the record's newest one (weight 30
  again: a position the dead-man switch left behind may be liquidated between two agents;
  agents/clearance.py).

The record names its agent's epoch; an agent publishes it only while it holds the lease, checked
again just before the write, so a zombie waking after its successor started does not overwrite it.

Not carried: which drawdown band already acted (a band cut short by the restart acts again on the
position as it is: the reduction errs on the side of less risk), grinds per hour, counters. The
single-symbol command (``python -m fleet agent``) keeps the record in its state directory instead
(``<fleet>.<SYMBOL>.carry``, written every 5 s while it holds the lock: ``read_carry_file``,
``write_carry_file``; the next agent reads the trades after the record's newest, as above), where
before it began its books at 0 at every start. A record names its exchange's REST address: another
exchange's (a fresh simulator, the testnet's for live) is not taken in (``carry_refused``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.binance.errors import BinanceError

from .clearance import gap_clearance
from .ownership import write_atomic

if TYPE_CHECKING:
    from .agent import SymbolAgent

CARRY_PREFIX = "carry/"
FUNDING_READ_PAUSES_S = (0.0, 2.0, 10.0, 30.0)   # a funding look-up's tries, each this long after the last
GAP_RETRY_S = (10.0, 300.0)   # a gap read that failed is tried again after 10 s, doubling up to 5 minutes
PAGE = 1000          # userTrades rows a request (Binance's maximum)
MAX_PAGES = 20       # 20,000 trades (or 20 weeks) in the gap: beyond that the carry is partial, and says so
WEEK_MS = 7 * 86_400_000   # the widest window userTrades answers by time


def carry_key(symbol: str) -> str:
    return f"{CARRY_PREFIX}{symbol}"


@dataclass(frozen=True)
class Carry:
    """What one agent's books held when it published them (the record of ``carry/<SYMBOL>``)."""

    symbol: str
    account: str            # the account's name in the config: another account's books are not carried
    since_ms: int           # exchange time the run's books start from
    realized_pnl: float
    commission: float       # in the margin asset
    funding: str            # the funding fees booked, an exact decimal
    fills_buy: int
    fills_sell: int
    peak_pnl: float | None  # the symbol's own P&L at its peak (None: no confirmed baseline yet)
    max_drawdown_pct: float
    trade_id: int | None    # the newest trade booked (Binance's ids grow per symbol)
    trade_orders: tuple[int, ...] = field(default=())   # orders of its trade booked (a self-trade has two)
    funding_ms: int = 0     # the newest fee booked (exchange time)
    epoch: int = 0          # the epoch of the agent that published it
    # fees booked from frames near the newest one whose income row was not seen: (time, amount)
    fee_frames: tuple[tuple[int, str], ...] = field(default=())
    clearance_ms: int = 0   # the newest liquidation clearance fee booked (exchange time; agents/clearance.py)
    exchange: str = ""      # the exchange's REST address: another exchange's books are not carried

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Carry | None:
        """The record, or None when it is not one (never raises)."""
        try:
            doc = json.loads(raw)
            Decimal(str(doc["funding"]))
            frames = tuple((int(t), str(Decimal(str(a)))) for t, a in doc.get("fee_frames", ()))
            return cls(
                symbol=str(doc["symbol"]), account=str(doc["account"]), since_ms=int(doc["since_ms"]),
                realized_pnl=float(doc["realized_pnl"]), commission=float(doc["commission"]),
                funding=str(doc["funding"]), fills_buy=int(doc["fills_buy"]), fills_sell=int(doc["fills_sell"]),
                peak_pnl=None if doc["peak_pnl"] is None else float(doc["peak_pnl"]),
                max_drawdown_pct=float(doc["max_drawdown_pct"]),
                trade_id=None if doc["trade_id"] is None else int(doc["trade_id"]),
                trade_orders=tuple(int(o) for o in doc.get("trade_orders", ())),
                funding_ms=int(doc.get("funding_ms", 0)), epoch=int(doc.get("epoch", 0)), fee_frames=frames,
                clearance_ms=int(doc.get("clearance_ms", 0)), exchange=str(doc.get("exchange", "")))
        except (ValueError, TypeError, KeyError, ArithmeticError):
            return None


@dataclass
class Gap:
    """What the exchange booked after carried books and the take-in has not read yet (a read failed): the
    parts still to read (``trades``, ``funding``, ``clearance``), each read once, and when to try again.
    Read at the reconciliation's beats (``retry_gap``) until it goes: left unread, a restart's gap was
    missing from the books (``/exposure``, ``/metrics``) for good."""

    carried: Carry
    parts: list[str] = field(default_factory=lambda: ["trades", "funding", "clearance"])
    added: dict[str, int] = field(default_factory=dict)
    tries: int = 0
    due: float = 0.0   # monotonic

    def failed(self, now: float) -> float:
        """One more failed try: the next after a doubling wait (returned)."""
        self.tries += 1
        wait = min(GAP_RETRY_S[1], GAP_RETRY_S[0] * 2 ** (self.tries - 1))
        self.due = now + wait
        return wait


async def _read_gap(agent: SymbolAgent, gap: Gap) -> None:
    """The gap's parts still unread, in order, each dropped once read (every row is booked once: one a
    frame or a look-up booked since is skipped); an exception leaves the rest for the next try."""
    carried = gap.carried
    readers = {"trades": lambda: _gap_trades(agent, carried), "funding": lambda: _gap_funding(agent, carried),
               "clearance": lambda: gap_clearance(agent, max(carried.clearance_ms, carried.since_ms))}
    try:
        while gap.parts:
            gap.added[gap.parts[0]] = await readers[gap.parts[0]]()
            gap.parts.pop(0)
    finally:
        agent.require_core().store.track_equity()   # the peak and the deepest drawdown, by the books as they stand


def _carried_said(agent: SymbolAgent, gap: Gap, after: str = "") -> None:
    s = agent.require_core().store   # (new parameters applied meanwhile replace the store: read it again)
    agent.log.event("books_carried", f"books carried since {gap.carried.since_ms}: realized {s.realized_pnl:.4f}, "
                    f"funding {s.funding_pnl:.4f}, commission {s.commission:.4f}; {gap.added.get('trades', 0)} trades, "
                    f"{gap.added.get('funding', 0)} fees and {gap.added.get('clearance', 0)} liquidation clearance "
                    f"fees of the gap added{after}")


async def retry_gap(agent: SymbolAgent) -> None:
    """The gap after carried books a read at the take-in failed to read (``Gap``), tried again when due."""
    gap = agent.carry_gap
    if gap is None or agent.core is None or agent.clock.monotonic() < gap.due:
        return
    try:
        await _read_gap(agent, gap)
    except Exception as exc:  # noqa: BLE001 - tried again later, said
        wait = gap.failed(agent.clock.monotonic())
        agent.log.event("carry_partial", f"the gap after the carried books ({', '.join(gap.parts)}) not read "
                        f"({gap.tries} tries; the next in {wait:.0f} s): {exc!r}", level=logging.WARNING)
        return
    agent.carry_gap = None
    _carried_said(agent, gap, f", read {gap.tries + 1} tries after the start")


def carry_of(agent: SymbolAgent) -> Carry | None:
    """The agent's books as a record, once its start has taken the last one in (None before). While the gap
    after the record it took in is unread (``Gap``), that record: its books lack the gap, and the next agent
    reads it, and this one's trades and fees after it, from the exchange (each booked once)."""
    core = agent.core
    if agent.carry_gap is not None:   # the peak this agent's books reached stays (from the record's: ``restore``)
        pos = core.store.position_book if core is not None else None
        return agent.carry_gap.carried if pos is None else replace(
            agent.carry_gap.carried, peak_pnl=pos.peak_pnl, max_drawdown_pct=pos.max_drawdown_pct)
    if core is None or agent.books_since_ms is None:
        return None
    s = core.store
    pos, fund = s.position_book, s.funding
    return Carry(
        symbol=agent.symbol, account=agent.account_name, since_ms=agent.books_since_ms,
        realized_pnl=pos.realized_pnl, commission=pos.commission, funding=str(fund.total), fills_buy=pos.fills_buy,
        fills_sell=pos.fills_sell, peak_pnl=pos.peak_pnl, max_drawdown_pct=pos.max_drawdown_pct,
        trade_id=pos.last_trade_id, trade_orders=tuple(pos.last_trade_orders), funding_ms=fund.last_fee_ms,
        epoch=core.epoch, fee_frames=tuple(fund.unpaired_frames()), clearance_ms=pos.clearance_ms,
        exchange=_exchange_of(agent))


def _exchange_of(agent: SymbolAgent) -> str:
    endpoints = getattr(agent, "endpoints", None)
    return str(getattr(endpoints, "rest_url", "") or "").rstrip("/")


async def take_in(agent: SymbolAgent) -> None:
    """At the start, after its first snapshot: the books from the carried record and the gap after it
    (nothing carried: the books start now). Once per agent; a read that fails leaves the gap to read again
    (``agent.carry_gap``, ``retry_gap``), said as a WARNING, and never fails the start."""
    if agent.books_since_ms is not None:
        return
    agent.trades_known_ms = agent.exchange_ms()   # from here every trade is a frame's or this gap's read
    carried, agent.carried = agent.carried, None
    core = agent.core
    assert core is not None
    if carried is None or carried.symbol != agent.symbol or carried.account != agent.account_name:
        agent.books_since_ms = agent.exchange_ms()
        return
    if carried.exchange and carried.exchange != _exchange_of(agent):   # (another simulator, testnet vs live)
        agent.log.event("carry_refused", f"the last agent's books were another exchange's ({carried.exchange}): "
                        f"the books start now", level=logging.WARNING)
        agent.books_since_ms = agent.exchange_ms()
        return
    core.store.position_book.restore(carried.realized_pnl, carried.commission, carried.fills_buy, carried.fills_sell,
                                     carried.peak_pnl, carried.max_drawdown_pct, carried.trade_id, carried.trade_orders)
    core.store.funding.restore(Decimal(carried.funding), carried.funding_ms, carried.fee_frames)
    agent.books_since_ms = carried.since_ms
    gap = Gap(carried)
    try:
        await _read_gap(agent, gap)
    except Exception as exc:  # noqa: BLE001 - a read that failed: the start goes on, the gap read again later
        wait = gap.failed(agent.clock.monotonic())
        agent.carry_gap = gap
        agent.log.event("carry_partial", f"books carried from the last agent without the gap after it yet "
                        f"({', '.join(gap.parts)}; read again in {wait:.0f} s): {exc!r}", level=logging.WARNING)
        return
    _carried_said(agent, gap)


async def _gap_trades(agent: SymbolAgent, carried: Carry) -> int:
    """The trades after the record's newest one, each added once (weight 5 a page)."""
    start = carried.since_ms if carried.trade_id is None else None
    # up to the take-in: the trades after it are its frames' (or a stream gap's read), whose keys a read long
    # after (a gap read again for hours) may no longer hold
    until = getattr(agent, "trades_known_ms", None)
    added, whole = await _read_trades(agent, start, carried.trade_id, carried, until)
    if not whole:
        agent.log.event("carry_partial", f"more than {MAX_PAGES} pages of trades since the last agent's books (a page "
                        f"is {PAGE} trades, or a week without one): the rest are not in the carried P&L",
                        level=logging.WARNING)
    return added


async def backfill_trades(agent: SymbolAgent, since_ms: int) -> int:
    """The trades since ``since_ms`` (no earlier than this agent's take-in) that the store's P&L misses: a
    user stream's gap, a frame skipped as malformed, a trade frame without its P&L fields. Each added
    once (``Position.carry_trade``: one a frame booked is skipped, one a frame moved the position of
    without its P&L gets it); weight 5 a page."""
    # no earlier than this agent's take-in: the carried record's trades are in its figures, not in the keys
    # (read again, a restarted agent's stream gap booked the last agent's trades twice)
    start = max(since_ms, getattr(agent, "trades_known_ms", 0))   # (set by take_in, which every start runs)
    added, _ = await _read_trades(agent, start, None, None)
    agent.require_core().store.track_equity()
    return added


async def book_funding_income(agent: SymbolAgent) -> None:
    """A FUNDING_FEE frame that names no symbol (cross margin): the store asked for this symbol's
    FUNDING_FEE income rows; they are read and booked once per tranId. A few tries, as the
    record may trail the frame, none of them waiting for rate-budget room (a busy ladder may hold
    the weight: then the next try, or the reconciliation's next beat, asks again)."""
    a = agent
    for delay in FUNDING_READ_PAUSES_S:
        await a.tasks.sleep(delay)
        core = a.core
        start = core.store.funding_lookup_start() if core is not None and not a.stopping else None
        if start is None:
            return
        asked_at = a.exchange_ms()
        try:
            rows = await a.require_client().income(a.symbol, "FUNDING_FEE", start_time=start, limit=1000, wait=False)
        except BinanceError as exc:
            a.log.event("funding_income_unavailable", f"funding income not read: {exc!r}", level=logging.WARNING)
            continue
        a.journal.on_income_rows(a, rows)  # the journal need not read them again
        if core is a.core:
            _book_income(a, core, rows, asked_at, "income rows")
            if core.store.funding_lookup_start() is None:
                return   # all found: a look-up asked after this one starts at once (it waited out the pause)


def take_journal_income(agent: SymbolAgent, rows: list[dict[str, Any]], read_at_ms: int) -> None:
    """The fees a funding read of the journal's found that the agent's books wait for (``funding_lookup_start``:
    a fee frame naming no symbol, a settlement with no fee booked), booked there too (once each by ``tranId``),
    as its own look-up's would be: the agent's look-up and the journal read the same rows apart, and while
    the agent's failed (its budget had no room at once, the exchange erred) ``/exposure`` and ``/pnl``
    disagreed until its next try, 30 s on, or for good."""
    core, since = getattr(agent, "core", None), getattr(agent, "books_since_ms", None)   # (a journal's stand-in)
    start = core.store.funding_lookup_start() if core is not None else None
    if core is None or start is None or since is None or not rows:
        return   # the agent waits for no fee's row (its frames named the symbol): its books have them
    # the rows its own look-up would read (from the fees it waits for on), no others: a fee booked from a
    # frame that names the symbol is paired with its row only within FUNDING_MATCH_MS
    _book_income(agent, core, [r for r in rows if _row_time(r) > since and _row_time(r) >= start], read_at_ms,
                 "the journal's income read")


def _book_income(agent: SymbolAgent, core: Any, rows: list[dict[str, Any]], read_at_ms: int, read_by: str) -> int:
    """Income rows into the books (``Store.on_funding_income``), said when any was booked."""
    booked = core.store.on_funding_income(rows, read_at_ms=read_at_ms)
    if booked:
        agent.log.event("funding_booked", f"{booked} funding fee(s) booked from {read_by}, "
                        f"total {core.store.funding_pnl}")
    return booked


async def _read_trades(agent: SymbolAgent, start: int | None, from_id: int | None,
                       carried: Carry | None, until_ms: int | None = None) -> tuple[int, bool]:
    """``userTrades`` from ``start`` (by time, a week at a time: Binance answers a startTime alone with the
    week after it) or ``from_id`` to now, each row added once (``_add_trade``, those inside ``carried``
    skipped, and those after ``until_ms``) to the store's position book (read again after every read: new
    parameters applied meanwhile replace it); (how many it added, whether all were read)."""
    client = agent.require_client()
    added = 0
    for _ in range(MAX_PAGES):
        end = None if start is None else start + WEEK_MS - 1
        rows = await client.user_trades(agent.symbol, start_time=start, end_time=end, from_id=from_id, limit=PAGE)
        store = agent.require_core().store
        for r in rows:
            if until_ms is None or _row_time(r) <= until_ms:
                added += _add_trade(store.position_book, carried, r, store.margin_asset)
        if len(rows) < PAGE:
            if end is None or end >= agent.exchange_ms():
                return added, True
            start = end + 1
            continue
        # from the page's last id again, not past it: a self-trade's two sides share one id (the keys dedupe)
        start, from_id = None, max(int(r["id"]) for r in rows)
    return added, False


def _add_trade(pos: Any, carried: Carry | None, row: dict[str, Any], margin_asset: str) -> int:
    try:
        trade_id, order_id = int(row["id"]), int(row["orderId"])
        realized, commission = float(row["realizedPnl"]), float(row["commission"])
    except (KeyError, TypeError, ValueError):
        return 0
    if carried is not None and carried.trade_id is not None and (trade_id < carried.trade_id or
                                         (trade_id == carried.trade_id and order_id in carried.trade_orders)):
        return 0   # inside the record
    counts = not margin_asset or row.get("commissionAsset", margin_asset) == margin_asset
    return int(pos.carry_trade((order_id, trade_id), realized, commission if counts else 0.0,
                               str(row.get("side", "")).upper() == "BUY"))


async def _gap_funding(agent: SymbolAgent, carried: Carry) -> int:
    """The fees booked after the record's newest one and after the run began (weight 30, once); the
    funding book skips the rows inside the record (``FundingBook.restore``)."""
    after = max(carried.funding_ms, carried.since_ms)
    rows = await agent.require_client().income(agent.symbol, "FUNDING_FEE", start_time=after + 1, limit=PAGE)
    store = agent.require_core().store
    return store.funding.on_income([r for r in rows if _row_time(r) > carried.since_ms], agent.symbol,
                                   store.margin_asset)


def _row_time(row: dict[str, Any]) -> int:
    try:
        return int(row["time"])
    except (KeyError, TypeError, ValueError):
        return -1


def publish_carry(fleet_name: str, carry: Carry) -> None:
    """Put the record into the GCS key-value store (blocking; needs a Ray connection)."""
    from ray.experimental import internal_kv

    from .publish import kv_namespace

    internal_kv._internal_kv_put(carry_key(carry.symbol), carry.encode(), overwrite=True,
                                 namespace=kv_namespace(fleet_name))


def read_carry(fleet_name: str, symbol: str) -> Carry | None:
    """The symbol's last published record (blocking); None when there is none or it does not decode."""
    from ray.experimental import internal_kv

    from .publish import kv_namespace

    raw = internal_kv._internal_kv_get(carry_key(symbol), namespace=kv_namespace(fleet_name))
    record = None if raw is None else Carry.decode(raw)
    return record if record is not None and record.symbol == symbol else None


def read_carry_file(path: Path, symbol: str) -> tuple[Carry | None, str | None]:
    """A standalone agent's record of its last incarnation's books (``<state_dir>/<fleet>.<SYMBOL>.carry``),
    and why it was not read (None: none there yet, or read)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path} not readable: {exc.strerror or type(exc).__name__}"
    record = Carry.decode(raw)
    if record is None or record.symbol != symbol:
        return None, f"{path} holds no record of {symbol}'s books"
    return record, None


def write_carry_file(path: Path, carry: Carry) -> None:
    """The record written whole (``write_atomic``: a crash never leaves half a record)."""
    write_atomic(path, carry.encode().decode())
