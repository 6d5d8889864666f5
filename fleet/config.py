"""Configuration: pydantic models for the fleet, its accounts and each symbol's parameters.

Defaults are the seed's values (``round8_survival.yaml``, ETHUSDC). The seed's prohibitions are
validation errors that name the field, so a bad config refuses to start instead of trading.
Secrets are never values here: a config names the environment variable or file that holds them.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import parse_qsl

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fleet import yamlfile


class ConfigError(ValueError):
    """A config that must not be used; the message names the file and the field."""


class _Model(BaseModel):
    # No infinity or NaN: `.inf` passes gt=0, and a stale-market limit, a capital or a cap of infinity
    # switches its check off, said by nothing
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, v: Any, info: ValidationInfo) -> Any:
        """``true`` is not a size or a count (pydantic reads it as 1)."""
        if isinstance(v, bool) and info.field_name is not None:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if kinds & {int, float} and bool not in kinds:
                raise ValueError("a number, not true or false")
        return v


def _kinds(annotation: Any) -> set[Any]:
    """The types an annotation admits (``float | None`` -> {float, NoneType})."""
    args = get_args(annotation)
    return {a for arg in args for a in _kinds(arg)} if args and get_origin(annotation) is not Literal else {annotation}


# --- the hard cap on net_max ----------------------------------------------------------------------
# The cap guards the symbol's params, so those params cannot set it: it is held by code (the seed's
# caps, which nothing raises) and by the fleet config (``symbols[].net_max_hard_cap``, else
# ``risk.net_max_hard_cap``), which may only lower a cap held by code.

SEED_HARD_CAPS: dict[str, float] = {"ETHUSDC": 0.25}  # the seed: "net_max never above 0.25"
# libpq's connection parameters that hold a secret, refused in a journal URL's query (?password=...)
URL_SECRET_PARAMS = frozenset({"password", "sslpassword"})
def url_holds_password(url: str) -> bool:
    """Whether a database URL carries a password: in its user part (SQLAlchemy reads ``mm:pa/ss@host``
    as the user ``mm`` with the password ``pa/ss``: everything before the last ``@``), or in its query as
    libpq reads the keys (``?password%20=x`` is libpq's ``password``), or inside a query value (libpq
    may read a ``dbname`` as a connection string of its own)."""
    scheme, _, rest = url.partition("://")
    before_query, _, query = rest.partition("?")
    if scheme.lower().startswith("postgres") and "@" in before_query and ":" in before_query.rsplit("@", 1)[0]:
        return True
    pairs = parse_qsl(query, keep_blank_values=True)
    return any(k.strip().lower() in URL_SECRET_PARAMS or re.search(r"(ssl)?password\s*=", v, re.I)
               for k, v in pairs)


def params_refusal(symbol: str, params: "SymbolParams", smallest: Decimal,
                   min_notional: Decimal | None = None) -> str | None:
    """Why a symbol's parameters can never trade (the agent would place nothing), else None; the
    commands refuse them before anything changes: a base_size, or a worst-case bound (net_max x
    multiplier), under the smallest order; a max_order_notional under the exchange's smallest notional."""
    size = Decimal(str(params.base.base_size))
    if size < smallest:
        return f"{symbol}'s base.base_size {size:f} is under its smallest order of {smallest:f}: the agent would place nothing"
    cap = Decimal(str(params.worst_cap))
    if cap < smallest:
        return (f"{symbol}'s worst-case bound base.net_max x worst_case.multiplier = {cap:f} is under its smallest "
                f"order of {smallest:f}: the guard would let no order through")
    notional = Decimal(str(params.risk.max_order_notional))
    if min_notional is not None and notional < min_notional:
        return (f"{symbol}'s risk.max_order_notional {notional:f} is under the exchange's smallest notional of "
                f"{min_notional:f}: no order could be placed")
    return None


DEFAULT_NET_MAX_HARD_CAP = 0.25  # risk.net_max_hard_cap unless the fleet config sets one

