"""the journal's funding reads: when each began and the cursor it left (a start with no settlement listed
since the last read on record skips its own read, 30 weight)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "funding_reads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(40), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("fleet", sa.String(40), nullable=False),
        sa.Column("account", sa.String(40), nullable=False),
        sa.Column("symbol", sa.String(30), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("cursor_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_funding_reads"),
        sa.UniqueConstraint("uid", name="uq_funding_reads_uid"),
    )
    op.create_index("ix_funding_reads_account_symbol_ts_ms", "funding_reads", ["account", "symbol", "ts_ms"])


def downgrade() -> None:
    op.drop_index("ix_funding_reads_account_symbol_ts_ms", table_name="funding_reads")
    op.drop_table("funding_reads")
