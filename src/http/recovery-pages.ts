import type { FactorMethod } from "../factors/methods.js";
import type { PasswordProblem } from "../passwords/rules.js";
import { type CodeMethod, codeFieldState, totpInput } from "./account-pages.js";
import { ALTCHA_HEAD, e, type Lang, layout, passkeySupport } from "./pages.js";

/** Strings of the recovery and e-mail pages, Japanese first. */
const R = {
  ja: {
    forgotTitle: "パスワードの再設定",
    forgotLead:
      "ログインID（会員番号）またはメールアドレスを入力してください。再設定用のリンクをメールでお送りします。",
    identifier: "ログインID・会員番号 または メールアドレス",
    send: "メールを送る",
    forgotIdTitle: "ログインIDのお知らせ",
    forgotIdLead:
      "登録したメールアドレスを入力してください。そのアドレスで登録されたログインIDをメールでお送りします。",
    email: "メールアドレス",
    sentTitle: "メールをご確認ください",
    sentLead:
      "入力された情報に一致するアカウントがある場合、メールを送信しました。数分たっても届かない場合は、迷惑メールフォルダをご確認のうえ、もう一度お試しください。",
    backToLogin: "関所（Sekisho）アカウントのサインインへ",
    throttled: "リクエストが多すぎます。しばらくしてから再度お試しください。",
    invalid: "入力内容を確認してください。",
    challenge: "安全のため、自動確認（数秒の計算）のあとにもう一度送信してください。",
    linkInvalidTitle: "このリンクは使えません",
    linkInvalid: "リンクの有効期限が切れているか、すでに使われているか、新しいリンクが発行されています。",
    requestAgain: "もう一度メールを送る",
    mfaTitle: "本人確認",
    mfaLead: "パスワードを再設定する前に、2段階認証で本人確認をしてください。",
    passkey: "パスキーで確認",
    totpLabel: "認証アプリの6桁のコード",
    verify: "確認",
    useRecovery: "リカバリーコードを使う",
    recoveryLabel: "リカバリーコード",
    wrongCode: (left: number) =>
      `コードが正しくありません（残り ${left} 回）。アプリに表示されている最新のコードを入力してください。`,
    wrongRecovery: (left: number) =>
      `リカバリーコードが正しくありません（残り ${left} 回）。使用済みのコードは使えません。`,
    codeTitle: "6桁の数字を入力してください（例：123456）",
    noFactor:
      "使える2段階認証の方法がありません。パスキーの停止などでお困りの場合は、サポートにお問い合わせください。",
    newTitle: "新しいパスワード",
    newLead: "新しいパスワードを設定してください。設定すると、すべての端末でサインアウトします。",
    newPassword: (n: number) => `新しいパスワード（${n}文字以上）`,
    confirm: "新しいパスワード（確認）",
    save: "パスワードを設定",
    mismatch: "確認用のパスワードが一致しません。",
    doneTitle: "パスワードを再設定しました",
    doneLead: (id: string) =>
      `ログインID「${id}」と新しいパスワードでサインインしてください。会員サイトのサインインから来た方は、そのサイトに戻ってサインインしてください。`,
    signIn: "関所（Sekisho）アカウントにサインイン",
    verifyTitle: "メールアドレスの確認",
    verifyLead: "下のボタンを押すと、このメールアドレスの確認が完了します。",
    verifyButton: "確認する",
    verifiedTitle: "メールアドレスを確認しました",
    changedTitle: "メールアドレスを変更しました",
    toAccount: "アカウントページへ",
  },
  en: {
    forgotTitle: "Reset your password",
    forgotLead:
      "Enter your login ID (member number) or your e-mail address. We'll mail you a link to set a new password.",
    identifier: "Login ID, member number or e-mail address",
    send: "Send the mail",
    forgotIdTitle: "Forgot your login ID?",
    forgotIdLead:
      "Enter the e-mail address you registered with. We'll mail the login IDs registered with it.",
    email: "E-mail address",
    sentTitle: "Check your mail",
    sentLead:
      "If an account matches what you entered, we have sent it an e-mail. If nothing arrives within a few minutes, check your spam folder and try again.",
    backToLogin: "Sign in to your Sekisho account",
    throttled: "Too many requests. Please wait a while and try again.",
    invalid: "Please check what you entered.",
    challenge: "For your safety, please send again after the automatic check (a few seconds of computing).",
    linkInvalidTitle: "This link can't be used",
    linkInvalid: "The link has expired, was already used, or a newer one was sent.",
    requestAgain: "Send a new mail",
    mfaTitle: "Confirm it's you",
    mfaLead: "Before you set a new password, confirm it's you with two-step verification.",
    passkey: "Use a passkey",
    totpLabel: "6-digit code from your authenticator app",
    verify: "Verify",
    useRecovery: "Use a recovery code",
    recoveryLabel: "Recovery code",
    wrongCode: (left: number) =>
      `That code is not valid (${left} tries left). Enter the newest code the app shows.`,
    wrongRecovery: (left: number) =>
      `That recovery code is not valid (${left} tries left). A used code can't be used again.`,
    codeTitle: "6 digits, for example 123456",
    noFactor: "No two-step method is usable. If a passkey was suspended or lost, please contact support.",
    newTitle: "New password",
    newLead: "Choose a new password. Setting it signs you out everywhere.",
    newPassword: (n: number) => `New password (${n} characters or more)`,
    confirm: "New password again",
    save: "Set the password",
    mismatch: "The two passwords differ.",
    doneTitle: "Your password was reset",
    doneLead: (id: string) =>
      `Sign in with login ID "${id}" and your new password. If you came from a member site's sign-in, go back to that site and sign in there.`,
    signIn: "Sign in to your Sekisho account",
    verifyTitle: "Confirm your e-mail address",
    verifyLead: "Press the button to finish confirming this address.",
    verifyButton: "Confirm",
    verifiedTitle: "Your e-mail address is confirmed",
    changedTitle: "Your e-mail address was changed",
    toAccount: "To your account page",
  },
} as const;