_CAP_HOLDERS = "symbols[].net_max_hard_cap or risk.net_max_hard_cap in the fleet config"


# --- per-symbol parameters (the seed) ---------------------------------------------------------


class BaseParams(_Model):
    quote_interval_ms: int = Field(220, ge=20, le=60_000)
    base_size: float = Field(0.007, gt=0)
    net_max: float = Field(
        0.20, gt=0, description="position cap in base units; never above the symbol's hard cap (see hard_cap)"
    )
    min_spread: float = Field(0.00065, gt=0, lt=0.5)
    requote_move_fraction: float = Field(
        0.5, gt=0, description="requote at once when mid moves this fraction of layer 0's spread"
    )

    @model_validator(mode="before")
    @classmethod
    def _hard_cap_is_not_a_symbol_param(cls, data: Any) -> Any:
        if isinstance(data, dict) and "net_max_hard_cap" in data:
            raise ValueError(
                f"net_max_hard_cap may not be set in a symbol's params: the hard cap on net_max is held by "
                f"{_CAP_HOLDERS} (the seed's {SEED_HARD_CAPS} by code)"
            )
        return data


class GridParams(_Model):
    layer_spacing_mode: Literal["geometric"] = "geometric"
    spacing_ratio: float = Field(1.35, ge=1.0, le=5.0)
    layer_size_decay: float = Field(0.92, gt=0, le=1.0)
    max_layers: int = Field(14, ge=1, le=60)


class WorstCaseParams(_Model):
    multiplier: float = Field(
        1.15, ge=1.0, le=1.5,
        description="the worst case (position and pending orders) each side may reach, in net_max: the headroom "
                    "for the ladder's pending orders, not a way past the hard cap on net_max (at most half again)")
    size_decay_k: float = Field(3.8, ge=0, le=100)


class FundingParams(_Model):
    sensitivity: float = Field(
        2.2, ge=0, description="the quotes' center moves by this times the predicted rate, scaled to 8 hours "
                               "(a symbol settling every hour counts its rate 8 times)"
    )
    max_shift: float = Field(
        0.01, gt=0, lt=0.5, description="the most the funding shift moves the quotes' center, a fraction of the mid "
                                        "(an hourly symbol's rate near its cap would move it by tens of percent)"
    )
    predict_alpha: float = Field(0.25, gt=0, le=1)
    predict_sample_sec: float = Field(
        60.0, gt=0, description="the EMA prediction takes one sample of the exchange's estimate this often"
    )


class GrindingParams(_Model):
    enabled: bool = True
    interval_sec: float = Field(55.0, description="how often the grinding check runs")
    trigger_ratio: float = Field(0.87, gt=0, le=1.0)
    range_std_threshold: float = Field(0.0038, gt=0, description="relative: stddev / mean")
    grind_size_pct: float = Field(0.075, gt=0, le=1.0)
    reentry_spread_bps: float = Field(4.2, ge=0)
    reentry_size_multiplier: float = Field(2.1, gt=0)
    max_grind_per_hour: int = Field(18, ge=1)
    min_interval_sec: float = Field(42.0, ge=0)
    funding_boost: bool = True
    funding_favor_multiplier: float = Field(1.4, ge=1.0)
    min_window_sec: float = Field(
        600.0, ge=0, description="the 30-min price window must span this much before a range is trusted"
    )

    @field_validator("enabled")
    @classmethod
    def _must_be_enabled(cls, v: bool) -> bool:
        if not v:
            raise ValueError("grinding may not be disabled (seed guardrail)")
        return v

    @field_validator("interval_sec")
    @classmethod
    def _interval_floor(cls, v: float) -> float:
        if not v >= 30.0:
            raise ValueError(f"grinding interval {v}s is under the 30 s floor (seed guardrail)")
        return v


