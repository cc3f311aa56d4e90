/** HTML-escape text for element content and double-quoted attributes. */
export const escapeHtml = (v: string) =>
  v.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] as string,
  );
export const e = escapeHtml;

/**
 * Hosted pages: server-rendered HTML, Japanese first and English by Accept-Language (or `?lang=`).
 * Forms post back to our own origin and work without JavaScript; the only script is the passkey
 * one, served as a file (CSP `script-src 'self'`, never inline).
 */
export type Lang = "ja" | "en";

/**
 * A time as a reader of the page expects it: Japan time on Japanese pages (as in our mails), UTC
 * on English ones, the zone always said.
 */
export function localTime(lang: Lang, iso: string, opts: { seconds?: boolean; zone?: boolean } = {}): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const text = new Intl.DateTimeFormat(lang === "ja" ? "ja-JP" : "en-GB", {
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    ...(opts.seconds ? { second: "2-digit" } : {}),
    hourCycle: "h23",
    timeZone: lang === "ja" ? "Asia/Tokyo" : "UTC",
  }).format(d);
  return opts.zone === false ? text : `${text} ${zoneName(lang)}`;
}

/** The zone localTime() shows times in: for a column header when its cells leave it out. */
export const zoneName = (lang: Lang): string => (lang === "ja" ? "(日本時間)" : "UTC");

/** The cookie that keeps a reader's language choice (the switch on every page) across pages. */
export const LANG_COOKIE = "sekisho_lang";
const CHOSEN = new RegExp(`(?:^|;\\s*)${LANG_COOKIE}=(ja|en)(?:;|$)`);

/**
 * A page's language: `?lang=`, else the language the reader chose earlier (its cookie), else
 * `Accept-Language` (Japanese unless it starts with English).
 */
export function langOf(
  acceptLanguage: string | undefined,
  cookie: string | undefined,
  query?: unknown,
): Lang {
  return pickLang(acceptLanguage, query === "ja" || query === "en" ? query : CHOSEN.exec(cookie ?? "")?.[1]);
}

export function pickLang(acceptLanguage: string | undefined, override?: unknown): Lang {
  if (override === "ja" || override === "en") return override;
  const first = (acceptLanguage ?? "").split(",")[0]?.trim().toLowerCase() ?? "";
  return first.startsWith("en") ? "en" : "ja";
}

