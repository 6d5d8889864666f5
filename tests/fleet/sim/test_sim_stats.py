"""The trading statistics, ``GET /futures/data/...`` (fleet/sim/stats.py), as Binance answers them."""

from __future__ import annotations

from decimal import Decimal

from fleet.sim.testkit import ManualClock, SimClient

FIVE_MIN_MS = 300_000
RATIOS = ("globalLongShortAccountRatio", "topLongShortAccountRatio", "topLongShortPositionRatio")


async def test_each_statistic_answers_closed_periods_oldest_first_in_binances_layout(sim):
    async with SimClient.for_sim(sim) as c:
        clock = await c.public("GET", "/fapi/v1/time")
        now = clock.json["serverTime"]
        r = await c.public("GET", "/futures/data/openInterestHist", {"symbol": "BTCUSDT", "period": "5m"})
        assert r.status == 200   # no weight: the minute's count as the clock's read left it
        assert r.headers["X-MBX-USED-WEIGHT-1M"] == clock.headers["X-MBX-USED-WEIGHT-1M"]
        rows = r.json
        assert len(rows) == 30                                                # the default limit
        assert set(rows[0]) == {"symbol", "sumOpenInterest", "sumOpenInterestValue", "CMCCirculatingSupply",
                                "timestamp"}
        times = [row["timestamp"] for row in rows]
        assert all(isinstance(t, int) and t % FIVE_MIN_MS == 0 for t in times)
        assert times == sorted(times) and len(set(times)) == 30 and times[-1] + FIVE_MIN_MS <= now
        assert all(len(row["sumOpenInterestValue"].split(".")[1]) == 8 for row in rows)

        klines = (await c.public("GET", "/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1h",
                                                            "limit": "5"})).json
        taker = (await c.public("GET", "/futures/data/takerlongshortRatio",
                                {"symbol": "BTCUSDT", "period": "1h", "limit": "500"})).json
        by_time = {row["timestamp"]: row for row in taker}
        for k in klines[:-1]:   # the closed hours: the taker volumes are the candles'
            row = by_time[k[0]]
            buy, volume = Decimal(k[9]), Decimal(k[5])
            assert Decimal(row["buyVol"]) == buy and Decimal(row["sellVol"]) == volume - buy
            assert row["buySellRatio"] == f"{buy / (volume - buy):.4f}"
        assert klines[-1][0] not in by_time   # the hour still open has no point
        first_minute = (await c.public("GET", "/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m",
                                                                  "limit": "1500"})).json[0][0]
        for period, ms in (("4h", 4 * 3_600_000), ("1d", 86_400_000)):   # no point of a period held in part
            rows = (await c.public("GET", "/futures/data/takerlongshortRatio",
                                   {"symbol": "BTCUSDT", "period": period, "limit": "500"})).json
            assert all(row["timestamp"] >= first_minute and row["timestamp"] % ms == 0 for row in rows), rows

        for kind in RATIOS:
            rows = (await c.public("GET", f"/futures/data/{kind}", {"symbol": "ETHUSDC", "period": "15m",
                                                                     "limit": "4"})).json
            assert len(rows) == 4 and set(rows[0]) == {"symbol", "longAccount", "longShortRatio", "shortAccount",
                                                       "timestamp"}
            for row in rows:
                long, short = Decimal(row["longAccount"]), Decimal(row["shortAccount"])
                assert long + short == 1 and Decimal("0.35") <= long <= Decimal("0.65")
                assert row["longShortRatio"] == f"{long / short:.4f}"

        basis = (await c.public("GET", "/futures/data/basis", {"pair": "BTCUSDT", "contractType": "PERPETUAL",
                                                                "period": "5m", "limit": "3"})).json
        assert len(basis) == 3 and basis[0]["annualizedBasisRate"] == "" and basis[0]["contractType"] == "PERPETUAL"
        for row in basis:
            assert Decimal(row["futuresPrice"]) - Decimal(row["indexPrice"]) == Decimal(row["basis"])


async def test_a_window_from_a_start_and_the_limits_of_a_query(sim):
    async with SimClient.for_sim(sim) as c:
        latest = (await c.public("GET", "/futures/data/openInterestHist",
                                 {"symbol": "ETHUSDC", "period": "5m", "limit": "500"})).json
        start = latest[10]["timestamp"]
        page = (await c.public("GET", "/futures/data/openInterestHist",
                               {"symbol": "ETHUSDC", "period": "5m", "limit": "3", "startTime": str(start)})).json
        assert [row["timestamp"] for row in page] == [row["timestamp"] for row in latest[10:13]]
        end = latest[-5]["timestamp"]
        page = (await c.public("GET", "/futures/data/openInterestHist",
                               {"symbol": "ETHUSDC", "period": "5m", "limit": "2", "endTime": str(end)})).json
        assert [row["timestamp"] for row in page] == [row["timestamp"] for row in latest[-6:-4]]
        refused = {
            ("openInterestHist", (("symbol", "ETHUSDC"),)): (-1102, "period"),
            ("openInterestHist", (("symbol", "ETHUSDC"), ("period", "3m"))): (-1130, "period"),
            ("openInterestHist", (("symbol", "ETHUSDC"), ("period", "5m"), ("limit", "501"))): (-1130, "limit"),
            ("openInterestHist", (("symbol", "NOPEUSDT"), ("period", "5m"))): (-1121, "symbol"),
            ("takerlongshortRatio", (("period", "5m"),)): (-1102, "symbol"),
            ("basis", (("pair", "BTCUSDT"), ("period", "5m"))): (-1102, "contractType"),
            ("basis", (("pair", "BTCUSDT"), ("contractType", "CURRENT_QUARTER"), ("period", "5m"))): (-1121, "symbol"),
        }
        for (path, params), (code, named) in refused.items():
            r = await c.public("GET", f"/futures/data/{path}", dict(params))
            assert r.status == 400 and r.json["code"] == code and named in r.json["msg"], (path, params, r.json)


async def test_the_same_seed_draws_the_same_ratios(sim_factory):
    one, two = await sim_factory(seed=11), await sim_factory(seed=11)

    async def ratios(sim) -> list:
        async with SimClient.for_sim(sim) as c:
            return (await c.public("GET", "/futures/data/topLongShortAccountRatio",
                                   {"symbol": "SOLUSDT", "period": "1h", "limit": "20"})).json

    first, second = await ratios(one), await ratios(two)
    assert first and [(r["timestamp"], r["longAccount"]) for r in first] == \
        [(r["timestamp"], r["longAccount"]) for r in second]


async def test_the_statistics_share_a_limit_of_their_own_apart_from_the_weight(sim_factory):
    clock = ManualClock()
    sim = await sim_factory(config={"rate_limits": {"stats_reads_per_5min": 3}}, clock=clock)
    async with SimClient.for_sim(sim) as c:
        for kind in ("openInterestHist", "takerlongshortRatio", "globalLongShortAccountRatio"):
            r = await c.public("GET", f"/futures/data/{kind}", {"symbol": "ETHUSDC", "period": "5m", "limit": "1"})
            assert r.status == 200
        r = await c.public("GET", "/futures/data/topLongShortPositionRatio", {"symbol": "ETHUSDC", "period": "5m"})
        assert (r.status, r.json["code"]) == (429, -1003) and "5 minutes for futures data" in r.json["msg"]
        assert (await c.public("GET", "/fapi/v1/time")).status == 200   # the weight's requests go on
        assert (await c.public("GET", "/fapi/v1/fundingInfo")).status == 200   # and fundingRate's own limit