class DrawdownParams(_Model):
    drawdown_bands: tuple[float, ...] = (6.0, 11.0, 17.0)
    reduce_fractions: tuple[float, ...] = (0.25, 0.45, 0.80)
    twap_slices: int = Field(4, ge=1, le=50)
    twap_interval_ms: int = Field(1200, ge=0)
    cooldown_sec: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _bands_match(self) -> "DrawdownParams":
        if len(self.drawdown_bands) != len(self.reduce_fractions):
            raise ValueError("drawdown_bands and reduce_fractions must have the same length")
        if not self.drawdown_bands:
            raise ValueError("drawdown_bands may not be empty: the drawdown reduction would never act")
        if any(not 0 < b < 100 for b in self.drawdown_bands):
            raise ValueError("drawdown_bands are percent of capital, each above 0 and below 100 (6 is 6 %)")
        if any(a >= b for a, b in zip(self.drawdown_bands, self.drawdown_bands[1:])):
            raise ValueError("drawdown_bands must be increasing")
        if any(not 0 < f <= 1 for f in self.reduce_fractions):
            raise ValueError("reduce_fractions must each be in (0, 1]")
        return self


class RiskParams(_Model):
    price_band: float = Field(0.05, ge=0.001, lt=1, description="orders must lie within this of mark (at least 0.1 %)")
    max_order_notional: float = Field(5_000.0, gt=0)
    capital: float = Field(
        1_000.0, gt=0, description="the symbol's equity base for its drawdown: its equity is this plus its own "
                                   "P&L (the wallet's balance, shared with other symbols and moved by transfers, "
                                   "is not read)"
    )


class OrderParams(_Model):
    tolerance_ticks: int = Field(2, ge=0, description="keep a live order within this many ticks")
    tolerance_spacing_fraction: float = Field(
        0.25, ge=0, description="...or within this fraction of its layer's spacing, if larger"
    )
    size_tolerance: float = Field(0.2, ge=0, le=1, description="relative size difference kept")


class SymbolParams(_Model):
    """Everything one symbol agent trades by. ``configs/symbols/<SYMBOL>.yaml`` holds one."""

    base: BaseParams = BaseParams()
    grid: GridParams = GridParams()
    worst_case: WorstCaseParams = WorstCaseParams()
    funding: FundingParams = FundingParams()
    grinding: GrindingParams = GrindingParams()
    drawdown: DrawdownParams = DrawdownParams()
    risk: RiskParams = RiskParams()
    orders: OrderParams = OrderParams()

    @property
    def worst_cap(self) -> float:
        """``net_max * multiplier``: the bound on worst-case exposure each side."""
        return self.base.net_max * self.worst_case.multiplier


# --- runtime and fleet ------------------------------------------------------------------------


