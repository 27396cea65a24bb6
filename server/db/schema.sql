-- PACS Mask Upload v2: database schema (PostgreSQL).
-- Generated from the Alembic migrations by `python -m server.db.migrate`; do not edit by hand.
-- Apply migrations with `pacs-mask-server migrate`; this file is for reading and review.

BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 0001

CREATE TABLE annotation (
    id SERIAL NOT NULL, 
    study_instance_uid VARCHAR(64) NOT NULL, 
    series_instance_uid VARCHAR(64) NOT NULL, 
    patient_id VARCHAR(64), 
    description VARCHAR(512), 
    created_by VARCHAR(128) NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    CONSTRAINT pk_annotation PRIMARY KEY (id)
);

CREATE INDEX ix_annotation_series_instance_uid ON annotation (series_instance_uid);

CREATE TABLE api_token (
    id SERIAL NOT NULL, 
    name VARCHAR(128) NOT NULL, 
    role VARCHAR(16) NOT NULL, 
    token_hash VARCHAR(64) NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    revoked_at TIMESTAMP WITH TIME ZONE, 
    CONSTRAINT pk_api_token PRIMARY KEY (id), 
    CONSTRAINT ck_api_token_role CHECK (role IN ('uploader', 'reviewer', 'admin')), 
    CONSTRAINT uq_api_token_name UNIQUE (name), 
    CONSTRAINT uq_api_token_token_hash UNIQUE (token_hash)
);

CREATE TABLE audit_log (
    id BIGSERIAL NOT NULL, 
    at TIMESTAMP WITH TIME ZONE NOT NULL, 
    actor VARCHAR(128) NOT NULL, 
    action VARCHAR(64) NOT NULL, 
    annotation_id INTEGER, 
    group_id UUID, 
    detail JSON, 
    client_address VARCHAR(64), 
    CONSTRAINT pk_audit_log PRIMARY KEY (id)
);

CREATE INDEX ix_audit_log_actor ON audit_log (actor);

CREATE INDEX ix_audit_log_annotation ON audit_log (annotation_id, at);

CREATE INDEX ix_audit_log_group ON audit_log (group_id, at);

CREATE TABLE annotation_mask_group (
    id UUID NOT NULL, 
    annotation_id INTEGER NOT NULL, 
    model_name VARCHAR(128) NOT NULL, 
    version VARCHAR(64) NOT NULL, 
    source VARCHAR(16) NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    expected_slices INTEGER, 
    confidence FLOAT, 
    params JSON, 
    created_by VARCHAR(128) NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    completed_at TIMESTAMP WITH TIME ZONE, 
    review_status VARCHAR(16), 
    review_comment TEXT, 
    reviewed_by VARCHAR(128), 
    reviewed_at TIMESTAMP WITH TIME ZONE, 
    CONSTRAINT pk_annotation_mask_group PRIMARY KEY (id), 
    CONSTRAINT ck_annotation_mask_group_review_status CHECK (review_status IS NULL OR review_status IN ('approved', 'rejected')), 
    CONSTRAINT ck_annotation_mask_group_source CHECK (source IN ('manual', 'ai')), 
    CONSTRAINT ck_annotation_mask_group_status CHECK (status IN ('pending', 'complete', 'deleting')), 
    CONSTRAINT fk_annotation_mask_group_annotation_id_annotation FOREIGN KEY(annotation_id) REFERENCES annotation (id), 
    CONSTRAINT uq_mask_group_model_version UNIQUE (annotation_id, model_name, version)
);

CREATE INDEX ix_annotation_mask_group_annotation_id ON annotation_mask_group (annotation_id);

CREATE INDEX ix_annotation_mask_group_status_created ON annotation_mask_group (status, created_at);

CREATE TABLE annotation_mask (
    id BIGSERIAL NOT NULL, 
    group_id UUID NOT NULL, 
    filename VARCHAR(128) NOT NULL, 
    storage_key VARCHAR(512) NOT NULL, 
    slice_index INTEGER NOT NULL, 
    sop_instance_uid VARCHAR(64), 
    width INTEGER NOT NULL, 
    height INTEGER NOT NULL, 
    label VARCHAR(256), 
    checksum VARCHAR(32) NOT NULL, 
    size_bytes BIGINT NOT NULL, 
    content_type VARCHAR(64) NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    CONSTRAINT pk_annotation_mask PRIMARY KEY (id), 
    CONSTRAINT fk_annotation_mask_group_id_annotation_mask_group FOREIGN KEY(group_id) REFERENCES annotation_mask_group (id) ON DELETE CASCADE, 
    CONSTRAINT uq_annotation_mask_group_filename UNIQUE (group_id, filename), 
    CONSTRAINT uq_annotation_mask_group_slice UNIQUE (group_id, slice_index)
);

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING alembic_version.version_num;

COMMIT;

