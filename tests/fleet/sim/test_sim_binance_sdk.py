"""Binance's own Python SDK for USD-M futures (binance-sdk-derivatives-trading-usds-futures 18.1.0)
against the simulator: its REST client, pointed at the simulator by ``base_path``, reads every answer
into its models with their strict types (a mismatch is a logged warning, which fails the test); every
market and user-stream frame the simulator pushed parses with the SDK's stream models, and every
WebSocket API answer with its WebSocket API models.

The one frame left out is ``listenKeyExpired``: Binance's documentation and live frames carry its
``E`` as a string ("E": "1736996475556"), which the SDK types as an integer; the simulator sends what
Binance sends.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
import requests
from binance_common.configuration import ConfigurationRestAPI
from binance_sdk_derivatives_trading_usds_futures.derivatives_trading_usds_futures import (
    DerivativesTradingUsdsFutures,
)
from binance_sdk_derivatives_trading_usds_futures.rest_api.models import enums as rest_enums
from binance_sdk_derivatives_trading_usds_futures.websocket_api import models as api_models
from binance_sdk_derivatives_trading_usds_futures.websocket_streams import models as frames
from websockets.sync.client import connect

from fleet.sim.thread import SimThread
from tests.fleet.sim.test_sim_wsapi import Api, below_bid

SYMBOL = "ETHUSDC"
DEADLINE_S = 15.0
# a frame's event type (or, for the books, its stream) -> the SDK's model of it
MODELS: dict[str, Any] = {
    "ORDER_TRADE_UPDATE": frames.OrderTradeUpdate, "ACCOUNT_UPDATE": frames.AccountUpdate,
    "TRADE_LITE": frames.TradeLite, "ACCOUNT_CONFIG_UPDATE": frames.AccountConfigUpdate,
    "ALGO_UPDATE": frames.AlgoUpdate, "aggTrade": frames.AggregateTradeStreamsResponse,
    "markPriceUpdate": frames.MarkPriceStreamResponse, "kline": frames.KlineCandlestickStreamsResponse,
    "24hrTicker": frames.IndividualSymbolTickerStreamsResponse,
    "24hrMiniTicker": frames.IndividualSymbolMiniTickerStreamResponse,
    "contractInfo": frames.ContractInfoStreamResponse, "bookTicker": frames.IndividualSymbolBookTickerStreamsResponse,
    f"{SYMBOL.lower()}@depth5@100ms": frames.PartialBookDepthStreamsResponse,
    f"{SYMBOL.lower()}@depth@100ms": frames.DiffBookDepthStreamsResponse,
}


class SdkWarnings(logging.Handler):
    """The SDK's own warnings of an answer it could not read into its model as declared."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "did not match the declared types" in text or "Failed to parse" in text:
            self.seen.append(text)


def _rest(sim: SimThread) -> Any:
    _, key, secret = sim.accounts[0]
    cfg = ConfigurationRestAPI(api_key=key, api_secret=secret, base_path=sim.rest_url, retries=0)
    return DerivativesTradingUsdsFutures(config_rest_api=cfg).rest_api