class RuntimeParams(_Model):
    """How the agent runtime behaves around the core (timers, faults)."""

    user_stream_grace_sec: float = Field(2.0, ge=0)
    reconnect_backoff_initial_sec: float = Field(3.0, gt=0)
    reconnect_backoff_max_sec: float = Field(60.0, gt=0)
    listen_key_keepalive_sec: float = Field(25 * 60.0, gt=0)
    # The dead-man switch is the last net, for when both the agent and the controller are gone: a hung
    # agent is fenced by the controller within its lease + ~1 s (controller/fence.py). countdownCancelAll
    # weighs 10 per call, per symbol, from the IP's 2,400/min: a 30 s heartbeat costs 20/min per agent
    # (0.8 %; 1,000/min at 50 symbols), where 10 s cost 60/min (3,000/min at 50: over the limit).
    deadman_heartbeat_sec: float = Field(
        30.0, ge=0.1, description="re-arm the dead-man switch this often (10 weight per call: 20/min per agent at 30 s)")
    deadman_countdown_ms: int = Field(
        120_000, ge=1_000, description="the exchange cancels everything this long after the last heartbeat "
                                       "(four heartbeats: three may be lost, e.g. to a 429, before it fires)")
    lease_pull_sec: float = Field(
        10.0, gt=0,
        description="a lease lapsed this long (the controller or the GCS unreachable) has this epoch's orders "
                    "cancelled by the agent: quotes it cannot re-price do not wait for the dead-man countdown "
                    "(a hung agent is the controller's fence's; a successor's orders are never touched); until "
                    "then only the quotes the ladder would move are cancelled")
    exchange_info_reread_sec: float = Field(
        900.0, ge=1,
        description="exchangeInfo (weight 1) read again this often: a filter the exchange changed that no order "
                    "was refused for (a minimum notional lowered again: the ladder's dropped layers came back only "
                    "at a restart) or a status whose frame was lost is seen, the agent restarting on new filters; "
                    "with it the account's order limits (rateLimit/order, weight 1), which the rate budget follows "
                    "as it does exchangeInfo's")
    market_stale_sec: float = Field(5.0, gt=0, le=3600)
    market_lag_max_ms: int = Field(
        2_000, gt=0,
        description="a book frame older than this at the exchange (its time against the agent's estimate of the "
                    "exchange's clock: the agent fell behind, starved of CPU or paused, or the feed lags) pulls the "
                    "quotes, and quoting waits for a frame within it; frames without a time are not judged")
    stream_max_lifetime_sec: float = Field(
        23 * 3600.0, ge=1, le=24 * 3600.0, description="swap a stream connection this long after it opened (Binance "
                                                      "cuts one at 24 h)")
    stop_timeout_sec: float = Field(
        20.0, gt=0, description="a stop (cancel, flatten, the last reads) ends within this, against an exchange that "
                                "answers nothing too (within a second or two of a stop shorter than 6 s): what it "
                                "could not cancel is left to the dead-man switch, and the stop says so")
    flatten_on_stop: bool = False
    delisting_exit_lead_sec: float = Field(
        1800.0, ge=0,
        description="this long before the exchange settles a delisted symbol (its announced deliveryDate) the agent "
                    "flattens it, so the position is closed at prices the agent chose, not at the settlement price "
                    "(agents/delisting.py); 0 leaves the position to the exchange's settlement")
    reconcile_interval_sec: float = Field(
        5.0, ge=0.1,
        description="the exchange's open orders compared with the store's (GET openOrders with a symbol: weight 1; "
                    "at 5 s, 12 weight/min per agent of the IP's 2,400)",
    )
    reconcile_position_every: int = Field(
        6, ge=1,
        description="every Nth reconciliation also compares the position (GET positionRisk: weight 5) and other "
                    "hands' conditional orders (GET openAlgoOrders: weight 1); every 6th at 5 s = 12 weight/min per "
                    "agent",
    )

    @model_validator(mode="after")
    def _heartbeat_inside_countdown(self) -> "RuntimeParams":
        if self.deadman_heartbeat_sec * 1000 >= self.deadman_countdown_ms:
            raise ValueError("deadman_heartbeat_sec must be shorter than deadman_countdown_ms")
        return self


HostName = Annotated[str, Field(pattern=r"^[A-Za-z0-9.:_\[\]-]{1,253}$")]   # a name or an address, nothing else


class SimExchange(_Model):
    host: HostName = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = pick a free port")
    seed: int = 7
    config: str | None = Field(None, description="optional simulator YAML (market model, funding)")


class ExchangeConfig(_Model):
    kind: Literal["sim", "binance"] = "sim"
    rest_url: str | None = None
    ws_market_url: str | None = None
    ws_user_url: str | None = None
    sim: SimExchange = SimExchange()

    @model_validator(mode="after")
    def _urls_for_binance(self) -> "ExchangeConfig":
        if self.kind == "binance" and not (self.rest_url and self.ws_market_url):
            raise ValueError("exchange.kind=binance needs rest_url and ws_market_url")
        for name, scheme in (("rest_url", "http"), ("ws_market_url", "ws"), ("ws_user_url", "ws")):
            url = getattr(self, name)
            if url is not None and not re.fullmatch(rf"{scheme}s?://[^\s/?#]+(/[^\s]*)?", url):
                raise ValueError(f"exchange.{name} must be a {scheme}:// or {scheme}s:// URL with a host")
        return self


