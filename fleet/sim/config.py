"""The simulator's configuration: symbols, accounts, market model, funding, limits and stream timing.

Everything a test may need to bend (funding every few seconds, a low weight limit, short bans,
a short connection lifetime) is a field here, so tests run the real code paths in seconds.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet import yamlfile
from fleet.sim.brackets import DEFAULT_BRACKETS, check_rows
from fleet.sim.market import MAX_VOLATILITY, MarketParams

# The numbers a market can have, so the engine's integer prices and sizes stay exact and in range (a tick of
# 1e-30 served a crossed book, a start price of 1e-300 overflowed the start): a price from 1e-8 to 1e9, a
# tick or step of at least 1e-8 (Binance's finest), at most 10^15 ticks to max_price and 10^15 steps to
# max_qty or a synthetic level (a float holds a whole number exactly to 2^53, about 9 x 10^15)
LOWEST_PRICE, HIGHEST_PRICE = Decimal("1e-8"), Decimal("1e9")
FINEST_UNIT = Decimal("1e-8")
MAX_UNITS = 10 ** 15
MAX_BALANCE = Decimal("1e15")   # an account's balance of one asset
MAX_COMMISSION = Decimal("0.01")   # 1 % a side, of either sign (Binance's are hundredths of a percent)
MAX_FUNDING_INTERVAL_S = 7 * 86_400.0   # a week (Binance's are 1 to 8 hours)
DAY_S = 86_400.0

# The rate's bound where a symbol sets no adjustedFundingRateCap (the simulator's; Binance's caps run from
# a fraction of a percent for the majors to 3 % and more for small symbols)
DEFAULT_FUNDING_CAP = "0.003"


def check_interval_hours(hours: object) -> int:
    """A funding interval as Binance sets them: a whole number of hours dividing 24 (1, 2, 4, 8...)."""
    if type(hours) is not int or hours <= 0 or 24 % hours:
        raise ValueError(f"hours must be a whole number of hours dividing 24 (1, 2, 4, 8...), got {hours!r}")
    return hours


ACCOUNT_NAME = r"^[A-Za-z0-9_.-]{1,40}$"
ASSET = r"^[A-Z0-9]{1,20}$"   # an asset's name (USDT, 1000SHIB)
# an API key: printable ASCII without spaces (Binance's are 64 letters and digits); a newline or an escape in
# one would be a header no client can send
API_KEY = r"^[!-~]{1,256}$"


class SimConfigError(ValueError):
    """A simulator config that cannot be used; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _decimal(v: str | None, *, positive: bool) -> str | None:
    """A finite decimal string (positive when asked); the number itself echoed, trimmed."""
    try:
        ok = v is None or (Decimal(v).is_finite() and (not positive or Decimal(v) > 0))
    except (ArithmeticError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"must be a {'positive ' if positive else ''}finite decimal string, got {str(v)[:40]!r}")
    return v


class BracketSpec(_Model):
    """One notional bracket (GET /fapi/v1/leverageBracket; fleet/sim/brackets.py)."""

    notional_cap: str
    initial_leverage: int = Field(ge=1, le=125)
    maint_margin_ratio: str


