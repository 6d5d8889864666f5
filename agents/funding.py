"""Funding of one symbol: the exchange's estimate, its EMA prediction, its interval, and the fees booked once.

The estimate (markPrice stream, every second) is sampled into the EMA prediction once per
``funding.predict_sample_sec`` (60 s), with weight ``predict_alpha``. Funding P&L is booked from the
exchange's fees: a FUNDING_FEE frame that names this symbol (``a.S``), or, for the cross-margin
frame that names none, the account's FUNDING_FEE income rows that the runtime reads when asked
(``lookup_start`` / ``on_income``), once per ``tranId``. A fee seen both ways (a frame naming the
symbol and its income row) is booked once: the two are paired by amount within ``FUNDING_MATCH_MS``.

A rate is per funding interval, and intervals differ: most symbols settle every 8 hours, many every 4,
some every 2 or every hour, and the exchange moves a symbol between them when its rate runs to the cap
(``GET /fapi/v1/fundingInfo`` lists the symbols that do not settle every 8 hours). The same 0.01 % costs
a position eight times as much a day on an hourly symbol. ``funding.sensitivity`` is tuned on 8 hours,
so the quotes' funding shift takes the prediction scaled to 8 hours (``shift_rate``); the prediction
and ``mm_predicted_funding_rate`` stay in the exchange's units. The interval is the runtime's to read
(at the start, every hour, and when a mark frame's next settlement time ``T`` is not the last one plus
the interval: the schedule moved, ``schedule_moved``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from decimal import Decimal
from typing import Any, Callable, Iterable

from fleet.config import SymbolParams

_FUNDING_KEEP = 512
HOUR_MS = 3_600_000
# the interval the funding parameters speak of (Binance's default); a symbol not in fundingInfo settles so
REFERENCE_INTERVAL_MS = 8 * HOUR_MS
DAY_MS = 24 * HOUR_MS
# A frame and the income row of one funding fee carry the same settlement time (the simulator: the
# same millisecond); fees of one symbol are at least the funding interval apart.
FUNDING_MATCH_MS = 5_000
FUNDING_ROW_LISTED_MS = 60_000   # an income read this long after a fee frame lists its row if it is ours
# A fee without a symbol is looked up if this symbol held a position at most this long before it;
# income rows are read from this long before the fee's frame.
FUNDING_LOOKBACK_MS = 60_000
FEE_FRAME_GRACE_MS = 20_000   # a settlement's fee frame comes within seconds of it: none by then is lost
# A look-up no income row has answered is given up once a fee this much newer needs one.
FUNDING_LOOKUP_HORIZON_MS = 3_600_000
# the look-ups and settlements due: the horizon (an hour) bounds them, this only caps a flood (32 dropped the
# oldest of a 16-minute starvation of 30-second settlements, and their fees were never booked: a hostile run)
_FUNDING_LOOKUPS_KEEP = 1024


class FundingBook:
    """The funding estimate and prediction, the fees booked (frames and income rows), the look-ups due."""

    def __init__(self, params: SymbolParams) -> None:
        self.funding_rate_estimate = 0.0
        self.predicted_funding = 0.0
        self._samples = 0
        self._last_sample = -(10**18)
        self._sample_ms = 0
        self._alpha = 0.0
        self._configure(params)
        self.funding_pnl = 0.0
        self._total = Decimal(0)
        self.last_fee_ms = 0   # the newest fee booked (exchange time)
        self._carried_until = 0   # income rows up to this time are inside the carried books (restore)
        self._seen: OrderedDict[tuple[int, str], None] = OrderedDict()  # frames already booked
        # booked fees: [time, amount, source ("frame" / "income"), paired with the other source]
        self._booked: deque[list[Any]] = deque(maxlen=_FUNDING_KEEP)
        self._income_seen: OrderedDict[int, None] = OrderedDict()  # income tranIds already booked
        self._lookups: deque[int] = deque(maxlen=_FUNDING_LOOKUPS_KEEP)  # times of symbol-less fees
        self._expected: deque[int] = deque(maxlen=_FUNDING_LOOKUPS_KEEP)  # settlements passed, fee not yet seen
        self.interval_ms = REFERENCE_INTERVAL_MS   # as the runtime last read it (fundingInfo)
        self.interval_read = False                 # fundingInfo answered once (until then 8 h is a guess)
        self.next_funding_ms = 0                   # the next settlement, as the mark frames last said
        self.next_seen_ms = 0                      # when they first said it (exchange time): no settlement since
        self.said_ms = 0                           # the newest frame that said it
        self.schedule_moved = False                # a next settlement off the interval: the runtime reads it again
        self._last_step = 0                        # the last move of the next settlement time

    def _configure(self, params: SymbolParams) -> None:
        self._sample_ms = int(params.funding.predict_sample_sec * 1000)
        self._alpha = params.funding.predict_alpha

    def with_params(self, params: SymbolParams) -> "FundingBook":
        """The funding book under new parameters (the prediction's sampling and weight): the
        prediction so far, the fees booked and the look-ups due are kept (this one is handed over)."""
        new = copy.copy(self)
        new._configure(params)
        return new

    # ------------------------------------------------------------------ the estimate

    def on_estimate(self, event_time: int, rate: float) -> None:
        """The exchange's funding estimate of a mark price frame (already known to be newer)."""
        self.funding_rate_estimate = rate
        if event_time - self._last_sample >= self._sample_ms:
            self._last_sample = event_time
            if self._samples == 0:
                self.predicted_funding = rate
            else:
                a = self._alpha
                self.predicted_funding = a * rate + (1.0 - a) * self.predicted_funding
            self._samples += 1

    @property
    def shift_rate(self) -> float:
        """The predicted rate over the 8 hours ``funding.sensitivity`` is tuned on."""
        return self.predicted_funding * (REFERENCE_INTERVAL_MS / self.interval_ms)

    # ------------------------------------------------------------------ the schedule

    def set_interval(self, interval_ms: int) -> bool:
        """The symbol's funding interval, as the exchange lists it. Returns whether it changed."""
        if interval_ms <= 0 or interval_ms == self.interval_ms:
            return False
        self.interval_ms = interval_ms
        return True

    def on_schedule(self, next_ms: int, at_ms: int = 0) -> None:
        """A mark frame's next settlement time (``T``), said at ``at_ms``: a move that is neither the
        interval nor the move before it means the interval may have changed (or frames were lost across a
        settlement). A
        schedule fundingInfo cannot state (an exchange settling every few seconds, in tests) is read
        once, not at every settlement."""
        prev = self.next_funding_ms
        if next_ms <= 0:
            return
        self.said_ms = max(self.said_ms, at_ms)
        if next_ms == prev:
            return
        self.next_funding_ms = next_ms
        self.next_seen_ms = at_ms
        if prev:
            step = next_ms - prev
            if step != self.interval_ms and step != self._last_step:
                self.schedule_moved = True
            self._last_step = step

    def unexplained(self) -> bool:
        """The last move of the next settlement time is an interval Binance uses (whole hours dividing
        24) other than the one read: fundingInfo has not caught up yet, so it is read again."""
        step = self._last_step
        return step > 0 and step != self.interval_ms and step % HOUR_MS == 0 and DAY_MS % step == 0

    # ------------------------------------------------------------------ fees

    def on_fee(self, t: int, amount: Decimal) -> bool:
        """A FUNDING_FEE frame naming this symbol, in its margin asset: booked once."""
        key = (t, str(amount))
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > _FUNDING_KEEP:
            self._seen.popitem(last=False)
        if self._pair(t, amount, "income"):
            return False  # already booked from its income row
        self._book(t, amount, "frame")
        return True

    def ask_lookup(self, t: int, held: bool) -> bool:
        """A cross-margin FUNDING_FEE frame naming no symbol at ``t``: if this symbol held a position
        then (``held``), its fee is among the account's income rows: a look-up is due."""
        if held and t not in self._lookups:
            while self._lookups and self._lookups[0] < t - FUNDING_LOOKUP_HORIZON_MS:
                self._lookups.popleft()
            self._lookups.append(t)
            return True
        return False

    def expect_fee(self, t: int, held: bool) -> None:
        """The settlement at ``t`` has passed (the mark frames moved on to the next) with a position held:
        its fee is due. If no fee of that time is booked ``FEE_FRAME_GRACE_MS`` on (its frame lost: a gap in
        the user stream across the settlement, a frame dropped), its income row is looked up as a
        symbol-less frame's is (``check_expected``). The books missed such a fee for good."""
        if held and t not in self._expected:
            self._expected.append(t)

    def check_expected(self, now_ms: int, held_at: Callable[[int], bool]) -> None:
        """The settlements whose grace ran out: a look-up for each whose fee no frame booked."""
        while self._expected and self._expected[0] + FEE_FRAME_GRACE_MS <= now_ms:
            t = self._expected.popleft()
            if self.last_fee_ms < t - FUNDING_MATCH_MS:
                self.ask_lookup(t, held_at(t))

    def lookup_start(self) -> int | None:
        """Exchange ms from which the runtime should read this symbol's FUNDING_FEE income rows
        (``GET /fapi/v1/income``) for fees whose frame named no symbol; None when nothing is due."""
        if not self._lookups:
            return None
        return min(self._lookups) - FUNDING_LOOKBACK_MS

    def on_income(self, rows: Iterable[Any], symbol: str, margin_asset: str, read_at_ms: int | None = None) -> int:
        """Income rows (Binance's ``{"symbol","incomeType","income","asset","time","tranId"}``): this
        symbol's FUNDING_FEE rows are booked once each, by ``tranId``. A row whose fee was already
        booked from a frame naming the symbol (no tranId there: the same amount, within
        ``FUNDING_MATCH_MS``, paired one to one) is not booked again. A row settles the look-ups of
        its time. Returns how many rows were booked."""
        booked = 0
        for r in rows:
            if r.get("incomeType") != "FUNDING_FEE" or r.get("symbol") != symbol:
                continue
            if margin_asset and r.get("asset", margin_asset) != margin_asset:
                continue
            try:
                tran = int(r["tranId"])
                t = int(r["time"])
                amount = Decimal(str(r["income"]))
            except (KeyError, TypeError, ValueError, ArithmeticError):
                continue
            if t <= self._carried_until:
                self._pair(t, amount, "frame")   # inside the books a previous agent left (its frame, if carried)
                continue
            if not amount.is_finite():   # "NaN" reads as a Decimal: a fee of NaN would poison the P&L
                continue
            for lt in [x for x in self._lookups if abs(x - t) <= FUNDING_MATCH_MS]:
                self._lookups.remove(lt)
            if tran in self._income_seen:
                continue
            self._income_seen[tran] = None
            if len(self._income_seen) > _FUNDING_KEEP:
                self._income_seen.popitem(last=False)
            if self._pair(t, amount, "frame"):
                # its frame named the symbol and was booked; the books now hold this row's time too, so the
                # books carried to a next agent skip the row (its frame no longer among the unpaired)
                self.last_fee_ms = max(self.last_fee_ms, t)
                continue
            self._book(t, amount, "income")
            booked += 1
        if read_at_ms is not None:   # a read this long after a look-up's frame without a row of ours near it:
            # the frame was another symbol's (a cross account's fees come symbol-less; the look-up stayed due
            # until this symbol's next settlement, an income read of weight 30 at every beat, for hours)
            for lt in [x for x in self._lookups if x < read_at_ms - FUNDING_ROW_LISTED_MS]:
                self._lookups.remove(lt)
        return booked

    def _pair(self, t: int, amount: Decimal, source: str) -> bool:
        """Pair a fee with the nearest unpaired one of ``source`` booked with the same amount within
        ``FUNDING_MATCH_MS``: the same fee, seen the other way."""
        best = None
        for entry in self._booked:
            if entry[2] == source and not entry[3] and entry[1] == amount and abs(entry[0] - t) <= FUNDING_MATCH_MS:
                if best is None or abs(entry[0] - t) < abs(best[0] - t):
                    best = entry
        if best is None:
            return False
        best[3] = True
        return True

    def _book(self, t: int, amount: Decimal, source: str) -> None:
        self._booked.append([t, amount, source, False])
        self._total += amount
        self.funding_pnl = float(self._total)
        self.last_fee_ms = max(self.last_fee_ms, t)

    @property
    def total(self) -> Decimal:
        """The fees booked, exactly."""
        return self._total

    def unpaired_frames(self) -> list[tuple[int, str]]:
        """Fees booked from frames naming the symbol whose income row has not been seen, within the match
        window of the newest fee: a successor pairs their rows with them (``restore``)."""
        return [(e[0], str(e[1])) for e in self._booked
                if e[2] == "frame" and not e[3] and e[0] >= self.last_fee_ms - FUNDING_MATCH_MS]

    def restore(self, total: Decimal, last_fee_ms: int, frames: Iterable[tuple[int, str]] = ()) -> None:
        """The fees a previous agent of the symbol booked (agents/carry.py), before any of this one's:
        an income row up to its newest fee is inside ``total``, never booked again (a cross-margin
        look-up reads a minute back). A row a moment after it is paired with the fees the previous agent
        booked from frames (``frames``, from ``unpaired_frames``) like any other row; a fee that is
        none of them is booked, however soon after the carried one it came."""
        self._total += total
        self.funding_pnl = float(self._total)
        self.last_fee_ms = max(self.last_fee_ms, last_fee_ms)
        self._carried_until = max(self._carried_until, last_fee_ms)
        for t, amount in frames:
            self._booked.append([int(t), Decimal(amount), "frame", False])