# Where a secret is read from, never the secret: a key pasted where its variable's name goes was accepted,
# then echoed by every "not set" message and stored in the journal's `up` event. Neither check repeats
# the value it refuses.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_FILE_NAME = re.compile(r"[^\x00-\x1f\x7f]*[/.][^\x00-\x1f\x7f]*")


def _env_name(v: str) -> str:
    if not _ENV_NAME.fullmatch(v):
        raise ValueError("must name an environment variable (capitals, digits and _, e.g. MMFLEET_KEY); a key or "
                         "secret itself never goes in the config")
    return v


def _file_name(v: str) -> str:
    if not _FILE_NAME.fullmatch(v):
        raise ValueError("must be a file's path, with a / or a . in it (e.g. ./keys/main.yaml); a key or secret "
                         "itself never goes in the config")
    return v


EnvName = Annotated[str, AfterValidator(_env_name)]
FileName = Annotated[str, AfterValidator(_file_name)]


class AccountConfig(_Model):
    """Where an account's keys are read from, inside the agent process. Never the keys themselves."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    api_key_env: EnvName | None = None
    api_secret_env: EnvName | None = None
    key_file: FileName | None = Field(None, description="YAML/JSON file with api_key and api_secret")
    rate_share: float = Field(1.0, gt=0, le=1.0, description="fraction of the account's limits")

    @model_validator(mode="after")
    def _has_source(self) -> "AccountConfig":
        if not self.key_file and not (self.api_key_env and self.api_secret_env):
            raise ValueError("an account needs api_key_env + api_secret_env, or key_file")
        return self


class SymbolEntry(_Model):
    symbol: str = Field(pattern=r"^[A-Z0-9]{2,30}$")
    account: str
    params_file: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="overrides on the params file")
    net_max_hard_cap: float | None = Field(
        None, gt=0, description="the hard cap on this symbol's net_max (else risk.net_max_hard_cap); "
        "never above a cap held by code"
    )


class ApiConfig(_Model):
    host: HostName = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    token_env: EnvName | None = "MMFLEET_API_TOKEN"
    token_file: FileName | None = None
    metrics_require_auth: bool = False
    metrics_publish_s: float = Field(
        5.0, gt=0, le=60, description="every agent renders and publishes its exposition this often (for /metrics)")
    metrics_stale_s: float = Field(
        15.0, gt=0, le=600,
        description="an exposition older than this is left off /metrics and its agent shown down (mmfleet_agent_up 0)")

    @model_validator(mode="after")
    def _stale_after_publish(self) -> "ApiConfig":
        if self.metrics_stale_s <= 2 * self.metrics_publish_s:
            raise ValueError("api.metrics_stale_s must be more than twice api.metrics_publish_s "
                             f"({self.metrics_stale_s:g} <= 2 x {self.metrics_publish_s:g})")
        return self


class AgentPlacement(_Model):
    num_cpus: float = Field(0.1, ge=0)
    cpu_class: Literal["normal", "background", "auto"] = Field(
        "normal", description="normal: agents at Ray's worker niceness (15); background: once started, an agent "
        "runs in Linux's SCHED_IDLE class, so the kill path (endpoint, controller, a hosted simulator) takes a "
        "core the moment it wakes, and any ordinary work on the node starves it (fleet/sched.py); auto: "
        "background on the controller's node, normal elsewhere (trader nodes, where no kill path runs)")
    resources: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    metrics_port: int | None = Field(None, ge=1, le=65535)


class FleetRisk(_Model):
    max_total_notional: float = Field(1_000_000.0, gt=0, description="fleet-wide abs notional cap")
    net_max_hard_cap: float = Field(
        DEFAULT_NET_MAX_HARD_CAP, gt=0,
        description="the hard cap on net_max of every symbol without its own symbols[].net_max_hard_cap",
    )


class JournalConfig(_Model):
    """The trade journal (see journal/): SQLite under state_dir by default, PostgreSQL with ``url``.

    A password is never part of the config or the URL: it is read from ``password_env`` or
    ``password_file`` by the process that connects."""

    enabled: bool = True
    url: str | None = Field(None, description="postgresql://user@host:port/db (no password); default: SQLite")
    path: str | None = Field(None, description="the SQLite file (default <state_dir>/<fleet>.journal.sqlite)")
    password_env: EnvName | None = "MMFLEET_JOURNAL_PASSWORD"
    password_file: FileName | None = None
    spool_dir: str | None = Field(None, description="JSON-lines spool while the database is down (default <state_dir>/journal-spool)")
    queue_max: int = Field(100_000, ge=100, description="events held in memory before the writer drains them")
    batch_max: int = Field(500, ge=1, le=10_000)
    flush_interval_sec: float = Field(0.2, gt=0, le=10)
    snapshot_interval_sec: float = Field(10.0, gt=0)
    # Binance weight per symbol: userTrades 5 a beat (5 a minute at 60 s); income 30 a read, so it is
    # read at start (unless no settlement is listed since the last read on record), resync (unless none can have
    # come) and stop, after each funding fee frame, and otherwise once an hour (the backstop for a frame
    # the stream lost): 0.5 a minute, not 30.
    backfill_interval_sec: float = Field(60.0, gt=0, description="userTrades read every this often (5 weight)")
    funding_backfill_interval_sec: float = Field(
        3600.0, gt=0, description="income (FUNDING_FEE) read at least this often besides the funding frames (30 weight)")
    backfill_lookback_hours: float = Field(24.0, gt=0, le=24 * 7, description="how far back an empty journal is filled")

    @field_validator("path")
    @classmethod
    def _a_file(cls, v: str | None) -> str | None:
        if v is not None and (v.endswith("/") or os.path.isdir(v)):
            raise ValueError("journal.path is a directory: name the SQLite file, e.g. <dir>/fleet.journal.sqlite")
        return v

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme, sep, rest = v.partition("://")
        if not sep or not (scheme.startswith("postgresql") or scheme.startswith("sqlite")):
            raise ValueError("journal.url must be postgresql://user@host[:port]/db or sqlite:///path")
        if url_holds_password(v):
            raise ValueError("journal.url must not hold a password: use journal.password_env or journal.password_file")
        return v


class FleetConfig(_Model):
    name: str = Field("mmfleet", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    exchange: ExchangeConfig = ExchangeConfig()
    accounts: tuple[AccountConfig, ...]
    symbols: tuple[SymbolEntry, ...]
    api: ApiConfig = ApiConfig()
    agent: AgentPlacement = AgentPlacement()
    runtime: RuntimeParams = RuntimeParams()
    risk: FleetRisk = FleetRisk()
    state_dir: str = Field(".mmfleet", min_length=1, description="lock/PID files and the API token file")
    journal: JournalConfig = JournalConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "FleetConfig":
        names = [a.name for a in self.accounts]
        if len(set(names)) != len(names):
            raise ValueError("accounts: duplicate account name")
        seen: set[str] = set()
        for entry in self.symbols:
            if entry.symbol in seen:
                raise ValueError(f"symbols: {entry.symbol} is listed twice")
            seen.add(entry.symbol)
            if entry.account not in names:
                raise ValueError(f"symbols: {entry.symbol} names unknown account {entry.account!r}")
            held = SEED_HARD_CAPS.get(entry.symbol)
            if entry.net_max_hard_cap is not None and held is not None and entry.net_max_hard_cap > held:
                raise ValueError(
                    f"symbols: {entry.symbol} net_max_hard_cap {entry.net_max_hard_cap} is above the hard cap "
                    f"{held} held by code (the seed's); a fleet config may only lower it"
                )
        return self

    def upkeep_weight_per_min(self) -> float:
        """The IP weight one agent spends a minute on upkeep, quoting aside (see ``upkeep_weight``)."""
        return upkeep_weight(self.runtime, self.journal)

    def hard_cap(self, symbol: str) -> tuple[float, str]:
        """The hard cap on ``symbol``'s net_max, and where it is held (for error messages)."""
        entry = self.entry(symbol)
        if entry.net_max_hard_cap is not None:
            cap, where = entry.net_max_hard_cap, f"symbols[{symbol}].net_max_hard_cap in the fleet config"
        else:
            cap, where = self.risk.net_max_hard_cap, "risk.net_max_hard_cap in the fleet config"
        held = SEED_HARD_CAPS.get(symbol)
        if held is not None and held <= cap:
            return held, f"code: the seed's cap for {symbol}"
        return cap, where

    @property
    def namespace(self) -> str:
        """The Ray namespace the fleet's actors live in."""
        return f"mmfleet-{self.name}"

    def account(self, name: str) -> AccountConfig:
        for acc in self.accounts:
            if acc.name == name:
                return acc
        raise KeyError(name)

    def entry(self, symbol: str) -> SymbolEntry:
        for e in self.symbols:
            if e.symbol == symbol:
                return e
        raise KeyError(symbol)


