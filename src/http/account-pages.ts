import type { FactorMethod } from "../factors/methods.js";
import { deviceLabel } from "../sessions/user-agent.js";
import { e, type Lang, type LangSwitch, layout, localTime, passkeySupport } from "./pages.js";

/** Strings of the second-step and account pages, Japanese first. */
const A = {
  ja: {
    mfaTitle: "2段階認証",
    mfaLead: "登録済みの方法で本人確認を完了してください。",
    stepUpLead: (client: string) => `${client} はより強い本人確認を求めています。`,
    passkey: "パスキーで確認",
    totpLabel: "認証アプリの6桁のコード",
    verify: "確認",
    useRecovery: "リカバリーコードを使う",
    recoveryLabel: "リカバリーコード",
    wrongCode:
      "コードが正しくありません。アプリに表示されている最新のコードを入力してください（端末の時刻がずれていると合わないことがあります）。",
    wrongRecovery: "リカバリーコードが正しくありません。使用済みのコードは使えません。",
    codeTitle: "6桁の数字を入力してください（例：123456）",
    noFactor:
      "このサイトへのサインインには2段階認証（パスキー、または必要に応じて認証アプリ）が必要です。アカウントページで設定してから、もう一度お試しください。",
    toAccount: "アカウントページを開く",
    backToSite: (client: string) => `サインインせずに「${client}」に戻る`,
    accountTitle: "アカウントのセキュリティ",
    signedInAs: (id: string) => `ログインID: ${id}`,
    level: "現在のサインインの強さ",
    totpHeading: "認証アプリ (TOTP)",
    totpOn: "設定済み",
    totpOff: "未設定",
    totpSetup: "認証アプリを設定",
    totpReplace: "別の認証アプリに変更",
    remove: "削除",
    passkeysHeading: "パスキー",
    noPasskeys: "パスキーはまだありません。",
    passkeyName: "パスキーの名前（任意。氏名は入れないでください）",
    passkeyNeedsScript: "パスキーを追加するには、JavaScriptを有効にしてください。",
    removeTotpAsk: "認証アプリを削除しますか？",
    removePasskeyAsk: (name: string) => `パスキー「${name}」を削除しますか？`,
    remaining: (what: string) => `削除後も使える2段階認証の方法：${what}`,
    remainingTotp: "認証アプリ",
    remainingPasskeys: (n: number) => `パスキー${n}個`,
    remainingJoin: "、",
    lastFactor: "これが最後の2段階認証の方法です。削除すると、リカバリーコードも使えなくなります。",
    removeConfirm: "削除する",
    addPasskey: "パスキーを追加",
    rename: "名前を変更",
    lastUsed: "最終使用",
    never: "まだ使われていません",
    synced: "同期パスキー",
    deviceBound: "この端末のみ",
    suspected: "複製の疑いがあるため停止中",
    recoveryHeading: "リカバリーコード",
    recoveryRemaining: (n: number) => `未使用のコード：${n}個`,
    recoveryNew: "新しいコードを発行（古いコードは無効になります）",
    sessionsHeading: "サインイン中のセッション",
    current: "この端末",
    end: "終了",
    devicesHeading: "信頼済みの端末",
    noDevices: "信頼済みの端末はありません。",
    unknownDevice: "不明な端末",
    cancelTotp: "設定せずに戻る",
    eventsHeading: "最近のセキュリティイベント",
    signOut: "サインアウト",
    totpTitle: "認証アプリの設定",
    totpStep1: "認証アプリでこのQRコードを読み取るか、キーを入力してください。",
    totpKey: "セットアップキー",
    totpStep2: "アプリに表示された6桁のコードを入力してください。",
    codesTitle: "リカバリーコード",
    codesLead:
      "端末をなくしたときに使うコードです。この画面を離れると二度と表示されません。安全な場所に保管してください。各コードは1回だけ使えます。",
    done: "保管しました",
    reauth: "この変更には、直近のサインインが必要です。もう一度サインインしてください。",
    enrolTitle: "2段階認証の設定が必要です",
    enrolLead:
      "このサービスでは2段階認証が必須になりました。続けるには、パスキー（おすすめ）または認証アプリを設定してください。",
    emailHeading: "メールアドレス",
    verified: "確認済み",
    unverified: "未確認",
    resend: "確認メールを再送",
    newEmail: "新しいメールアドレス",
    changeEmail: "変更する（新しいアドレスに確認メールを送ります）",
    passwordHeading: "パスワード",
    currentPassword: "現在のパスワード",
    newPassword: (n: number) => `新しいパスワード（${n}文字以上）`,
    changePassword: "パスワードを変更（ほかの端末はサインアウトします）",
    forgot: "パスワードをお忘れの方",
    added: {
      passkey: "パスキーを追加しました。",
      totp: "認証アプリを設定しました。",
      removed: "削除しました。",
      renamed: "名前を変更しました。",
      email_sent: "確認メールを送りました。",
      email_change: "新しいメールアドレスに確認メールを送りました。リンクを開くと変更が有効になります。",
      password: "パスワードを変更しました。ほかの端末のセッションは終了しました。",
    },
    errors: {
      wrong_password: "現在のパスワードが正しくありません。",
      weak_password:
        "新しいパスワードが条件を満たしていません（短すぎるもの、よく使われるもの、ログインIDを含むものは使えません）。",
      throttled: "試行回数が多すぎます。しばらくしてから再度お試しください。",
      invalid: "入力内容を確認してください。",
      factor_required:
        "このアカウントでは2段階認証が必須のため、最後の方法は削除できません。先に別の方法を追加してください。",
    },
  },
  en: {
    mfaTitle: "Two-step verification",
    mfaLead: "Confirm it's you with one of your registered methods.",
    stepUpLead: (client: string) => `${client} asks for a stronger sign-in.`,
    passkey: "Use a passkey",
    totpLabel: "6-digit code from your authenticator app",
    verify: "Verify",
    useRecovery: "Use a recovery code",
    recoveryLabel: "Recovery code",
    wrongCode:
      "That code is not valid. Enter the newest code the app shows (a device clock that is off can also cause this).",
    wrongRecovery: "That recovery code is not valid. A code that was already used can't be used again.",
    codeTitle: "6 digits, for example 123456",
    noFactor:
      "Signing in to this site needs two-step verification (a passkey, or an authenticator app where that is enough). Set one up on your account page, then try again.",
    toAccount: "Open your account page",
    backToSite: (client: string) => `Return to ${client} without signing in`,
    accountTitle: "Account security",
    signedInAs: (id: string) => `Login ID: ${id}`,
    level: "Strength of this sign-in",
    totpHeading: "Authenticator app (TOTP)",
    totpOn: "On",
    totpOff: "Off",
    totpSetup: "Set up an authenticator app",
    totpReplace: "Move to another authenticator app",
    remove: "Remove",
    passkeysHeading: "Passkeys",
    noPasskeys: "No passkeys yet.",
    passkeyName: "Passkey name (optional; don't use your name)",
    passkeyNeedsScript: "Adding a passkey needs JavaScript turned on.",
    removeTotpAsk: "Remove the authenticator app?",
    removePasskeyAsk: (name: string) => `Remove the passkey “${name}”?`,
    remaining: (what: string) => `Two-step methods you keep: ${what}.`,
    remainingTotp: "the authenticator app",
    remainingPasskeys: (n: number) => (n === 1 ? "1 passkey" : `${n} passkeys`),
    remainingJoin: " and ",
    lastFactor: "This is your last two-step method. Removing it also makes your recovery codes stop working.",
    removeConfirm: "Yes, remove it",
    addPasskey: "Add a passkey",
    rename: "Rename",
    lastUsed: "last used",
    never: "never",
    synced: "synced passkey",
    deviceBound: "this device only",
    suspected: "suspended: it may have been copied",
    recoveryHeading: "Recovery codes",
    recoveryRemaining: (n: number) => `Unused codes: ${n}`,
    recoveryNew: "Make new codes (the old ones stop working)",
    sessionsHeading: "Where you're signed in",
    current: "this device",
    end: "Sign out",
    devicesHeading: "Trusted devices",
    noDevices: "No trusted devices.",
    unknownDevice: "Unknown device",
    cancelTotp: "Go back without setting it up",
    eventsHeading: "Recent security events",
    signOut: "Sign out",
    totpTitle: "Set up an authenticator app",
    totpStep1: "Scan this QR code with your authenticator app, or type in the key.",
    totpKey: "Setup key",
    totpStep2: "Enter the 6-digit code the app shows.",
    codesTitle: "Recovery codes",
    codesLead:
      "Use these if you lose your device. They are shown only now: keep them somewhere safe. Each code works once.",
    done: "I have saved them",
    reauth: "This change needs a recent sign-in. Please sign in again.",
    enrolTitle: "Set up two-step verification",
    enrolLead:
      "Two-step verification is now required. To continue, add a passkey (recommended) or an authenticator app.",
    emailHeading: "E-mail address",
    verified: "verified",
    unverified: "not verified",
    resend: "Send the verification mail again",
    newEmail: "New e-mail address",
    changeEmail: "Change it (we'll mail the new address a link)",
    passwordHeading: "Password",
    currentPassword: "Current password",
    newPassword: (n: number) => `New password (${n} characters or more)`,
    changePassword: "Change the password (other devices are signed out)",
    forgot: "Forgot your password?",
    added: {
      passkey: "Passkey added.",
      totp: "Authenticator app set up.",
      removed: "Removed.",
      renamed: "Renamed.",
      email_sent: "We sent the verification mail.",
      email_change: "We mailed a link to the new address; the change takes effect when you open it.",
      password: "Password changed. Your other sessions were ended.",
    },
    errors: {
      wrong_password: "The current password is incorrect.",
      weak_password:
        "The new password doesn't meet the rules (not too short, not a common password, not containing your login ID).",
      throttled: "Too many attempts. Please wait a while and try again.",
      invalid: "Please check what you entered.",
      factor_required:
        "Two-step verification is required for this account, so the last method can't be removed. Add another one first.",
    },
  },
} as const;

