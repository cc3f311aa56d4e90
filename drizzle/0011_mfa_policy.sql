CREATE TABLE `mfa_policies` (
	`scope` text PRIMARY KEY NOT NULL,
	`mode` text NOT NULL,
	`grace_days` integer NOT NULL,
	`methods` text NOT NULL,
	`phishing_resistant` integer NOT NULL,
	`required_since` integer,
	`updated_at` integer NOT NULL,
	`updated_by` text
);
