import { escapeHtml as e } from "../http/pages.js";

/**
 * Mail to members, Japanese and English (the member's `locale`), each as plain text and HTML.
 * No images, no tracking pixels, no redirecting links: every link is to the issuer and is printed
 * in full in both parts, so a member can see where it goes before following it. Every mail says
 * what to do if the member did not ask for it.
 */
export type Locale = "ja" | "en";

export type SecurityNoticeKind =
  | "new_device"
  | "totp_added"
  | "totp_removed"
  | "passkey_added"
  | "passkey_removed"
  | "recovery_codes_generated"
  | "account_protected"
  | "second_factor_guessing"
  | "passkey_clone_suspected";

const NOTICE_TEXT: Record<
  SecurityNoticeKind,
  { subject: { ja: string; en: string }; what: { ja: string; en: string } }
> = {
  new_device: {
    subject: { ja: "新しい端末からのサインイン", en: "Sign-in from a new device" },
    what: {
      ja: "新しい端末からアカウントにサインインがありました。",
      en: "Your account was signed in to from a new device.",
    },
  },
  totp_added: {
    subject: { ja: "認証アプリが設定されました", en: "An authenticator app was added" },
    what: {
      ja: "2段階認証の認証アプリが設定されました。",
      en: "An authenticator app was set up for two-step verification.",
    },
  },
  totp_removed: {
    subject: { ja: "認証アプリが削除されました", en: "An authenticator app was removed" },
    what: {
      ja: "2段階認証の認証アプリが削除されました。",
      en: "The authenticator app was removed from two-step verification.",
    },
  },
  passkey_added: {
    subject: { ja: "パスキーが追加されました", en: "A passkey was added" },
    what: { ja: "アカウントにパスキーが追加されました。", en: "A passkey was added to your account." },
  },
  passkey_removed: {
    subject: { ja: "パスキーが削除されました", en: "A passkey was removed" },
    what: { ja: "アカウントからパスキーが削除されました。", en: "A passkey was removed from your account." },
  },
  recovery_codes_generated: {
    subject: { ja: "リカバリーコードが再発行されました", en: "New recovery codes were made" },
    what: {
      ja: "新しいリカバリーコードが発行され、以前のコードは使えなくなりました。",
      en: "New recovery codes were made; the old ones no longer work.",
    },
  },
  passkey_clone_suspected: {
    subject: { ja: "パスキーの複製の疑いを検知しました", en: "A passkey of yours may have been copied" },
    what: {
      ja: "あなたのパスキーが複製された疑いがあるため、そのパスキーを停止し、すべての端末と会員サイトからサインアウトし、手続き中のメールアドレス変更やパスワード再設定を取り消しました。別の方法でサインインし、アカウントページで停止したパスキーと、心当たりのないパスキーや認証アプリを削除してください。",
      en: "One of your passkeys may have been copied. We suspended it, signed you out everywhere (member sites included) and cancelled any pending change of e-mail address or password reset. Sign in another way, and on your account page remove the suspended passkey and any passkey or authenticator app you don't recognise.",
    },
  },
  second_factor_guessing: {
    subject: {
      ja: "パスワードが他人に知られている可能性があります",
      en: "Someone may know your password",
    },
    what: {
      ja: "あなたのアカウントで、正しいパスワードの入力に続く2段階認証の失敗が繰り返されています。2段階認証がアカウントを守っていますが、パスワードは他人に知られている可能性があります。",
      en: "There have been repeated failed two-step verifications on your account, each after the right password. Two-step verification is keeping your account safe, but someone else may know your password.",
    },
  },
  account_protected: {
    subject: { ja: "不正なサインインの試みを検知しました", en: "Repeated failed sign-ins on your account" },
    what: {
      ja: "あなたのアカウントに対して、パスワードでのサインインの失敗が続いています。安全のため、しばらくの間、新しい端末からのパスワードでのサインインを止めています。いつもお使いの端末、パスキー、パスワードの再設定はこれまでどおり使えます。",
      en: "There have been many failed password sign-ins on your account. For a while, password sign-in from new devices is paused; your usual devices, passkeys and password reset keep working.",
    },
  },
};

function when(locale: Locale, iso: string): string {
  return locale === "ja"
    ? `${new Intl.DateTimeFormat("ja-JP", { dateStyle: "long", timeStyle: "short", timeZone: "Asia/Tokyo" }).format(new Date(iso))}（日本時間）`
    : `${new Intl.DateTimeFormat("en-GB", { dateStyle: "long", timeStyle: "short", timeZone: "UTC" }).format(new Date(iso))} UTC`;
}