/** Password rule problems, in words. */
export const PASSWORD_PROBLEM: Record<PasswordProblem, { ja: string; en: string }> = {
  too_short: { ja: "短すぎます。", en: "Too short." },
  too_long: { ja: "長すぎます。", en: "Too long." },
  invalid_characters: {
    ja: "使えない文字が含まれています。",
    en: "It contains characters that can't be used.",
  },
  common_password: {
    ja: "よく使われる（漏えいしている）パスワードです。",
    en: "It is a common (leaked) password.",
  },
  contains_login_id: { ja: "ログインIDを含んでいます。", en: "It contains your login ID." },
  contains_service_name: { ja: "サービス名を含んでいます。", en: "It contains the service's name." },
  repetitive: { ja: "同じ文字の繰り返しです。", en: "It is too repetitive." },
};

export type RecoveryError = "throttled" | "invalid" | "challenge";

const errorBox = (lang: Lang, error?: RecoveryError) =>
  error ? `<div class="error" role="alert">${e(R[lang][error])}</div>` : "";

function requestPage(
  lang: Lang,
  kind: "password" | "login_id",
  opts: { error?: RecoveryError; challenge?: object; value?: string },
): string {
  const r = R[lang];
  const title = kind === "password" ? r.forgotTitle : r.forgotIdTitle;
  const path = kind === "password" ? "/recovery/password" : "/recovery/login-id";
  const field =
    kind === "password"
      ? `<label for="identifier">${e(r.identifier)}</label><input type="text" id="identifier" name="identifier" autocomplete="username" autocapitalize="none" spellcheck="false" required value="${e(opts.value ?? "")}">`
      : `<label for="email">${e(r.email)}</label><input type="text" id="email" name="email" inputmode="email" autocomplete="email" autocapitalize="none" spellcheck="false" required value="${e(opts.value ?? "")}">`;
  const body = `<h1>${e(title)}</h1><p class="lead">${e(kind === "password" ? r.forgotLead : r.forgotIdLead)}</p>
${errorBox(lang, opts.error)}
<form method="post" action="${path}?lang=${lang}">${field}
${opts.challenge ? `<altcha-widget challenge="${e(JSON.stringify(opts.challenge))}" name="challenge_solution" language="${lang}"></altcha-widget>` : ""}
<button type="submit">${e(r.send)}</button></form>
<p class="sep"><a href="/account/login?lang=${lang}">${e(r.backToLogin)}</a></p>`;
  return layout(
    lang,
    title,
    body,
    `${path}?lang=${lang === "ja" ? "en" : "ja"}`,
    false,
    opts.challenge ? ALTCHA_HEAD : "",
  );
}

