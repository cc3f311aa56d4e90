ALTER TABLE `legacy_passwords` ADD `change_after` integer;--> statement-breakpoint
ALTER TABLE `members` ADD `mfa_required` integer DEFAULT false NOT NULL;