ALTER TABLE `member_tokens` ADD `seal` text;--> statement-breakpoint
ALTER TABLE `members` ADD `seal` text;--> statement-breakpoint
ALTER TABLE `sessions` ADD `seal` text;--> statement-breakpoint
ALTER TABLE `webauthn_credentials` ADD `seal` text;