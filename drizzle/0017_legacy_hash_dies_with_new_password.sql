-- A member's legacy hash lives only until they have an argon2id one, however it was set: the
-- upgrade at sign-in, a password reset, a change. SQLite enforces it, so no path can forget.
CREATE TRIGGER `legacy_password_gone_on_new_hash` AFTER UPDATE OF `password_hash` ON `members`
WHEN NEW.`password_hash` IS NOT NULL
BEGIN
  DELETE FROM `legacy_passwords` WHERE `member_id` = NEW.`id`;
END;