export type MailTemplate =
  | { template: "verify_email"; link: string; hours: number }
  | { template: "verify_new_email"; link: string; hours: number }
  | { template: "email_change_requested"; maskedNewEmail: string }
  | { template: "email_changed"; maskedNewEmail: string }
  | { template: "password_reset"; link: string; minutes: number; loginId: string }
  | { template: "password_changed"; how: "reset" | "change"; loginId: string }
  | { template: "login_ids"; loginIds: string[] }
  | { template: "mfa_reset"; loginId: string }
  | {
      template: "security_notice";
      kind: SecurityNoticeKind;
      at: string;
      where: string;
      device: string;
      detail?: string;
    };

export interface RenderedMail {
  subject: string;
  text: string;
  html: string;
}

interface Parts {
  subject: string;
  /** Paragraphs; a `{ link }` item is a link printed in full. */
  body: (string | { link: string; label: string } | { code: string[] })[];
}

const NOT_YOU = {
  ja: "お心当たりがない場合は、このメールを無視してください。ほかの方があなたのメールアドレスを入力した可能性があります。",
  en: "If you didn't ask for this, you can ignore this mail: someone may have typed your address by mistake.",
};
const SECURE_NOW = {
  ja: "お心当たりがない場合は、すぐにパスワードを再設定し、アカウントページでサインイン中のセッションを確認してください。",
  en: "If this wasn't you, reset your password now and check the signed-in sessions on your account page.",
};

function parts(locale: Locale, m: MailTemplate): Parts {
  const ja = locale === "ja";
  switch (m.template) {
    case "verify_email":
    case "verify_new_email":
      return {
        subject: ja ? "メールアドレスの確認" : "Confirm your e-mail address",
        body: [
          ja
            ? m.template === "verify_email"
              ? "Sekisho へのご登録ありがとうございます。次のリンクを開いて、メールアドレスを確認してください。"
              : "メールアドレスの変更を受け付けました。次のリンクを開いて新しいメールアドレスを確認すると、変更が有効になります。"
            : m.template === "verify_email"
              ? "Thank you for registering. Open this link to confirm your e-mail address:"
              : "We received a request to change your e-mail address to this one. Open this link to confirm it; the change takes effect once you do:",
          { link: m.link, label: ja ? "メールアドレスを確認する" : "Confirm this address" },
          ja
            ? `このリンクの有効期限は ${m.hours} 時間で、1回だけ使えます。`
            : `The link works once and expires in ${m.hours} hours.`,
          NOT_YOU[locale],
        ],
      };
    case "email_change_requested":
      return {
        subject: ja ? "メールアドレスの変更手続き" : "A change of your e-mail address was requested",
        body: [
          ja
            ? `アカウントのメールアドレスを ${m.maskedNewEmail} に変更する手続きが始まりました。新しいアドレスで確認が済むと変更が有効になります。`
            : `Someone signed in to your account asked to change its e-mail address to ${m.maskedNewEmail}. The change takes effect once the new address confirms it.`,
          ja
            ? "お心当たりがない場合は、すぐにパスワードを再設定してください。再設定すると、この変更手続きは無効になります。"
            : "If this wasn't you, reset your password now: that also cancels this change.",
        ],
      };
    case "email_changed":
      return {
        subject: ja ? "メールアドレスが変更されました" : "Your e-mail address was changed",
        body: [
          ja
            ? `アカウントのメールアドレスが ${m.maskedNewEmail} に変更されました。今後のお知らせは新しいアドレスに届きます。`
            : `The e-mail address of your account was changed to ${m.maskedNewEmail}. From now on, mail goes to the new address.`,
          SECURE_NOW[locale],
        ],
      };
    case "password_reset":
      return {
        subject: ja ? "パスワードの再設定" : "Reset your password",
        body: [
          ja
            ? `ログインID「${m.loginId}」のパスワード再設定を受け付けました。次のリンクから新しいパスワードを設定してください。`
            : `We received a request to reset the password of login ID "${m.loginId}". Set a new password here:`,
          { link: m.link, label: ja ? "パスワードを再設定する" : "Reset the password" },
          ja
            ? `このリンクの有効期限は ${m.minutes} 分で、1回だけ使えます。2段階認証を設定している場合は、その確認も求められます。`
            : `The link works once and expires in ${m.minutes} minutes. If you use two-step verification, you will be asked for it too.`,
          NOT_YOU[locale],
        ],
      };
    case "password_changed":
      return {
        subject: ja ? "パスワードが変更されました" : "Your password was changed",
        body: [
          ja
            ? `ログインID「${m.loginId}」のパスワードが${m.how === "reset" ? "再設定" : "変更"}されました。${m.how === "reset" ? "すべての端末でサインアウトしました。" : "ほかの端末のセッションは終了しました。"}`
            : `The password of login ID "${m.loginId}" was ${m.how === "reset" ? "reset; every device was signed out" : "changed; your other sessions were ended"}.`,
          SECURE_NOW[locale],
        ],
      };
    case "security_notice": {
      const text = NOTICE_TEXT[m.kind];
      const facts = [
        `${ja ? "日時" : "When"}: ${when(locale, m.at)}`,
        ...(m.where
          ? [`${ja ? "接続元のネットワーク（おおよそ）" : "From (approximate network)"}: ${m.where}`]
          : []),
        ...(m.device ? [`${ja ? "ブラウザ" : "Browser"}: ${m.device}`] : []),
        ...(m.detail ? [`${ja ? "詳細" : "Details"}: ${m.detail}`] : []),
      ];
      return {
        subject: text.subject[locale],
        body: [
          text.what[locale],
          facts.join("\n"),
          ja ? "ご自身の操作であれば、対応は不要です。" : "If this was you, there is nothing to do.",
          m.kind === "second_factor_guessing"
            ? ja
              ? "ご自身の操作でない場合は、すぐにパスワードを変更してください（他のサイトと同じパスワードを使っている場合は、そちらも変更してください）。"
              : "If it wasn't you, change your password now (and on any other site where you use the same one)."
            : m.kind === "account_protected"
              ? ja
                ? "ご自身の操作でない場合、パスワードが推測されようとしている可能性があります。推測されにくいパスワードに変更し、パスキーか認証アプリを設定してください。"
                : "If it wasn't you, someone may be guessing your password: change it to one that is hard to guess, and add a passkey or an authenticator app."
              : SECURE_NOW[locale],
        ],
      };
    }
    case "mfa_reset":
      return {
        subject: ja ? "2段階認証がリセットされました" : "Your two-step verification was reset",
        body: [
          ja
            ? `サポートへのご依頼により、ログインID「${m.loginId}」の2段階認証（認証アプリ・パスキー・リカバリーコード）をリセットし、すべての端末でサインアウトしました。サインイン後、アカウントページで設定し直してください。`
            : `At a request to support, the two-step verification of login ID "${m.loginId}" (authenticator app, passkeys, recovery codes) was reset and every device signed out. After signing in, set it up again on your account page.`,
          ja
            ? "お心当たりがない場合は、すぐにパスワードを再設定し、サポートにご連絡ください。"
            : "If you didn't ask for this, reset your password now and contact support.",
        ],
      };
    case "login_ids":
      return {
        subject: ja ? "ログインIDのお知らせ" : "Your login ID",
        body: [
          ja
            ? "このメールアドレスで登録されているログインIDは次のとおりです。"
            : m.loginIds.length > 1
              ? "These login IDs are registered with this e-mail address:"
              : "This login ID is registered with this e-mail address:",
          { code: m.loginIds },
          ja
            ? "パスワードをお忘れの場合は、サインイン画面の「パスワードをお忘れの方」から再設定できます。"
            : 'If you also forgot the password, use "Forgot your password?" on the sign-in page.',
          NOT_YOU[locale],
        ],
      };
  }
}

