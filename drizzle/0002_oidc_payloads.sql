CREATE TABLE `oidc_payloads` (
	`rowid` integer PRIMARY KEY NOT NULL,
	`model` text NOT NULL,
	`id_hash` text NOT NULL,
	`payload` text NOT NULL,
	`grant_id` text,
	`uid_hash` text,
	`user_code_hash` text,
	`expires_at` integer,
	`consumed_at` integer
);
--> statement-breakpoint
CREATE UNIQUE INDEX `oidc_model_id` ON `oidc_payloads` (`model`,`id_hash`);--> statement-breakpoint
CREATE INDEX `oidc_grant` ON `oidc_payloads` (`grant_id`);--> statement-breakpoint
CREATE INDEX `oidc_uid` ON `oidc_payloads` (`uid_hash`);--> statement-breakpoint
CREATE INDEX `oidc_user_code` ON `oidc_payloads` (`user_code_hash`);--> statement-breakpoint
CREATE INDEX `oidc_expires` ON `oidc_payloads` (`expires_at`);