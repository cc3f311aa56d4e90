CREATE TABLE `audit_log` (
	`seq` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`at` integer NOT NULL,
	`action` text NOT NULL,
	`outcome` text NOT NULL,
	`actor_type` text NOT NULL,
	`actor_id` text,
	`member_id` text,
	`reason` text,
	`ip` text,
	`request_id` text,
	`details` text DEFAULT '{}' NOT NULL,
	`key_id` text NOT NULL,
	`prev_mac` text NOT NULL,
	`mac` text NOT NULL
);
--> statement-breakpoint
CREATE INDEX `audit_member` ON `audit_log` (`member_id`,`seq`);--> statement-breakpoint
CREATE INDEX `audit_action` ON `audit_log` (`action`,`seq`);--> statement-breakpoint
CREATE TABLE `key_rotations` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`new_key_id` text NOT NULL,
	`started_at` integer NOT NULL,
	`finished_at` integer,
	`rows_done` integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE TABLE `members` (
	`id` text PRIMARY KEY NOT NULL,
	`sub` text NOT NULL,
	`login_id` text NOT NULL,
	`login_id_kind` text NOT NULL,
	`password_hash` text,
	`pepper_id` text,
	`role` text DEFAULT 'member' NOT NULL,
	`status` text DEFAULT 'active' NOT NULL,
	`email_verified` integer DEFAULT false NOT NULL,
	`created_at` integer NOT NULL,
	`updated_at` integer NOT NULL,
	`password_changed_at` integer
);
--> statement-breakpoint
CREATE UNIQUE INDEX `members_sub_unique` ON `members` (`sub`);--> statement-breakpoint
CREATE UNIQUE INDEX `members_login_id_unique` ON `members` (`login_id`);--> statement-breakpoint
CREATE TABLE `profiles` (
	`member_id` text PRIMARY KEY NOT NULL,
	`name` text,
	`email` text,
	`phone` text,
	`postal_code` text,
	`address` text,
	`birth_date` text,
	`gender` text,
	`email_bidx` text,
	`key_id` text NOT NULL,
	`updated_at` integer NOT NULL,
	FOREIGN KEY (`member_id`) REFERENCES `members`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `profiles_email_bidx` ON `profiles` (`email_bidx`);--> statement-breakpoint
CREATE INDEX `profiles_key_id` ON `profiles` (`key_id`);--> statement-breakpoint
CREATE TABLE `sessions` (
	`id` text PRIMARY KEY NOT NULL,
	`token_hash` text NOT NULL,
	`member_id` text NOT NULL,
	`kind` text DEFAULT 'full' NOT NULL,
	`acr` text NOT NULL,
	`amr` text NOT NULL,
	`auth_time` integer NOT NULL,
	`created_at` integer NOT NULL,
	`last_seen_at` integer NOT NULL,
	`idle_expires_at` integer NOT NULL,
	`absolute_expires_at` integer NOT NULL,
	`revoked_at` integer,
	`revoke_reason` text,
	`ip` text,
	`user_agent` text,
	FOREIGN KEY (`member_id`) REFERENCES `members`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE UNIQUE INDEX `sessions_token_hash_unique` ON `sessions` (`token_hash`);--> statement-breakpoint
CREATE INDEX `sessions_member` ON `sessions` (`member_id`);