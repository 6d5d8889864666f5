"""Frame parsing: real frames from the reference into typed events; bad frames raise FrameError."""

from decimal import Decimal

import orjson
import pytest

from fleet.binance.events import (
    AccountUpdate,
    AggTrade,
    BookTicker,
    ContractInfo,
    DepthUpdate,
    FundingFee,
    ListenKeyExpired,
    MarginCall,
    MarkPrice,
    OrderUpdate,
    RawEvent,
    TradeLite,
)
from fleet.binance.parse import FrameError, decode, parse_market, parse_user

BOOK = '{"e":"bookTicker","u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000","T":1568014460891,"E":1568014460893}'
DEPTH = '{"e":"depthUpdate","E":1571889248277,"T":1571889248276,"s":"BTCUSDT","U":390497796,"u":390497878,"pu":390497794,"b":[["7403.89","0.002"]],"a":[["7405.96","3.340"]]}'
MARK = '{"e":"markPriceUpdate","E":1562305380000,"s":"BTCUSDT","p":"11794.15000000","i":"11784.62659091","P":"11784.25641265","r":"0.00038167","T":1562306400000}'
AGG = '{"e":"aggTrade","E":123456789,"s":"BTCUSDT","a":5933014,"p":"0.001","q":"100","f":100,"l":105,"T":123456785,"m":true}'

ORDER_NEW = (
    '{"e":"ORDER_TRADE_UPDATE","E":1776788790650,"T":1776788790649,"o":{"s":"ETHUSDC","c":"web_abc","S":"BUY",'
    '"o":"LIMIT","f":"GTC","q":"0.02","p":"2313","ap":"0","sp":"0","x":"NEW","X":"NEW","i":58846010837,"l":"0",'
    '"z":"0","L":"0","n":"0","N":"USDC","T":1776788790649,"t":0,"b":"46.26","a":"0","m":false,"R":false,'
    '"wt":"CONTRACT_PRICE","ot":"LIMIT","ps":"BOTH","cp":false,"rp":"0","pP":false,"si":0,"ss":0,'
    '"V":"EXPIRE_MAKER","pm":"NONE","gtd":0,"er":"0"}}'
)
ORDER_FILL = ORDER_NEW.replace('"x":"NEW","X":"NEW"', '"x":"TRADE","X":"FILLED"').replace(
    '"l":"0","z":"0","L":"0"', '"l":"0.02","z":"0.02","L":"2317.3"'
).replace('"t":0', '"t":702423109').replace('"m":false', '"m":true')
TRADE_LITE = '{"e":"TRADE_LITE","E":1721895408092,"T":1721895408214,"s":"BTCUSDT","q":"0.001","p":"0","m":false,"c":"z8hcUoOsqEdKMeKPSABslD","S":"BUY","L":"64089.20","l":"0.040","t":109100866,"i":8886774}'
ACCOUNT = (
    '{"e":"ACCOUNT_UPDATE","E":1564745798939,"T":1564745798938,"a":{"m":"ORDER",'
    '"B":[{"a":"USDT","wb":"122624.12345678","cw":"100.12345678","bc":"50.12345678"}],'
    '"P":[{"s":"BTCUSDT","pa":"-20","ep":"6563.66500","bep":"0","cr":"0","up":"2850.21200","mt":"isolated","iw":"13200.70726908","ps":"BOTH"}]}}'
)
FUNDING = '{"e":"ACCOUNT_UPDATE","T":1776787203246,"E":1776787203246,"a":{"B":[{"a":"USDC","wb":"38.17806885","cw":"38.17806885","bc":"-0.00085067"}],"P":[],"m":"FUNDING_FEE"}}'
EXPIRED = '{"e":"listenKeyExpired","E":"1736996475556","listenKey":"WsCMN0a4"}'
MARGIN = '{"e":"MARGIN_CALL","E":1587727187525,"cw":"3.16812045","p":[{"s":"ETHUSDT","ps":"LONG","pa":"1.327","mt":"CROSSED","iw":"0","mp":"187.17127","up":"-1.166074","mm":"1.614445"}]}'


def test_market_frames_become_typed_events():
    book = parse_market(decode(BOOK))
    assert isinstance(book, BookTicker) and book.bid == 25.3519 and book.ask_qty == 40.66 and book.update_id == 400900217
    depth = parse_market(decode(DEPTH))
    assert isinstance(depth, DepthUpdate) and depth.bids == ((7403.89, 0.002),) and depth.prev_final_update_id == 390497794
    mark = parse_market(decode(MARK))
    assert isinstance(mark, MarkPrice) and mark.funding_rate == 0.00038167 and mark.next_funding_time == 1562306400000
    agg = parse_market(decode(AGG))
    assert isinstance(agg, AggTrade) and agg.buyer_is_maker and agg.qty == 100.0