const T = {
  ja: {
    title: "サインイン",
    lead: (client: string) => `「${client}」にサインインします`,
    loginId: "ログインIDまたは会員番号",
    password: "パスワード",
    submit: "サインイン",
    invalid: "ログインIDまたはパスワードが正しくありません。",
    throttled: "試行回数が多すぎます。しばらくしてから再度お試しください。",
    throttledFor: (s: number) =>
      `試行回数が多すぎます。${s < 60 ? "1分" : `約${Math.ceil(s / 60)}分`}後に、もう一度お試しください。`,
    badRequest: "入力内容を確認してください。",
    other: "English",
    consentTitle: "アクセスの許可",
    consentLead: (client: string) => `「${client}」が、あなたの次の情報を求めています。`,
    consentNothing: (client: string) =>
      `「${client}」には、サインインしたことだけが伝わります（氏名などの情報は渡しません）。`,
    consentAs: (id: string) => `ログインID「${id}」でサインインしています。`,
    allow: "許可する",
    deny: "許可しない",
    footer: "関所 Sekisho によるサインイン",
    errorTitle: "サインインを続けられません",
    logoutErrorTitle: "サインアウトを続けられません",
    pageErrorTitle: "このページを表示できません",
    pageErrorLead: "お手数ですが、前のページに戻ってやり直してください。",
    errorLead: "お手数ですが、元のサイトからやり直してください。",
    expiredTitle: "サインインの有効期限が切れました",
    expiredMeaning: "サインインを始めてから時間がたちすぎたか、別のブラウザで開かれたため、続けられません。",
    expiredLead: "お手数ですが、会員サイトに戻って、もう一度サインインしてください。",
    logoutTitle: "サインアウトしますか？",
    logout: "関所からもサインアウト",
    logoutLead: (client: string | undefined) =>
      `${client ? `「${client}」からのサインアウトです。` : ""}関所（Sekisho）からもサインアウトすると、同じアカウントでサインインしている他の会員サイトでも、次はサインインが必要になります。`,
    logoutSiteOnly: (client: string | undefined) =>
      client ? `「${client}」だけサインアウト` : "このサイトだけサインアウト",
    loggedOut: "サインアウトしました",
    loggedOutLead: "このページは閉じてかまいません。",
    loggedOutSite: (client: string) => `「${client}」からサインアウトしました`,
    loggedOutSiteLead:
      "関所（Sekisho）にはサインインしたままです。共有のパソコンでは、アカウントページから関所もサインアウトしてください。",
    toAccountPage: "関所（Sekisho）のアカウントページ",
    or: "または",
    passkey: "パスキーでサインイン",
    passkeyCancelled: "パスキーの操作が取り消されました。",
    passkeyFailed: "パスキーを確認できませんでした。もう一度お試しください。",
    passkeyExists: "このパスキーはすでに登録されています。",
    expired: "サインインの有効期限が切れました。もう一度サインインしてください。",
    challenge: "安全のため、自動確認（数秒の計算）のあとにもう一度パスワードを入力してください。",
    resetRequired:
      "パスワードの再設定が必要です。メールでお送りしたリンク、または「パスワードをお忘れの方」から新しいパスワードを設定してください。",
    forgotPassword: "パスワードをお忘れの方",
    forgotLoginId: "ログインIDをお忘れの方",
  },
  en: {
    title: "Sign in",
    lead: (client: string) => `Sign in to ${client}`,
    loginId: "Login ID or member number",
    password: "Password",
    submit: "Sign in",
    invalid: "The login ID or password is incorrect.",
    throttled: "Too many attempts. Please wait a while and try again.",
    throttledFor: (s: number) =>
      `Too many attempts. Please try again in ${s < 60 ? "a minute" : `about ${Math.ceil(s / 60)} minutes`}.`,
    badRequest: "Please check what you entered.",
    other: "日本語",
    consentTitle: "Allow access",
    consentLead: (client: string) => `${client} asks for the following about you:`,
    consentNothing: (client: string) =>
      `${client} learns only that you signed in (no name or other details).`,
    consentAs: (id: string) => `Signed in as ${id}.`,
    allow: "Allow",
    deny: "Deny",
    footer: "Sign-in by Sekisho (関所)",
    errorTitle: "We can't continue signing you in",
    logoutErrorTitle: "We can't complete signing you out",
    pageErrorTitle: "This page can't be shown",
    pageErrorLead: "Please go back and try again.",
    errorLead: "Please go back to the site and try again.",
    expiredTitle: "Your sign-in expired",
    expiredMeaning: "The sign-in took too long, or was opened in another browser, so it can't continue.",
    expiredLead: "Please go back to the member site and sign in again.",
    logoutTitle: "Sign out?",
    logout: "Sign out of Sekisho too",
    logoutLead: (client: string | undefined) =>
      `${client ? `You are signing out of ${client}. ` : ""}Signing out of Sekisho as well means the other member sites you use with this account ask you to sign in again next time.`,
    logoutSiteOnly: (client: string | undefined) =>
      client ? `Sign out of ${client} only` : "Sign out of this site only",
    loggedOut: "You are signed out",
    loggedOutLead: "You can close this page.",
    loggedOutSite: (client: string) => `You are signed out of ${client}`,
    loggedOutSiteLead:
      "You are still signed in to Sekisho. On a shared computer, sign out of Sekisho too, on your account page.",
    toAccountPage: "Your Sekisho account page",
    or: "or",
    passkey: "Sign in with a passkey",
    passkeyCancelled: "The passkey request was cancelled.",
    passkeyFailed: "The passkey could not be verified. Please try again.",
    passkeyExists: "This passkey is already registered.",
    expired: "The sign-in expired. Please sign in again.",
    challenge:
      "For your safety, please enter your password again after the automatic check (a few seconds of computing).",
    resetRequired:
      "A new password is required. Set one with the link we mailed you, or through “Forgot your password?”.",
    forgotPassword: "Forgot your password?",
    forgotLoginId: "Forgot your login ID?",
  },
} as const;

