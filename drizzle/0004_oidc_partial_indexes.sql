DROP INDEX `oidc_expires`;--> statement-breakpoint
DROP INDEX `oidc_grant`;--> statement-breakpoint
DROP INDEX `oidc_uid`;--> statement-breakpoint
DROP INDEX `oidc_user_code`;--> statement-breakpoint
CREATE INDEX `oidc_grant` ON `oidc_payloads` (`grant_id`) WHERE grant_id IS NOT NULL;--> statement-breakpoint
CREATE INDEX `oidc_uid` ON `oidc_payloads` (`uid_hash`) WHERE uid_hash IS NOT NULL;--> statement-breakpoint
CREATE INDEX `oidc_user_code` ON `oidc_payloads` (`user_code_hash`) WHERE user_code_hash IS NOT NULL;