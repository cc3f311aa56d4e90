CREATE TABLE `throttle_state` (
	`id` integer PRIMARY KEY NOT NULL,
	`saved_at` integer NOT NULL,
	`state` text NOT NULL
);