const STYLE = `
body{margin:0;font-family:system-ui,-apple-system,"Hiragino Sans","Noto Sans JP",sans-serif;background:#f4f5f7;color:#1d2330}
main{max-width:24rem;margin:8vh auto;background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2rem}
h1{font-size:1.4rem;margin:0 0 .25rem}p.lead{color:#4a5263;margin:0 0 1.5rem}
label{display:block;font-weight:600;margin:1rem 0 .35rem}
input[type=text],input[type=password],input[type=tel]{box-sizing:border-box;width:100%;font-size:1rem;padding:.7rem;border:1px solid #858d9c;border-radius:8px}
input:focus{outline:2px solid #2456c9;outline-offset:1px;border-color:#2456c9}
button{margin-top:1.5rem;width:100%;font-size:1rem;padding:.75rem;border:0;border-radius:8px;background:#2456c9;color:#fff;font-weight:600;cursor:pointer}
button.secondary{background:#eef0f4;color:#1d2330;box-shadow:inset 0 0 0 1px #858d9c}
button.danger{background:#b42318;color:#fff}
.error{background:#fdecec;color:#8a1c1c;border-radius:8px;padding:.75rem;margin-bottom:1rem}
.client{display:flex;align-items:center;gap:.75rem;margin-bottom:1rem}.client img{width:40px;height:40px;border-radius:8px}
ul.scopes{padding-left:1.25rem;margin:0 0 .5rem}ul.scopes li{margin:.35rem 0}
.sep{text-align:center;color:#5f6779;margin:1.25rem 0 0}details{margin-top:1.25rem}summary{cursor:pointer;color:#2456c9}
section{border-top:1px solid #e6e9ef;margin-top:1.5rem;padding-top:1rem}h2{font-size:1.1rem;margin:0 0 .5rem}
ul.plain{list-style:none;padding:0;margin:0}ul.plain li{padding:.5rem 0;border-bottom:1px solid #f0f1f4}
.inline{display:inline}.inline button{width:auto;margin:0 0 0 .5rem;padding:.35rem .75rem;font-size:.9rem}
section>.inline button{margin-left:0}.row{display:flex;gap:.5rem;align-items:center;margin-top:.5rem}.row input[type=text]{flex:1;min-width:0;padding:.45rem .6rem;font-size:.95rem}.row button{width:auto;margin:0;padding:.45rem .8rem;font-size:.9rem;white-space:nowrap}
.item-head{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:baseline;gap:.5rem}.item-head>span{flex:1 1 12rem}
details.confirm{margin:0}details.confirm>summary{display:inline-block;list-style:none;color:#1d2330;background:#eef0f4;box-shadow:inset 0 0 0 1px #858d9c;border-radius:8px;padding:.35rem .75rem;font-size:.9rem;font-weight:600;white-space:nowrap}
details.confirm>summary::-webkit-details-marker{display:none}.item-head>details.confirm[open]{flex-basis:100%}
details.confirm>div{margin-top:.5rem;padding:.75rem;border-radius:8px;background:#fdf3f2;box-shadow:inset 0 0 0 1px #e3b6b1}details.confirm>div p{margin:0 0 .5rem}
details.confirm form button{margin-top:.25rem}section>details.confirm{display:inline-block;vertical-align:middle;margin-left:.5rem}section>details.confirm[open]{display:block;margin:.75rem 0 0}
.muted{color:#5f6779;font-size:.9rem}.small{font-size:.85rem;word-break:break-word}.ok{background:#e8f5ec;color:#1d5c2e;border-radius:8px;padding:.75rem;margin-bottom:1rem}
code.secret{font-size:1.05rem}.qr svg{width:220px;height:220px;display:block;margin:1rem auto}
ol.codes{font-family:ui-monospace,monospace;font-size:1.05rem;line-height:1.8;padding-left:2.75em;font-variant-numeric:tabular-nums;overflow-x:auto}ol.codes li{white-space:nowrap;padding-left:.35em}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
footer{text-align:center;color:#5f6779;font-size:.85rem;margin-top:1.5rem}footer a{color:#2456c9}
footer form{display:inline;margin:0}footer button.link{background:none;border:0;padding:0;margin:0;width:auto;min-height:0;color:#2456c9;font:inherit;font-weight:inherit;text-decoration:underline;cursor:pointer}`;

