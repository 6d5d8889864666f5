"""Error mapping: each Binance answer a market maker must branch on gets its own class."""

import pickle

import pytest

from fleet.binance import errors as E
from fleet.binance.credentials import CredentialsError, load_credentials
from fleet.binance.enums import OrderType, Side, TimeInForce
from fleet.binance.models import ModifyRequest, OrderInfo, OrderRequest, PositionInfo
from fleet.config import AccountConfig


@pytest.mark.parametrize(
    "code,status,cls",
    [
        (-1021, 400, E.TimestampError),
        (-2011, 400, E.UnknownOrderError),
        (-2013, 400, E.UnknownOrderError),
        (-2019, 400, E.InsufficientMarginError),
        (-2022, 400, E.ReduceOnlyRejectedError),
        (-5022, 400, E.PostOnlyRejectedError),
        (-4164, 400, E.MinNotionalError),
        (-1111, 400, E.FilterRejectedError),
        (-4014, 400, E.FilterRejectedError),
        (-4023, 400, E.FilterRejectedError),
        (-4016, 400, E.FilterRejectedError),
        (-4024, 400, E.FilterRejectedError),
        (-1125, 400, E.InvalidListenKeyError),
        (-1121, 400, E.BinanceError),
    ],
)
def test_codes_map_to_classes(code, status, cls):
    err = E.error_from_payload({"code": code, "msg": "m"}, status)
    assert type(err) is cls and err.code == code and err.http_status == status


def test_http_statuses_map_to_classes():
    limited = E.error_from_payload({"code": -1003, "msg": "Too many requests"}, 429, {"Retry-After": "7"})
    assert isinstance(limited, E.RateLimitedError) and limited.retry_after == 7.0
    for msg, window, named in (
            ("Too many new orders; current limit is 300 orders per 10 SECOND.", 10.0, ("orders_10s", 300)),
            ("Too many new orders; current limit is 1200 orders per MINUTE.", 60.0, ("orders_1m", 1200)),
            ("Too many requests; current limit of IP(1.2.3.4) is 500 requests per 5 minutes for "
             "fundingRate and fundingInfo.", 300.0, None),
            ("Too many requests; current limit of IP(1.2.3.4) is 2400 requests per minute.", 60.0, ("weight_1m", 2400)),
            ("Too many requests; current limit is 1200 requests per minute.", 60.0, ("weight_1m", 1200)),
            ("Too many requests.", 60.0, None)):
        limited = E.error_from_payload({"code": -1003, "msg": msg}, 429)
        assert (limited.window_s(), limited.named_limit()) == (window, named)   # the window and limit it names
    banned = E.error_from_payload(
        {"code": -1003, "msg": "Way too many requests; IP(1.2.3.4) banned until 1746327239762. Please use"}, 418
    )
    assert isinstance(banned, E.BannedError) and banned.until_ms == 1746327239762
    unknown = E.error_from_payload({"code": -1000, "msg": "Unknown error, please check your request or try again later."}, 503)
    assert isinstance(unknown, E.OutcomeUnknownError)
    unavailable = E.error_from_payload({"code": -1001, "msg": "Service Unavailable."}, 503)
    assert type(unavailable) is E.ServerError
    assert type(E.error_from_payload("<html>bad gateway</html>", 500)) is E.ServerError


def test_errors_survive_pickling_with_their_fields():
    err = pickle.loads(pickle.dumps(E.RateLimitedError(-1003, "slow down", 429, retry_after=4)))
    assert isinstance(err, E.RateLimitedError) and err.retry_after == 4 and err.code == -1003
    budget = pickle.loads(pickle.dumps(E.BudgetExhaustedError("full", 1.5)))
    assert budget.wait_s == 1.5