# --- loading ----------------------------------------------------------------------------------


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(exc: ValidationError, where: str) -> str:
    lines = [f"invalid config {where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yamlfile.read(path) or {}
    except yamlfile.YamlFileError as exc:
        raise ConfigError(f"config {path} {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def load_fleet_config(path: str | os.PathLike[str]) -> FleetConfig:
    """Read and validate a fleet config; raise :class:`ConfigError` naming the bad field."""
    p = Path(path)
    try:
        cfg = FleetConfig.model_validate(_read_yaml(p))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(p))) from None
    sim = cfg.exchange.sim
    if sim.config and not Path(sim.config).is_absolute():
        # a simulator config is named relative to the fleet config, like params files
        sim = sim.model_copy(update={"config": str((p.parent / sim.config).resolve())})
        cfg = cfg.model_copy(update={"exchange": cfg.exchange.model_copy(update={"sim": sim})})
    return cfg


def _net_max_error(symbol: str, net_max: float, cap: float, held_by: str, where: str) -> ConfigError:
    return ConfigError(
        f"invalid config {where}:\n  base.net_max: net_max {net_max} exceeds the hard cap "
        f"net_max_hard_cap={cap} for {symbol} (held by {held_by})"
    )


def validate_symbol_params(cfg: FleetConfig, symbol: str, data: Any, where: str | None = None) -> SymbolParams:
    """``symbol``'s params validated, and net_max checked against the hard cap the fleet config or
    code holds for it; :class:`ConfigError` (a ValueError) naming the field and the cap otherwise."""
    where = where or f"for {symbol}"
    try:
        params = SymbolParams.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None
    cap, held_by = cfg.hard_cap(symbol)
    if params.base.net_max > cap:
        raise _net_max_error(symbol, params.base.net_max, cap, held_by, where)
    return params