/** The passkey script and its messages (the script reads them from data attributes). */
export function passkeySupport(lang: Lang): string {
  const t = T[lang];
  return `<div data-passkey-messages hidden data-msg-cancelled="${e(t.passkeyCancelled)}" data-msg-failed="${e(t.passkeyFailed)}" data-msg-exists="${e(t.passkeyExists)}" data-msg-throttled="${e(t.throttled)}"></div>
<div class="error" role="alert" data-passkey-error hidden></div>`;
}

export const PASSKEY_SCRIPTS = `<script src="/assets/simplewebauthn-browser.js" defer></script><script src="/assets/passkeys.js" defer></script>`;

/**
 * Where the other language is: a link to the page, or — for a page that can't be re-requested by
 * address, such as a second sign-in step whose pending token rides in its forms — a form that
 * posts its hidden fields to show it again.
 */
export type LangSwitch = string | { action: string; hidden: Record<string, string> };

/**
 * The page frame; `switchTo` (the other language) is left out where a page can't be shown again;
 * `scripts` adds the passkey script files.
 */
export function layout(
  lang: Lang,
  title: string,
  body: string,
  switchTo?: LangSwitch,
  scripts = false,
  head = "",
): string {
  const otherLang = lang === "ja" ? "en" : "ja";
  const other =
    switchTo === undefined
      ? ""
      : typeof switchTo === "string"
        ? ` · <a href="${e(switchTo)}" lang="${otherLang}">${e(T[lang].other)}</a>`
        : ` · <form method="post" action="${e(switchTo.action)}">${Object.entries(switchTo.hidden)
            .map(([name, value]) => `<input type="hidden" name="${e(name)}" value="${e(value)}">`)
            .join(
              "",
            )}<button type="submit" class="link" lang="${otherLang}">${e(T[lang].other)}</button></form>`;
  return `<!doctype html><html lang="${lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>${e(title)} — Sekisho</title>
<style>${STYLE}</style>${scripts ? PASSKEY_SCRIPTS : ""}${head}</head><body><main>${body}</main>
<footer>${e(T[lang].footer)}${other}</footer>
</body></html>`;
}

/**
 * What an error code means to a member, in their language. The code and the technical description
 * (oidc-provider's, or ours, in English: what a member site's developer needs) follow it.
 */