/** Why the sign-in page asks again (`/account/login?reauth=1`). */
export const reauthNotice = (lang: Lang): string => A[lang].reauth;

export type Notice = keyof (typeof A)["ja"]["added"];
export type AccountError = keyof (typeof A)["ja"]["errors"];

/** What the member's security events say, in their language (unknown types show their code). */
export const EVENT_LABEL: Record<string, { ja: string; en: string }> = {
  "member.registered": { ja: "会員登録", en: "Registered" },
  "login.password": { ja: "パスワードでサインイン", en: "Password sign-in" },
  "login.second_factor": { ja: "2段階認証", en: "Two-step verification" },
  "login.passkey": { ja: "パスキーでサインイン", en: "Passkey sign-in" },
  "login.new_device": { ja: "新しい端末からのサインイン", en: "Sign-in from a new device" },
  "login.throttled": { ja: "試行回数の制限", en: "Sign-in attempts limited" },
  "account.protected": {
    ja: "不正なサインインの試みが続いたため、新しい端末からのパスワードでのサインインを一時停止",
    en: "Password sign-in from new devices paused after repeated failed attempts",
  },
  "account.second_factor_guessing": {
    ja: "2段階認証の失敗が続いています（パスワードが他人に知られている可能性）",
    en: "Repeated failed two-step verifications (someone may know your password)",
  },
  "session.step_up": { ja: "追加の本人確認", en: "Extra verification (step-up)" },
  "session.logout": { ja: "サインアウト", en: "Signed out" },
  "session.revoked": { ja: "セッションを終了", en: "Session ended" },
  "factor.totp_added": { ja: "認証アプリを設定", en: "Authenticator app added" },
  "factor.totp_removed": { ja: "認証アプリを削除", en: "Authenticator app removed" },
  "factor.passkey_added": { ja: "パスキーを追加", en: "Passkey added" },
  "factor.passkey_renamed": { ja: "パスキーの名前を変更", en: "Passkey renamed" },
  "factor.passkey_removed": { ja: "パスキーを削除", en: "Passkey removed" },
  "factor.recovery_codes_generated": { ja: "リカバリーコードを発行", en: "Recovery codes made" },
  "mfa.recovery_code_used": { ja: "リカバリーコードを使用", en: "Recovery code used" },
  "mfa.passkey_clone_suspected": { ja: "パスキーの複製の疑い", en: "Possible copied passkey" },
  "oidc.token_reused": {
    ja: "会員サイトの使用済みトークンが再び使われたため、そのサイトのサインインを終了",
    en: "A site's used token was presented again: that site's sign-in was ended",
  },
  "device.revoked": { ja: "信頼済み端末を削除", en: "Trusted device removed" },
  "email.verification_sent": { ja: "確認メールを送信", en: "Verification mail sent" },
  "email.verified": { ja: "メールアドレスを確認", en: "E-mail address verified" },
  "email.change_requested": { ja: "メールアドレスの変更を申請", en: "E-mail change requested" },
  "email.changed": { ja: "メールアドレスを変更", en: "E-mail address changed" },
  "password.changed": { ja: "パスワードの変更", en: "Password change" },
  "password.reset": { ja: "パスワードを再設定", en: "Password reset" },
  "recovery.password_requested": { ja: "パスワード再設定メールの送信", en: "Password reset mail requested" },
  "recovery.login_id_requested": {
    ja: "ログインIDのお知らせメールの送信",
    en: "Login ID reminder requested",
  },
  "password.reset_required": {
    ja: "サポートによるパスワード再設定の要求",
    en: "New password required by support",
  },
  "mfa.reset_by_admin": {
    ja: "サポートによる2段階認証のリセット",
    en: "Two-step verification reset by support",
  },
  "recovery.second_factor": { ja: "パスワード再設定での2段階認証", en: "Two-step verification for a reset" },
};
export const OUTCOME_LABEL: Record<string, { ja: string; en: string }> = {
  success: { ja: "成功", en: "OK" },
  failure: { ja: "失敗", en: "Failed" },
  info: { ja: "通知", en: "Notice" },
};