class SymbolSpec(_Model):
    """One perpetual contract: its filters and where its market starts."""

    symbol: str = Field(pattern=r"^[A-Z0-9]{2,30}$")
    base_asset: str = Field(pattern=ASSET)
    quote_asset: str = Field(pattern=ASSET)
    tick_size: str = "0.01"
    step_size: str = "0.001"
    min_price: str | None = Field(None, description="PRICE_FILTER minPrice, a whole multiple of tick_size; "
                                                    "None = one tick")
    max_price: str = Field("10000000", description="PRICE_FILTER maxPrice")
    min_qty: str | None = None
    max_qty: str = "10000"
    market_max_qty: str = "1000"
    market_step_size: str | None = Field(None, description="MARKET_LOT_SIZE stepSize (a multiple of step_size); "
                                                            "None = step_size")
    market_min_qty: str | None = Field(None, description="MARKET_LOT_SIZE minQty; None = the LOT_SIZE minQty")
    min_notional: str = "5"
    price_precision: int | None = Field(None, ge=0, le=18, description="decimals accepted in prices; None = the "
                                                                      "tick's")
    quantity_precision: int | None = Field(None, ge=0, le=18, description="decimals accepted in sizes; None = the "
                                                                         "step's")
    max_num_orders: int = Field(200, ge=1, le=100_000)
    multiplier_up: str = "1.0500"
    multiplier_down: str = "0.9500"
    start_price: float = Field(100.0, ge=float(LOWEST_PRICE), le=float(HIGHEST_PRICE),
                               description="at least a tick, at most max_price")
    volatility: float | None = Field(None, ge=0, le=MAX_VOLATILITY, description="annualised volatility; None = "
                                                                               "market's")
    spread_ticks: int = Field(1, ge=1, le=10_000, description="synthetic touch spread in ticks")
    level_qty: float = Field(0.0, ge=0, description="synthetic size per level in base units; 0 = ~20k notional")
    depth_levels: int = Field(20, ge=5, le=1000)
    taker_rate: float = Field(4.0, ge=0, le=1000, description="synthetic taker arrivals per second")
    taker_mean_qty: float = Field(0.0, ge=0, description="mean synthetic taker size; 0 = ~5k notional")
    funding_rate: str = "0.0001"
    funding_interval_hours: int | None = Field(
        None, description="the symbol's own funding interval, a whole number of hours dividing 24 (Binance uses "
                          "1, 2, 4 and 8; GET /fapi/v1/fundingInfo lists it); None = funding_interval_s")
    funding_rate_cap: str | None = Field(
        None, description="adjustedFundingRateCap; the floor is its negative (fundingInfo lists it); None = "
                          f"{DEFAULT_FUNDING_CAP}, not listed")
    brackets: tuple[BracketSpec, ...] | None = Field(
        None, description="notional brackets, lowest first; None = Binance's BTCUSDT table (125x up to 50,000)")

    @field_validator("tick_size", "step_size", "min_notional", "max_qty", "market_max_qty", "max_price", "min_qty",
                     "multiplier_up", "multiplier_down", "market_step_size", "market_min_qty", "min_price")
    @classmethod
    def _positive_decimal(cls, v: str | None) -> str | None:
        return _decimal(v, positive=True)

    @field_validator("funding_rate")
    @classmethod
    def _rate(cls, v: str) -> str:
        _decimal(v, positive=False)
        if abs(Decimal(v)) > 1:
            raise ValueError(f"must be a rate from -1 to 1, got {v[:40]!r}")
        return v

    @field_validator("tick_size", "step_size")
    @classmethod
    def _unit(cls, v: str) -> str:
        if Decimal(_decimal(v, positive=True)) < FINEST_UNIT:   # type: ignore[arg-type]
            raise ValueError(f"must be at least {FINEST_UNIT:f}, got {v[:40]!r}")
        return v

    @field_validator("max_price")
    @classmethod
    def _highest(cls, v: str) -> str:
        if Decimal(_decimal(v, positive=True)) > HIGHEST_PRICE:   # type: ignore[arg-type]
            raise ValueError(f"must be at most {HIGHEST_PRICE:f}, got {v[:40]!r}")
        return v

    @model_validator(mode="after")
    def _multipliers(self) -> "SymbolSpec":
        if not 1 < Decimal(self.multiplier_up) <= 10 or not 0 < Decimal(self.multiplier_down) < 1:
            raise ValueError("multiplier_up must be above 1 (at most 10) and multiplier_down below 1 (PERCENT_PRICE)")
        return self

    @field_validator("funding_interval_hours")
    @classmethod
    def _funding_hours(cls, v: int | None) -> int | None:
        return v if v is None else check_interval_hours(v)

    @field_validator("funding_rate_cap")
    @classmethod
    def _funding_cap(cls, v: str | None) -> str | None:
        try:
            ok = v is None or Decimal("0.00000001") <= Decimal(v) < 1
        except ArithmeticError:
            ok = False
        if not ok:
            raise ValueError(f"must be a rate from 0.00000001 up to 1, got {v!r}")
        return v

    @model_validator(mode="after")
    def _market_step_on_the_lot_grid(self) -> "SymbolSpec":
        if self.market_step_size is not None:
            ratio = Decimal(self.market_step_size) / Decimal(self.step_size)
            if ratio < 1 or ratio != ratio.to_integral_value():
                raise ValueError("market_step_size must be a whole multiple of step_size")
        return self

    @model_validator(mode="after")
    def _price_range_on_the_tick_grid(self) -> "SymbolSpec":
        low = Decimal(self.min_price or self.tick_size)
        ratio = low / Decimal(self.tick_size)
        if ratio != ratio.to_integral_value():
            raise ValueError("min_price must be a whole multiple of tick_size")
        if Decimal(self.max_price) < low:
            raise ValueError("max_price must not be below min_price")
        given = "start_price" in self.model_fields_set   # (a replay takes the recording's first mid instead)
        if given and not low <= Decimal(repr(self.start_price)) <= Decimal(self.max_price):
            raise ValueError(f"start_price {self.start_price:g} must be from min_price (or a tick) to max_price "
                             f"({self.max_price})")
        return self

    @model_validator(mode="after")
    def _units_in_range(self) -> "SymbolSpec":
        """The engine's integer prices and sizes: at most MAX_UNITS ticks or steps, whatever the synthetic
        book's sizes (about 20,000 notional a level, 5,000 a taker at the start price)."""
        tick, step, price = Decimal(self.tick_size), Decimal(self.step_size), Decimal(repr(self.start_price))
        for name in ("max_qty", "market_max_qty"):
            if Decimal(getattr(self, name)) < self.smallest_order:
                raise ValueError(f"{name} must be at least a step and min_qty ({self.smallest_order}): no order "
                                 f"could be placed")
        level, taker = Decimal(repr(self.level_qty)), Decimal(repr(self.taker_mean_qty))
        sizes = {"max_price": (Decimal(self.max_price), tick), "max_qty": (Decimal(self.max_qty), step),
                 "market_max_qty": (Decimal(self.market_max_qty), step),
                 "level_qty" + ("" if level else " (0: 20,000 notional at the start price)"):
                     (level or 20_000 / price, step),
                 "taker_mean_qty" + ("" if taker else " (0: 5,000 notional at the start price)"):
                     (taker or 5_000 / price, step)}
        for name, (amount, unit) in sizes.items():
            if amount / unit > MAX_UNITS:
                raise ValueError(f"{name} is {float(amount / unit):.3g} {'ticks' if unit is tick else 'steps'}, more "
                                 f"than the {MAX_UNITS:.0e} the engine holds exactly: a coarser tick or step, or "
                                 f"a smaller amount")
        return self

    @field_validator("brackets")
    @classmethod
    def _bracket_table(cls, v: tuple[BracketSpec, ...] | None) -> tuple[BracketSpec, ...] | None:
        if v is not None:
            check_rows(tuple((b.notional_cap, b.initial_leverage, b.maint_margin_ratio) for b in v))
        return v

    @property
    def margin_asset(self) -> str:
        return self.quote_asset

    @property
    def smallest_order(self) -> Decimal:
        """The smallest quantity an order may have (LOT_SIZE's step and minimum)."""
        return max(Decimal(self.step_size), Decimal(self.min_qty or self.step_size))

    def bracket_rows(self) -> tuple[tuple[str, int, str], ...]:
        if self.brackets is None:
            return DEFAULT_BRACKETS
        return tuple((b.notional_cap, b.initial_leverage, b.maint_margin_ratio) for b in self.brackets)


