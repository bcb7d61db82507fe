"""feature store: entities, feature view definitions (batch and on-demand), feature services, materializations

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:56:48.014364
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "entities",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("join_keys", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("applied_by", sa.String(length=32), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_entities_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entities")),
        sa.UniqueConstraint("tenant_id", "name", "version", name=op.f("uq_entities_tenant_id_name_version")),
    )
    with op.batch_alter_table("entities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_entities_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "feature_services",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(length=120), nullable=True),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("applied_by", sa.String(length=32), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_feature_services_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_services")),
        sa.UniqueConstraint("tenant_id", "name", "version", name=op.f("uq_feature_services_tenant_id_name_version")),
    )
    with op.batch_alter_table("feature_services", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feature_services_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "materializations",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("feature_view_id", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_digest", sa.String(length=71), nullable=True),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("entities_written", sa.Integer(), nullable=False),
        sa.Column("excluded_subjects", sa.Integer(), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(length=32), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["feature_view_id"], ["feature_views.id"], name=op.f("fk_materializations_feature_view_id_feature_views")
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_materializations_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_materializations")),
    )
    with op.batch_alter_table("materializations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_materializations_feature_view_id"), ["feature_view_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_materializations_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("feature_views", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="batch"))
        batch_op.add_column(sa.Column("timestamp_field", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("created_timestamp_field", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("subject_column", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("offline_backend_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("online_backend_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("expectations", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("sources", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("transform", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("classification", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("residency", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("digest", sa.String(length=71), nullable=True))
        batch_op.add_column(sa.Column("status", sa.String(length=16), nullable=False, server_default="active"))
        batch_op.add_column(sa.Column("watermark", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("applied_by", sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_feature_views_online_backend_id_backends"), "backends", ["online_backend_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_feature_views_offline_backend_id_backends"), "backends", ["offline_backend_id"], ["id"]
        )
        batch_op.drop_column("transformation")


def downgrade() -> None:
    with op.batch_alter_table("feature_views", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transformation", sa.Text(), nullable=True))
        batch_op.drop_constraint(batch_op.f("fk_feature_views_offline_backend_id_backends"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_feature_views_online_backend_id_backends"), type_="foreignkey")
        batch_op.drop_column("applied_by")
        batch_op.drop_column("watermark")
        batch_op.drop_column("status")
        batch_op.drop_column("digest")
        batch_op.drop_column("description")
        batch_op.drop_column("residency")
        batch_op.drop_column("classification")
        batch_op.drop_column("transform")
        batch_op.drop_column("sources")
        batch_op.drop_column("expectations")
        batch_op.drop_column("online_backend_id")
        batch_op.drop_column("offline_backend_id")
        batch_op.drop_column("subject_column")
        batch_op.drop_column("created_timestamp_field")
        batch_op.drop_column("timestamp_field")
        batch_op.drop_column("kind")

    with op.batch_alter_table("materializations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_materializations_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_materializations_feature_view_id"))

    op.drop_table("materializations")
    with op.batch_alter_table("feature_services", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feature_services_tenant_id"))

    op.drop_table("feature_services")
    with op.batch_alter_table("entities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_entities_tenant_id"))

    op.drop_table("entities")