/** A second step typed in: the app's code or a recovery code (what a wrong code was, for the page). */
export type CodeMethod = "totp" | "recovery_code";

/**
 * The attributes of a code field: after a wrong code only the field that was used points at the
 * message (screen readers announce it with the field) and gets the focus; the other stays as it was.
 */
export const codeFieldState = (failed: CodeMethod | undefined, field: CodeMethod, errorId: string) =>
  failed === field ? ` aria-invalid="true" aria-describedby="${errorId}" autofocus` : "";

/** The 6-digit field's format, said in the page's language (else the browser's generic words). */
export const totpInput = (title: string, extra: string) =>
  `<input type="tel" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]{6,7}" maxlength="7" title="${e(title)}" required${extra}>`;

export function mfaPage(opts: {
  lang: Lang;
  methods: FactorMethod[];
  /** The pending sign-in; absent for a step-up (the session cookie is the subject). */
  mfaToken?: string | undefined;
  action: string;
  next: string;
  clientName?: string | undefined;
  stepUp?: boolean;
  /** What was just refused: that field is marked (and its recovery-code box comes back open). */
  error?: CodeMethod | undefined;
  switchHref?: LangSwitch | undefined;
  /** A sign-in for a member site: where to post to give up and go back to it (no sign-in). */
  abortAction?: string | undefined;
}): string {
  const a = A[opts.lang];
  const abort =
    opts.abortAction && opts.clientName
      ? `<form method="post" action="${e(opts.abortAction)}"><button type="submit" class="secondary">${e(a.backToSite(opts.clientName))}</button></form>`
      : "";
  const hidden = opts.mfaToken ? `<input type="hidden" name="mfa_token" value="${e(opts.mfaToken)}">` : "";
  const parts: string[] = [];
  if (opts.methods.includes("webauthn")) {
    parts.push(
      `<button type="button" hidden data-passkey-mfa${opts.mfaToken ? ` data-mfa-token="${e(opts.mfaToken)}"` : ""} data-next="${e(opts.next)}">${e(a.passkey)}</button>`,
    );
  }
  if (opts.methods.includes("totp")) {
    parts.push(`<form method="post" action="${e(opts.action)}">${hidden}<input type="hidden" name="method" value="totp">
<label for="code">${e(a.totpLabel)}</label>
${totpInput(a.codeTitle, opts.error ? codeFieldState(opts.error, "totp", "mfa_error") : opts.methods[0] === "totp" ? " autofocus" : "")}
<button type="submit">${e(a.verify)}</button></form>`);
  }
  if (opts.methods.includes("recovery_code")) {
    // Open again after a wrong recovery code: the member who lost the phone sees the field they used.
    parts.push(`<details${opts.error === "recovery_code" ? " open" : ""}><summary>${e(a.useRecovery)}</summary>
<form method="post" action="${e(opts.action)}">${hidden}<input type="hidden" name="method" value="recovery_code">
<label for="recovery">${e(a.recoveryLabel)}</label>
<input type="text" id="recovery" name="code" autocomplete="off" autocapitalize="none" spellcheck="false" required${codeFieldState(opts.error, "recovery_code", "mfa_error")}>
<button type="submit">${e(a.verify)}</button></form></details>`);
  }
  const lead = opts.stepUp && opts.clientName ? a.stepUpLead(opts.clientName) : a.mfaLead;
  const body =
    parts.length === 0
      ? `<h1>${e(a.mfaTitle)}</h1><div class="error" role="alert">${e(a.noFactor)}</div><p><a href="/account">${e(a.toAccount)}</a></p>${abort}`
      : `<h1>${e(a.mfaTitle)}</h1><p class="lead">${e(lead)}</p>
${opts.error ? `<div class="error" role="alert" id="mfa_error">${e(opts.error === "recovery_code" ? a.wrongRecovery : a.wrongCode)}</div>` : ""}${passkeySupport(opts.lang)}
${parts.join(`\n`)}${abort}`;
  return layout(opts.lang, a.mfaTitle, body, opts.switchHref, opts.methods.includes("webauthn"));
}

