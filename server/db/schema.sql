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

-- Running upgrade 0001 -> 0002_series_geometry

ALTER TABLE annotation ADD COLUMN geometry_source VARCHAR(16);

ALTER TABLE annotation ADD COLUMN rows INTEGER;

ALTER TABLE annotation ADD COLUMN columns INTEGER;

ALTER TABLE annotation ADD COLUMN slice_count INTEGER;

ALTER TABLE annotation ADD COLUMN modality VARCHAR(16);

ALTER TABLE annotation ADD COLUMN frame_of_reference_uid VARCHAR(64);

ALTER TABLE annotation ADD COLUMN pixel_spacing JSON;

ALTER TABLE annotation ADD COLUMN image_orientation_patient JSON;

ALTER TABLE annotation ADD COLUMN slice_thickness FLOAT;

ALTER TABLE annotation ADD COLUMN spacing_between_slices FLOAT;

ALTER TABLE annotation ADD COLUMN patient_name VARCHAR(256);

ALTER TABLE annotation ADD COLUMN patient_birth_date VARCHAR(16);

ALTER TABLE annotation ADD COLUMN patient_sex VARCHAR(16);

ALTER TABLE annotation ADD COLUMN study_date VARCHAR(16);

ALTER TABLE annotation ADD COLUMN study_time VARCHAR(16);

ALTER TABLE annotation ADD COLUMN study_id VARCHAR(16);

ALTER TABLE annotation ADD COLUMN accession_number VARCHAR(16);

ALTER TABLE annotation ADD COLUMN referring_physician_name VARCHAR(256);

CREATE TABLE annotation_instance (
    id BIGSERIAL NOT NULL, 
    annotation_id INTEGER NOT NULL, 
    slice_index INTEGER NOT NULL, 
    sop_instance_uid VARCHAR(64) NOT NULL, 
    sop_class_uid VARCHAR(64), 
    instance_number INTEGER, 
    position_x FLOAT, 
    position_y FLOAT, 
    position_z FLOAT, 
    frame_number INTEGER, 
    CONSTRAINT pk_annotation_instance PRIMARY KEY (id), 
    CONSTRAINT ck_annotation_instance_slice_index CHECK (slice_index >= 0), 
    CONSTRAINT fk_annotation_instance_annotation_id_annotation FOREIGN KEY(annotation_id) REFERENCES annotation (id) ON DELETE CASCADE, 
    CONSTRAINT uq_annotation_instance_slice UNIQUE (annotation_id, slice_index)
);

UPDATE alembic_version SET version_num='0002_series_geometry' WHERE alembic_version.version_num = '0001';

-- Running upgrade 0002_series_geometry -> 0003_signed_uploads

CREATE TABLE annotation_mask_upload (
    group_id UUID NOT NULL, 
    filename VARCHAR(128) NOT NULL, 
    size_bytes BIGINT NOT NULL, 
    checksum VARCHAR(32) NOT NULL, 
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    removals INTEGER NOT NULL, 
    CONSTRAINT pk_annotation_mask_upload PRIMARY KEY (group_id, filename), 
    CONSTRAINT fk_annotation_mask_upload_group_id_annotation_mask_group FOREIGN KEY(group_id) REFERENCES annotation_mask_group (id) ON DELETE CASCADE
);

UPDATE alembic_version SET version_num='0003_signed_uploads' WHERE alembic_version.version_num = '0002_series_geometry';

-- Running upgrade 0003_signed_uploads -> 0004_group_seg

ALTER TABLE annotation_mask_group ADD COLUMN labels JSON;

ALTER TABLE annotation_mask_group ADD COLUMN seg_sop_instance_uid VARCHAR(64);

ALTER TABLE annotation_mask_group ADD COLUMN seg_series_instance_uid VARCHAR(64);

ALTER TABLE annotation_mask_group ADD COLUMN seg_storage_key VARCHAR(512);

ALTER TABLE annotation_mask_group ADD COLUMN seg_size BIGINT;

ALTER TABLE annotation_mask_group ADD COLUMN seg_checksum VARCHAR(32);

ALTER TABLE annotation_mask_group ADD COLUMN seg_created_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE annotation_mask_group ADD COLUMN seg_segments INTEGER;

ALTER TABLE annotation_mask_group ADD COLUMN seg_frames INTEGER;

