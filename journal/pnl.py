"""P&L explained, from the journal alone: per symbol and for the fleet.

For a window (all of the journal, or from ``since``):

- realized: the exchange's realized P&L of each fill; fees: the commissions, and a liquidation's
  clearance fee (INSURANCE_CLEAR income, also apart as ``clearance_fees``); funding: the FUNDING_FEE income; unrealized: the open position (replayed from the fills at average cost, as the
  exchange books it) valued at the last mark the journal saw, less the same at the window's start;
- the split of the total (realized + unrealized change + funding - fees):
  spread capture = each fill's edge against the mid at fill time x its quantity (buy: mid - price,
  sell: price - mid); inventory = the rest of the trading P&L (the mark-to-market of what was
  held); funding; fees. The four add up to the total for every symbol, by construction, in exact
  decimals. Fees count in the symbol's quote asset (the asset its P&L is in); a fee paid in another
  asset (BNB, with Binance's fee discount) is listed apart, per asset (``other_fees``), and not in the
  total, as the agent counts it. Each account's position is replayed apart (a symbol moved to
  another account, or two fleets' accounts in one journal). A fill the journal has only from the backfill (no mid recorded) counts with no edge:
  its P&L lands in inventory, and ``fills_without_mid`` says how many. The fleet's figures add
  symbols of different quote assets (USDC and USDT) 1:1; ``by_quote`` keeps each asset's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from .schema import fills, funding, snapshots

ZERO = Decimal(0)


def _d(x: Any) -> Decimal:
    if x is None:
        return ZERO
    if isinstance(x, Decimal):
        return x
    return Decimal(str(x))


@dataclass
class SymbolPnl:
    symbol: str
    realized: Decimal = ZERO
    fees: Decimal = ZERO
    clearance: Decimal = ZERO  # liquidation clearance fees (income INSURANCE_CLEAR), inside ``fees``
    funding: Decimal = ZERO
    unrealized: Decimal = ZERO  # at the end of the window
    unrealized_start: Decimal = ZERO
    spread: Decimal = ZERO
    fills: int = 0
    fills_without_mid: int = 0
    maker_fills: int = 0
    volume: Decimal = ZERO  # notional traded
    position: Decimal = ZERO
    entry: Decimal = ZERO
    mark: Decimal | None = None
    fee_assets: set[str] = field(default_factory=set)
    other_fees: dict[str, Decimal] = field(default_factory=dict)   # fees in another asset than the quote

    @property
    def trading(self) -> Decimal:
        return self.realized + self.unrealized - self.unrealized_start

    @property
    def total(self) -> Decimal:
        return self.trading + self.funding - self.fees

    def as_dict(self) -> dict[str, Any]:
        f = _num
        # the split adds up to the total as shown: inventory is what the rounded parts leave of it
        total, spread, funding, fees = (round(x, 8) for x in (self.total, self.spread, self.funding, self.fees))
        inventory = total - spread - funding + fees
        return {
            "realized": f(self.realized), "unrealized": f(self.unrealized - self.unrealized_start),
            "funding": f(self.funding), "fees": f(self.fees), "clearance_fees": f(self.clearance),
            "total": float(total),
            "split": {"spread": float(spread), "inventory": float(inventory), "funding": float(funding),
                      "fees": float(-fees)},
            "fills": self.fills, "maker_fills": self.maker_fills, "fills_without_mid": self.fills_without_mid,
            "volume": f(self.volume), "position": f(self.position), "entry_price": f(self.entry),
            "mark": f(self.mark) if self.mark is not None else None,
            "fee_assets": sorted(self.fee_assets),
            "other_fees": {a: f(v) for a, v in sorted(self.other_fees.items())},
        }


def _num(x: Decimal) -> float:
    return float(round(x, 8))


class _Book:
    """Average-cost position, as the exchange books it (realized on the closing part)."""

    def __init__(self) -> None:
        self.pos = ZERO
        self.entry = ZERO

    def fill(self, side: str, qty: Decimal, price: Decimal) -> None:
        sign = 1 if side == "BUY" else -1
        signed = qty * sign
        if self.pos == 0 or (self.pos > 0) == (sign > 0):
            total = abs(self.pos) + qty
            self.entry = (self.entry * abs(self.pos) + price * qty) / total
        else:
            if qty > abs(self.pos):
                self.entry = price
            elif qty == abs(self.pos):
                self.entry = ZERO
        self.pos += signed

    def unrealized(self, mark: Decimal | None) -> Decimal:
        if mark is None or self.pos == 0:
            return ZERO
        return (mark - self.entry) * self.pos


def _net(books: list[_Book]) -> _Book:
    """Several accounts' books of one symbol as one: the net position, at the average entry of the
    side it is on (each account's unrealized P&L is still summed from its own book)."""
    if len(books) == 1:
        return books[0]
    net = _Book()
    net.pos = sum((b.pos for b in books), ZERO)
    same = [b for b in books if b.pos and (b.pos > 0) == (net.pos > 0)]
    size = sum((abs(b.pos) for b in same), ZERO)
    net.entry = sum((b.entry * abs(b.pos) for b in same), ZERO) / size if net.pos and size else ZERO
    return net


def compute(engine: Engine, *, since_ms: int | None = None, symbols: list[str] | None = None,
            fleet: str | None = None, account: str | None = None) -> dict[str, Any]:
    """The P&L report (JSON-ready): ``symbols`` per symbol, ``fleet`` summed, each with its split."""
    def scoped(table: Any) -> Any:
        q = select(table)
        if symbols:
            q = q.where(table.c.symbol.in_(symbols))
        if fleet:
            q = q.where(table.c.fleet == fleet)
        if account:
            q = q.where(table.c.account == account)
        return q

    out: dict[str, SymbolPnl] = {}
    books: dict[tuple[str, str], _Book] = {}   # by (account, symbol): each account's own position
    start_marks: dict[str, Decimal | None] = {}
    last_marks: dict[str, tuple[int, Decimal]] = {}
    with engine.connect() as conn:
        snaps = conn.execute(scoped(snapshots).order_by(snapshots.c.ts_ms)).mappings().all()
        for s in snaps:
            m = s["mark"] or s["mid"]
            if m:
                if since_ms is not None and s["ts_ms"] <= since_ms:
                    start_marks[s["symbol"]] = _d(m)
                last_marks[s["symbol"]] = (s["ts_ms"], _d(m))
        rows = conn.execute(scoped(fills).order_by(fills.c.symbol, fills.c.trade_id)).mappings().all()
        fund = conn.execute(scoped(funding).order_by(funding.c.ts_ms)).mappings().all()
    started: set[str] = set()
    for r in rows:
        sym = r["symbol"]
        p = out.setdefault(sym, SymbolPnl(sym))
        book = books.setdefault((r["account"], sym), _Book())
        price, qty = _d(r["price"]), _d(r["qty"])
        if since_ms is not None and r["ts_ms"] < since_ms:
            book.fill(r["side"], qty, price)
            continue
        if sym not in started:
            started.add(sym)
            mark0 = start_marks.get(sym) or (price if since_ms is not None else None)
            p.unrealized_start = sum((b.unrealized(mark0) for (_, s), b in books.items() if s == sym), ZERO)
        book.fill(r["side"], qty, price)
        p.fills += 1
        p.maker_fills += 1 if r["maker"] else 0
        p.realized += _d(r["realized_pnl"])
        asset = r["fee_asset"]
        if asset and not sym.endswith(asset):   # not the quote asset: apart, not in the total
            p.other_fees[asset] = p.other_fees.get(asset, ZERO) + _d(r["fee"])
        else:
            p.fees += _d(r["fee"])
        if asset:
            p.fee_assets.add(asset)
        p.volume += price * qty
        if r["mid"] is None:
            p.fills_without_mid += 1
        else:
            mid = _d(r["mid"])
            p.spread += (mid - price) * qty if r["side"] == "BUY" else (price - mid) * qty
        mark = r["mark"] or r["mid"]
        ts_mark = last_marks.get(sym)
        if mark and (ts_mark is None or ts_mark[0] <= r["ts_ms"]):
            last_marks[sym] = (r["ts_ms"], _d(mark))
    for f in fund:
        if since_ms is not None and f["ts_ms"] < since_ms:
            continue
        p = out.setdefault(f["symbol"], SymbolPnl(f["symbol"]))
        if f["income_type"] == "INSURANCE_CLEAR":   # a liquidation's clearance fee: paid, a negative income
            p.fees -= _d(f["amount"])
            p.clearance -= _d(f["amount"])
        else:
            p.funding += _d(f["amount"])
    for sym, p in out.items():
        held = [b for (_, s), b in books.items() if s == sym]
        book = _net(held)
        mark = last_marks.get(sym, (0, None))[1]
        if mark is None and book.pos != 0:
            mark = book.entry
        seen = last_marks.get(sym, (0, None))[1]   # no mark seen: each account's book at its own entry (0)
        if sym not in started and since_ms is not None:
            p.unrealized_start = sum((b.unrealized(start_marks.get(sym) or seen or b.entry) for b in held), ZERO)
        p.position, p.entry, p.mark = book.pos, book.entry, mark
        p.unrealized = sum((b.unrealized(seen if seen is not None else b.entry) for b in held), ZERO)
    by_quote: dict[str, list[SymbolPnl]] = {}
    for sym, p in out.items():
        by_quote.setdefault(quote_of(sym), []).append(p)
    return {"since_ms": since_ms, "symbols": {s: out[s].as_dict() for s in sorted(out)},
            # the fleet's figures add each symbol's in its own quote asset: USDC and USDT 1:1 (``quote_assets``
            # says which were added; ``by_quote`` has each asset's own)
            "fleet": {**_summed("fleet", out.values()), "quote_assets": sorted(by_quote)},
            "by_quote": {q: _summed(q, ps) for q, ps in sorted(by_quote.items())},
            "exact": {s: {"realized": str(out[s].realized), "funding": str(out[s].funding),
                          "fees": str(out[s].fees)} for s in sorted(out)}}


QUOTES = ("USDT", "USDC", "BUSD", "FDUSD")   # USD-M's quote assets


def quote_of(symbol: str) -> str:
    """The asset a symbol's P&L is in: its quote asset ("?" for a name that ends in none of USD-M's)."""
    return next((q for q in QUOTES if symbol.endswith(q)), "?")


def _summed(name: str, parts: Any) -> dict[str, Any]:
    """Symbols' figures added up, without the per-symbol ones (position, entry, mark)."""
    total = SymbolPnl(name)
    for p in parts:
        total.realized += p.realized
        total.fees += p.fees
        total.clearance += p.clearance
        total.funding += p.funding
        total.unrealized += p.unrealized
        total.unrealized_start += p.unrealized_start
        total.spread += p.spread
        total.fills += p.fills
        total.maker_fills += p.maker_fills
        total.fills_without_mid += p.fills_without_mid
        total.volume += p.volume
        total.fee_assets |= p.fee_assets
        for asset, v in p.other_fees.items():
            total.other_fees[asset] = total.other_fees.get(asset, ZERO) + v
    doc = total.as_dict()
    for k in ("position", "entry_price", "mark"):
        doc.pop(k, None)
    return doc


def render(report: dict[str, Any]) -> str:
    """The report as a table: one line per symbol, then the fleet."""
    head = (f"{'SYMBOL':<10} {'REALIZED':>11} {'UNREAL':>10} {'FUNDING':>9} {'FEES':>9} {'TOTAL':>10} | "
            f"{'SPREAD':>10} {'INVENTORY':>10} {'FUNDING':>9} {'FEES':>9} {'FILLS':>6}")
    lines = ["P&L from the journal" + (f" since {report['since_ms']}" if report.get("since_ms") else ""), head]

    def line(name: str, d: dict[str, Any]) -> str:
        s = d["split"]
        return (f"{name:<10} {d['realized']:>11.4f} {d['unrealized']:>10.4f} {d['funding']:>9.4f} {d['fees']:>9.4f} "
                f"{d['total']:>10.4f} | {s['spread']:>10.4f} {s['inventory']:>10.4f} {s['funding']:>9.4f} "
                f"{s['fees']:>9.4f} {d['fills']:>6}")
    for sym, d in report["symbols"].items():
        lines.append(line(sym, d))
    by_quote = report.get("by_quote") or {}
    if len(by_quote) > 1:   # each quote asset's own, then their sum (1:1), named as such
        for quote, d in by_quote.items():
            lines.append(line(f"FLEET {quote}", d))
        lines.append(line("FLEET", report["fleet"]) + f"  ({' + '.join(by_quote)}, added 1:1)")
    else:
        lines.append(line("FLEET", report["fleet"]))
    other = report["fleet"].get("other_fees") or {}
    if other:
        lines.append("fees paid in other assets (not in the totals): "
                     + ", ".join(f"{asset} {amount:.8f}" for asset, amount in other.items()))
    return "\n".join(lines)


def bounded_report(target: Any, bounds: Any = None, **kw: Any) -> dict[str, Any]:
    """``compute`` on its own engine with the report's bounds (``db.REPORT_BOUNDS`` unless given), every
    call watched: a stopped server fails the report instead of holding its thread (the endpoint's ``/pnl``)."""
    from .db import REPORT_BOUNDS, answering, make_engine

    engine = make_engine(target, bounds or REPORT_BOUNDS)
    try:
        with answering(engine):
            return compute(engine, **kw)
    finally:
        engine.dispose()
