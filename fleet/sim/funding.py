"""Funding: each symbol's schedule, its rate's bounds, and the fees charged at every settlement.

Binance settles a USD-M perpetual's funding every 8 hours (00:00, 08:00, 16:00 UTC) unless the symbol
has an interval of its own: many settle every 4 hours, some every 2 or every hour, and the exchange
moves a symbol from one interval to another with little notice when its rate runs to the cap. Only
the symbols with an interval, a cap or a floor of their own are listed by ``GET /fapi/v1/fundingInfo``
(``fundingIntervalHours``, ``adjustedFundingRateCap``, ``adjustedFundingRateFloor``); a client learns
of a change from it and from the next settlement time every mark price frame and premiumIndex carry
(``T``, ``nextFundingTime``). A rate is per interval: the same 0.01 % costs eight times as much a day
on a symbol settling every hour as on one settling every 8 hours.

Here a symbol's spec may set ``funding_interval_hours`` and ``funding_rate_cap`` (the floor is its
negative); otherwise it settles every ``funding_interval_s`` of the simulator (tests use seconds) and
its rate stays within the simulator's bound, and fundingInfo does not list it (nor a symbol whose
interval is not a whole number of hours: fundingInfo cannot state it). At each settlement
every open position pays or receives ``-position x mark x rate`` (``ACCOUNT_UPDATE`` ``FUNDING_FEE`` and
an income row). ``POST /sim/funding/interval {"symbol", "hours"[, "next_ms"]}`` changes a symbol's
interval as the exchange does: the next settlement becomes the first whole multiple of the new
interval after now (or ``next_ms``), and fundingInfo lists the symbol from then on; a settlement due
at that very time is made first. A replayed market's funding times are the recording's
(fleet/sim/replay.py): its intervals are not changed, they are learnt from the recorded times.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Callable

from fleet.sim.book import Book
from fleet.sim.config import SimConfig, check_interval_hours
from fleet.sim.errors import invalid
from fleet.sim.frames import render_account_update
from fleet.sim.orders import Account, Position
from fleet.sim.units import ZERO, q8, s8

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
FUNDING_HISTORY_KEPT = 5000


class FundingSchedule:
    """Mixed into :class:`fleet.sim.engine.Engine`."""

    # the Engine's (and its other mixins')
    books: dict[str, Book]
    accounts: dict[str, Account]
    config: SimConfig
    now_ms: int
    next_funding_ms: int
    funding_interval_ms: int
    cross_wallet: Callable[[Account, str], Decimal]
    _emit_user: Callable[[str, Any], None]
    _income: Callable[..., None]
    book: Callable[[str | None], Book]
    rng: Any
    replay: Any

    def _init_funding(self, now_ms: int) -> None:
        """Every book's interval (its spec's, else the simulator's) and its next settlement, aligned to
        the epoch as Binance's are (00:00 UTC and every interval after)."""
        self.funding_interval_ms = int(self.config.funding_interval_s * 1000)
        for b in self.books.values():
            hours = b.spec.funding_interval_hours
            b.funding_interval_ms = hours * HOUR_MS if hours else self.funding_interval_ms
            b.next_funding_ms = (now_ms // b.funding_interval_ms + 1) * b.funding_interval_ms
            b.funding_info_ms = now_ms
        self._funding_due()

    def _funding_due(self) -> None:
        self.next_funding_ms = min((b.next_funding_ms for b in self.books.values()), default=1 << 62)

    def settle_due_funding(self, t: int) -> None:
        """Settle every symbol whose funding time has come (called as the exchange's time moves)."""
        for b in self.books.values():
            if b.next_funding_ms <= t:
                self.settle_funding(b.next_funding_ms, b.symbol)
                b.next_funding_ms += b.funding_interval_ms
        self._funding_due()

    def bound_rate(self, b: Book, rate: float) -> float:
        """The rate within the symbol's cap and floor."""
        cap = b.rate_cap
        return cap if rate > cap else -cap if rate < -cap else rate

    def wander_rate(self, b: Book, dt_s: float) -> None:
        """The rate's drift over ``dt_s`` seconds (towards the spec's rate), within its bounds."""
        drift = self.rng.gauss(0.0, self.config.funding_rate_wander * math.sqrt(dt_s / 3600.0))
        rev = (float(b.base_rate) - float(b.funding_rate)) * min(1.0, dt_s / 3600.0)
        b.funding_rate = Decimal(f"{self.bound_rate(b, float(b.funding_rate) + drift + rev):.8f}")

    def set_funding_interval(self, symbol: str, hours: int, now: int, next_ms: int | None = None) -> dict[str, Any]:
        """The exchange moves ``symbol`` to settle every ``hours``: its next settlement is the first whole
        multiple of the new interval after ``now`` (or ``next_ms``); fundingInfo lists it from now on."""
        b = self.book(symbol)
        if self.replay is not None:
            raise ValueError("a replayed market's funding times are the recording's")
        interval = check_interval_hours(hours) * HOUR_MS
        if next_ms is None:
            next_ms = (now // interval + 1) * interval
        elif type(next_ms) is not int or next_ms <= now:
            raise ValueError(f"next_ms must be a time after now ({now}), got {next_ms!r}")
        if b.next_funding_ms <= now:   # a settlement due at this very time is not skipped by the change
            self.settle_due_funding(now)
        b.funding_interval_ms, b.next_funding_ms, b.funding_info_ms = interval, next_ms, now
        b.funding_listed = True
        self._funding_due()
        return {"symbol": b.symbol, "fundingIntervalHours": hours, "nextFundingTime": next_ms}

    def funding_info(self) -> list[dict[str, Any]]:
        """GET /fapi/v1/fundingInfo: the symbols with an interval or a cap of their own."""
        rows = []
        for b in self.books.values():
            if not b.funding_listed or b.funding_interval_ms % HOUR_MS:
                continue
            rows.append({"symbol": b.symbol, "adjustedFundingRateCap": f"{b.rate_cap:.8f}",
                         "adjustedFundingRateFloor": f"{-b.rate_cap:.8f}",
                         "fundingIntervalHours": b.funding_interval_ms // HOUR_MS, "disclaimer": False,
                         "updateTime": b.funding_info_ms})
        return rows

    def set_funding_rate(self, symbol: str, rate: str | None) -> None:
        """Pin the symbol's rate (within its bounds), or let it wander again (``None``)."""
        b = self.book(symbol)
        if rate is None:
            b.rate_pinned = False
            return
        try:
            value = Decimal(str(rate))
        except ArithmeticError as exc:
            raise invalid("rate") from exc
        if not value.is_finite():
            raise invalid("rate")
        cap = Decimal(f"{b.rate_cap:.8f}")
        b.funding_rate = cap if value > cap else -cap if value < -cap else value
        b.rate_pinned = True

    def settle_funding(self, t: int, symbol: str | None = None) -> list[dict[str, Any]]:
        """Charge fee = -position x mark x rate to every open position; push FUNDING_FEE updates."""
        charged = []
        books = [self.book(symbol)] if symbol else list(self.books.values())
        for b in books:
            mark = b.mark_dec()
            rate = b.funding_rate
            b.funding_history.append({"symbol": b.symbol, "fundingRate": f"{rate:.8f}", "fundingTime": t,
                                      "markPrice": f"{mark:f}", "rateType": "Regular"})
            if len(b.funding_history) > FUNDING_HISTORY_KEPT:
                del b.funding_history[:1000]
            asset = b.spec.margin_asset
            for acct in self.accounts.values():
                pos = acct.positions.get(b.symbol)
                if pos is None or pos.amount == 0:
                    continue
                fee = q8(-(b.step * pos.amount) * mark * rate)
                pos.funding += fee
                pos.cost -= fee
                acct.wallet[asset] = acct.wallet.get(asset, ZERO) + fee
                self._income(acct, b.symbol, "FUNDING_FEE", fee, asset, t, "")
                self._emit_funding(acct, b, pos, fee, t)
                charged.append({"account": acct.name, "symbol": b.symbol, "fee": s8(fee),
                                "mark_price": f"{mark:f}", "rate": f"{rate:.8f}",
                                "position": b.qty_str(pos.amount)})
        return charged

    def _emit_funding(self, acct: Account, b: Book, pos: Position, fee: Decimal, t: int) -> None:
        """The FUNDING_FEE ACCOUNT_UPDATE. Cross: the real frame (key order as captured), the margin asset
        only, no symbol (a client attributes it through GET /fapi/v1/income: same time, asset and
        amount). Isolated: the position's wallet pays it, and the frame carries that one position."""
        asset = b.spec.margin_asset
        if b.symbol in acct.isolated:
            pos.isolated_wallet += fee
            frame = render_account_update(b, "FUNDING_FEE", acct.wallet[asset], self.cross_wallet(acct, asset), fee,
                                          pos.amount, pos.entry, pos.realized, b.mark, t, pos.isolated_wallet,
                                          pos.break_even(b.step))["a"]
        else:
            wb = s8(acct.wallet[asset])
            frame = {"B": [{"a": asset, "wb": wb, "cw": wb, "bc": s8(fee)}], "P": [], "m": "FUNDING_FEE"}
        with_symbol = acct.funding_frame_symbol
        if with_symbol if with_symbol is not None else self.config.funding_frame_symbol:
            frame["S"] = b.symbol  # the 2026 SDK's "Symbol associated with FUNDING_FEE event"
        self._emit_user(acct.name, {"e": "ACCOUNT_UPDATE", "T": t, "E": t, "a": frame})
