"""the trade journal: orders, fills, funding, snapshots, events

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.String(40)


def _scope() -> list[sa.Column]:
    return [
        sa.Column("fleet", sa.String(40), nullable=False),
        sa.Column("account", sa.String(40), nullable=False),
        sa.Column("symbol", sa.String(30), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(40), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        *_scope(),
        sa.Column("client_order_id", sa.String(40), nullable=True),
        sa.Column("order_id", sa.BigInteger(), nullable=True),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("request", sa.String(8), nullable=True),
        sa.Column("side", sa.String(4), nullable=True),
        sa.Column("order_type", sa.String(16), nullable=True),
        sa.Column("price", MONEY, nullable=True),
        sa.Column("qty", MONEY, nullable=True),
        sa.Column("status", sa.String(24), nullable=True),
        sa.Column("reason", sa.String(24), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.UniqueConstraint("uid", name="uq_orders_uid"),
    )
    op.create_index("ix_orders_symbol_ts_ms", "orders", ["symbol", "ts_ms"])
    op.create_index("ix_orders_client_order_id", "orders", ["client_order_id"])
    op.create_table(
        "fills",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        *_scope(),
        sa.Column("trade_id", sa.BigInteger(), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=True),
        sa.Column("client_order_id", sa.String(40), nullable=True),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("price", MONEY, nullable=False),
        sa.Column("qty", MONEY, nullable=False),
        sa.Column("fee", MONEY, nullable=False),
        sa.Column("fee_asset", sa.String(16), nullable=True),
        sa.Column("maker", sa.Boolean(), nullable=True),
        sa.Column("realized_pnl", MONEY, nullable=False),
        sa.Column("mid", sa.Float(), nullable=True),
        sa.Column("mark", sa.Float(), nullable=True),
        sa.Column("source", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fills"),
        sa.UniqueConstraint("account", "symbol", "trade_id", name="uq_fills_account_symbol_trade_id"),
    )
    op.create_index("ix_fills_symbol_ts_ms", "fills", ["symbol", "ts_ms"])
    op.create_table(
        "funding",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        *_scope(),
        sa.Column("income_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("asset", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_funding"),
        sa.UniqueConstraint("account", "income_id", name="uq_funding_account_income_id"),
    )
    op.create_index("ix_funding_symbol_ts_ms", "funding", ["symbol", "ts_ms"])
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(40), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        *_scope(),
        sa.Column("position", sa.Float(), nullable=False),
        sa.Column("entry_price", sa.Float(), nullable=True),
        sa.Column("mark", sa.Float(), nullable=True),
        sa.Column("mid", sa.Float(), nullable=True),
        sa.Column("realized_pnl", sa.Float(), nullable=True),
        sa.Column("unrealized_pnl", sa.Float(), nullable=True),
        sa.Column("funding", sa.Float(), nullable=True),
        sa.Column("commission", sa.Float(), nullable=True),
        sa.Column("wallet", sa.Float(), nullable=True),
        sa.Column("open_orders", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_snapshots"),
        sa.UniqueConstraint("uid", name="uq_snapshots_uid"),
    )
    op.create_index("ix_snapshots_symbol_ts_ms", "snapshots", ["symbol", "ts_ms"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(40), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("fleet", sa.String(40), nullable=False),
        sa.Column("account", sa.String(40), nullable=True),
        sa.Column("symbol", sa.String(30), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("token_fp", sa.String(24), nullable=True),
        sa.Column("config_hash", sa.String(64), nullable=True),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("uid", name="uq_events_uid"),
    )
    op.create_index("ix_events_fleet_ts_ms", "events", ["fleet", "ts_ms"])


def downgrade() -> None:
    for table in ("events", "snapshots", "funding", "fills", "orders"):
        op.drop_table(table)
