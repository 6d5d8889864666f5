"""The wire vocabulary (fleet/binance/enums.py) and the endpoint table (fleet/binance/endpoints.py)."""

from __future__ import annotations

import json

import orjson
import pytest

from fleet.binance import endpoints as ep
from fleet.binance.enums import ErrorCode, ExecType, OrderStatus, OrderType, Side, TimeInForce, error_code
from fleet.binance.errors import UnknownOrderError, error_from_payload
from fleet.binance.models import OrderInfo, OrderRequest
from fleet.binance.parse import decode, parse_user
from fleet.binance.ratelimit import Cost

from .test_client_parse import ORDER_FILL, ORDER_NEW


def test_members_are_their_wire_strings():
    assert Side.BUY == "BUY" and hash(Side.BUY) == hash("BUY") and str(TimeInForce.GTX) == "GTX"
    assert f"{OrderType.MARKET}" == "MARKET"
    assert json.dumps([Side.SELL, ErrorCode.NO_SUCH_ORDER]) == '["SELL", -2013]'
    assert orjson.dumps({"side": Side.SELL}) == b'{"side":"SELL"}'
    assert Side.BUY.opposite is Side.SELL and Side.SELL.opposite is Side.BUY


def test_frames_and_answers_are_read_into_members_and_unknown_words_pass_through():
    new = parse_user(decode(ORDER_NEW))
    assert new.side is Side.BUY and new.order_type is OrderType.LIMIT and new.time_in_force is TimeInForce.GTC
    assert new.exec_type is ExecType.NEW and new.status is OrderStatus.NEW and not new.is_closed
    filled = parse_user(decode(ORDER_FILL))
    assert filled.status is OrderStatus.FILLED and filled.exec_type is ExecType.TRADE and filled.is_closed
    # a time in force this client does not name (Binance added RPI) is kept as its string, not dropped
    rpi = parse_user(decode(ORDER_NEW.replace('"f":"GTC"', '"f":"RPI"')))
    assert rpi.time_in_force == "RPI" and not isinstance(rpi.time_in_force, TimeInForce)
    info = OrderInfo.from_api({"symbol": "ETHUSDC", "orderId": 1, "side": "SELL", "type": "LIMIT", "status": "CANCELED",
                               "timeInForce": "GTX", "origQty": "0.01", "price": "2300"})
    assert info.side is Side.SELL and info.status is OrderStatus.CANCELED and info.is_closed
    with pytest.raises(ValueError, match="side"):
        OrderInfo.from_api({"symbol": "ETHUSDC", "orderId": 1, "side": "HOLD", "status": "NEW"})


def test_error_codes_are_named_and_unknown_codes_stay_ints():
    err = error_from_payload({"code": -2011, "msg": "Unknown order sent."}, 400)
    assert isinstance(err, UnknownOrderError) and err.code is ErrorCode.CANCEL_REJECTED and err.code == -2011
    assert error_code(-9999) == -9999 and not isinstance(error_code(-9999), ErrorCode)
    assert ErrorCode(-5026) is ErrorCode.EXCEED_MAXIMUM_MODIFY_ORDER_LIMIT


