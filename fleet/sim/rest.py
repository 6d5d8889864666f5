"""The simulator's REST handlers that need more than one engine call: exchangeInfo, books, tickers,
batches, account settings. Mixed into :class:`fleet.sim.server.SimServer`."""

from __future__ import annotations

import asyncio
import json
from bisect import bisect_left
from itertools import islice, takewhile
from operator import itemgetter
from typing import Any, Iterator, Sequence

from fleet.sim.config import SimConfig
from fleet.sim.delisting import ONBOARD_MS
from fleet.sim.engine import Engine, SimApiError, missing
from fleet.sim.errors import invalid, parse_long
from fleet.sim.frames import ticker_24h
from fleet.sim.ratelimit import RateLimiter
from fleet.sim.streams import KLINE_MINUTES

# The contract types continuousKlines documents (exchangeInfo's list has more: CURRENT_MONTH, ...)
CONTINUOUS_CONTRACT_TYPES = ("PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER")


class RestHandlers:
    """Handlers take (account, params, now) and return the JSON body; errors raise SimApiError."""

    engine: Engine
    config: SimConfig
    limiter: RateLimiter


    def _exchange_info(self, now: int) -> dict[str, Any]:
        lim = self.limiter.limits
        symbols = []
        assets = set()
        for b in self.engine.books.values():
            sp = b.spec
            assets.update({sp.quote_asset})
            symbols.append({
                "symbol": b.symbol, "pair": b.symbol, "contractType": "PERPETUAL", "deliveryDate": b.delivery_ms,
                "onboardDate": ONBOARD_MS, "status": b.status, "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000", "baseAsset": sp.base_asset, "quoteAsset": sp.quote_asset,
                "marginAsset": sp.margin_asset, "pricePrecision": b.price_precision,
                "quantityPrecision": b.qty_precision, "baseAssetPrecision": 8, "quotePrecision": 8,
                "underlyingType": "COIN", "underlyingSubType": [], "settlePlan": 0, "triggerProtect": "0.0500",
                "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": b.price_str(-(-b.min_price_ticks // b.tick_multiple)
                                                                          * b.tick_multiple),
                     "maxPrice": sp.max_price, "tickSize": f"{b.tick * b.tick_multiple:f}"},
                    {"filterType": "LOT_SIZE", "minQty": f"{b.min_qty:f}", "maxQty": f"{b.max_qty:f}",
                     "stepSize": sp.step_size},
                    {"filterType": "MARKET_LOT_SIZE", "minQty": f"{b.market_min_qty:f}",
                     "maxQty": f"{b.market_max_qty:f}", "stepSize": sp.market_step_size or sp.step_size},
                    {"filterType": "MAX_NUM_ORDERS", "limit": sp.max_num_orders},
                    {"filterType": "MIN_NOTIONAL", "notional": f"{b.min_notional:f}"},
                    {"filterType": "PERCENT_PRICE", "multiplierUp": sp.multiplier_up,
                     "multiplierDown": sp.multiplier_down, "multiplierDecimal": "4"},
                    {"filterType": "POSITION_RISK_CONTROL", "positionControlSide": "NONE"},
                ],
                # as live lists them (2026-09): the conditional ones are the Algo Service's since 2025-12
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                               "TRAILING_STOP_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
                "permissionSets": ["GRID", "COPY", "DCA", "PSB"]})
        return {"timezone": "UTC", "serverTime": now, "futuresType": "U_MARGINED",
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                     "limit": lim.weight_per_minute},
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                     "limit": lim.orders_per_minute},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                     "limit": lim.orders_per_10s}],
                "exchangeFilters": [],
                "assets": [{"asset": a, "marginAvailable": True, "autoAssetExchange": "0"} for a in sorted(assets)],
                "symbols": symbols}

    @staticmethod
    def _depth_weight(params: dict[str, str]) -> int:
        try:
            limit = parse_long(params.get("limit") or "500")
        except ValueError:
            return 2
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20

    def _rpi_depth(self, account: Any, params: dict[str, str], now: int) -> dict[str, Any]:
        """GET /fapi/v1/rpiDepth: the book with the Retail Price Improvement orders, which no one rests
        here: the depth's, 1,000 levels a side (the one limit Binance takes), weight 20."""
        if (params.get("limit") or "1000") != "1000":
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        return self._depth(account, params, now, default="1000")

    def _depth(self, account: Any, params: dict[str, str], now: int, default: str = "500") -> dict[str, Any]:
        b = self.engine.book(params.get("symbol"))
        raw = params.get("limit") or default
        try:
            limit = parse_long(raw)
        except ValueError:
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.") from None
        if limit not in (5, 10, 20, 50, 100, 500, 1000):   # Binance's -4021 INVALID_DEPTH_LIMIT
            raise SimApiError(-4021, f"{limit} is not valid depth limit.")
        bids, asks = b.depth(limit)
        self.engine.note_depth_snapshot(b, limit)
        return {"lastUpdateId": b.update_id, "E": now, "T": now, "bids": bids, "asks": asks}

    @staticmethod
    def _limit(params: dict[str, str], default: int, maximum: int) -> int:
        raw = params.get("limit") or str(default)
        try:
            limit = parse_long(raw)
        except ValueError:
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.") from None
        if not 1 <= limit <= maximum:
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    @staticmethod
    def _int_param(params: dict[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        try:
            return parse_long(raw)
        except ValueError:
            raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.") from None

    def _trades(self, account: Any, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        limit = self._limit(params, 500, 1000)
        return self._trade_rows(b, _latest(b.recent_trades, limit))

    def _historical_trades(self, account: Any, params: dict[str, str], now: int) -> Any:
        """Old trades lookup (MARKET_DATA: the API key, no signature): from ``fromId`` on, or the latest;
        the simulator keeps a symbol's last RECENT_TRADES_KEPT trades (a ``fromId`` older than those
        answers from the oldest kept: its first id says so)."""
        b = self.engine.book(params.get("symbol"))
        limit = self._limit(params, 100, 500)
        from_id = self._int_param(params, "fromId")
        if from_id is None:
            return self._trade_rows(b, _latest(b.recent_trades, limit))
        return self._trade_rows(b, list(islice(_since(b.recent_trades, from_id, 0), limit)))

    @staticmethod
    def _trade_rows(b: Any, rows: list[tuple[int, int, int, int, bool]]) -> list[dict[str, Any]]:
        return [{"id": aid, "price": b.price_str(p), "qty": b.qty_str(q),
                 "quoteQty": f"{b.notional_unit * p * q:f}", "time": t, "isBuyerMaker": m,
                 "isRPITrade": False} for aid, p, q, t, m in rows]

    def _agg_trades(self, account: Any, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        limit = self._limit(params, 500, 1000)
        from_id = self._int_param(params, "fromId")
        start, end = self._int_param(params, "startTime"), self._int_param(params, "endTime")
        if start is not None and end is not None and end - start > 3_600_000:   # Binance: less than an hour
            raise SimApiError(-1127, "More than 1 hours between startTime and endTime.")
        trades = b.recent_trades
        if from_id is not None or start is not None:   # the first trades from there
            rows = _since(trades, from_id, 0) if from_id is not None else _since(trades, start, 3)
            rows = (r for r in rows if start is None or r[3] >= start)
            rows = list(islice(takewhile(lambda r: end is None or r[3] <= end, rows), limit))
        else:                                          # the latest trades, up to endTime
            rows = _latest(trades if end is None else [r for r in trades if r[3] <= end], limit)
        return [{"a": aid, "p": b.price_str(p), "q": b.qty_str(q), "nq": b.qty_str(q), "f": aid, "l": aid,
                 "T": t, "m": m} for aid, p, q, t, m in rows]

    _KLINE_MINUTES = KLINE_MINUTES

    @staticmethod
    def _klines_weight(params: dict[str, str]) -> int:
        try:
            limit = parse_long(params.get("limit") or "500")
        except ValueError:
            return 1
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10

    def _kline_window(self, params: dict[str, str]) -> tuple[str, int | None, int | None, int]:
        """A kline query's interval, start, end and limit (500 by default, at most 1500)."""
        interval = params.get("interval")
        if not interval:
            raise missing("interval")
        if interval not in self._KLINE_MINUTES:
            raise SimApiError(-1120, "Invalid interval.")
        limit = self._limit(params, 500, 1500)
        start, end = self._int_param(params, "startTime"), self._int_param(params, "endTime")
        if start is not None and end is not None and start > end:
            raise SimApiError(-1023, "Start time is greater than end time.")
        return interval, start, end, limit

    def _klines(self, account: Any, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        return b.klines(*self._kline_window(params))

    def _continuous_klines(self, account: Any, params: dict[str, str], now: int) -> Any:
        """GET /fapi/v1/continuousKlines: a pair's candles by contract type; the simulator's symbols are
        perpetuals, so PERPETUAL is the one contract each pair has."""
        pair = params.get("pair")
        if not pair:
            raise missing("pair")
        b = self.engine.book(pair)
        contract = params.get("contractType")
        if not contract:
            raise missing("contractType")
        if contract not in CONTINUOUS_CONTRACT_TYPES:
            raise SimApiError(-1130, "Data sent for parameter 'contractType' is not valid.")
        if contract != "PERPETUAL":
            raise SimApiError(-1121, "Invalid symbol.")   # no delivery contract of the pair is listed
        return b.klines(*self._kline_window(params))

    def _price_klines(self, kind: str, by: str) -> Any:
        """GET /fapi/v1/markPriceKlines, /indexPriceKlines (by ``pair``) and /premiumIndexKlines."""
        def handler(account: Any, params: dict[str, str], now: int) -> Any:
            name = params.get(by)
            if not name:
                raise missing(by)
            return self.engine.book(name).price_klines(kind, *self._kline_window(params))
        return handler

    def _book_ticker(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine
        if params.get("symbol"):
            return e.book_ticker(e.book(params["symbol"]))
        return [e.book_ticker(b) for b in e.books.values()]

    def _premium_index(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine
        if params.get("symbol"):
            return e.premium_index(e.book(params["symbol"]))
        return [e.premium_index(b) for b in e.books.values()]

    def _ticker_price(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine

        def one(b: Any) -> dict[str, Any]:
            return {"symbol": b.symbol, "price": b.price_str(round(b.last_price / b.tick_f)), "time": now}
        if params.get("symbol"):
            return one(e.book(params["symbol"]))
        return [one(b) for b in e.books.values()]

    def _ticker_24h(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine
        if params.get("symbol"):
            return ticker_24h(e.book(params["symbol"]), now)
        return [ticker_24h(b, now) for b in e.books.values()]

    def _funding_rate(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine
        books = [e.book(params["symbol"])] if params.get("symbol") else list(e.books.values())
        rows = [r for b in books for r in b.funding_history]
        start, end = self._int_param(params, "startTime"), self._int_param(params, "endTime")
        limit = self._limit(params, 100, 1000)   # Binance: default 100, max 1000
        if start is not None:
            rows = [r for r in rows if r["fundingTime"] >= start]
        if end is not None:
            rows = [r for r in rows if r["fundingTime"] <= end]
        rows.sort(key=lambda r: r["fundingTime"])
        return rows[:limit] if params.get("startTime") else rows[-limit:]

    def _batch_new(self, account: str, params: dict[str, str], now: int) -> list[Any]:
        items = _batch_list(params, "batchOrders", 5)
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.engine.new_order(account, _stringify(item), now))
            except SimApiError as exc:
                out.append(exc.body())
        return out

    def _batch_modify(self, account: str, params: dict[str, str], now: int) -> list[Any]:
        items = _batch_list(params, "batchOrders", 5)
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.engine.modify_order(account, _stringify(item), now))
            except SimApiError as exc:
                out.append(exc.body())
        return out

    def _batch_cancel(self, account: str, params: dict[str, str], now: int) -> list[Any]:
        symbol = params.get("symbol")
        self.engine.book(symbol)
        ids_name = _spelled(params, "orderIdList")
        cids_name = _spelled(params, "origClientOrderIdList")
        if ids_name is not None:
            ids = _batch_list(params, ids_name, 10)
            if not all(type(i) is int for i in ids):   # Binance: a LIST<LONG>; ["1598...", ...] is unsupported
                raise SimApiError(-1130, f"Data sent for parameter '{ids_name}' is not valid.")
            reqs = [{"symbol": symbol, "orderId": str(i)} for i in ids]
        elif cids_name is not None:
            cids = _batch_list(params, cids_name, 10)
            reqs = [{"symbol": symbol, "origClientOrderId": str(c)} for c in cids]
        else:
            raise SimApiError(-1102, "Param 'orderIdList' or 'origClientOrderIdList' must be sent, but both "
                                     "were empty/null!")
        out: list[Any] = []
        for req in reqs:
            try:
                out.append(self.engine.cancel_order(account, req, now))  # type: ignore[arg-type]
            except SimApiError as exc:
                out.append(exc.body())
        return out

    def _position_side(self, account: str, params: dict[str, str], now: int) -> Any:
        """The account's position mode, for every symbol: only while it holds no position and no open order.
        The simulator trades one-way mode only: an account configured in Hedge Mode may leave it, none
        may enter it."""
        raw = (params.get("dualSidePosition") or "").lower()
        if raw not in ("true", "false"):
            raise missing("dualSidePosition") if not raw else invalid("dualSidePosition")
        acct = self.engine.account(account)
        if (raw == "true") == acct.dual_side:
            raise SimApiError(-4059, "No need to change position side.")
        if raw == "true":
            # -1020 as for a Hedge Mode order: -4068 would say a position exists, and a client that reads
            # it so could close positions to retry
            raise SimApiError(-1020, "This operation is not supported: the simulator trades one-way mode only.")
        if any(p.amount for p in acct.positions.values()):
            raise SimApiError(-4068, "Position side cannot be changed if there exists position.")
        if acct.open or any(a.account == acct.name for a in self.engine.algo.open.values()):
            raise SimApiError(-4067, "Position side cannot be changed if there exists open orders.")
        acct.dual_side = False
        return {"code": 200, "msg": "success"}

    def _multi_assets(self, account: str, params: dict[str, str], now: int) -> Any:
        """POST /fapi/v1/multiAssetsMargin: the simulator margins each symbol in its own asset (single-asset
        mode) only: asked to stay so, Binance's -4171; asked for Multi-Assets mode, -1020 (it was a 405
        answered -1000, the code of an unknown execution status)."""
        raw = (params.get("multiAssetsMargin") or "").lower()
        if raw not in ("true", "false"):
            raise missing("multiAssetsMargin") if not raw else invalid("multiAssetsMargin")
        self.engine.account(account)
        if raw == "false":
            raise SimApiError(-4171, "Adjusted asset mode is currently set and does not need to be adjusted.")
        raise SimApiError(-1020, "This operation is not supported: the simulator margins in single-asset mode only.")

    def _commission_rate(self, account: str, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        return {"symbol": b.symbol, "makerCommissionRate": self.config.maker_commission,
                "takerCommissionRate": self.config.taker_commission,
                "rpiCommissionRate": self.config.maker_commission}   # no RPI order here: the maker's

    def _fee_burn(self, account: str, params: dict[str, str], now: int) -> Any:
        """POST /fapi/v1/feeBurn: the account's BNB fee discount switch, kept and read back
        (``GET``); the simulator charges every fee in the margin asset whatever it says."""
        raw = (params.get("feeBurn") or "").lower()
        if raw not in ("true", "false"):
            raise missing("feeBurn") if not raw else invalid("feeBurn")
        self.engine.account(account).fee_burn = raw == "true"
        return {"code": 200, "msg": "success"}

    def _order_limits(self, account: str, params: dict[str, str], now: int) -> Any:
        per_10s, per_minute = self.limiter.order_limits(account)
        return [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": per_10s},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": per_minute}]

    def _leverage_bracket(self, account: str, params: dict[str, str], now: int) -> Any:
        e = self.engine
        books = [e.book(params["symbol"])] if params.get("symbol") else list(e.books.values())
        return [{"symbol": b.symbol, "brackets": b.brackets.json()} for b in books]

    def _symbol_config(self, account: str, params: dict[str, str], now: int) -> Any:
        """GET /fapi/v1/symbolConfig: the account's per-symbol settings."""
        e = self.engine
        acct = e.account(account)
        books = [e.book(params["symbol"])] if params.get("symbol") else list(e.books.values())
        return [{"symbol": b.symbol, "marginType": "ISOLATED" if b.symbol in acct.isolated else "CROSSED",
                 "isAutoAddMargin": False,
                 "leverage": e.leverage_of(acct, b.symbol),
                 "maxNotionalValue": f"{b.brackets.max_notional(e.leverage_of(acct, b.symbol)):f}"} for b in books]

    def _listen_key_close(self, account: str, params: dict[str, str], now: int) -> Any:
        acct = self.engine.accounts[account]
        key = acct.listen_key
        self.engine.listen_key_close(account)
        for c in list(self.user_conns.get(account, ())):
            if key in c.listen_keys:
                asyncio.ensure_future(self._close_conn(c))
        return {}


def _spelled(params: dict[str, str], name: str) -> str | None:
    """The name under which a batch cancel's id list came, if it came with a value: Binance documents
    camelCase (``orderIdList``) and takes the all-lower-case spelling too (``orderidlist``, which
    ccxt's binanceusdm sends)."""
    for spelling in (name, name.lower()):
        if params.get(spelling):
            return spelling
    return None


def _batch_list(params: dict[str, str], name: str, max_items: int) -> list[Any]:
    """A batch's JSON list; too many items (or none) with Binance's own codes: -4082 for orders placed or
    amended (at most 5), -4032 for ids cancelled (at most 10)."""
    raw = params.get(name)
    if not raw:
        raise missing(name)
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError):   # (nested deeper than the parser goes)
        raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.") from None
    if not isinstance(items, list):
        raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.")
    if name == "batchOrders" and not 0 < len(items) <= max_items:
        raise SimApiError(-4082, f"Invalid number of batch place orders: {len(items)}")
    if not items:
        raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.")
    if len(items) > max_items:
        raise SimApiError(-4032, "Exceed maximum cancel order size.")
    return items


# A batch order's decimals as JSON numbers (``"price": 2913.24``) are refused in place, -1102 naming the first
# (Binance's users and SDKs report so: only strings, ``"price": "2913.24"``, as its examples send them)
BATCH_DECIMALS = ("quantity", "price", "stopPrice", "activationPrice", "callbackRate")


def _stringify(item: Any) -> dict[str, str]:
    if not isinstance(item, dict):
        raise SimApiError(-1130, "Data sent for parameter 'batchOrders' is not valid.")
    for k in BATCH_DECIMALS:
        if isinstance(item.get(k), (int, float)):
            raise SimApiError(-1102, f"Mandatory parameter '{k}' was not sent, was empty/null, or malformed.")
    out = {}
    for k, v in item.items():
        if v is None:   # null: not sent (as the WebSocket API's parameters), so it is "missing", never "None"
            continue
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


def _latest(trades: Sequence[Any], limit: int) -> list[Any]:
    """The last ``limit`` of ``trades``, oldest first (no copy of the whole tape)."""
    return list(islice(reversed(trades), limit))[::-1]


def _since(trades: Sequence[Any], value: int, field: int) -> Iterator[Any]:
    """``trades`` from the first whose ``field`` (0: id, 3: time; both grow along the tape) is ``value``
    or more."""
    return islice(trades, bisect_left(trades, value, key=itemgetter(field)), None)
