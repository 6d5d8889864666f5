"""Market state of one symbol: the book's bid, ask and mid, the mark price, and the 30-minute price window.

Book frames are ordered by their update id, mark frames by their event time: an older one is
counted as stale and skipped. The window takes at most one mid a second (``SAMPLE_MS``) and keeps
``WINDOW_MS``; its mean and standard deviation are running sums over offsets from a reference
price, re-centred now and then so float error cannot accumulate.
"""

from __future__ import annotations

import copy
import math
from collections import deque

from fleet.binance.events import BookTicker, MarkPrice
from fleet.config import SymbolParams

WINDOW_MS = 30 * 60 * 1000
SAMPLE_MS = 1000  # the price window takes at most one mid per second


class MarketState:
    """Bid, ask, mid, mark and the price window (the caller has checked the frames' symbol)."""

    def __init__(self) -> None:
        self.bid = 0.0
        self.ask = 0.0
        self.mid = 0.0
        self.mark = 0.0
        self._book_update_id = -1
        self._book_time = -1
        self._mark_time = -1
        self.last_market_ms = -1
        self.stale_updates = 0
        # price window: deque of (t, price - ref), with running sums for O(1) mean/stddev
        self._win: deque[tuple[int, float]] = deque()
        self._ref = 0.0
        self._sum = 0.0
        self._sumsq = 0.0
        self._last_sample = -(10**18)
        self._since_rebase = 0

    def with_params(self, params: SymbolParams) -> "MarketState":
        """The market state under new parameters: none shapes it, so prices and the window are kept
        (this one is handed over: use the returned one from now on)."""
        return copy.copy(self)

    # ------------------------------------------------------------------ reads

    @property
    def price(self) -> float:
        """The price positions are valued at: the mark, else the mid (0 before either)."""
        return self.mark or self.mid

    def price_stddev_30m(self) -> float:
        """Relative standard deviation (stddev / mean) of the mids in the last 30 minutes."""
        n = len(self._win)
        if n < 2:
            return 0.0
        mean_x = self._sum / n
        var = self._sumsq / n - mean_x * mean_x
        mean = self._ref + mean_x
        if var <= 0.0 or mean <= 0.0:
            return 0.0
        return math.sqrt(var) / mean

    def price_window_span_ms(self) -> int:
        if not self._win:
            return 0
        return self._win[-1][0] - self._win[0][0]

    @property
    def window_samples(self) -> int:
        """How many mids the window holds."""
        return len(self._win)

    # ------------------------------------------------------------------ frames

    def on_book(self, ev: BookTicker) -> bool:
        if ev.update_id < self._book_update_id:
            self.stale_updates += 1
            return False
        if ev.bid <= 0 or ev.ask <= 0 or ev.ask < ev.bid:
            return False
        self._book_update_id = ev.update_id
        self.bid = ev.bid
        self.ask = ev.ask
        self.mid = (ev.bid + ev.ask) * 0.5
        t = ev.transaction_time or ev.event_time
        self._book_time = t
        self.last_market_ms = t
        if t - self._last_sample >= SAMPLE_MS:
            self._sample(t, self.mid)
        return True

    def on_mark(self, ev: MarkPrice) -> bool:
        """A mark price frame (its funding estimate is the funding book's)."""
        if ev.event_time < self._mark_time:
            self.stale_updates += 1
            return False
        self._mark_time = ev.event_time
        self.mark = ev.mark_price
        if not self.mid:
            self.last_market_ms = ev.event_time
        return True

    def _sample(self, t: int, price: float) -> None:
        self._last_sample = t
        if not self._win:
            self._ref = price
            self._sum = self._sumsq = 0.0
        x = price - self._ref
        self._win.append((t, x))
        self._sum += x
        self._sumsq += x * x
        cutoff = t - WINDOW_MS
        win = self._win
        while win[0][0] < cutoff:
            _, old = win.popleft()
            self._sum -= old
            self._sumsq -= old * old
        self._since_rebase += 1
        if self._since_rebase >= 2 * WINDOW_MS // SAMPLE_MS:
            self._rebase()

    def _rebase(self) -> None:
        """Re-centre the running sums on the current mean, so float error cannot accumulate."""
        self._since_rebase = 0
        n = len(self._win)
        if not n:
            return
        shift = self._sum / n
        self._ref += shift
        self._win = deque((t, x - shift) for t, x in self._win)
        self._sum = sum(x for _, x in self._win)
        self._sumsq = sum(x * x for _, x in self._win)