export const forgotPasswordPage = (
  lang: Lang,
  opts: { error?: RecoveryError; challenge?: object; value?: string } = {},
) => requestPage(lang, "password", opts);
export const forgotLoginIdPage = (
  lang: Lang,
  opts: { error?: RecoveryError; challenge?: object; value?: string } = {},
) => requestPage(lang, "login_id", opts);

export function mailSentPage(lang: Lang): string {
  const r = R[lang];
  return layout(
    lang,
    r.sentTitle,
    `<h1>${e(r.sentTitle)}</h1><p class="lead">${e(r.sentLead)}</p><p><a href="/account/login?lang=${lang}">${e(r.backToLogin)}</a></p>`,
  );
}

export function linkInvalidPage(lang: Lang, kind: "reset" | "verify"): string {
  const r = R[lang];
  const again =
    kind === "reset"
      ? `<p><a href="/recovery/password?lang=${lang}">${e(r.requestAgain)}</a></p>`
      : `<p><a href="/account?lang=${lang}">${e(r.toAccount)}</a></p>`;
  return layout(
    lang,
    r.linkInvalidTitle,
    `<h1>${e(r.linkInvalidTitle)}</h1><div class="error" role="alert">${e(r.linkInvalid)}</div>${again}`,
  );
}

/**
 * The reset's second step: TOTP and recovery code as forms, passkey through the script (its button
 * comes hidden: the script shows it where the browser can use passkeys). After a wrong code
 * (`attemptsLeft`), `failed` says which field it was: that one is marked, and an open box again.
 */
export function resetMfaPage(
  lang: Lang,
  opts: {
    token: string;
    methods: FactorMethod[];
    attemptsLeft?: number | undefined;
    failed?: CodeMethod | undefined;
  },
): string {
  const r = R[lang];
  const hidden = `<input type="hidden" name="token" value="${e(opts.token)}">`;
  const action = `/recovery/reset/mfa?lang=${lang}`;
  // A wrong code whose kind isn't known: the app's (the form most members use), if there is one.
  const failed: CodeMethod | undefined =
    opts.attemptsLeft === undefined
      ? undefined
      : (opts.failed ?? (opts.methods.includes("totp") ? "totp" : "recovery_code"));
  const parts: string[] = [];
  if (opts.methods.includes("webauthn")) {
    parts.push(
      `<button type="button" hidden data-passkey-reset data-reset-token="${e(opts.token)}">${e(r.passkey)}</button>
<form method="post" action="/recovery/reset/continue?lang=${lang}" data-reset-continue hidden>${hidden}<input type="hidden" name="reset_proof"></form>`,
    );
  }
  if (opts.methods.includes("totp")) {
    parts.push(`<form method="post" action="${action}">${hidden}<input type="hidden" name="method" value="totp">
<label for="code">${e(r.totpLabel)}</label>
${totpInput(r.codeTitle, codeFieldState(failed, "totp", "reset_error"))}
<button type="submit">${e(r.verify)}</button></form>`);
  }
  if (opts.methods.includes("recovery_code")) {
    parts.push(`<details${failed === "recovery_code" ? " open" : ""}><summary>${e(r.useRecovery)}</summary>
<form method="post" action="${action}">${hidden}<input type="hidden" name="method" value="recovery_code">
<label for="recovery">${e(r.recoveryLabel)}</label>
<input type="text" id="recovery" name="code" autocomplete="off" autocapitalize="none" spellcheck="false" required${codeFieldState(failed, "recovery_code", "reset_error")}>
<button type="submit">${e(r.verify)}</button></form></details>`);
  }
  const body =
    parts.length === 0
      ? `<h1>${e(r.mfaTitle)}</h1><div class="error" role="alert">${e(r.noFactor)}</div>`
      : `<h1>${e(r.mfaTitle)}</h1><p class="lead">${e(r.mfaLead)}</p>
${opts.attemptsLeft !== undefined ? `<div class="error" role="alert" id="reset_error">${e(failed === "recovery_code" ? r.wrongRecovery(opts.attemptsLeft) : r.wrongCode(opts.attemptsLeft))}</div>` : ""}${passkeySupport(lang)}
${parts.join("\n")}`;
  return layout(lang, r.mfaTitle, body, undefined, opts.methods.includes("webauthn"));
}

