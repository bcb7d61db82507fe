"""Policy records: transfer bases, residency exceptions, objections, model signatures, dataset subjects.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 08:47:12.227624
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dataset_subjects",
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_dataset_subjects_dataset_id_datasets")),
        sa.PrimaryKeyConstraint("dataset_id", "subject_id", name=op.f("pk_dataset_subjects")),
    )
    with op.batch_alter_table("dataset_subjects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_subjects_subject_id"), ["subject_id"], unique=False)

    op.create_table(
        "objections",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("deployment_id", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name=op.f("fk_objections_deployment_id_deployments")
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_objections_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_objections")),
    )
    with op.batch_alter_table("objections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_objections_deployment_id"), ["deployment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_objections_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "residency_exceptions",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("destination_country", sa.String(length=2), nullable=False),
        sa.Column("exception", sa.String(length=200), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("recorded_by", sa.String(length=32), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_residency_exceptions_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_residency_exceptions_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_residency_exceptions")),
    )
    with op.batch_alter_table("residency_exceptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_residency_exceptions_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_residency_exceptions_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "transfer_bases",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("destination_country", sa.String(length=2), nullable=False),
        sa.Column("basis", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("recorded_by", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_transfer_bases_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_transfer_bases_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfer_bases")),
    )
    with op.batch_alter_table("transfer_bases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transfer_bases_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "model_signatures",
        sa.Column("model_version_id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=71), nullable=False),
        sa.Column("bundle", sa.JSON(), nullable=False),
        sa.Column("signed_by", sa.String(length=200), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_signatures_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_signatures")),
        sa.UniqueConstraint("model_version_id", "key_id", name=op.f("uq_model_signatures_model_version_id_key_id")),
    )
    with op.batch_alter_table("model_signatures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_signatures_model_version_id"), ["model_version_id"], unique=False)

    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deployment_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_approval_requests_deployment_id"), ["deployment_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_approval_requests_deployment_id_deployments"), "deployments", ["deployment_id"], ["id"]
        )

    with op.batch_alter_table("policy_bundles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_policy_bundles_activated_at"), ["activated_at"], unique=False)

    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("private_key_pem", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_column("private_key_pem")

    with op.batch_alter_table("policy_bundles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_bundles_activated_at"))
        batch_op.drop_column("activated_at")

    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_approval_requests_deployment_id_deployments"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_approval_requests_deployment_id"))
        batch_op.drop_column("deployment_id")

    with op.batch_alter_table("model_signatures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_signatures_model_version_id"))

    op.drop_table("model_signatures")
    with op.batch_alter_table("transfer_bases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfer_bases_tenant_id"))

    op.drop_table("transfer_bases")
    with op.batch_alter_table("residency_exceptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_residency_exceptions_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_residency_exceptions_dataset_id"))

    op.drop_table("residency_exceptions")
    with op.batch_alter_table("objections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_objections_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_objections_deployment_id"))

    op.drop_table("objections")
    with op.batch_alter_table("dataset_subjects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_subjects_subject_id"))

    op.drop_table("dataset_subjects")
