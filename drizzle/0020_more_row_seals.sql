ALTER TABLE `devices` ADD `seal` text;--> statement-breakpoint
ALTER TABLE `mfa_tokens` ADD `seal` text;--> statement-breakpoint
ALTER TABLE `oidc_clients` ADD `seal` text;--> statement-breakpoint
ALTER TABLE `recovery_codes` ADD `seal` text;