def symbol_params(cfg: FleetConfig, symbol: str, config_path: str | os.PathLike[str]) -> SymbolParams:
    """A symbol's parameters: its params file (relative to the fleet config) plus overrides."""
    entry = cfg.entry(symbol)
    data: dict[str, Any] = {}
    where = f"for {symbol}"
    if entry.params_file:
        params_path = Path(config_path).parent / entry.params_file
        data = _read_yaml(params_path)
        if not data:   # (an empty file read as the ETHUSDC seed's defaults for any symbol)
            raise ConfigError(f"params file {params_path} of {symbol} holds no parameters")
        where = f"{params_path} (+ overrides in {config_path})"
    else:
        where = f"symbols[{cfg.symbols.index(entry)}].params of {config_path}"
    data = _deep_merge(data, entry.params)
    return validate_symbol_params(cfg, symbol, data, where)


def migrate_stored_hard_caps(fleet_doc: dict[str, Any], params: dict[str, Any]) -> None:
    """A spec stored before the hard cap left the symbol params held it in ``base``: move it to the
    fleet entry (in place), where it is checked as the fleet config's cap (never above code's)."""
    for entry in fleet_doc.get("symbols", ()) if isinstance(fleet_doc, dict) else ():
        base = (params.get(entry.get("symbol")) or {}).get("base") if isinstance(entry, dict) else None
        if isinstance(base, dict) and "net_max_hard_cap" in base:
            cap = base.pop("net_max_hard_cap")
            entry.setdefault("net_max_hard_cap", cap)


