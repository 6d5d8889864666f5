"""The journal's tables: one schema for SQLite and PostgreSQL (created and migrated by Alembic).

Money the exchange books (prices, quantities, fees, realized P&L, funding) is kept as the exchange's
decimal strings, so sums are exact on both databases; market figures (mid, mark) are floats.
Every table carries the fleet, account, symbol and epoch it belongs to. Rows are idempotent: a fill
is unique by (account, symbol, trade id), an income row by (account, income type, income id), everything
else by a ``uid`` the writer gives it, so a replayed spool or a repeated backfill adds nothing twice.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

VERSION_TABLE = "journal_version"   # Alembic's record of the schema's revision (not its default name)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Exchange decimals as text: 40 characters hold any Binance figure.
Money = String(40)


def _scope() -> list[Column]:
    return [
        Column("fleet", String(40), nullable=False),
        Column("account", String(40), nullable=False),
        Column("symbol", String(30), nullable=False),
        Column("epoch", BigInteger, nullable=True),
    ]


orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(40), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    *_scope(),
    Column("client_order_id", String(40), nullable=True),
    Column("order_id", BigInteger, nullable=True),
    # sent (a request left), answer (its reply), rejected, unknown (ambiguous reply), update (a stream frame)
    Column("event", String(16), nullable=False),
    Column("request", String(8), nullable=True),  # place / amend / cancel
    Column("side", String(4), nullable=True),
    Column("order_type", String(32), nullable=True),  # TRAILING_STOP_MARKET: 20
    Column("price", Money, nullable=True),
    Column("qty", Money, nullable=True),
    Column("status", String(24), nullable=True),
    Column("reason", String(24), nullable=True),  # ladder, grind, drawdown, flatten, reconcile ...
    Column("detail", Text, nullable=True),
    UniqueConstraint("uid"),
    Index(None, "symbol", "ts_ms"),
    Index(None, "client_order_id"),
)

fills = Table(
    "fills",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    *_scope(),
    Column("trade_id", BigInteger, nullable=False),
    Column("order_id", BigInteger, nullable=True),
    Column("client_order_id", String(40), nullable=True),
    Column("side", String(4), nullable=False),
    Column("price", Money, nullable=False),
    Column("qty", Money, nullable=False),
    Column("fee", Money, nullable=False),
    Column("fee_asset", String(16), nullable=True),
    Column("maker", Boolean, nullable=True),
    Column("realized_pnl", Money, nullable=False),
    Column("mid", Float, nullable=True),  # at fill time (a stream fill); null when only the backfill saw it
    Column("mark", Float, nullable=True),
    Column("source", String(8), nullable=False),  # stream / backfill
    # one side of a trade: a self-trade gives the account both sides under the trade's one id
    UniqueConstraint("account", "symbol", "trade_id", "side"),
    Index(None, "symbol", "ts_ms"),
)

funding = Table(
    "funding",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    *_scope(),
    Column("income_id", BigInteger, nullable=False),  # Binance's tranId
    Column("amount", Money, nullable=False),
    Column("asset", String(16), nullable=True),
    # FUNDING_FEE, or INSURANCE_CLEAR: a liquidation's clearance fee (agents/clearance.py), a fee in the P&L
    Column("income_type", String(32), nullable=False, default="FUNDING_FEE", server_default="FUNDING_FEE"),
    UniqueConstraint("account", "income_type", "income_id"),   # Binance: a tranId is unique per income type
    Index(None, "symbol", "ts_ms"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(40), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    *_scope(),
    Column("position", Float, nullable=False),
    Column("entry_price", Float, nullable=True),
    Column("mark", Float, nullable=True),
    Column("mid", Float, nullable=True),
    Column("realized_pnl", Float, nullable=True),
    Column("unrealized_pnl", Float, nullable=True),
    Column("funding", Float, nullable=True),
    Column("commission", Float, nullable=True),
    Column("wallet", Float, nullable=True),
    Column("open_orders", Integer, nullable=True),
    Column("state", String(16), nullable=True),
    UniqueConstraint("uid"),
    Index(None, "symbol", "ts_ms"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(40), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("fleet", String(40), nullable=False),
    Column("account", String(40), nullable=True),
    Column("symbol", String(30), nullable=True),
    Column("epoch", BigInteger, nullable=True),
    Column("kind", String(40), nullable=False),  # up, apply, kill, resume, halted, ownership_acquired ...
    Column("actor", String(16), nullable=False),  # agent, controller, api, cli
    Column("reason", Text, nullable=True),
    Column("token_fp", String(24), nullable=True),  # a fingerprint of the bearer token, never the token
    Column("config_hash", String(64), nullable=True),
    Column("content", Text, nullable=True),  # JSON, secrets removed
    Column("detail", Text, nullable=True),
    UniqueConstraint("uid"),
    Index(None, "fleet", "ts_ms"),
)

# The journal's funding reads (income FUNDING_FEE): when each began and the cursor it left. An agent that
# starts with no settlement listed since a read on record began (its rows listed by then) need not read
# again (30 weight a symbol: half of a start's weight; a 50-symbol fleet's start 1,500 of the IP's 2,400
# a minute).
funding_reads = Table(
    "funding_reads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(40), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),   # when the read began (the exchange's time)
    *_scope(),
    Column("cursor_ms", BigInteger, nullable=False),   # its newest row's time, or where it began to look
    UniqueConstraint("uid"),
    Index(None, "account", "symbol", "ts_ms"),
)

TABLES = {t.name: t for t in (orders, fills, funding, snapshots, events, funding_reads)}