export interface AccountView {
  loginId: string;
  email: string | null;
  emailVerified: boolean;
  passwordMinLength: number;
  acr: string;
  totp: boolean;
  passkeys: Array<{
    id: string;
    name: string;
    createdAt: string;
    lastUsedAt: string | null;
    synced: boolean;
    suspected: boolean;
  }>;
  recoveryCodes: number;
  sessions: Array<{
    id: string;
    current: boolean;
    lastSeenAt: string;
    userAgent: string | null;
    ip: string | null;
  }>;
  devices: Array<{ id: string; current: boolean; lastSeenAt: string; userAgent: string | null }>;
  events: Array<{ at: string; type: string; outcome: string; ip: string | null }>;
}

const ACR_LABEL: Record<string, { ja: string; en: string }> = {
  "urn:sekisho:acr:password": { ja: "パスワード", en: "password" },
  "urn:sekisho:acr:mfa": { ja: "2段階認証", en: "two-step" },
  "urn:sekisho:acr:phishing-resistant": {
    ja: "フィッシング耐性（パスキー）",
    en: "phishing-resistant (passkey)",
  },
};

/** A one-button form; `about` names what it acts on, for screen readers (several look alike). */
const postButton = (action: string, label: string, cls = "secondary", about?: string) =>
  `<form method="post" action="${e(action)}" class="inline"><button type="submit" class="${cls}"${about ? ` aria-label="${e(`${label}: ${about}`)}"` : ""}>${e(label)}</button></form>`;