def load_symbol_params(path: str | os.PathLike[str], symbol: str | None = None) -> SymbolParams:
    """A symbol file on its own (``symbol``: else the file's name), with net_max checked against
    the cap code holds for that symbol, else the fleet default ``DEFAULT_NET_MAX_HARD_CAP``."""
    p = Path(path)
    symbol = symbol or p.stem
    try:
        params = SymbolParams.model_validate(_read_yaml(p))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(p))) from None
    held = SEED_HARD_CAPS.get(symbol)
    cap, held_by = (held, f"code: the seed's cap for {symbol}") if held is not None else (
        DEFAULT_NET_MAX_HARD_CAP, "the fleet default (risk.net_max_hard_cap)")
    if params.base.net_max > cap:
        raise _net_max_error(symbol, params.base.net_max, cap, held_by, str(p))
    return params


# Binance's weights for the upkeep calls (reference: Binance USD-M REST docs).
WEIGHT_COUNTDOWN, WEIGHT_OPEN_ORDERS, WEIGHT_POSITION_RISK = 10, 1, 5
WEIGHT_USER_TRADES, WEIGHT_INCOME, WEIGHT_LISTEN_KEY, WEIGHT_EXCHANGE_INFO = 5, 30, 1, 1
WEIGHT_ORDER_LIMITS = 1   # rateLimit/order, read with each periodic exchangeInfo read
KILL_VERIFY_S = 45.0  # the endpoint tries its kill's look-up of each symbol's open orders this often (weight 1)
IP_WEIGHT_PER_MIN = 2400  # per IP address, shared by every agent sending from it
BUDGET_QUOTE_BELOW = 0.75  # the agents' budgets stop quoting above this share of the IP's count


def upkeep_weight(runtime: RuntimeParams, journal: JournalConfig) -> float:
    """The IP weight an agent spends a minute on its own upkeep, whatever it quotes: the dead-man
    re-arm, the reconciliation's openOrders, positionRisk and openAlgoOrders, the listenKey keep-alive, the
    exchangeInfo and rateLimit/order re-reads and the journal's userTrades and hourly income (funding fee frames' reads are shared with the agent's own),
    and the endpoint's look-up of the symbol's open orders that tries its kill ahead of one."""
    w = WEIGHT_COUNTDOWN * 60.0 / runtime.deadman_heartbeat_sec
    w += WEIGHT_OPEN_ORDERS * 60.0 / KILL_VERIFY_S
    w += WEIGHT_OPEN_ORDERS * 60.0 / runtime.reconcile_interval_sec
    w += (WEIGHT_POSITION_RISK + WEIGHT_OPEN_ORDERS) * 60.0 / (runtime.reconcile_interval_sec
                                                               * runtime.reconcile_position_every)
    w += WEIGHT_LISTEN_KEY * 60.0 / runtime.listen_key_keepalive_sec
    w += (WEIGHT_EXCHANGE_INFO + WEIGHT_ORDER_LIMITS) * 60.0 / runtime.exchange_info_reread_sec
    if journal.enabled:
        w += WEIGHT_USER_TRADES * 60.0 / journal.backfill_interval_sec
        w += WEIGHT_INCOME * 60.0 / journal.funding_backfill_interval_sec
    return w