def test_order_request_refuses_floats_and_bad_client_ids():
    with pytest.raises(TypeError, match="quantity"):
        OrderRequest(symbol="BTCUSDT", side=Side.BUY, order_type=OrderType.LIMIT, quantity=0.001, price="90000.1",  # type: ignore[arg-type]
                     time_in_force=TimeInForce.GTX)
    with pytest.raises(ValueError, match="client_order_id"):
        OrderRequest(symbol="BTCUSDT", side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.001", price="90000.1",
                     time_in_force=TimeInForce.GTX, client_order_id="has space")
    with pytest.raises(ValueError, match="time_in_force"):
        OrderRequest(symbol="BTCUSDT", side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.001", price="90000.1")
    with pytest.raises(ValueError, match="order_id or client_order_id"):
        ModifyRequest(symbol="BTCUSDT", side=Side.BUY, quantity="0.001", price="90000.1")
    req = OrderRequest(symbol="BTCUSDT", side=Side.SELL, order_type=OrderType.LIMIT, quantity="0.001", price="90000.1",
                       time_in_force=TimeInForce.GTX, reduce_only=True, client_order_id="e3-1")
    assert req.to_params() == {
        "symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTX", "quantity": "0.001",
        "price": "90000.1", "reduceOnly": "true", "newClientOrderId": "e3-1",
    }


def test_order_info_reads_the_documented_order_object():
    info = OrderInfo.from_api({
        "clientOrderId": "testOrder", "cumQty": "0", "cumQuote": "0", "executedQty": "0", "orderId": 22542179,
        "avgPrice": "0.00000", "origQty": "10", "price": "0", "reduceOnly": False, "side": "BUY",
        "positionSide": "SHORT", "status": "NEW", "symbol": "BTCUSDT", "timeInForce": "GTD",
        "type": "TRAILING_STOP_MARKET", "updateTime": 1566818724722,
    })
    assert info.order_id == 22542179 and str(info.orig_qty) == "10" and info.remaining_qty == 10
    with pytest.raises(ValueError, match="malformed order"):
        OrderInfo.from_api({"symbol": "BTCUSDT"})


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-inf", "sNaN"])
def test_an_order_or_position_answer_with_a_number_that_is_not_finite_is_malformed(value):
    """A position of NaN would pass every comparison that guards an order: refused as malformed, loudly."""
    with pytest.raises(ValueError, match="not a finite decimal"):
        PositionInfo.from_api({"symbol": "ETHUSDC", "positionAmt": value, "entryPrice": "3000"})
    with pytest.raises(ValueError, match="not a finite decimal"):
        OrderInfo.from_api({"symbol": "ETHUSDC", "orderId": 1, "side": "BUY", "type": "LIMIT", "status": "NEW",
                            "price": "3000", "origQty": "0.01", "executedQty": value})


def test_credentials_come_from_env_or_file_and_never_show_the_secret(tmp_path):
    cfg = AccountConfig(name="main", api_key_env="MM_KEY", api_secret_env="MM_SECRET")
    creds = load_credentials(cfg, {"MM_KEY": "abcdefghijkl", "MM_SECRET": "topsecretvalue"})
    assert creds.api_secret == "topsecretvalue"
    assert "topsecretvalue" not in repr(creds) and "topsecretvalue" not in str(creds)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(creds)
    with pytest.raises(CredentialsError, match="MM_SECRET"):
        load_credentials(cfg, {"MM_KEY": "abc"})
    key_file = tmp_path / "keys.yaml"
    key_file.write_text("api_key: k1\napi_secret: s1\n")
    from_file = load_credentials(AccountConfig(name="f", key_file=str(key_file)), {})
    assert (from_file.api_key, from_file.api_secret) == ("k1", "s1")
    with pytest.raises(CredentialsError, match="does not exist"):
        load_credentials(AccountConfig(name="f", key_file=str(tmp_path / "nope.yaml")), {})
    key_file.write_text("api_key: k1\n")
    with pytest.raises(CredentialsError, match="lacks api_secret"):
        load_credentials(AccountConfig(name="f", key_file=str(key_file)), {})


@pytest.mark.parametrize(
    "status,payload",
    [
        (500, {"code": -1000, "msg": "An unknown error occurred while processing the request."}),
        (503, {"code": -1000, "msg": "Unknown error, please check your request or try again later."}),
        (503, {"code": -1006, "msg": "An unexpected response was received from the message bus. Execution status unknown."}),
        (503, {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown."}),
        (400, {"code": -1007, "msg": "Timeout waiting for response from backend server."}),
        (502, "<html><body>502 Bad Gateway</body></html>"),
        (504, "<html><body>504 Gateway Time-out</body></html>"),
        (500, "<html>oops</html>"),
        (500, {"code": -1, "msg": "whatever the backend said"}),
        # a proxy's page in front of the API, not Binance's "Service Unavailable." (which says nothing ran)
        (503, "<html><head><title>503 Service Unavailable</title></head></html>"),
        (503, {"msg": "upstream: Service Unavailable"}),
        # ... or its bare text: Binance's words, not Binance's JSON answer
        (503, "Service Unavailable"),
        (503, "Service Unavailable."),
    ],
)
def test_an_ambiguous_answer_to_a_write_is_an_unknown_outcome(status, payload):
    err = E.for_write(E.error_from_payload(payload, status))
    assert isinstance(err, E.OutcomeUnknownError), err


@pytest.mark.parametrize(
    "status,payload",
    [
        (503, {"code": -1001, "msg": "Service Unavailable."}),
        (503, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}),
        (503, {"code": -1008, "msg": "Request throttled by system-level protection."}),
        (400, {"code": -2019, "msg": "Margin is insufficient."}),
    ],
)
def test_a_documented_failure_to_a_write_stays_definite(status, payload):
    err = E.for_write(E.error_from_payload(payload, status))
    assert not isinstance(err, E.OutcomeUnknownError), err


def test_a_short_or_malformed_batch_answer_leaves_its_orders_unknown():
    from fleet.binance.client import _batch_results

    with pytest.raises(E.OutcomeUnknownError, match="2 entries, expected 3"):
        _batch_results([{"code": -2011, "msg": "x"}, {"code": -2011, "msg": "x"}], 3)
    with pytest.raises(E.OutcomeUnknownError):
        _batch_results("<html>", 1)
    out = _batch_results([{"orderId": 1}, "garbage", {"code": -1006, "msg": "unknown"}], 3)
    assert all(isinstance(r, E.OutcomeUnknownError) for r in out)


@pytest.mark.parametrize("answer", [None, {}, "ok", [{"symbol": "ETHUSDC", "positionAmt": "x"}], ["garbage"]])
def test_a_position_read_that_is_no_list_of_rows_is_an_error_not_flat(answer):
    """A 200 without a list must not read as "flat": the resync would make the store's position 0."""
    from fleet.binance.client import _pick_position

    with pytest.raises(E.ServerError, match="positionRisk"):
        _pick_position(answer, "ETHUSDC")


def test_a_position_read_of_an_empty_list_or_other_symbols_is_flat():
    from fleet.binance.client import _pick_position

    assert _pick_position([], "ETHUSDC", 7).amount == 0   # v3 lists only symbols with a position
    other = {"symbol": "BTCUSDC", "positionAmt": "1.0", "entryPrice": "1", "unRealizedProfit": "0", "markPrice": "1"}
    assert _pick_position([other], "ETHUSDC").amount == 0


@pytest.mark.parametrize("answer", [None, {"code": 200}, [{"orderId": 1}]])
def test_an_open_orders_read_that_is_no_list_of_orders_is_an_error_not_none(answer):
    from fleet.binance.client import _read_rows

    with pytest.raises(E.ServerError, match="openOrders"):
        _read_rows(answer, OrderInfo.from_api, "GET openOrders")


def test_a_hedge_mode_position_is_refused_not_read_as_flat_and_a_flat_one_is_flat():
    from fleet.binance.client import _pick_position

    row = {"symbol": "ETHUSDC", "entryPrice": "0.0", "unRealizedProfit": "0", "markPrice": "2000"}
    held = [{**row, "positionSide": "LONG", "positionAmt": "0.500"}, {**row, "positionSide": "SHORT", "positionAmt": "0.0"}]
    with pytest.raises(E.BinanceError, match="Hedge Mode.*LONG 0.500, SHORT 0.0") as refused:
        _pick_position(held, "ETHUSDC")
    assert refused.value.code == -4061
    flat = [{**r, "positionAmt": "0.0"} for r in held]
    assert _pick_position(flat, "ETHUSDC", 7).amount == 0   # flat either way: the first order's -4061 halts it
