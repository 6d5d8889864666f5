"""a fill is one side of a trade: both sides of a self-trade share the trade's id

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch: SQLite changes a table's constraints only by copying it
    with op.batch_alter_table("fills") as batch:
        batch.drop_constraint("uq_fills_account_symbol_trade_id", type_="unique")
        batch.create_unique_constraint("uq_fills_account_symbol_trade_id_side", ["account", "symbol", "trade_id", "side"])


def downgrade() -> None:
    with op.batch_alter_table("fills") as batch:
        batch.drop_constraint("uq_fills_account_symbol_trade_id_side", type_="unique")
        batch.create_unique_constraint("uq_fills_account_symbol_trade_id", ["account", "symbol", "trade_id"])