/**
 * Adding a passkey (the script does it): the name field comes hidden with the button, and the
 * script shows both where the browser can make passkeys; without JavaScript a note says why not.
 */
const passkeyAdder = (
  a: (typeof A)[Lang],
) => `<div hidden data-passkey-only><label for="passkey_name">${e(a.passkeyName)}</label><input type="text" id="passkey_name" maxlength="64"></div>
<button type="button" hidden data-passkey-register>${e(a.addPasskey)}</button>
<noscript><p class="muted">${e(a.passkeyNeedsScript)}</p></noscript>
<div data-recovery-codes hidden><div class="ok" role="status">${e(a.added.passkey)}</div><h2>${e(a.codesTitle)}</h2><p>${e(a.codesLead)}</p><ol class="codes"></ol><p><a href="/account?notice=passkey">${e(a.done)}</a></p></div>`;

/**
 * Removing a factor asks first, without JavaScript: the visible "remove" only opens a box that
 * says what stays protecting the account, and holds the real button (the server still asks for a
 * recent sign-in).
 */
const confirmRemove = (
  a: (typeof A)[Lang],
  action: string,
  question: string,
  left: { totp: boolean; passkeys: number },
  about?: string,
) => {
  const kept = [
    ...(left.totp ? [a.remainingTotp] : []),
    ...(left.passkeys > 0 ? [a.remainingPasskeys(left.passkeys)] : []),
  ];
  return `<details class="confirm"><summary${about ? ` aria-label="${e(`${a.remove}: ${about}`)}"` : ""}>${e(a.remove)}</summary><div>
<p><strong>${e(question)}</strong></p><p>${e(kept.length > 0 ? a.remaining(kept.join(a.remainingJoin)) : a.lastFactor)}</p>
<form method="post" action="${e(action)}"><button type="submit" class="danger">${e(a.removeConfirm)}</button></form></div></details>`;
};

