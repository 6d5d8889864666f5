"""The market before the simulator started: a day of 1-minute candles and a month of funding rates.

Binance always has history; an engine that reads its warm-up candles (``/klines``, the mark's
``/markPriceKlines``) or the funding rates of the last days at its start found none in a freshly
started simulator. So each modelled symbol starts with the candles its book keeps (1,499 closed
minutes before the open one, about 25 hours) and the settlements of ``FUNDING_DAYS`` days (at most
``FUNDING_ROWS_MAX``), drawn once at start:

- the mid walks backwards from the start price with the model's volatility per minute (a random walk;
  the model's regimes and jumps are for the live market), each minute's high and low a half-minute's
  move beyond its open and close;
- the synthetic takers' flow of the live market (``taker_rate`` arrivals a second, ``taker_mean_qty``
  each, 3 in 100 ten times that, buyers and sellers alike): each minute's count, volume and taker-buy
  volume drawn from it, priced at the mean of the minute's open and close. Their trade ids come first
  (1, 2, ...), the live tape's after them, so a day's count is its last id less its first plus one, as
  Binance's is; the trade lists themselves hold only the live trades;
- the funding rate reverts to the symbol's base rate, by hour, with ``funding_rate_wander``, ending
  at the rate the symbol starts with; each settlement's mark is the walk's price at that time.

It has its own random stream per symbol (``<seed>:<symbol>:history``): the live market of a seed is the
same with or without it. A replayed recording brings its own market and gets none.
"""

from __future__ import annotations

import math
import random

from fleet.sim.book import Book
from fleet.sim.market import SECONDS_PER_YEAR

HISTORY_MINUTES = 1499   # with the open candle, the 1,500 a book keeps
FUNDING_DAYS = 30
FUNDING_ROWS_MAX = 1000   # fundingRate's largest page; a test's funding every few seconds stops there
MINUTE_MS = 60_000
REVERSION_PER_HOUR = 0.1   # how far the funding rate returns to its base in an hour (backwards alike)


def backfill(b: Book, now_ms: int, volatility: float, funding_interval_ms: int, rate_wander: float,
             rng: random.Random) -> None:
    """Fill ``b`` (its open candle rolled at ``now_ms``) with the candles and settlements before it."""
    opened = now_ms - now_ms % MINUTE_MS
    sigma = volatility / math.sqrt(SECONDS_PER_YEAR)
    per_minute, half_minute = sigma * math.sqrt(60.0), sigma * math.sqrt(30.0)
    mids = _walk_back(b.mid, HISTORY_MINUTES, per_minute, rng)   # mids[k]: the price k minutes before the start
    candles = []
    for k in range(HISTORY_MINUTES, 0, -1):   # oldest first
        close, open_ = mids[k - 1], mids[k]
        high = max(open_, close) * math.exp(abs(rng.gauss(0.0, half_minute)))
        low = min(open_, close) * math.exp(-abs(rng.gauss(0.0, half_minute)))
        candles.append([opened - k * MINUTE_MS, open_, high, low, close, 0, 0, 0, 0, 0, -1, -1])
    _add_flow(b, candles, rng)
    b.candles.extend(candles)
    _funding_back(b, opened, mids, funding_interval_ms, rate_wander, sigma, rng, now_ms)


def _add_flow(b: Book, candles: list[list], rng: random.Random) -> None:
    """Each minute's trades as the synthetic takers would have made them; their ids before the live
    tape's (``b.agg_id`` moves past them)."""
    per_minute = b.spec.taker_rate * 60.0
    mean = b.taker_mean_steps * (0.97 + 0.03 * 10) + 1.0   # the live takers' mean size, shocks included
    tick = b.tick_f
    next_id = b.agg_id
    for c in candles:
        n = max(0, round(rng.gauss(per_minute, math.sqrt(per_minute)))) if per_minute > 0 else 0
        if n == 0:
            continue
        volume = max(n, round(rng.gammavariate(n, mean)))
        bought = min(volume, max(0, round(volume * rng.gauss(0.5, 0.5 / math.sqrt(n)))))
        price_ticks = round((c[1] + c[4]) / 2.0 / tick)
        c[5:12] = [volume, price_ticks * volume, n, bought, price_ticks * bought, next_id, next_id + n - 1]
        next_id += n
    b.agg_id = next_id


def _walk_back(start: float, n: int, sigma: float, rng: random.Random) -> list[float]:
    """``start`` and the ``n`` prices before it, a step of ``sigma`` (log) each, newest first."""
    out = [start]
    x = math.log(start)
    for _ in range(n):
        x -= rng.gauss(0.0, sigma)
        out.append(math.exp(x))
    return out


def _funding_back(b: Book, opened: int, mids: list[float], interval_ms: int, wander: float, sigma: float,
                  rng: random.Random, now_ms: int) -> None:
    """Settlements every ``interval_ms`` (aligned to the epoch) in the ``FUNDING_DAYS`` up to the start:
    the latest the one just before the engine's first (a start in the first minute after a settlement
    had that one neither in its history nor to come)."""
    last = now_ms // interval_ms * interval_ms   # the engine's next is the one after (fleet/sim/funding.py)
    count = min(FUNDING_ROWS_MAX, int(FUNDING_DAYS * 86_400_000 // interval_ms))
    hours = interval_ms / 3_600_000
    keep = (1.0 - REVERSION_PER_HOUR) ** hours
    base, rate = float(b.base_rate), float(b.funding_rate)
    mark, step_sigma = mids[-1], sigma * math.sqrt(interval_ms / 1000.0)
    rows = []
    for i in range(count):
        t = last - i * interval_ms
        minutes_back = max(0, (opened - t) // MINUTE_MS)   # mids[k]: the price k minutes before the start
        if minutes_back < len(mids):
            mark = mids[minutes_back]
        else:   # beyond the candles: the walk goes on by interval
            mark *= math.exp(-rng.gauss(0.0, step_sigma))
        rate = base + (rate - base) * keep + rng.gauss(0.0, wander * math.sqrt(hours))
        rows.append({"symbol": b.symbol, "fundingRate": f"{rate:.8f}", "fundingTime": t,
                     "markPrice": f"{mark:.8f}", "rateType": "Regular"})
    b.funding_history[:0] = reversed(rows)