def test_orders_are_built_by_keyword_only():
    with pytest.raises(TypeError):
        OrderRequest("ETHUSDC", Side.BUY, OrderType.MARKET, "0.010")  # type: ignore[misc]
    req = OrderRequest(symbol="ETHUSDC", side=Side.BUY, order_type=OrderType.MARKET, quantity="0.010")
    assert req.to_params() == {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET", "quantity": "0.010"}


@pytest.mark.parametrize(
    "endpoint, method, path, cost",
    [
        (ep.NEW_ORDER, "POST", "/fapi/v1/order", Cost(weight=0, orders_10s=1, orders_1m=1)),
        (ep.MODIFY_ORDER, "PUT", "/fapi/v1/order", Cost(weight=0, orders_10s=1, orders_1m=1)),
        (ep.BATCH_PLACE, "POST", "/fapi/v1/batchOrders", Cost(weight=5, orders_10s=5, orders_1m=1)),
        (ep.BATCH_MODIFY, "PUT", "/fapi/v1/batchOrders", Cost(weight=5, orders_10s=5, orders_1m=1)),
        (ep.BATCH_CANCEL, "DELETE", "/fapi/v1/batchOrders", Cost(weight=1)),
        (ep.CANCEL_ORDER, "DELETE", "/fapi/v1/order", Cost(weight=1)),
        (ep.CANCEL_ALL, "DELETE", "/fapi/v1/allOpenOrders", Cost(weight=1)),
        (ep.COUNTDOWN_CANCEL_ALL, "POST", "/fapi/v1/countdownCancelAll", Cost(weight=10)),
        (ep.OPEN_ORDERS, "GET", "/fapi/v1/openOrders", Cost(weight=1)),
        (ep.POSITION_RISK_V3, "GET", "/fapi/v3/positionRisk", Cost(weight=5)),
        (ep.INCOME, "GET", "/fapi/v1/income", Cost(weight=30)),
        (ep.COMMISSION_RATE, "GET", "/fapi/v1/commissionRate", Cost(weight=20)),
        (ep.BOOK_TICKER, "GET", "/fapi/v1/ticker/bookTicker", Cost(weight=2)),
        (ep.LISTEN_KEY_KEEPALIVE, "PUT", "/fapi/v1/listenKey", Cost(weight=1)),
    ],
)
def test_the_endpoint_table_holds_the_documented_weights(endpoint, method, path, cost):
    assert (endpoint.method, endpoint.path, endpoint.cost) == (method, path, cost)


def test_what_only_takes_risk_off_is_in_the_risk_lane_and_writes_are_mutating():
    assert all(e.risk for e in (ep.CANCEL_ORDER, ep.BATCH_CANCEL, ep.CANCEL_ALL, ep.COUNTDOWN_CANCEL_ALL, ep.QUERY_ORDER))
    assert not ep.NEW_ORDER.risk and not ep.BATCH_PLACE.risk  # the caller decides per order
    assert ep.NEW_ORDER.mutating and not ep.QUERY_ORDER.mutating
    assert ep.LISTEN_KEY_CREATE.keyed and not ep.LISTEN_KEY_CREATE.signed and ep.NEW_ORDER.signed
    assert [ep.depth_cost(n).weight for n in (5, 50, 100, 500, 1000)] == [2, 2, 5, 10, 20]


def test_the_orders_a_write_places_or_amends_are_read_from_its_parameters_as_the_client_builds_them():
    """What a resend after -1021 is asked about (agents/sender.py): the client ids a place sends, the orders
    an amendment names (by id, an int in a batch, or by client id)."""
    from fleet.binance.client import _batch_modify_entry
    from fleet.binance.models import ModifyRequest

    def placed(cid: str) -> dict[str, str]:
        return OrderRequest(symbol="ETHUSDC", side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.01",
                            price="3000", time_in_force=TimeInForce.GTC, client_order_id=cid).to_params()

    def amend(order_id: int | None = None, cid: str | None = None) -> ModifyRequest:
        return ModifyRequest(symbol="ETHUSDC", side=Side.BUY, quantity="0.02", price="3001", order_id=order_id,
                             client_order_id=cid)

    assert ep.placed_client_ids(ep.NEW_ORDER, placed("mm-a")) == ["mm-a"]
    assert ep.placed_client_ids(ep.BATCH_PLACE, {"batchOrders": [placed("mm-a"), placed("mm-b")]}) == ["mm-a", "mm-b"]
    assert ep.placed_client_ids(ep.MODIFY_ORDER, amend(7).to_params()) == []
    assert ep.amended_orders(ep.MODIFY_ORDER, amend(7).to_params()) == [(7, None)]
    assert ep.amended_orders(ep.MODIFY_ORDER, amend(cid="mm-c").to_params()) == [(None, "mm-c")]
    batch = {"batchOrders": [_batch_modify_entry(amend(7)), _batch_modify_entry(amend(cid="mm-c"))]}
    assert ep.amended_orders(ep.BATCH_MODIFY, batch) == [(7, None), (None, "mm-c")]
    assert ep.amended_orders(ep.NEW_ORDER, placed("mm-a")) == []


def test_only_reduce_only_places_count_as_reducing():
    def order(reduce_only: bool) -> dict[str, str]:
        return OrderRequest(symbol="ETHUSDC", side=Side.SELL, order_type=OrderType.MARKET, quantity="0.01",
                            reduce_only=reduce_only).to_params()

    assert ep.places_reduce_only(ep.NEW_ORDER, order(True))
    assert not ep.places_reduce_only(ep.NEW_ORDER, order(False))
    assert ep.places_reduce_only(ep.BATCH_PLACE, {"batchOrders": [order(True), order(True)]})
    assert not ep.places_reduce_only(ep.BATCH_PLACE, {"batchOrders": [order(True), order(False)]})
    assert not ep.places_reduce_only(ep.BATCH_PLACE, {"batchOrders": []})
    assert not ep.places_reduce_only(ep.MODIFY_ORDER, {"symbol": "ETHUSDC", "reduceOnly": "true"})  # an amend never
