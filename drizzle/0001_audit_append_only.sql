-- The audit log is append-only: the service never updates or deletes an entry, and these
-- triggers make SQLite refuse it too. An attacker with the file can drop them; the HMAC chain
-- (src/audit/log.ts) is what then makes the change visible to `sekisho audit verify`.
CREATE TRIGGER `audit_log_no_update` BEFORE UPDATE ON `audit_log`
BEGIN
  SELECT RAISE(ABORT, 'audit_log is append-only');
END;
--> statement-breakpoint
CREATE TRIGGER `audit_log_no_delete` BEFORE DELETE ON `audit_log`
BEGIN
  SELECT RAISE(ABORT, 'audit_log is append-only');
END;
