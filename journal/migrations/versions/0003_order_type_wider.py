"""an order's type as the exchange names it: TRAILING_STOP_MARKET is 20 characters

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.alter_column("order_type", existing_type=sa.String(16), type_=sa.String(32), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.alter_column("order_type", existing_type=sa.String(32), type_=sa.String(16), existing_nullable=True)