/**
 * The account page. An error of the e-mail or password form (`errorIn`) is shown in that form's
 * section, on the field it is about, which gets the focus (the page is long: a message at the top
 * of it goes unseen); other errors at the top.
 */
export function accountPage(
  lang: Lang,
  v: AccountView,
  notice?: Notice,
  error?: AccountError,
  errorIn?: "email" | "password",
): string {
  const a = A[lang];
  const inSection = (where: "email" | "password") =>
    error && errorIn === where
      ? `<div class="error" role="alert" id="${where}_error">${e(a.errors[error])}</div>`
      : "";
  /** The attributes of a field the section's error is about. */
  const invalid = (where: "email" | "password", on: boolean) =>
    error && errorIn === where && on
      ? ` aria-invalid="true" aria-describedby="${where}_error" autofocus`
      : "";
  const when = (iso: string | null) => (iso ? localTime(lang, iso) : a.never);
  // The browser and system by name; the raw User-Agent header only as the tooltip.
  const device = (ua: string | null) =>
    `<span title="${e(ua ?? "")}">${e(deviceLabel(ua) || a.unknownDevice)}</span>`;
  const passkeys =
    v.passkeys.length === 0
      ? `<p class="muted">${e(a.noPasskeys)}</p>`
      : `<ul class="plain">${v.passkeys
          .map(
            (p) => `<li><div class="item-head"><span><strong>${e(p.name)}</strong> <span class="muted">${
              lang === "ja"
                ? `（${e(p.synced ? a.synced : a.deviceBound)}・${e(a.lastUsed)}：${e(when(p.lastUsedAt))}）`
                : `(${e(p.synced ? a.synced : a.deviceBound)}; ${e(a.lastUsed)}: ${e(when(p.lastUsedAt))})`
            }</span></span>
${confirmRemove(a, `/account/passkeys/${p.id}/remove`, a.removePasskeyAsk(p.name), { totp: v.totp, passkeys: v.passkeys.length - 1 }, p.name)}</div>
${p.suspected ? `<div class="error">${e(a.suspected)}</div>` : ""}
<form method="post" action="/account/passkeys/${e(p.id)}/rename" class="row"><label class="sr" for="n_${e(p.id)}">${e(a.rename)} (${e(p.name)})</label><input type="text" id="n_${e(p.id)}" name="name" maxlength="64" value="${e(p.name)}" required><button type="submit" class="secondary" aria-label="${e(`${a.rename}: ${p.name}`)}">${e(a.rename)}</button></form></li>`,
          )
          .join("")}</ul>`;
  const body = `<h1>${e(a.accountTitle)}</h1><p class="lead">${e(a.signedInAs(v.loginId))}<br><span class="muted">${e(a.level)}: ${e(ACR_LABEL[v.acr]?.[lang] ?? v.acr)}</span></p>
${notice ? `<div class="ok" role="status">${e(a.added[notice])}</div>` : ""}${error && !errorIn ? `<div class="error" role="alert">${e(a.errors[error])}</div>` : ""}
${passkeySupport(lang)}
<section id="passkeys"><h2>${e(a.passkeysHeading)}</h2>${passkeys}
${passkeyAdder(a)}</section>
<section id="totp"><h2>${e(a.totpHeading)}</h2><p>${e(v.totp ? a.totpOn : a.totpOff)}</p>
${postButton("/account/totp", v.totp ? a.totpReplace : a.totpSetup, "")}
${v.totp ? confirmRemove(a, "/account/totp/remove", a.removeTotpAsk, { totp: false, passkeys: v.passkeys.length }) : ""}</section>
${
  v.totp || v.passkeys.length > 0
    ? `<section id="recovery"><h2>${e(a.recoveryHeading)}</h2><p>${e(a.recoveryRemaining(v.recoveryCodes))}</p>${postButton("/account/recovery-codes", a.recoveryNew)}</section>`
    : ""
}
<section id="email"><h2>${e(a.emailHeading)}</h2>${inSection("email")}<p>${v.email ? `${e(v.email)} <span class="muted">(${e(v.emailVerified ? a.verified : a.unverified)})</span>` : "—"}</p>
${v.email && !v.emailVerified ? postButton("/account/email/resend", a.resend) : ""}
<form method="post" action="/account/email"><label for="new_email">${e(a.newEmail)}</label><input type="text" id="new_email" name="email" inputmode="email" autocomplete="email" autocapitalize="none" spellcheck="false" maxlength="254" required${invalid("email", error === "invalid")}><button type="submit" class="secondary">${e(a.changeEmail)}</button></form></section>
<section id="password"><h2>${e(a.passwordHeading)}</h2>${inSection("password")}
<form method="post" action="/account/password"><input type="text" name="username" autocomplete="username" value="${e(v.loginId)}" hidden>
<label for="current_password">${e(a.currentPassword)}</label><input type="password" id="current_password" name="current_password" autocomplete="current-password" required${invalid("password", error !== "weak_password")}>
<label for="new_password">${e(a.newPassword(v.passwordMinLength))}</label><input type="password" id="new_password" name="new_password" autocomplete="new-password" required${invalid("password", error === "weak_password")}>
<button type="submit" class="secondary">${e(a.changePassword)}</button></form>
<p class="muted"><a href="/recovery/password?lang=${lang}">${e(a.forgot)}</a></p></section>
<section><h2>${e(a.sessionsHeading)}</h2><ul class="plain">${v.sessions
    .map(
      (x) =>
        `<li>${device(x.userAgent)} <span class="muted">${e(x.ip ?? "")} · ${e(when(x.lastSeenAt))}${x.current ? ` · ${e(a.current)}` : ""}</span>${x.current ? "" : postButton(`/account/sessions/${x.id}/end`, a.end, "secondary", `${deviceLabel(x.userAgent) || a.unknownDevice} · ${when(x.lastSeenAt)}`)}</li>`,
    )
    .join("")}</ul></section>
<section><h2>${e(a.devicesHeading)}</h2>${
    v.devices.length === 0
      ? `<p class="muted">${e(a.noDevices)}</p>`
      : `<ul class="plain">${v.devices
          .map(
            (d) =>
              `<li>${device(d.userAgent)} <span class="muted">${e(when(d.lastSeenAt))}${d.current ? ` · ${e(a.current)}` : ""}</span>${postButton(`/account/devices/${d.id}/remove`, a.remove, "secondary", `${deviceLabel(d.userAgent) || a.unknownDevice} · ${when(d.lastSeenAt)}`)}</li>`,
          )
          .join("")}</ul>`
  }</section>
<section><h2>${e(a.eventsHeading)}</h2><ul class="plain">${v.events
    .map(
      (x) =>
        `<li>${e(EVENT_LABEL[x.type]?.[lang] ?? x.type)} <span class="muted">${e(OUTCOME_LABEL[x.outcome]?.[lang] ?? x.outcome)} · ${e(when(x.at))}${x.ip ? ` · ${e(x.ip)}` : ""}</span></li>`,
    )
    .join("")}</ul></section>
<section>${postButton("/account/logout", a.signOut)}</section>`;
  return layout(lang, a.accountTitle, body, `/account?lang=${lang === "ja" ? "en" : "ja"}`, true);
}