const SIGNATURE = {
  ja: "—\n関所 Sekisho（このメールは送信専用です）",
  en: "—\nSekisho (this address does not receive replies)",
};

export function renderMail(locale: Locale, m: MailTemplate): RenderedMail {
  const p = parts(locale, m);
  const text = [
    ...p.body.map((b) =>
      typeof b === "string" ? b : "link" in b ? b.link : b.code.map((c) => `    ${c}`).join("\n"),
    ),
    SIGNATURE[locale],
  ].join("\n\n");
  const html = `<!doctype html><html lang="${locale}"><head><meta charset="utf-8"><title>${e(p.subject)}</title></head>
<body style="font-family:system-ui,sans-serif;color:#1d2330;line-height:1.6;max-width:36rem;margin:0 auto;padding:1rem">
${p.body
  .map((b) =>
    typeof b === "string"
      ? `<p>${e(b)}</p>`
      : "link" in b
        ? `<p><a href="${e(b.link)}" style="display:inline-block;background:#2456c9;color:#fff;padding:.6rem 1rem;border-radius:6px;text-decoration:none">${e(b.label)}</a></p><p style="word-break:break-all;font-size:.9rem;color:#4a5263">${e(b.link)}</p>`
        : `<ul>${b.code.map((c) => `<li><code style="font-size:1.1rem">${e(c)}</code></li>`).join("")}</ul>`,
  )
  .join("\n")}
<p style="color:#6b7385;font-size:.85rem;white-space:pre-line">${e(SIGNATURE[locale])}</p>
</body></html>`;
  return { subject: `${p.subject} — Sekisho`, text, html };
}

/** `t***@e***.jp`: enough for a member to recognise their address, not enough to read it off. */
export function maskEmail(email: string): string {
  const at = email.lastIndexOf("@");
  if (at < 1) return "***";
  const local = email.slice(0, at);
  const domain = email.slice(at + 1);
  const dot = domain.lastIndexOf(".");
  const host = dot > 0 ? domain.slice(0, dot) : domain;
  const tld = dot > 0 ? domain.slice(dot) : "";
  return `${[...local][0]}***@${[...host][0] ?? ""}***${tld}`;
}