def default_symbol_spec(symbol: str) -> SymbolSpec:
    """The built-in symbols the rest of the project assumes, or a generic spec for any other name."""
    symbol = symbol.upper()
    if symbol in BUILT_IN_SPECS:
        return SymbolSpec(symbol=symbol, **BUILT_IN_SPECS[symbol])
    for quote in ("USDT", "USDC", "BUSD"):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return SymbolSpec(symbol=symbol, base_asset=symbol[: -len(quote)], quote_asset=quote)
    return SymbolSpec(symbol=symbol, base_asset=symbol, quote_asset="USDT")


# the contracts the simulator knows without a spec in its config
BUILT_IN_SPECS: dict[str, dict[str, Any]] = {
    "ETHUSDC": dict(base_asset="ETH", quote_asset="USDC", tick_size="0.01", step_size="0.001",
                    min_notional="5", start_price=3000.0, market_max_qty="2000"),
    "BTCUSDT": dict(base_asset="BTC", quote_asset="USDT", tick_size="0.10", step_size="0.001",
                    min_notional="50", start_price=60000.0, price_precision=2,
                    max_qty="1000", market_max_qty="120"),
    "SOLUSDT": dict(base_asset="SOL", quote_asset="USDT", tick_size="0.01", step_size="0.01",
                    min_notional="5", start_price=150.0, max_qty="100000", market_max_qty="5000"),
}