/** A limited session (the MFA policy wants a factor first): only adding one is possible. */
export function enrolPage(lang: Lang, allowed: { totp: boolean; passkey: boolean }): string {
  const a = A[lang];
  const body = `<h1>${e(a.enrolTitle)}</h1><p class="lead">${e(a.enrolLead)}</p>
${passkeySupport(lang)}
${
  allowed.passkey
    ? `<section id="passkeys"><h2>${e(a.passkeysHeading)}</h2>
${passkeyAdder(a)}</section>`
    : ""
}
${allowed.totp ? `<section><h2>${e(a.totpHeading)}</h2>${postButton("/account/totp", a.totpSetup, "")}</section>` : ""}
<section>${postButton("/account/logout", a.signOut)}</section>`;
  return layout(lang, a.enrolTitle, body, `/account?lang=${lang === "ja" ? "en" : "ja"}`, true);
}

export function totpEnrolPage(lang: Lang, opts: { qrSvg: string; secret: string; error?: boolean }): string {
  const a = A[lang];
  const grouped = opts.secret.match(/.{1,4}/g)?.join(" ") ?? opts.secret;
  const body = `<h1>${e(a.totpTitle)}</h1>
${opts.error ? `<div class="error" role="alert" id="mfa_error">${e(a.wrongCode)}</div>` : ""}
<p>${e(a.totpStep1)}</p><div class="qr">${opts.qrSvg}</div>
<p>${e(a.totpKey)}: <code class="secret">${e(grouped)}</code></p>
<form method="post" action="/account/totp/verify"><label for="code">${e(a.totpStep2)}</label>
${totpInput(a.codeTitle, `${opts.error ? ' aria-invalid="true" aria-describedby="mfa_error"' : ""} autofocus`)}
<button type="submit">${e(a.verify)}</button></form>
<p class="muted"><a href="/account?lang=${lang}">${e(a.cancelTotp)}</a></p>`;
  return layout(lang, a.totpTitle, body);
}

export function recoveryCodesPage(lang: Lang, codes: string[]): string {
  const a = A[lang];
  const body = `<h1>${e(a.codesTitle)}</h1><p class="lead">${e(a.codesLead)}</p>
<ol class="codes">${codes.map((c) => `<li><code>${e(c)}</code></li>`).join("")}</ol>
<p><a href="/account">${e(a.done)}</a></p>`;
  return layout(lang, a.codesTitle, body);
}
