-- pgtape SQL monitoring (docs/ARCHITECTURE.md, "SQL monitoring"). Run by `pgtape sql install`
-- inside one transaction with search_path set to the target schema; @MARK_PREFIX@ is replaced by
-- the tape's recovery-point prefix. Idempotent: every statement may run again.

CREATE TABLE IF NOT EXISTS payment_backups (
    id text PRIMARY KEY,
    backup_type text NOT NULL,
    status text NOT NULL,
    tables text[] NOT NULL,
    record_count bigint,
    file_size_bytes bigint,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    completed_at timestamptz,
    as_of_lsn pg_lsn,
    as_of_time timestamptz,
    error_message text,
    generation int NOT NULL
);

COMMENT ON TABLE payment_backups IS
    'One row per pgtape snapshot in the archive''s catalog, kept current by pgtape serve and pgtape sql sync '
    '(rows of pruned snapshots are removed). backup_type: full (every captured table), payments, orders or '
    'tickets (that one table), tables (any other set). status: running, completed or failed. '
    'record_count and file_size_bytes are set for completed snapshots only.';

CREATE OR REPLACE VIEW backup_status_summary AS
SELECT backup_type,
       count(*) AS total,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'running') AS running,
       max(completed_at) FILTER (WHERE status = 'completed') AS newest_completed_at,
       coalesce(sum(file_size_bytes) FILTER (WHERE status = 'completed'), 0)::bigint AS completed_size_bytes
FROM payment_backups
GROUP BY backup_type;

COMMENT ON VIEW backup_status_summary IS
    'Per backup_type: backups by status, when the newest completed one finished, and the total size of the '
    'completed ones.';

CREATE OR REPLACE VIEW backup_health_check AS
WITH per_type AS (
    SELECT backup_type,
           count(*) FILTER (WHERE status = 'completed' AND created_at >= now() - interval '7 days')
               AS completed_7d,
           count(*) FILTER (WHERE status = 'failed' AND created_at >= now() - interval '7 days') AS failed_7d,
           max(completed_at) FILTER (WHERE status = 'completed') AS newest_success_at,
           (array_agg(status ORDER BY created_at DESC, id DESC)
               FILTER (WHERE status IN ('completed', 'failed')))[1] AS newest_finished_status
    FROM payment_backups
    GROUP BY backup_type
)
SELECT backup_type,
       completed_7d,
       failed_7d,
       newest_success_at,
       now() - newest_success_at AS newest_success_age,
       CASE
           WHEN newest_success_at IS NULL OR newest_success_at < now() - interval '48 hours' THEN 'critical'
           WHEN newest_finished_status = 'failed' OR newest_success_at < now() - interval '25 hours' THEN 'warning'
           ELSE 'healthy'
       END AS verdict
FROM per_type;

COMMENT ON VIEW backup_health_check IS
    'Per backup_type (every type the catalog holds): completed and failed backups created in the last 7 days, '
    'the newest success and its age, and a verdict. critical: no backup of the type completed in the last '
    '48 hours. warning: otherwise, the newest finished backup failed, or none completed in the last 25 hours '
    '(a daily schedule missed a run). healthy: otherwise. The rule assumes daily backups of each type.';

CREATE OR REPLACE FUNCTION create_recovery_point(name text, description text DEFAULT NULL,
                                                 ts timestamptz DEFAULT now())
RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        RAISE EXCEPTION 'invalid recovery point name %: use letters, digits and _ . : - (at most 100)',
            coalesce(quote_literal(name), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF ts IS NULL OR ts > clock_timestamp() THEN
        RAISE EXCEPTION 'recovery point time % is in the future: give a past time, or none for now',
            coalesce(ts::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A transactional message: it reaches the tape only if, and where, this transaction commits.
    -- "at" null: the point is this transaction's position; else the named earlier instant.
    RETURN pg_logical_emit_message(true, @MARK_PREFIX@, json_build_object(
        'name', name,
        'description', description,
        'at', CASE WHEN ts >= now() THEN NULL
                   ELSE to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END)::text);
END
$function$;

COMMENT ON FUNCTION create_recovery_point(text, text, timestamptz) IS
    'A named pgtape recovery point (as pgtape mark NAME). With ts now() (the default) it marks the exact '
    'position of the calling transaction: pgtape replay --target-name NAME stops right after it; with an '
    'earlier ts it names that instant. Returns the message''s LSN. Names: letters, digits and _ . : - '
    '(at most 100).';

-- Functions are executable by PUBLIC unless revoked: grant nothing by default.
REVOKE EXECUTE ON FUNCTION create_recovery_point(text, text, timestamptz) FROM PUBLIC;