class AccountSpec(_Model):
    """A trading account; keys are generated at start unless given."""

    name: str = Field(pattern=ACCOUNT_NAME)
    api_key: str | None = None
    api_secret: str | None = Field(None, repr=False)   # (a model's repr in a log or a traceback shows no secret)
    key_type: Literal["HMAC", "ED25519"] = Field(
        "HMAC", description="HMAC: api_secret signs (hex); ED25519: api_secret is the PEM private key (made "
                            "from the seed unless given) and the exchange keeps its public half; signatures "
                            "are base64, and only such a key logs a WebSocket API session on")
    balances: dict[str, str] = Field(default_factory=lambda: {"USDT": "100000", "USDC": "100000"})

    @field_validator("balances")
    @classmethod
    def _balances(cls, v: dict[str, str]) -> dict[str, str]:
        for asset, amount in v.items():
            if not re.fullmatch(ASSET, asset):
                raise ValueError(f"asset {asset[:40]!r} is not an asset's name (1-20 capitals and digits, e.g. USDT)")
            _decimal(amount, positive=False)
            if not 0 <= Decimal(amount) <= MAX_BALANCE:
                raise ValueError(f"a balance must be from 0 to {MAX_BALANCE:.0e}, got {amount[:40]!r}")
        return v
    leverage: int = Field(20, ge=1, le=125)
    orders_per_10s: int | None = Field(None, ge=1, le=10**9, description="this account's own order limit (GET "
                                                                         "/fapi/v1/rateLimit/order); None = "
                                                                         "rate_limits'")
    orders_per_minute: int | None = Field(None, ge=1, le=10**9)
    funding_frame_symbol: bool | None = Field(None, description="add the 2026 SDK a.S to this account's "
                                                                "FUNDING_FEE frames; None = the global switch")
    position_mode: Literal["one_way", "hedge"] = Field(
        "one_way", description="hedge: an account another tool left in Hedge Mode (dualSidePosition), to test a "
                               "client against it: an order without a position side is refused -4061, and POST "
                               "/fapi/v1/positionSide/dual switches it to one-way; the simulator trades one-way "
                               "only (an order for a LONG or SHORT position is refused -1000)")

    @model_validator(mode="after")
    def _credentials(self) -> "AccountSpec":
        check_credentials(self.name, self.key_type, self.api_key, self.api_secret)
        return self


def check_credentials(name: str, key_type: str, api_key: str | None, api_secret: str | None) -> None:
    """SimConfigError naming the account (never the key) when its key is not one a client can send, or its
    secret not one the exchange can check: an HMAC secret of printable characters, an Ed25519 PEM key."""
    if api_key is not None and not re.fullmatch(API_KEY, api_key):
        raise SimConfigError(f"account {name!r}: api_key must be 1-256 printable characters without spaces "
                         f"({len(api_key)} given, not shown)")
    if api_secret is None:
        return
    if key_type == "HMAC" and not re.fullmatch(API_KEY, api_secret):
        raise SimConfigError(f"account {name!r}: api_secret (HMAC) must be 1-256 printable characters without "
                         f"spaces ({len(api_secret)} given, not shown)")
    if key_type == "ED25519":
        from fleet.sim.keys import ed25519_verifier

        try:
            ed25519_verifier(api_secret)
        except Exception:   # noqa: BLE001 - cryptography's errors name the PEM's fault, never its text
            raise SimConfigError(f"account {name!r}: api_secret (ED25519) is not an Ed25519 key in PEM (a private "
                             f"or public key, -----BEGIN PRIVATE KEY----- ...; not shown)") from None


