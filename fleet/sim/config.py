"""The simulator's configuration: symbols, accounts, market model, funding, limits and stream timing.

Everything a test may need to bend (funding every few seconds, a low weight limit, short bans,
a short connection lifetime) is a field here, so tests run the real code paths in seconds.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet import yamlfile
from fleet.sim.brackets import DEFAULT_BRACKETS, check_rows
from fleet.sim.market import MarketParams

# The rate's bound where a symbol sets no adjustedFundingRateCap (the simulator's; Binance's caps run from
# a fraction of a percent for the majors to 3 % and more for small symbols)
DEFAULT_FUNDING_CAP = "0.003"


def check_interval_hours(hours: object) -> int:
    """A funding interval as Binance sets them: a whole number of hours dividing 24 (1, 2, 4, 8...)."""
    if type(hours) is not int or hours <= 0 or 24 % hours:
        raise ValueError(f"hours must be a whole number of hours dividing 24 (1, 2, 4, 8...), got {hours!r}")
    return hours


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
    base_asset: str
    quote_asset: str
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
    price_precision: int | None = Field(None, description="decimals accepted in prices; None = the tick's")
    quantity_precision: int | None = Field(None, description="decimals accepted in sizes; None = the step's")
    max_num_orders: int = 200
    multiplier_up: str = "1.0500"
    multiplier_down: str = "0.9500"
    start_price: float = Field(100.0, gt=0)
    volatility: float | None = Field(None, ge=0, description="annualised volatility; None = market's")
    spread_ticks: int = Field(1, ge=1, description="synthetic touch spread in ticks")
    level_qty: float = Field(0.0, ge=0, description="synthetic size per level in base units; 0 = ~20k notional")
    depth_levels: int = Field(20, ge=5, le=1000)
    taker_rate: float = Field(4.0, ge=0, description="synthetic taker arrivals per second")
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
        return _decimal(v, positive=False)   # type: ignore[return-value]

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

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
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
        for amount in v.values():
            _decimal(amount, positive=False)
            if Decimal(amount) < 0:
                raise ValueError(f"a balance may not be negative, got {amount[:40]!r}")
        return v
    leverage: int = Field(20, ge=1, le=125)
    funding_frame_symbol: bool | None = Field(None, description="add the 2026 SDK a.S to this account's "
                                                                "FUNDING_FEE frames; None = the global switch")
    position_mode: Literal["one_way", "hedge"] = Field(
        "one_way", description="hedge: an account another tool left in Hedge Mode (dualSidePosition), to test a "
                               "client against it: an order without a position side is refused -4061, and POST "
                               "/fapi/v1/positionSide/dual switches it to one-way; the simulator trades one-way "
                               "only (an order for a LONG or SHORT position is refused -1000)")


class RateLimits(_Model):
    weight_per_minute: int = Field(2400, ge=1)
    orders_per_10s: int = Field(300, ge=1)
    orders_per_minute: int = Field(1200, ge=1)
    ban_base_s: float = Field(120.0, gt=0, description="first 418 ban; doubles with each later ban, max 3 days")
    ban_after_429s: int = Field(10, ge=1, description="429s an IP may get in one minute; a request after "
                                                      "that many is banned (418)")
    ban_max_s: float = Field(3 * 24 * 3600.0, gt=0)


class SimConfig(_Model):
    """Everything the simulator needs; the defaults are the project's defaults."""

    symbols: tuple[SymbolSpec, ...] = ()
    accounts: tuple[AccountSpec, ...] = (AccountSpec(name="main"),)
    market: MarketParams = Field(default_factory=MarketParams)
    maker_commission: str = "0.0002"
    taker_commission: str = "0.0004"
    funding_interval_s: float = Field(8 * 3600.0, gt=0, description="aligned to the epoch (00/08/16 UTC)")
    funding_rate_wander: float = Field(0.00002, ge=0, description="std dev of the hourly rate drift")
    listen_key_ttl_s: float = Field(3600.0, gt=0)
    step_ms: int = Field(50, ge=1, le=1000, description="market model step (book cadence)")
    mark_interval_ms: int = Field(1000, ge=10)
    ws_ping_interval_s: float = Field(180.0, gt=0)
    ws_pong_timeout_s: float = Field(600.0, gt=0)
    ws_max_lifetime_s: float = Field(24 * 3600.0, gt=0)
    ws_max_incoming_per_s: int = Field(10, ge=1)
    ws_max_streams: int = Field(1024, ge=1)
    legacy_paths: Literal["public", "all"] = Field(
        "public", description="what the unrouted /ws and /stream paths deliver: 'public' (the /public streams only, books and trades; "
                              "a /market stream or a user stream there is accepted and stays silent, as on "
                              "fstream.binance.com since 2026-04-23) or 'all' (as the testnet still does)")
    rate_limits: RateLimits = RateLimits()
    recv_window_max_ms: int | None = Field(
        None, ge=1, description="a recvWindow above this is refused (-1130); None: no maximum (Binance's is "
                                "unverified: an SDK says below 60000, the docs' RSA example sends 9999999)")
    rest_latency_ms: int = Field(0, ge=0, le=60_000, description="added to every REST call (a far exchange)")
    funding_frame_symbol: bool = Field(False, description="add a.S (the 2026 SDK's symbol of a FUNDING_FEE "
                                                          "ACCOUNT_UPDATE) to every account's funding frames; "
                                                          "off = the real cross frame without a symbol")
    max_modifies_per_order: int = Field(9999, ge=1, description="PUT order answers -5026 once an order was "
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
        return _decimal(v, positive=False)   # type: ignore[return-value]

    @field_validator("funding_interval_s")
    @classmethod
    def _funding_interval(cls, v: float) -> float:
        if v < 1:
            raise ValueError(f"must be at least 1 second, got {v}")
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


def load_sim_config(source: str | Path | dict[str, Any] | SimConfig | None) -> SimConfig:
    """A SimConfig from a YAML file, a dict or nothing; errors name the offending field."""
    if source is None:
        return SimConfig()
    if isinstance(source, SimConfig):
        return source
    data: Any = source
    where = "config"
    if isinstance(source, (str, Path)):
        where = str(source)
        try:
            data = yamlfile.read(source) or {}
        except yamlfile.YamlFileError as exc:
            raise SimConfigError(f"simulator config {where} {exc}") from None
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:   # (not chained: the error holds the input's values, keys among them)
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SimConfigError(f"{where}: field '{field}': {first['msg']}") from None