ALTER TABLE annotation_mask_group ADD COLUMN sent_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE annotation_mask_group ADD COLUMN sent_to VARCHAR(512);

ALTER TABLE annotation_mask_group ADD COLUMN send_error VARCHAR(1024);

UPDATE alembic_version SET version_num='0004_group_seg' WHERE alembic_version.version_num = '0003_signed_uploads';

-- Running upgrade 0004_group_seg -> 0005_wider_study_text

ALTER TABLE annotation ALTER COLUMN study_id TYPE VARCHAR(64);

ALTER TABLE annotation ALTER COLUMN accession_number TYPE VARCHAR(64);

UPDATE alembic_version SET version_num='0005_wider_study_text' WHERE alembic_version.version_num = '0004_group_seg';

-- Running upgrade 0005_wider_study_text -> 0006_review_findings

ALTER TABLE annotation_mask_group ADD COLUMN volumes JSON;

CREATE INDEX ix_annotation_mask_group_status_completed ON annotation_mask_group (status, completed_at, id);

CREATE TABLE annotation_mask_review (
    id BIGSERIAL NOT NULL, 
    group_id UUID NOT NULL, 
    decision VARCHAR(16) NOT NULL, 
    comment TEXT, 
    reviewed_by VARCHAR(128) NOT NULL, 
    reviewed_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    override_four_eyes BOOLEAN NOT NULL, 
    CONSTRAINT pk_annotation_mask_review PRIMARY KEY (id), 
    CONSTRAINT ck_annotation_mask_review_decision CHECK (decision IN ('approved', 'rejected')), 
    CONSTRAINT fk_annotation_mask_review_group_id_annotation_mask_group FOREIGN KEY(group_id) REFERENCES annotation_mask_group (id) ON DELETE CASCADE
);

CREATE INDEX ix_annotation_mask_review_group ON annotation_mask_review (group_id, reviewed_at);

CREATE TABLE annotation_mask_finding (
    id BIGSERIAL NOT NULL, 
    review_id BIGINT NOT NULL, 
    slice_index INTEGER NOT NULL, 
    label INTEGER, 
    comment TEXT NOT NULL, 
    CONSTRAINT pk_annotation_mask_finding PRIMARY KEY (id), 
    CONSTRAINT ck_annotation_mask_finding_slice_index CHECK (slice_index >= 0), 
    CONSTRAINT ck_annotation_mask_finding_label CHECK (label IS NULL OR (label >= 1 AND label <= 255)), 
    CONSTRAINT fk_annotation_mask_finding_review_id_annotation_mask_review FOREIGN KEY(review_id) REFERENCES annotation_mask_review (id) ON DELETE CASCADE
);

CREATE INDEX ix_annotation_mask_finding_review_id ON annotation_mask_finding (review_id);

CREATE TABLE annotation_mask_comparison (
    group_a UUID NOT NULL, 
    group_b UUID NOT NULL, 
    slices JSON NOT NULL, 
    computed_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    CONSTRAINT pk_annotation_mask_comparison PRIMARY KEY (group_a, group_b), 
    CONSTRAINT fk_annotation_mask_comparison_group_a_annotation_mask_group FOREIGN KEY(group_a) REFERENCES annotation_mask_group (id) ON DELETE CASCADE, 
    CONSTRAINT fk_annotation_mask_comparison_group_b_annotation_mask_group FOREIGN KEY(group_b) REFERENCES annotation_mask_group (id) ON DELETE CASCADE
);

CREATE INDEX ix_annotation_mask_comparison_group_b ON annotation_mask_comparison (group_b);

INSERT INTO annotation_mask_review (group_id, decision, comment, reviewed_by, reviewed_at, override_four_eyes) SELECT id, review_status, review_comment, COALESCE(reviewed_by, 'unknown'), COALESCE(reviewed_at, completed_at, created_at), false FROM annotation_mask_group WHERE review_status IS NOT NULL;

UPDATE alembic_version SET version_num='0006_review_findings' WHERE alembic_version.version_num = '0005_wider_study_text';

-- Running upgrade 0006_review_findings -> 0007_wider_slice_label

ALTER TABLE annotation_mask ALTER COLUMN label TYPE VARCHAR(1024);

UPDATE alembic_version SET version_num='0007_wider_slice_label' WHERE alembic_version.version_num = '0006_review_findings';

COMMIT;

