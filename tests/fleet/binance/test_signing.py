"""Signing: the documented Binance HMAC vectors, and that we sign exactly what we send."""

from fleet.binance.signing import encode_params, sign, signed_payload

USDM_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
USDM_PARAMS = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000&timestamp=1591702613943"
)
USDM_SIGNATURE = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


def test_usdm_docs_vector_matches():
    assert sign(USDM_SECRET, USDM_PARAMS) == USDM_SIGNATURE


def test_spot_docs_vector_matches():
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    assert sign(secret, query) == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_mixed_query_and_body_are_concatenated_without_ampersand():
    query = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC"
    body = "quantity=1&price=9000&recvWindow=5000&timestamp=1591702613943"
    q, b = signed_payload(USDM_SECRET, query, body)
    assert q == query
    assert b.endswith("&signature=30baaf0fab549bbeda7f5ef201898b34122da25fd23c646cac2c529aebe670a4")


def test_encoding_the_vector_params_reproduces_the_documented_string():
    params = {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "1",
        "price": "9000",
        "timeInForce": "GTC",
        "recvWindow": 5000,
        "timestamp": 1591702613943,
    }
    encoded = encode_params(params)
    assert encoded == USDM_PARAMS
    q, _ = signed_payload(USDM_SECRET, encoded)
    assert q == f"{USDM_PARAMS}&signature={USDM_SIGNATURE}"


def test_batch_lists_are_sent_as_compact_percent_encoded_json():
    encoded = encode_params({"symbol": "BTCUSDT", "orderIdList": [1234567, 2345678]})
    assert encoded == "symbol=BTCUSDT&orderIdList=%5B1234567%2C2345678%5D"


def test_floats_are_refused_before_they_reach_the_wire():
    import pytest

    with pytest.raises(TypeError, match="price"):
        encode_params({"price": 0.1 + 0.2})


def test_a_value_ending_in_a_newline_is_percent_encoded_not_sent_raw():
    """Only a value of unreserved characters goes as it is; one ending in a newline (a regex's '$' takes
    the place before it) is encoded, so the query signed is the query sent."""
    encoded = encode_params({"newClientOrderId": "abc\n", "symbol": "ETHUSDC"})
    assert encoded == "newClientOrderId=abc%0A&symbol=ETHUSDC"


def test_an_order_request_refuses_a_client_id_or_a_decimal_ending_in_a_newline():
    import pytest

    from fleet.binance.models import OrderRequest

    ok = {"symbol": "ETHUSDC", "side": "BUY", "order_type": "LIMIT", "quantity": "0.01", "price": "3000",
          "time_in_force": "GTC", "client_order_id": "mm-ETHUSDC-e1-1"}
    OrderRequest(**ok)
    for bad in ({"client_order_id": "mm-ETHUSDC-e1-1\n"}, {"quantity": "0.01\n"}, {"price": "3000\n"}):
        with pytest.raises(ValueError):
            OrderRequest(**{**ok, **bad})
