CREATE TABLE `oidc_clients` (
	`client_id` text PRIMARY KEY NOT NULL,
	`name` text NOT NULL,
	`secret_hash` text,
	`redirect_uris` text NOT NULL,
	`grant_types` text NOT NULL,
	`scope` text NOT NULL,
	`first_party` integer DEFAULT true NOT NULL,
	`logo_uri` text,
	`created_at` integer NOT NULL
);