const BAD_RETURN_ADDRESS = {
  ja: "戻り先のアドレスが、サイトの登録内容と一致しません。",
  en: "The return address does not match the site's registration.",
};
const ERROR_TEXT: Record<string, { ja: string; en: string }> = {
  invalid_request: { ja: "リクエストの内容に誤りがあります。", en: "The request is not valid." },
  invalid_client: {
    ja: "このサイトは登録されていないか、設定に誤りがあります。",
    en: "This site is not registered, or its settings are wrong.",
  },
  invalid_redirect_uri: BAD_RETURN_ADDRESS,
  redirect_uri_mismatch: BAD_RETURN_ADDRESS,
  unauthorized_client: {
    ja: "このサイトには、この方法でのサインインが許可されていません。",
    en: "This site may not sign members in this way.",
  },
  unsupported_response_type: {
    ja: "このサイトの要求の形式には対応していません。",
    en: "This kind of request is not supported.",
  },
  invalid_scope: {
    ja: "サイトが求めた情報の範囲が正しくありません。",
    en: "The site asked for information it may not have.",
  },
  access_denied: { ja: "アクセスは許可されませんでした。", en: "Access was not granted." },
  server_error: {
    ja: "サーバーで問題が発生しました。時間をおいてお試しください。",
    en: "Something went wrong on our side. Please try again later.",
  },
  not_found: { ja: "ページが見つかりません。", en: "There is no such page." },
  forbidden_origin: {
    ja: "別のサイトから送られたフォームは受け付けられません。",
    en: "A form sent from another site can't be accepted.",
  },
  too_many_attempts: {
    ja: "試行回数が多すぎます。しばらくしてからお試しください。",
    en: "Too many attempts. Please wait a while and try again.",
  },
  server_busy: {
    ja: "ただいま混み合っています。少し待ってからもう一度お試しください。",
    en: "The service is busy right now. Please wait a moment and try again.",
  },
};
/**
 * What oidc-provider says (SessionNotFound, an `invalid_request`) when a sign-in's interaction or
 * authorization can't be found in this browser any more: it expired (10 minutes), the cookies were
 * cleared, or the link was opened in another browser. The member did nothing wrong.
 */
const SIGN_IN_EXPIRED = new Set([
  "interaction session id cookie not found",
  "interaction session not found",
  "authorization request has expired",
  "authorization session and cookie identifier mismatch",
]);

/**
 * Protocol errors (bad client, bad redirect_uri, expired interaction): shown, never redirected.
 * `signingOut`: an end-session error; `page`: an error on one of our own pages (the account
 * pages, the admin console), not on the way back to a member site; `expired`: the sign-in can't be
 * found any more (also recognised from oidc-provider's description), said as such.
 */
export function errorPage(
  lang: Lang,
  code: string,
  description: string,
  opts: { signingOut?: boolean; page?: boolean; expired?: boolean } = {},
): string {
  const t = T[lang];
  const expired =
    !opts.page &&
    !opts.signingOut &&
    (opts.expired ?? (code === "invalid_request" && SIGN_IN_EXPIRED.has(description)));
  const title = opts.page
    ? t.pageErrorTitle
    : opts.signingOut
      ? t.logoutErrorTitle
      : expired
        ? t.expiredTitle
        : t.errorTitle;
  const meaning = expired
    ? t.expiredMeaning
    : Object.hasOwn(ERROR_TEXT, code)
      ? ERROR_TEXT[code]?.[lang]
      : undefined;
  const detail = `<code>${e(code)}</code>${description ? ` ${e(description)}` : ""}`;
  const lead = opts.page ? t.pageErrorLead : expired ? t.expiredLead : t.errorLead;
  return layout(
    lang,
    title,
    `<h1>${e(title)}</h1><div class="error" role="alert">${meaning ? `${e(meaning)}<br><span class="small">${detail}</span>` : detail}</div>
<p class="lead">${e(lead)}</p>`,
  );
}

/**
 * What the logout confirmation's button sends (`logout=confirmed`). oidc-provider's own form that
 * submits itself (a browser with no provider session) sends `logout=yes`: only the member's click
 * ends the Sekisho session (src/oidc/provider.ts).
 */
export const LOGOUT_CONFIRMED = "confirmed";