CONTRACT = ('{"e":"contractInfo","E":1669356423908,"s":"IOTAUSDT","ps":"IOTAUSDT","ct":"PERPETUAL","dt":4133404800000,'
            '"ot":1569398400000,"cs":"TRADING","bks":[{"bs":1,"bnf":0,"bnc":5000,"mmr":0.01,"cf":0,"mi":21,"ma":50},'
            '{"bs":2,"bnf":5000,"bnc":25000,"mmr":0.025,"cf":75,"mi":11,"ma":20}]}')


def test_contract_info_frames_say_the_status_the_settlement_time_and_new_brackets():
    """The docs' example (brackets adjusted), a delisting announced, and frames whose status or time
    cannot be read: skipped as bad frames, never taken for a symbol that stopped trading."""
    info = parse_market(decode(CONTRACT))
    assert info == ContractInfo("IOTAUSDT", 1669356423908, "TRADING", 4133404800000, "PERPETUAL", True)
    delisting = orjson.loads(CONTRACT)
    del delisting["bks"]
    delisting["dt"] = 1800000000000
    assert parse_market(delisting) == ContractInfo("IOTAUSDT", 1669356423908, "TRADING", 1800000000000, "PERPETUAL")
    for field, value in (("cs", ""), ("dt", 0), ("dt", "soon")):
        with pytest.raises(FrameError, match="contractInfo"):
            parse_market({**delisting, field: value})
    with pytest.raises(FrameError, match="contractInfo"):
        parse_market({k: v for k, v in delisting.items() if k != "cs"})


def test_combined_stream_envelope_is_unwrapped():
    framed = '{"stream":"bnbusdt@bookTicker","data":' + BOOK + "}"
    assert parse_market(decode(framed)) == parse_market(decode(BOOK))


def test_order_updates_keep_money_exact():
    new = parse_user(decode(ORDER_NEW))
    assert isinstance(new, OrderUpdate)
    assert new.price == Decimal("2313") and new.orig_qty == Decimal("0.02") and new.status == "NEW"
    assert new.remaining_qty == Decimal("0.02") and new.order_id == 58846010837
    fill = parse_user(decode(ORDER_FILL))
    assert fill.exec_type == "TRADE" and fill.is_closed and fill.last_filled_price == Decimal("2317.3")
    assert fill.is_maker and fill.trade_id == 702423109 and fill.remaining_qty == 0


def test_a_fill_frame_lacking_its_trade_fields_says_which_a_liquidations_too():
    """A fill frame without its trade's fields (id, price, quantity, realized P&L, fee) names them, so the
    agent and the journal read the trade from the exchange's list: so does a liquidation's or an ADL's fill
    (execution type CALCULATED), which read as zeros for good."""
    cut = orjson.loads(ORDER_FILL)
    del cut["o"]["rp"], cut["o"]["n"]
    assert parse_user(cut).trade_fields_missing == ("rp", "n")
    cut["o"]["x"] = "CALCULATED"
    assert parse_user(cut).trade_fields_missing == ("rp", "n")
    assert parse_user(decode(ORDER_NEW)).trade_fields_missing == ()   # no fill: nothing owed


def test_account_funding_trade_lite_expiry_and_margin_call():
    acct = parse_user(decode(ACCOUNT))
    assert isinstance(acct, AccountUpdate) and acct.reason == "ORDER"
    assert acct.positions[0].amount == Decimal("-20") and acct.balances[0].balance_change == Decimal("50.12345678")
    fee = parse_user(decode(FUNDING))
    assert isinstance(fee, FundingFee) and fee.amount == Decimal("-0.00085067") and fee.asset == "USDC"
    assert fee.symbol is None  # cross margin, no a.S: cannot be attributed
    with_symbol = orjson.loads(FUNDING)
    with_symbol["a"]["S"] = "ETHUSDC"
    assert parse_user(with_symbol).symbol == "ETHUSDC"
    lite = parse_user(decode(TRADE_LITE))
    assert isinstance(lite, TradeLite) and lite.last_filled_qty == Decimal("0.040") and lite.order_id == 8886774
    expired = parse_user(decode(EXPIRED))
    assert expired == ListenKeyExpired(event_time=1736996475556, listen_key="WsCMN0a4")  # "E" as a string
    margin = parse_user(decode(MARGIN))
    assert isinstance(margin, MarginCall) and margin.cross_wallet_balance == Decimal("3.16812045")


def test_unknown_event_types_pass_through_raw():
    raw = parse_user({"e": "ACCOUNT_CONFIG_UPDATE", "E": 1, "T": 1, "ac": {"s": "BTCUSDT", "l": 25}})
    assert isinstance(raw, RawEvent) and raw.event_type == "ACCOUNT_CONFIG_UPDATE" and raw.data["ac"]["l"] == 25
    assert isinstance(parse_market({"e": "kline", "E": 1}), RawEvent)