export function newPasswordPage(
  lang: Lang,
  opts: {
    token: string;
    /** The proof of a passed second factor (members who have one). */
    proof?: string | null | undefined;
    minLength: number;
    /** The account's login ID, for password managers (a hidden username field). */
    loginId?: string | undefined;
    problems?: PasswordProblem[];
    mismatch?: boolean;
  },
): string {
  const r = R[lang];
  const problems = opts.problems?.length
    ? `<div class="error" role="alert">${opts.problems.map((p) => e(PASSWORD_PROBLEM[p][lang])).join("<br>")}</div>`
    : "";
  const body = `<h1>${e(r.newTitle)}</h1><p class="lead">${e(r.newLead)}</p>${problems}${opts.mismatch ? `<div class="error" role="alert">${e(r.mismatch)}</div>` : ""}
<form method="post" action="/recovery/reset?lang=${lang}"><input type="hidden" name="token" value="${e(opts.token)}">${opts.loginId ? `<input type="text" name="username" autocomplete="username" value="${e(opts.loginId)}" hidden>` : ""}${opts.proof ? `<input type="hidden" name="reset_proof" value="${e(opts.proof)}">` : ""}
<label for="password">${e(r.newPassword(opts.minLength))}</label><input type="password" id="password" name="password" autocomplete="new-password" minlength="${opts.minLength}" required>
<label for="password_confirm">${e(r.confirm)}</label><input type="password" id="password_confirm" name="password_confirm" autocomplete="new-password" required>
<button type="submit">${e(r.save)}</button></form>`;
  return layout(lang, r.newTitle, body);
}

export function resetDonePage(lang: Lang, loginId: string): string {
  const r = R[lang];
  return layout(
    lang,
    r.doneTitle,
    `<h1>${e(r.doneTitle)}</h1><div class="ok" role="status">${e(r.doneLead(loginId))}</div>
<p><a href="/account/login?lang=${lang}">${e(r.signIn)}</a></p>`,
  );
}

/** The verification link's page: a button, so that a mail scanner fetching the link confirms nothing. */
export function verifyEmailPage(lang: Lang, token: string): string {
  const r = R[lang];
  return layout(
    lang,
    r.verifyTitle,
    `<h1>${e(r.verifyTitle)}</h1><p class="lead">${e(r.verifyLead)}</p>
<form method="post" action="/email/verify?lang=${lang}"><input type="hidden" name="token" value="${e(token)}"><button type="submit">${e(r.verifyButton)}</button></form>`,
  );
}

export function emailVerifiedPage(lang: Lang, changed: boolean): string {
  const r = R[lang];
  const title = changed ? r.changedTitle : r.verifiedTitle;
  return layout(
    lang,
    title,
    `<h1>${e(title)}</h1><p><a href="/account?lang=${lang}">${e(r.toAccount)}</a></p>`,
  );
}