/** RP-initiated logout confirmation: oidc-provider's form (hidden xsrf) and our button. */
/**
 * RP-initiated logout's confirmation: the provider's form (its hidden xsrf) with two buttons. Out of
 * Sekisho too (`logout=confirmed`: the Sekisho session and every site's provider session end), or
 * out of the asking site only (no `logout`: its grant is revoked, Sekisho stays signed in).
 */
export function logoutPage(lang: Lang, providerForm: string, clientName?: string): string {
  const t = T[lang];
  return layout(
    lang,
    t.logoutTitle,
    `<h1>${e(t.logoutTitle)}</h1><p class="lead">${e(t.logoutLead(clientName))}</p>${providerForm}
<button type="submit" form="op.logoutForm" name="logout" value="${LOGOUT_CONFIRMED}">${e(t.logout)}</button>${
      // Only for a known site: without one, the form without `logout` would end nothing at all.
      clientName !== undefined
        ? `\n<button type="submit" form="op.logoutForm" class="secondary">${e(t.logoutSiteOnly(clientName))}</button>`
        : ""
    }`,
  );
}

/**
 * After a logout: signed out of everything, or (`siteOnly`, the site's name) of that site alone,
 * which says so, and that Sekisho still is signed in.
 */
export function loggedOutPage(lang: Lang, siteOnly?: string): string {
  const t = T[lang];
  if (siteOnly !== undefined)
    return layout(
      lang,
      t.loggedOutSite(siteOnly),
      `<h1>${e(t.loggedOutSite(siteOnly))}</h1><p class="lead">${e(t.loggedOutSiteLead)}</p><p><a href="/account?lang=${lang}">${e(t.toAccountPage)}</a></p>`,
    );
  return layout(lang, t.loggedOut, `<h1>${e(t.loggedOut)}</h1><p class="lead">${e(t.loggedOutLead)}</p>`);
}

/** The Retry-After a refusal put on the response (pageRefusal), in seconds, if any. */
export function retryAfterOf(res: { getHeader(name: string): unknown }): number | undefined {
  const v = Number(res.getHeader("Retry-After"));
  return Number.isFinite(v) && v > 0 ? v : undefined;
}

export type LoginError = "invalid" | "throttled" | "badRequest" | "expired" | "challenge" | "resetRequired";

/** The ALTCHA widget's files (proof-of-work), for a login page that carries a challenge. */
export const ALTCHA_HEAD = `<link rel="stylesheet" href="/assets/altcha.css"><script src="/assets/altcha.js" defer></script><script src="/assets/altcha-setup.js" defer></script>`;

/**
 * The sign-in page: login ID and password (works without JavaScript), and passkeys — a button for
 * passwordless sign-in and the browser's autofill on the login ID field (conditional UI). After a
 * passkey sign-in the script goes to `next`.
 */
