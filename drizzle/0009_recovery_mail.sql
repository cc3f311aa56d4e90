CREATE TABLE `member_tokens` (
	`token_hash` text PRIMARY KEY NOT NULL,
	`purpose` text NOT NULL,
	`member_id` text NOT NULL,
	`email_bidx` text,
	`new_email` text,
	`created_at` integer NOT NULL,
	`expires_at` integer NOT NULL,
	`consumed_at` integer,
	`mfa_passed_at` integer,
	`failures` integer DEFAULT 0 NOT NULL,
	FOREIGN KEY (`member_id`) REFERENCES `members`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `member_tokens_member` ON `member_tokens` (`member_id`,`purpose`);--> statement-breakpoint
CREATE INDEX `member_tokens_expiry` ON `member_tokens` (`expires_at`);--> statement-breakpoint
CREATE TABLE `outbox` (
	`id` text PRIMARY KEY NOT NULL,
	`member_id` text,
	`template` text NOT NULL,
	`message` text,
	`status` text DEFAULT 'pending' NOT NULL,
	`attempts` integer DEFAULT 0 NOT NULL,
	`next_attempt_at` integer NOT NULL,
	`last_error` text,
	`created_at` integer NOT NULL,
	`sent_at` integer,
	FOREIGN KEY (`member_id`) REFERENCES `members`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `outbox_due` ON `outbox` (`status`,`next_attempt_at`);--> statement-breakpoint
ALTER TABLE `members` ADD `locale` text DEFAULT 'ja' NOT NULL;--> statement-breakpoint
ALTER TABLE `oidc_payloads` ADD `account_id` text;--> statement-breakpoint
CREATE INDEX `oidc_account` ON `oidc_payloads` (`account_id`) WHERE account_id IS NOT NULL;