CREATE TABLE `legacy_members` (
	`legacy_id` text PRIMARY KEY NOT NULL,
	`member_id` text NOT NULL,
	`imported_at` integer NOT NULL,
	FOREIGN KEY (`member_id`) REFERENCES `members`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE UNIQUE INDEX `legacy_members_member_id_unique` ON `legacy_members` (`member_id`);--> statement-breakpoint
CREATE TABLE `legacy_passwords` (
	`member_id` text PRIMARY KEY NOT NULL,
	`secret` text NOT NULL,
	`weak` integer NOT NULL,
	`wrapped` integer DEFAULT false NOT NULL,
	`updated_at` integer NOT NULL,
	FOREIGN KEY (`member_id`) REFERENCES `members`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `legacy_passwords_weak` ON `legacy_passwords` (`weak`,`wrapped`);