def _reads(rest: Any) -> None:
    """Every read a trading engine makes at its start and while it trades."""
    interval = rest_enums.KlineCandlestickDataIntervalEnum["INTERVAL_1m"]
    for name, kwargs in [
        ("test_connectivity", {}), ("check_server_time", {}), ("exchange_information", {}),
        ("order_book", {"symbol": SYMBOL, "limit": 5}), ("recent_trades_list", {"symbol": SYMBOL, "limit": 5}),
        ("compressed_aggregate_trades_list", {"symbol": SYMBOL, "limit": 5}),
        ("kline_candlestick_data", {"symbol": SYMBOL, "interval": interval, "limit": 5}),
        ("mark_price", {"symbol": SYMBOL}), ("get_funding_rate_history", {"symbol": SYMBOL, "limit": 5}),
        ("get_funding_rate_info", {}), ("ticker24hr_price_change_statistics", {"symbol": SYMBOL}),
        ("symbol_price_ticker", {"symbol": SYMBOL}), ("symbol_order_book_ticker", {"symbol": SYMBOL}),
        ("open_interest", {"symbol": SYMBOL}), ("account_information_v2", {}), ("account_information_v3", {}),
        ("futures_account_balance_v2", {}), ("futures_account_balance_v3", {}),
        ("futures_account_configuration", {}), ("symbol_configuration", {"symbol": SYMBOL}),
        ("position_information_v2", {"symbol": SYMBOL}), ("position_information_v3", {"symbol": SYMBOL}),
        ("user_commission_rate", {"symbol": SYMBOL}), ("notional_and_leverage_brackets", {"symbol": SYMBOL}),
        ("query_user_rate_limit", {}), ("position_adl_quantile_estimation", {"symbol": SYMBOL}),
        ("get_current_position_mode", {}), ("get_current_multi_assets_mode", {}), ("get_bnb_burn_status", {}),
        ("current_all_open_orders", {"symbol": SYMBOL}), ("account_trade_list", {"symbol": SYMBOL}),
        ("all_orders", {"symbol": SYMBOL}), ("get_income_history", {"symbol": SYMBOL}),
        ("users_force_orders", {"symbol": SYMBOL}), ("current_all_algo_open_orders", {"symbol": SYMBOL}),
    ]:
        assert getattr(rest, name)(**kwargs).data() is not None, name


def _trade(rest: Any, sim: SimThread) -> None:
    """A place, an amendment and a cancel; a fill and its close; a leverage change; a conditional order
    placed and cancelled; a new bracket table (pushed on !contractInfo)."""
    book = rest.symbol_order_book_ticker(symbol=SYMBOL).data().actual_instance
    low = round(float(book.bid_price) * 0.99, 2)
    placed = rest.new_order(symbol=SYMBOL, side="BUY", type="LIMIT", time_in_force="GTX", quantity=0.01,
                            price=low).data()
    rest.modify_order(symbol=SYMBOL, side="BUY", quantity=0.02, price=round(low * 0.995, 2),
                      order_id=placed.order_id).data()
    rest.get_order_modify_history(symbol=SYMBOL, order_id=placed.order_id).data()
    rest.query_order(symbol=SYMBOL, order_id=placed.order_id).data()
    rest.cancel_order(symbol=SYMBOL, order_id=placed.order_id).data()
    rest.new_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity=0.01, new_order_resp_type="RESULT").data()
    rest.change_initial_leverage(symbol=SYMBOL, leverage=7).data()
    algo = rest.new_algo_order(algo_type="CONDITIONAL", symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                               quantity=0.01, trigger_price=round(low * 0.9, 2)).data()
    rest.cancel_algo_order(algo_id=algo.algo_id).data()
    rest.new_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity=0.01, reduce_only="true").data()
    r = requests.post(f"{sim.rest_url}/sim/brackets", timeout=5, json={"symbol": SYMBOL, "brackets": [
        {"notional_cap": 50000, "initial_leverage": 50, "maint_margin_ratio": 0.01},
        {"notional_cap": 10 ** 9, "initial_leverage": 10, "maint_margin_ratio": 0.05}]})
    assert r.status_code == 200, r.text


def test_the_official_sdk_reads_every_answer_and_frame_with_its_strict_models(sim_thread):
    warned = SdkWarnings()
    logging.getLogger().addHandler(warned)
    try:
        rest = _rest(sim_thread)
        key = rest.start_user_data_stream().data().listen_key
        ws = sim_thread.ws_url
        s = SYMBOL.lower()
        market = f"{ws}/market/stream?streams={s}@aggTrade/{s}@markPrice@1s/{s}@kline_1m/{s}@ticker/" \
                 f"{s}@miniTicker/!contractInfo"
        public = f"{ws}/public/stream?streams={s}@bookTicker/{s}@depth5@100ms/{s}@depth@100ms"
        # max_queue=None: a client that stops reading a busy book stream (16 frames queued by default)
        # stops reading its socket too, and its close then waits 10 s for a close frame it never reads
        with connect(market, max_queue=None) as m, connect(public, max_queue=None) as p, \
                connect(f"{ws}/private/ws?listenKey={key}", max_queue=None) as u:
            _reads(rest)
            _trade(rest, sim_thread)
            got = _collect([m, p, u], set(MODELS))
        rest.keepalive_user_data_stream().data()
        rest.close_user_data_stream().data()
    finally:
        logging.getLogger().removeHandler(warned)
    assert warned.seen == []
    for kind, frame in got:
        MODELS[kind].from_dict(frame)   # raises on a field of another type than the SDK's
    assert {kind for kind, _ in got} == set(MODELS)