@pytest.mark.parametrize(
    "frame",
    [
        '{"e":"bookTicker","s":"BTCUSDT"',  # truncated JSON
        "not json at all",
    ],
)
def test_malformed_json_raises_frame_error(frame):
    with pytest.raises(FrameError, match="malformed JSON"):
        decode(frame)


def test_missing_or_bad_fields_raise_frame_error_naming_the_event():
    with pytest.raises(FrameError, match="bookTicker"):
        parse_market({"e": "bookTicker", "s": "BTCUSDT", "u": 1, "b": "1"})
    with pytest.raises(FrameError, match="markPriceUpdate"):
        parse_market({"e": "markPriceUpdate", "E": 1, "s": "X", "p": "abc"})
    bad = orjson.loads(ORDER_NEW)
    del bad["o"]["X"]
    with pytest.raises(FrameError, match="ORDER_TRADE_UPDATE"):
        parse_user(bad)
    bad_price = orjson.loads(ORDER_NEW)
    bad_price["o"]["p"] = "12,5"
    with pytest.raises(FrameError):
        parse_user(bad_price)
    with pytest.raises(FrameError, match="not an object"):
        parse_user([1, 2])
    held = orjson.loads(ACCOUNT)   # a position held with no entry price: said, not an entry of 0 (a phantom
    position = next(p for p in held["a"]["P"] if float(p["pa"]) != 0)   # profit); the store of its symbol
    del position["ep"]                                                   # refuses it (one of another symbol:
    assert parse_user(held).positions[0].entry_missing                  # nobody's concern here)
    flat = orjson.loads(ACCOUNT)   # a flat position may come without one
    for p in flat["a"]["P"]:
        p["pa"] = "0"
        p.pop("ep", None)
    assert not parse_user(flat).positions[0].entry_missing



@pytest.mark.parametrize("field, value", [("c", 12345), ("c", None), ("s", ["ETHUSDC"]), ("q", "1e999999"),
                                          ("p", "1E-400"), ("z", 1e40), ("i", 2**64 - 1), ("t", -1)])
def test_a_field_of_the_wrong_kind_or_an_absurd_size_is_a_bad_frame_not_a_value(field, value):
    """Read as a value it would fail where the store applies it (a client order id that is a number,
    a quantity past any decimal context), after part of the frame was booked: the parser refuses it."""
    bad = orjson.loads(ORDER_FILL)
    bad["o"][field] = value
    with pytest.raises(FrameError, match=f"o.{field} (is not a string|out of range)|sane size"):
        parse_user(bad)


@pytest.mark.parametrize("frame, field", [(BOOK, "b"), (BOOK, "A"), (MARK, "p"), (MARK, "r"), (AGG, "p"), (DEPTH, "b")])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-inf", "1e999"])
def test_a_price_size_or_rate_that_is_not_a_finite_number_is_a_bad_frame(frame, field, value):
    """float() reads these; a book, mark or rate of NaN would pass every comparison that guards a quote."""
    obj = orjson.loads(frame)
    obj[field] = [[value, "1"]] if field == "b" and obj["e"] == "depthUpdate" else value
    with pytest.raises(FrameError, match="not a finite number"):
        parse_market(obj)


# -- fuzz: whatever the exchange sends, a parser returns an event or raises FrameError -----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.sampled_from(["0", "1.5", "-2", "NaN", "Infinity", "1e999", "abc", "", "12,5"]), st.text(max_size=5),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3), max_leaves=8)


def _mutations(frame: str):
    """A real frame with some fields replaced by arbitrary JSON values or removed."""
    base = orjson.loads(frame)
    inner_key = "o" if "o" in base else ("a" if isinstance(base.get("a"), dict) else None)
    keys = list(base) + ([f"{inner_key}.{k}" for k in base[inner_key]] if inner_key else [])

    @st.composite
    def mutate(draw):
        obj = orjson.loads(frame)
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True)):
            target, name = (obj, key) if "." not in key else (obj.get(inner_key), key.split(".", 1)[1])
            if not isinstance(target, dict) or name == "e":
                continue
            if draw(st.booleans()):
                target.pop(name, None)
            else:
                target[name] = draw(_values)
        return obj

    return mutate()


@settings(max_examples=300, deadline=None)
@given(st.one_of(*(_mutations(f) for f in (ORDER_NEW, ACCOUNT, FUNDING, TRADE_LITE, EXPIRED, MARGIN))))
def test_mutated_user_frames_parse_or_raise_frame_error(obj):
    try:
        event = parse_user(obj)
    except FrameError:
        return
    for name in ("price", "orig_qty", "amount", "wallet_balance"):
        value = getattr(event, name, None)
        assert not isinstance(value, Decimal) or value.is_finite()


@settings(max_examples=300, deadline=None)
@given(st.one_of(*(_mutations(f) for f in (BOOK, DEPTH, MARK, AGG))))
def test_mutated_market_frames_parse_or_raise_frame_error(obj):
    try:
        parse_market(obj)
    except FrameError:
        pass