export function loginPage(opts: {
  lang: Lang;
  action: string;
  clientName: string;
  logoUri?: string | undefined;
  error?: LoginError | undefined;
  /** With `throttled`: the answer's Retry-After, said in minutes (see retryAfterOf). */
  retryAfterSeconds?: number | undefined;
  notice?: string | undefined;
  loginId?: string | undefined;
  switchHref: string;
  next: string;
  /** A proof-of-work the throttle asks for: the widget solves it and posts `challenge_solution`. */
  challenge?: object | undefined;
}): string {
  const t = T[opts.lang];
  // The fields point at the error, so a screen reader says why when the member returns to them.
  const invalid = opts.error ? ' aria-invalid="true" aria-describedby="login_error"' : "";
  // A wrong password keeps the login ID: the member retypes only the password, so start there.
  const retype = opts.error === "invalid" && opts.loginId ? " autofocus" : "";
  const body = `<div class="client">${opts.logoUri ? `<img src="${e(opts.logoUri)}" alt="">` : ""}
<div><h1>${e(t.title)}</h1><p class="lead">${e(t.lead(opts.clientName))}</p></div></div>
${opts.error ? `<div class="error" role="alert" id="login_error">${e(opts.error === "throttled" && opts.retryAfterSeconds ? t.throttledFor(opts.retryAfterSeconds) : t[opts.error])}</div>` : ""}${opts.notice ? `<div class="ok" role="status">${e(opts.notice)}</div>` : ""}
${passkeySupport(opts.lang)}
<form method="post" action="${e(opts.action)}">
<label for="login_id">${e(t.loginId)}</label>
<input type="text" id="login_id" name="login_id" autocomplete="username webauthn" autocapitalize="none" spellcheck="false" required value="${e(opts.loginId ?? "")}"${invalid}>
<label for="password">${e(t.password)}</label>
<input type="password" id="password" name="password" autocomplete="current-password" required${invalid}${retype}>
${opts.challenge ? `<altcha-widget challenge="${e(JSON.stringify(opts.challenge))}" name="challenge_solution" language="${opts.lang}"></altcha-widget>` : ""}
<button type="submit">${e(t.submit)}</button>
</form>
<p class="muted"><a href="/recovery/password?lang=${opts.lang}">${e(t.forgotPassword)}</a> · <a href="/recovery/login-id?lang=${opts.lang}">${e(t.forgotLoginId)}</a></p>
<p class="sep" hidden data-passkey-only>${e(t.or)}</p>
<button type="button" class="secondary" hidden data-passkey-login data-next="${e(opts.next)}">${e(t.passkey)}</button>`;
  return layout(opts.lang, t.title, body, opts.switchHref, true, opts.challenge ? ALTCHA_HEAD : "");
}

/**
 * What a site gets for each scope, in words (the claims of src/oidc/provider.ts: `profile` is
 * name, preferred_username = the login ID, birthdate and gender). `null`: not shown on the consent
 * page — `openid` (only that the member signed in, said when nothing else is asked), `offline_access`
 * (changes nothing here: refresh tokens don't depend on it) and `members:read` (a site's own
 * client-credentials scope, never a member's data).
 */
export const SCOPE_TEXT: Record<string, { ja: string; en: string } | null> = {
  openid: null,
  offline_access: null,
  "members:read": null,
  profile: { ja: "氏名・生年月日・性別・ログインID", en: "Your name, date of birth, gender and login ID" },
  email: {
    ja: "メールアドレス（確認済みかどうかを含む）",
    en: "Your e-mail address (and whether it is verified)",
  },
  phone: { ja: "電話番号", en: "Your phone number" },
  address: { ja: "住所・郵便番号", en: "Your address and postal code" },
};

export function consentPage(opts: {
  lang: Lang;
  action: string;
  clientName: string;
  scopes: string[];
  switchHref: string;
  /** Who is signed in (login IDs are stored in clear), when the route knows it. */
  loginId?: string | undefined;
}): string {
  const t = T[opts.lang];
  const items = [...new Set(opts.scopes)].flatMap((sc) => {
    if (!Object.hasOwn(SCOPE_TEXT, sc)) return [`<li><code>${e(sc)}</code></li>`];
    const text = SCOPE_TEXT[sc]?.[opts.lang];
    return text ? [`<li>${e(text)}</li>`] : [];
  });
  const what =
    items.length > 0
      ? `<p class="lead">${e(t.consentLead(opts.clientName))}</p>
<ul class="scopes">${items.join("")}</ul>`
      : `<p class="lead">${e(t.consentNothing(opts.clientName))}</p>`;
  const body = `<h1>${e(t.consentTitle)}</h1>${opts.loginId ? `<p class="muted">${e(t.consentAs(opts.loginId))}</p>` : ""}
${what}
<form method="post" action="${e(opts.action)}"><button type="submit" name="decision" value="allow">${e(t.allow)}</button>
<button type="submit" name="decision" value="deny" class="secondary">${e(t.deny)}</button></form>`;
  return layout(opts.lang, t.consentTitle, body, opts.switchHref);
}