def _collect(conns: list[Any], kinds: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Frames off the connections until every kind has come (each unwrapped from its stream)."""
    got: list[tuple[str, dict[str, Any]]] = []
    end = time.monotonic() + DEADLINE_S
    while {k for k, _ in got} != kinds:
        assert time.monotonic() < end, f"missing after {DEADLINE_S} s: {kinds - {k for k, _ in got}}"
        for c in conns:
            try:
                raw = json.loads(c.recv(timeout=0.05))
            except TimeoutError:
                continue
            frame = raw.get("data", raw) if "stream" in raw else raw
            kind = raw["stream"] if raw.get("stream", "").startswith(f"{SYMBOL.lower()}@depth") else frame.get("e")
            if kind in kinds:
                got.append((kind, frame))
    return got


async def test_the_official_sdks_websocket_api_models_read_every_answer(sim):
    """The WebSocket API's answers (``/ws-fapi/v1``), whole envelopes with their rate limits, parse
    into the SDK's strictly typed models: a place, an amendment, a look-up, a cancel, the account and
    position reads, the book and prices, a listenKey's start, keepalive and close."""
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
        api = Api(sim, ws)
        price = await below_bid(s, sim, 300)
        placed = await api.call("order.place", {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT",
                                                "timeInForce": "GTX", "quantity": "0.010", "price": price})
        oid = placed["result"]["orderId"]
        lower = await below_bid(s, sim, 400)
        answers = [
            (api_models.NewOrderResponse, placed),
            (api_models.ModifyOrderResponse, await api.call("order.modify", {
                "symbol": SYMBOL, "orderId": oid, "side": "BUY", "quantity": "0.020", "price": lower})),
            (api_models.QueryOrderResponse, await api.call("order.status", {"symbol": SYMBOL, "orderId": oid})),
            (api_models.CancelOrderResponse, await api.call("order.cancel", {"symbol": SYMBOL, "orderId": oid})),
            (api_models.AccountInformationResponse, await api.call("account.status")),
            (api_models.AccountInformationV2Response, await api.call("v2/account.status")),
            (api_models.FuturesAccountBalanceResponse, await api.call("account.balance")),
            (api_models.FuturesAccountBalanceV2Response, await api.call("v2/account.balance")),
            (api_models.PositionInformationResponse, await api.call("account.position", {"symbol": SYMBOL})),
            (api_models.PositionInformationV2Response, await api.call("v2/account.position", {"symbol": SYMBOL})),
            (api_models.OrderBookResponse, await api.call("depth", {"symbol": SYMBOL, "limit": 5}, signed=False)),
            (api_models.SymbolPriceTickerResponse, await api.call("ticker.price", {"symbol": SYMBOL}, signed=False)),
            (api_models.SymbolOrderBookTickerResponse,
             await api.call("ticker.book", {"symbol": SYMBOL}, signed=False)),
            (api_models.StartUserDataStreamResponse, await api.call("userDataStream.start", {"apiKey": api.key},
                                                                    signed=False)),
            (api_models.KeepaliveUserDataStreamResponse, await api.call("userDataStream.ping", {"apiKey": api.key},
                                                                        signed=False)),
            (api_models.CloseUserDataStreamResponse, await api.call("userDataStream.stop", {"apiKey": api.key},
                                                                    signed=False)),
        ]
    for model, answer in answers:
        assert answer["status"] == 200, answer
        assert model.from_dict(answer) is not None   # raises on a field of another type than the SDK's