class RateLimits(_Model):
    weight_per_minute: int = Field(2400, ge=1, le=10**9)
    orders_per_10s: int = Field(300, ge=1, le=10**9)
    orders_per_minute: int = Field(1200, ge=1, le=10**9)
    ban_base_s: float = Field(120.0, gt=0, le=30 * DAY_S, description="first 418 ban; doubles with each later "
                                                                       "ban, max 3 days")
    ban_after_429s: int = Field(10, ge=1, le=10**9, description="429s an IP may get in one minute; a request after "
                                                                "that many is banned (418)")
    ban_max_s: float = Field(3 * 24 * 3600.0, gt=0, le=30 * DAY_S)
    funding_reads_per_5min: int = Field(500, ge=1, le=10**9, description="GET fundingRate and fundingInfo "
                                                                         "together, per IP (apart from the weight)")
    stats_reads_per_5min: int = Field(1000, ge=1, le=10**9, description="GET /futures/data/* (the trading "
                                                                         "statistics) together, per IP (no weight)")


def _once(what: str, names: list[str]) -> None:
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise ValueError(f"{what} {repeated!r} is given twice ({what}s must be distinct)")


class SimConfig(_Model):
    """Everything the simulator needs; the defaults are the project's defaults."""

    symbols: tuple[SymbolSpec, ...] = ()
    accounts: tuple[AccountSpec, ...] = (AccountSpec(name="main"),)
    market: MarketParams = Field(default_factory=MarketParams)
    # Binance's Regular tier for USDⓈ-M, the feeTier 0 accountConfig and the account report
    maker_commission: str = "0.0002"
    taker_commission: str = "0.0005"
    funding_interval_s: float = Field(8 * 3600.0, gt=0, description="aligned to the epoch (00/08/16 UTC); from "
                                                                    "1 s to a week")
    funding_rate_wander: float = Field(0.00002, ge=0, le=0.01, description="std dev of the hourly rate drift")
    listen_key_ttl_s: float = Field(3600.0, ge=0.01, le=30 * DAY_S)
    step_ms: int = Field(50, ge=1, le=1000, description="market model step (book cadence)")
    mark_interval_ms: int = Field(1000, ge=10, le=3_600_000)
    ws_ping_interval_s: float = Field(180.0, ge=0.01, le=30 * DAY_S)
    ws_pong_timeout_s: float = Field(600.0, ge=0.01, le=30 * DAY_S)
    ws_max_lifetime_s: float = Field(24 * 3600.0, ge=0.01, le=30 * DAY_S)
    ws_max_incoming_per_s: int = Field(10, ge=1, le=10**9)
    ws_max_streams: int = Field(1024, ge=1, le=10**6)
    legacy_paths: Literal["public", "all"] = Field(
        "public", description="what the unrouted /ws and /stream paths deliver: 'public' (the /public streams only, books and trades; "
                              "a /market stream or a user stream there is accepted and stays silent, as on "
                              "fstream.binance.com since 2026-04-23) or 'all' (as the testnet still does)")
    rate_limits: RateLimits = RateLimits()
    recv_window_max_ms: int | None = Field(
        None, ge=1, le=10**9, description="a recvWindow above this is refused (-1130); None: no maximum (Binance's is "
                                "unverified: an SDK says below 60000, the docs' RSA example sends 9999999)")
    rest_latency_ms: int = Field(0, ge=0, le=60_000, description="added to every REST call (a far exchange)")
    funding_frame_symbol: bool = Field(False, description="add a.S (the 2026 SDK's symbol of a FUNDING_FEE "
                                                          "ACCOUNT_UPDATE) to every account's funding frames; "
                                                          "off = the real cross frame without a symbol")
    default_stp: Literal["EXPIRE_MAKER", "NONE", "EXPIRE_TAKER", "EXPIRE_BOTH"] = Field(
        "EXPIRE_MAKER", description="the selfTradePreventionMode of an order sent without one: EXPIRE_MAKER, as "
                                    "Binance's own frames show; its New Order and Place Multiple Orders pages "
                                    "say NONE (an order then trades with the account's own, both fees paid)")
    max_modifies_per_order: int = Field(9999, ge=1, le=10**9, description="PUT order answers -5026 once an order was "
                                                                "modified this many times (Binance: fewer than 10000)")
    liquidation: bool = Field(True, description="close a position whose margin falls to its maintenance at the "
                                                "mark, as Binance does (fleet/sim/liquidation.py); off = never")
    history: bool = Field(True, description="start with the market's past: a day of 1-minute candles and a "
                                            "month of funding rates (fleet/sim/history.py); a replay has its own")
    replay: str | None = Field(None, description="a recording directory (docs/recording.md) replayed as the "
                                                 "market instead of the model; None = the model")

    @field_validator("maker_commission", "taker_commission")
    @classmethod
    def _commission(cls, v: str) -> str:
        _decimal(v, positive=False)
        if abs(Decimal(v)) > MAX_COMMISSION:
            raise ValueError(f"must be a rate from -{MAX_COMMISSION} to {MAX_COMMISSION}, got {v[:40]!r}")
        return v

    @field_validator("funding_interval_s")
    @classmethod
    def _funding_interval(cls, v: float) -> float:
        if not 1 <= v <= MAX_FUNDING_INTERVAL_S:
            raise ValueError(f"must be from 1 second to a week ({MAX_FUNDING_INTERVAL_S:.0f} s), got {v:g}")
        return v

    @field_validator("symbols")
    @classmethod
    def _distinct_symbols(cls, v: tuple[SymbolSpec, ...]) -> tuple[SymbolSpec, ...]:
        _once("symbol", [s.symbol for s in v])   # (the last of two specs silently won)
        return v

    @model_validator(mode="after")
    def _model_starts_inside_the_filter(self) -> "SimConfig":
        """The model market starts each symbol at its start price, which must lie inside its price filter
        (a replay starts at the recording's first mid: a spec copied from exchangeInfo needs none)."""
        if self.replay is None:
            for i, spec in enumerate(self.symbols):
                low = Decimal(spec.min_price or spec.tick_size)
                if not low <= Decimal(repr(spec.start_price)) <= Decimal(spec.max_price):
                    raise ValueError(f"symbols.{i}.start_price {spec.start_price:g} (the default unless given) must be "
                                     f"from min_price (or a tick) to max_price ({spec.max_price}): give the symbol's "
                                     f"start_price")
        return self

    @field_validator("accounts")
    @classmethod
    def _distinct_accounts(cls, v: tuple[AccountSpec, ...]) -> tuple[AccountSpec, ...]:
        _once("account", [a.name for a in v])
        keys = [a.api_key for a in v if a.api_key is not None]
        if len(set(keys)) != len(keys):   # one account's key would log the other's requests on
            raise ValueError("two accounts have the same api_key (keys must be distinct; not shown)")
        return v

    def knows(self, symbol: str) -> bool:
        """Whether ``symbol``'s contract is the config's or a built-in one (any other name is traded on a
        generic spec: a price of 100, a tick of 0.01)."""
        return symbol.upper() in BUILT_IN_SPECS or any(s.symbol == symbol.upper() for s in self.symbols)

    def symbol_specs(self, names: list[str] | None = None) -> tuple[SymbolSpec, ...]:
        """The configured specs, plus defaults for names not configured (in the given order)."""
        configured = {s.symbol: s for s in self.symbols}
        if not names:
            return self.symbols or tuple(default_symbol_spec(n) for n in ("ETHUSDC", "BTCUSDT", "SOLUSDT"))
        return tuple(configured.get(n.upper()) or default_symbol_spec(n) for n in names)


def load_sim_config(source: str | Path | dict[str, Any] | SimConfig | None, replay: str | None = None) -> SimConfig:
    """A SimConfig from a YAML file, a dict or nothing; errors name the offending field. ``replay``: the
    recording the command line names, read with the file (its specs need no start price then)."""
    if source is None:
        return SimConfig() if replay is None else SimConfig(replay=replay)
    if isinstance(source, SimConfig):
        return source if replay is None else SimConfig.model_validate({**source.model_dump(), "replay": replay})
    data: Any = source
    where = "config"
    if isinstance(source, (str, Path)):
        where = str(source)
        try:
            data = yamlfile.read(source) or {}
        except yamlfile.YamlFileError as exc:
            raise SimConfigError(f"simulator config {where} {exc}") from None
    if replay is not None and isinstance(data, dict):
        data = {**data, "replay": replay}
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:   # (not chained: the error holds the input's values, keys among them)
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SimConfigError(f"{where}: field '{field}': {first['msg']}") from None
