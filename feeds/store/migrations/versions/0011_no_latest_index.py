"""no latest-version index: TAXII pages of latest versions walk the date index

``ix_taxii_objects_last`` (collection, is_last, date_added) served the default
``match[version]=last`` as a range of its own. Publishing paid for it on every write: each
object added went into it, and each new version of an indicator and each SCO added again
(its old version's flag flipped, or the SCO moved to its new date) took its entry out of a
random page of it. The (collection, date_added) index serves the same pages in the same order;
``is_last`` is then read from the row, which is read anyway for the body. What the walk skips
are the earlier versions, about a third of the rows of a week-old collection.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_taxii_objects_last", table_name="taxii_objects")


def downgrade() -> None:
    op.create_index(
        "ix_taxii_objects_last", "taxii_objects", ["collection_id", "is_last", "date_added_us"]
    )
