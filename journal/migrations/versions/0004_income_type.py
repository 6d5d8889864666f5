"""the funding table holds a liquidation's clearance fee too (income INSURANCE_CLEAR): each row's income type,
unique with its income id (Binance: a tranId is unique within an income type, not across them)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("funding") as batch:
        batch.add_column(sa.Column("income_type", sa.String(32), nullable=False, server_default="FUNDING_FEE"))
        batch.drop_constraint("uq_funding_account_income_id", type_="unique")
        batch.create_unique_constraint("uq_funding_account_income_type_income_id",
                                       ["account", "income_type", "income_id"])


def downgrade() -> None:
    with op.batch_alter_table("funding") as batch:
        batch.drop_constraint("uq_funding_account_income_type_income_id", type_="unique")
        batch.create_unique_constraint("uq_funding_account_income_id", ["account", "income_id"])
        batch.drop_column("income_type")
