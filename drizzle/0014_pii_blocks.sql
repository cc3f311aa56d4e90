CREATE TABLE `pii_blocks` (
	`principal` text PRIMARY KEY NOT NULL,
	`blocked_at` integer NOT NULL,
	`rearmed_after` integer
);
