ALTER TABLE `oidc_clients` ADD `previous_secret_hash` text;--> statement-breakpoint
ALTER TABLE `oidc_clients` ADD `previous_secret_until` integer;