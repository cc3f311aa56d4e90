import { EVENT_LABEL, OUTCOME_LABEL } from "./account-pages.js";
import { e, type Lang, layout, localTime, zoneName } from "./pages.js";

/** The admin console's pages (`/admin`), Japanese first; server-rendered, no script but the passkey one. */
const C = {
  ja: {
    loginId: "ログインID",
    statusRole: "状態 / 役割",
    created: "登録日時",
    emailVerified: "メール確認済み",
    recoveryCodes: "リカバリーコード",
    protection: "アカウント保護",
    protectedUntil: (t: string) =>
      `保護中（${t}まで）：信頼されていない端末からのパスワードでのサインインを拒否しています`,
    notProtected: "なし",
    member: "会員",
    console: "管理コンソール",
    dashboard: "ダッシュボード",
    alerts: "アラート",
    members: "会員検索",
    policy: "MFAポリシー",
    audit: "監査ログ",
    actorAudit: "この相手の操作",
    handled: "対応",
    acknowledge: "確認済みにする",
    signOut: "サインアウト",
    status: "攻撃の状況",
    underAttack:
      "攻撃を検知中: すべての新しい端末からのパスワードでのサインインに計算による確認を求めています。",
    calm: "サービス全体への攻撃は検知されていません。",
    recentAlerts: "最近のアラート",
    noAlerts: "アラートはありません。",
    adoption: "2段階認証の普及状況",
    membersCount: "会員数",
    withTotp: "認証アプリ",
    withPasskeys: "パスキー",
    withoutFactor: "未設定",
    pastGrace: "猶予期間切れ",
    lookupLabel: "ログインID または メールアドレス",
    search: "検索",
    noResults: "該当する会員はいません。",
    view: "詳細",
    memberTitle: (id: string) => `会員 ${id}`,
    reasonLabel: "理由（必須・記録されます）",
    showProfile: "個人情報を表示（閲覧は記録され、予算に数えられます）",
    profile: "個人情報",
    factors: "2段階認証",
    actions: "操作",
    revoke: "すべてのセッションを終了",
    resetMfa: "2段階認証をリセット",
    requireReset: "パスワードの再設定を要求",
    unlock: "アカウント保護を解除",
    done: "実行しました。",
    needReason: "理由を入力してください（3文字以上）。",
    budget:
      "個人情報の閲覧予算を超えました。パスキーでサインインし直すと再開できます（アラートが送信されました）。",
    policyTitle: "MFAポリシー（全会員）",
    mode: "モード",
    modeOff: "オフ",
    modeOptional: "任意",
    modeRequired: "必須",
    grace: "猶予期間（日）",
    methods: "使える方法",
    phishing: "フィッシング耐性（パスキーのみ）",
    save: "保存",
    saved: "保存しました。次回のサインインから適用されます。",
    invalid: "入力内容を確認してください。",
    confirmSearch:
      "別のサイトから開かれた検索は、自動では実行しません。内容を確かめてから「検索」を押してください。",
    chainOk: (n: number) => `監査ログの改ざん検証: 正常（${n} 件）`,
    chainBad: (seq: number, problem: string) => `監査ログの改ざん検証: 異常 — エントリ #${seq}: ${problem}`,
    filter: "絞り込み",
    action: "操作",
    memberId: "会員ID",
    actorId: "操作した人・サイトのID",
    requestId: "リクエストID",
    ipAddress: "IPアドレス",
    since: "この時刻から（例 2026-12-05T09:00+09:00）",
    until: "この時刻まで",
    older: "さらに古いエントリ",
    when: "日時",
    kind: "種類",
    severity: "重要度",
    details: "詳細",
    who: "実行者",
    result: "結果",
    stepUp: "管理コンソールにはパスキーでのサインインが必要です。",
    forbidden: "管理者のみが利用できます。",
  },
  en: {
    loginId: "Login ID",
    statusRole: "Status / role",
    created: "Registered",
    emailVerified: "E-mail verified",
    recoveryCodes: "Recovery codes",
    protection: "Account protection",
    protectedUntil: (t: string) => `Protected until ${t}: password sign-in from untrusted devices is refused`,
    notProtected: "None",
    member: "Member",
    console: "Admin console",
    dashboard: "Dashboard",
    alerts: "Alerts",
    members: "Members",
    policy: "MFA policy",
    audit: "Audit log",
    actorAudit: "What it did",
    handled: "Handled",
    acknowledge: "Mark handled",
    signOut: "Sign out",
    status: "Attack status",
    underAttack: "Under attack: every password sign-in from a new device must solve a proof-of-work.",
    calm: "No service-wide attack detected.",
    recentAlerts: "Recent alerts",
    noAlerts: "No alerts.",
    adoption: "Two-step verification adoption",
    membersCount: "Members",
    withTotp: "Authenticator app",
    withPasskeys: "Passkeys",
    withoutFactor: "None",
    pastGrace: "Past the grace period",
    lookupLabel: "Login ID or e-mail address",
    search: "Search",
    noResults: "No member found.",
    view: "Open",
    memberTitle: (id: string) => `Member ${id}`,
    reasonLabel: "Reason (required, recorded)",
    showProfile: "Show personal data (recorded, counts against your budget)",
    profile: "Personal data",
    factors: "Two-step verification",
    actions: "Actions",
    revoke: "End every session",
    resetMfa: "Reset two-step verification",
    requireReset: "Require a new password",
    unlock: "Lift account protection",
    done: "Done.",
    needReason: "Give a reason (3 characters or more).",
    budget:
      "You went past your PII read budget. Sign in again with your passkey to continue (an alert was sent).",
    policyTitle: "MFA policy (all members)",
    mode: "Mode",
    modeOff: "Off",
    modeOptional: "Optional",
    modeRequired: "Required",
    grace: "Grace period (days)",
    methods: "Methods",
    phishing: "Phishing-resistant (passkeys only)",
    save: "Save",
    saved: "Saved. It applies from each member's next sign-in.",
    invalid: "Please check what you entered.",
    confirmSearch: "A search opened from another site is not run by itself. Check it, then press Search.",
    chainOk: (n: number) => `Audit chain verified: intact (${n} entries)`,
    chainBad: (seq: number, problem: string) => `Audit chain verified: BROKEN at entry #${seq}: ${problem}`,
    filter: "Filter",
    action: "Action",
    memberId: "Member id",
    actorId: "Actor id (member, admin or site)",
    requestId: "Request id",
    ipAddress: "IP address",
    since: "From (e.g. 2026-12-05T00:00Z)",
    until: "Until",
    older: "Older entries",
    when: "When",
    kind: "Kind",
    severity: "Severity",
    details: "Details",
    who: "Actor",
    result: "Outcome",
    stepUp: "The admin console needs a sign-in with your passkey.",
    forbidden: "Only administrators can use this.",
  },
} as const;

export type ConsoleText = (typeof C)["ja"];
export const consoleText = (lang: Lang): ConsoleText => C[lang] as ConsoleText;

const WIDE = `<style>main{max-width:64rem}@media (max-width:40rem){table{display:block;overflow-x:auto}}table{width:100%;border-collapse:collapse;font-size:.9rem}th,td{text-align:left;padding:.4rem;border-bottom:1px solid #e6e9ef;vertical-align:top}
nav.admin{display:flex;gap:1rem;flex-wrap:wrap;margin-bottom:1rem}nav.admin a{color:#2456c9}.critical{color:#8a1c1c;font-weight:600}.warning{color:#8a5a00}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:.75rem}.stat{background:#f4f5f7;border-radius:8px;padding:.75rem}.stat b{display:block;font-size:1.4rem}
code.small{font-size:.8rem;word-break:break-all}td.nowrap,code.id{white-space:nowrap;word-break:normal}td.action{min-width:14rem}td.action code{word-break:normal}form.row{display:flex;gap:.5rem;align-items:end;flex-wrap:wrap}form.row button{width:auto;margin:0}form.row label{margin:0}form.filters{display:grid;grid-template-columns:repeat(auto-fill,minmax(12rem,1fr));gap:.5rem;align-items:end}form.filters label{margin:0}form.filters button{width:auto;margin:0}</style>`;

const when = (lang: Lang, iso: string) => localTime(lang, iso, { seconds: true });

/** Profile fields, member states and roles, and gender values in the admin's language. */
const FIELD_LABEL: Record<string, { ja: string; en: string }> = {
  name: { ja: "氏名", en: "Name" },
  email: { ja: "メールアドレス", en: "E-mail" },
  phone: { ja: "電話番号", en: "Phone" },
  postal_code: { ja: "郵便番号", en: "Postal code" },
  address: { ja: "住所", en: "Address" },
  birth_date: { ja: "生年月日", en: "Birth date" },
  gender: { ja: "性別", en: "Gender" },
};
const VALUE_LABEL: Record<string, Record<string, { ja: string; en: string }>> = {
  gender: {
    female: { ja: "女性", en: "Female" },
    male: { ja: "男性", en: "Male" },
    other: { ja: "その他", en: "Other" },
    prefer_not_to_say: { ja: "回答しない", en: "Prefer not to say" },
  },
};
const STATUS_LABEL: Record<string, { ja: string; en: string }> = {
  active: { ja: "有効", en: "Active" },
  disabled: { ja: "無効", en: "Disabled" },
};
const ROLE_LABEL: Record<string, { ja: string; en: string }> = {
  member: { ja: "会員", en: "Member" },
  admin: { ja: "管理者", en: "Administrator" },
};
/** Audit actions the member's own event list doesn't name: the console's, the system's, the operator's. */
const ACTION_LABEL: Record<string, { ja: string; en: string }> = {
  ...EVENT_LABEL,
  "admin.alerts_viewed": { ja: "アラートを閲覧", en: "Alerts viewed" },
  "admin.audit_verified": { ja: "監査ログを検証", en: "Audit chain verified" },
  "admin.audit_viewed": { ja: "監査ログを閲覧", en: "Audit log viewed" },
  "admin.client_pii_approved": {
    ja: "会員サイトの個人情報閲覧を承認",
    en: "Member site's PII reads approved",
  },
  "admin.member_mfa_reset": { ja: "2段階認証をリセット", en: "Two-step verification reset" },
  "admin.member_password_reset_required": { ja: "パスワードの再設定を要求", en: "New password required" },
  "admin.member_sessions_revoked": { ja: "会員のセッションを終了", en: "Member's sessions ended" },
  "admin.member_unlocked": { ja: "アカウント保護を解除", en: "Account protection lifted" },
  "admin.member_opened": { ja: "会員のページを表示", en: "Member's page opened" },
  "admin.member_viewed": { ja: "会員の個人情報を表示", en: "Member's personal data shown" },
  "admin.members_looked_up": { ja: "会員を検索", en: "Members looked up" },
  "admin.mfa_adoption_viewed": { ja: "2段階認証の普及状況を閲覧", en: "MFA adoption viewed" },
  "admin.mfa_policy_changed": { ja: "MFAポリシーを変更", en: "MFA policy changed" },
  "alert.raised": { ja: "アラート", en: "Alert raised" },
  "session.enrolled": { ja: "登録後のセッション更新", en: "Session raised after enrolment" },
  "pii.read": { ja: "個人情報の復号", en: "Personal data decrypted" },
  "pii.decrypt_failed": { ja: "個人情報の復号に失敗", en: "Personal data failed to decrypt" },
  "pii.reencrypted": { ja: "個人情報を再暗号化", en: "Personal data re-encrypted" },
  "oidc.grant_revoked": { ja: "会員サイトへの許可を取り消し", en: "Member site's grant revoked" },
  "oidc.token_reused": {
    ja: "使用済みトークンの再使用（会員サイトへの許可を取り消し）",
    en: "Used token presented again (site's grant revoked)",
  },
  "client.registered": { ja: "会員サイトを登録", en: "Member site registered" },
  "admin.alert_acknowledged": { ja: "アラートを確認済みに", en: "Alert marked handled" },
  "member.disabled": { ja: "会員を停止（運用者）", en: "Member disabled (operator)" },
  "member.enabled": { ja: "会員の停止を解除（運用者）", en: "Member enabled again (operator)" },
  "client.updated": { ja: "会員サイトの登録内容を変更", en: "Member site changed" },
  "client.secret_rotated": { ja: "会員サイトのシークレットを更新", en: "Member site's secret replaced" },
  "client.removed": { ja: "会員サイトを削除", en: "Member site removed" },
  "keys.rotated": { ja: "鍵を更新", en: "Keys rotated" },
  "keys.rotation_started": { ja: "鍵の更新を開始", en: "Key rotation started" },
  "keys.signing_retired": { ja: "署名鍵を廃止", en: "Signing key retired" },
  "honeytokens.added": { ja: "おとり会員を追加", en: "Decoy members added" },
  "members.imported": { ja: "会員を移行", en: "Members imported" },
  "members.weak_hashes_wrapped": { ja: "旧パスワードハッシュを保護", en: "Legacy password hashes wrapped" },
  "database.backed_up": { ja: "データベースをバックアップ", en: "Database backed up" },
  "database.restored": { ja: "データベースを復元", en: "Database restored" },
  "recovery.requested_unknown": {
    ja: "存在しない宛先への再設定申請",
    en: "Recovery asked for an unknown member",
  },
  "recovery.throttled": { ja: "再設定申請の制限", en: "Recovery requests limited" },
};

/** An id in a narrow column: its start, the whole of it on hover. */
const shortId = (id: string) =>
  `<code class="small id" title="${e(id)}">${e(id.length > 10 ? `${id.slice(0, 8)}…` : id)}</code>`;

const named = (table: Record<string, { ja: string; en: string }>, lang: Lang, key: string): string =>
  table[key]?.[lang] ?? key;

const modeLabel = (c: (typeof C)[Lang], mode: string): string =>
  ({ off: c.modeOff, optional: c.modeOptional, required: c.modeRequired })[mode] ?? mode;

/** What each alert kind means, in the admin's language (the code stays beside it, for searching). */
const ALERT_KIND: Record<string, { ja: string; en: string }> = {
  under_attack: { ja: "サービス全体への攻撃", en: "Service under attack" },
  password_spraying: { ja: "パスワードスプレー攻撃", en: "Password spraying" },
  hash_backlog: { ja: "パスワード照合の待ち行列が過大", en: "Password checks backed up" },
  account_protected: { ja: "アカウント保護の開始", en: "Account protected" },
  second_factor_guessing: {
    ja: "2段階認証の推測（パスワード漏えいの疑い）",
    en: "Second step guessed at (password known?)",
  },
  network_blocked: { ja: "ネットワークの遮断", en: "Network blocked" },
  honeytoken_touched: { ja: "おとり会員へのアクセス", en: "Decoy member touched" },
  pii_budget_exceeded: { ja: "個人情報の閲覧上限超過", en: "PII read budget exceeded" },
  bulk_read_suspected: { ja: "大量閲覧の疑い", en: "Bulk read suspected" },
  mail_undeliverable: { ja: "メール不達", en: "Mail undeliverable" },
  mail_failing: { ja: "メール送信の障害", en: "Mail failing" },
  keyring_unreadable: { ja: "鍵束を読めない", en: "Keyring unreadable" },
  signing_keys_refused: { ja: "署名鍵を拒否", en: "Signing keys refused" },
  passkey_clone_suspected: { ja: "パスキー複製の疑い", en: "Passkey possibly copied" },
  admin_factor_changed: { ja: "管理者の認証方法の変更", en: "An administrator's factors changed" },
  token_reused: {
    ja: "使用済みトークンの再使用（盗用の疑い）",
    en: "Used token presented again (possible theft)",
  },
};
const SEVERITY: Record<string, { ja: string; en: string }> = {
  critical: { ja: "重大", en: "Critical" },
  warning: { ja: "警告", en: "Warning" },
  info: { ja: "情報", en: "Info" },
};

/** The console frame: navigation, and the page. */
export function consolePage(lang: Lang, title: string, body: string, path: string): string {
  const c = C[lang];
  const nav = `<nav class="admin"><strong>${e(c.console)}</strong>
<a href="/admin">${e(c.dashboard)}</a><a href="/admin/alerts">${e(c.alerts)}</a><a href="/admin/members">${e(c.members)}</a>
<a href="/admin/policy">${e(c.policy)}</a><a href="/admin/audit">${e(c.audit)}</a>
<form method="post" action="/account/logout" class="inline"><button type="submit" class="secondary">${e(c.signOut)}</button></form></nav>`;
  const sep = path.includes("?") ? "&" : "?";
  return layout(
    lang,
    title,
    `${nav}<h1>${e(title)}</h1>${body}`,
    `${path}${sep}lang=${lang === "ja" ? "en" : "ja"}`,
    false,
    WIDE,
  );
}

export interface AlertView {
  id: number;
  at: string;
  kind: string;
  severity: string;
  details: Record<string, unknown>;
  acknowledged_at?: string | null;
}

export function alertsTable(lang: Lang, alerts: AlertView[]): string {
  const c = C[lang];
  if (alerts.length === 0) return `<p class="muted">${e(c.noAlerts)}</p>`;
  return `<table><tr><th>${e(c.when)}</th><th>${e(c.kind)}</th><th>${e(c.severity)}</th><th>${e(c.details)}</th><th>${e(c.handled)}</th></tr>${alerts
    .map((a) => {
      const d = a.details;
      // What the principal an alert names did (admin or member site), and what touched a decoy.
      const actor =
        typeof d.principal_id === "string" && (d.principal === "admin" || d.principal === "client")
          ? d.principal_id
          : typeof d.client_id === "string" && d.client_id
            ? d.client_id
            : null;
      const decoy =
        typeof d.decoy_member_id === "string" && d.decoy_member_id.startsWith("m_")
          ? d.decoy_member_id
          : null;
      const link = [
        actor
          ? ` <a href="/admin/audit?actor_id=${e(encodeURIComponent(actor))}">${e(c.actorAudit)}</a>`
          : "",
        decoy ? ` <a href="/admin/audit?member_id=${e(encodeURIComponent(decoy))}">${e(c.audit)}</a>` : "",
        typeof d.member_id === "string"
          ? ` <a href="/admin/members/${e(encodeURIComponent(d.member_id))}">${e(c.member)}</a>`
          : "",
      ].join("");
      const req =
        typeof d.request_id === "string" && d.request_id !== "[hidden]"
          ? ` <a href="/admin/audit?request_id=${e(encodeURIComponent(d.request_id))}">request</a>`
          : "";
      return `<tr><td>${e(when(lang, a.at))}</td><td>${e(ALERT_KIND[a.kind]?.[lang] ?? a.kind)} <code class="small">${e(a.kind)}</code></td><td class="${e(a.severity)}">${e(SEVERITY[a.severity]?.[lang] ?? a.severity)}</td><td><code class="small">${e(JSON.stringify(d))}</code>${link}${req}</td><td class="nowrap">${
        a.acknowledged_at
          ? e(when(lang, a.acknowledged_at))
          : `<form method="post" action="/admin/alerts/${a.id}/acknowledge?lang=${lang}"><button type="submit" class="secondary">${e(c.acknowledge)}</button></form>`
      }</td></tr>`;
    })
    .join("")}</table>`;
}

export function dashboardPage(
  lang: Lang,
  v: {
    underAttack: boolean;
    alerts: AlertView[];
    adoption: {
      members: number;
      with_totp: number;
      with_passkeys: number;
      without_factor: number;
      past_grace: number;
    };
    policyMode: string;
  },
): string {
  const c = C[lang];
  const a = v.adoption;
  const stat = (label: string, n: number) => `<div class="stat">${e(label)}<b>${n}</b></div>`;
  const body = `<section><h2>${e(c.status)}</h2><div class="${v.underAttack ? "error" : "ok"}" role="status">${e(v.underAttack ? c.underAttack : c.calm)}</div></section>
<section><h2>${e(c.adoption)} <span class="muted">(${e(c.policy)}: ${e(modeLabel(c, v.policyMode))})</span></h2><div class="stats">
${stat(c.membersCount, a.members)}${stat(c.withTotp, a.with_totp)}${stat(c.withPasskeys, a.with_passkeys)}${stat(c.withoutFactor, a.without_factor)}${stat(c.pastGrace, a.past_grace)}</div></section>
<section><h2>${e(c.recentAlerts)}</h2>${alertsTable(lang, v.alerts)}<p><a href="/admin/alerts">${e(c.alerts)} →</a></p></section>`;
  return consolePage(lang, c.dashboard, body, "/admin");
}

export interface MemberSummary {
  member_id: string;
  login_id: string;
  role: string;
  status: string;
  created_at: string | null;
  email_verified: boolean;
  mfa: { totp: boolean; passkeys: number; recovery_codes: number };
  /** Until when the account refuses password sign-in from untrusted devices (ISO), or null. */
  protected_until?: string | null;
  profile?: Record<string, string | null | undefined>;
}

export function membersPage(
  lang: Lang,
  v: { query: string; results: MemberSummary[] | null; error?: string },
): string {
  const c = C[lang];
  const results =
    v.results === null
      ? ""
      : v.results.length === 0
        ? `<p class="muted">${e(c.noResults)}</p>`
        : `<table><tr><th>${e(c.memberId)}</th><th>${e(c.loginId)}</th><th>${e(c.profile)}</th><th>${e(c.factors)}</th><th></th></tr>${v.results
            .map(
              (m) =>
                `<tr><td><code class="small">${e(m.member_id)}</code></td><td>${e(m.login_id)}</td><td>${e(
                  Object.values(m.profile ?? {})
                    .filter(Boolean)
                    .join(" / "),
                )}</td><td>${m.mfa.totp ? "TOTP " : ""}${m.mfa.passkeys ? `passkey×${m.mfa.passkeys}` : ""}</td><td><a href="/admin/members/${e(m.member_id)}">${e(c.view)}</a></td></tr>`,
            )
            .join("")}</table>`;
  const body = `${v.error ? `<div class="error" role="alert">${e(v.error)}</div>` : ""}
<form method="get" action="/admin/members" class="row"><div><label for="q">${e(c.lookupLabel)}</label><input type="text" id="q" name="q" value="${e(v.query)}" required></div><button type="submit">${e(c.search)}</button></form>
${results}`;
  return consolePage(lang, c.members, body, "/admin/members");
}

export function memberPage(
  lang: Lang,
  v: { member: MemberSummary; profile: Record<string, string> | null; notice?: string; error?: string },
): string {
  const c = C[lang];
  const m = v.member;
  const id = e(m.member_id);
  const reasonForm = (action: string, label: string) =>
    `<form method="post" action="/admin/members/${id}/${action}" class="row"><div><label for="r_${action}">${e(c.reasonLabel)} — ${e(label)}</label><input type="text" id="r_${action}" name="reason" minlength="3" maxlength="500" required></div><button type="submit" class="secondary">${e(label)}</button></form>`;
  const profile = v.profile
    ? `<table>${Object.entries(v.profile)
        .map(
          ([k, val]) =>
            `<tr><th>${e(named(FIELD_LABEL, lang, k))} <code class="small muted">${e(k)}</code></th><td>${e(VALUE_LABEL[k] && val ? named(VALUE_LABEL[k], lang, val) : val)}</td></tr>`,
        )
        .join("")}</table>`
    : `<form method="post" action="/admin/members/${id}/view" class="row"><div><label for="reason">${e(c.reasonLabel)}</label><input type="text" id="reason" name="reason" minlength="3" maxlength="500" required></div><button type="submit">${e(c.showProfile)}</button></form>`;
  const body = `${v.notice ? `<div class="ok" role="status">${e(v.notice)}</div>` : ""}${v.error ? `<div class="error" role="alert">${e(v.error)}</div>` : ""}
<table><tr><th>${e(c.loginId)}</th><td>${e(m.login_id)}</td></tr><tr><th>${e(c.statusRole)}</th><td>${e(named(STATUS_LABEL, lang, m.status))} / ${e(named(ROLE_LABEL, lang, m.role))}</td></tr>
<tr><th>${e(c.created)}</th><td>${m.created_at ? e(when(lang, m.created_at)) : ""}</td></tr><tr><th>${e(c.emailVerified)}</th><td>${m.email_verified ? "✓" : "—"}</td></tr>
<tr><th>${e(c.factors)}</th><td>${m.mfa.totp ? `${e(c.withTotp)} ` : ""}${m.mfa.passkeys ? `${e(c.withPasskeys)}×${m.mfa.passkeys} ` : ""}${m.mfa.totp || m.mfa.passkeys ? "" : `${e(c.withoutFactor)} `}<span class="muted">(${e(c.recoveryCodes)}: ${m.mfa.recovery_codes})</span></td></tr>
<tr><th>${e(c.protection)}</th><td>${m.protected_until ? `<strong>${e(c.protectedUntil(when(lang, m.protected_until)))}</strong>` : e(c.notProtected)}</td></tr></table>
<section><h2>${e(c.profile)}</h2>${profile}</section>
<section><h2>${e(c.actions)}</h2>
${reasonForm("revoke-sessions", c.revoke)}${reasonForm("reset-mfa", c.resetMfa)}${reasonForm("require-password-reset", c.requireReset)}${reasonForm("unlock", c.unlock)}
<p><a href="/admin/audit?member_id=${id}">${e(c.audit)} →</a></p></section>`;
  return consolePage(lang, c.memberTitle(m.login_id), body, `/admin/members/${m.member_id}`);
}

export function policyPage(
  lang: Lang,
  v: {
    mode: string;
    grace_days: number;
    methods: string[];
    phishing_resistant: boolean;
    notice?: string;
    error?: string;
  },
): string {
  const c = C[lang];
  const opt = (value: string, label: string) =>
    `<option value="${value}"${v.mode === value ? " selected" : ""}>${e(label)}</option>`;
  const check = (name: string, value: string, on: boolean, label: string) =>
    `<label><input type="checkbox" name="${name}" value="${value}"${on ? " checked" : ""}> ${e(label)}</label>`;
  const body = `${v.notice ? `<div class="ok" role="status">${e(v.notice)}</div>` : ""}${v.error ? `<div class="error" role="alert">${e(v.error)}</div>` : ""}
<form method="post" action="/admin/policy">
<label for="mode">${e(c.mode)}</label><select id="mode" name="mode">${opt("off", c.modeOff)}${opt("optional", c.modeOptional)}${opt("required", c.modeRequired)}</select>
<label for="grace_days">${e(c.grace)}</label><input type="text" inputmode="numeric" id="grace_days" name="grace_days" value="${v.grace_days}" pattern="[0-9]{1,3}" required>
<fieldset><legend>${e(c.methods)}</legend>${check("methods", "totp", v.methods.includes("totp"), c.withTotp)}${check("methods", "webauthn", v.methods.includes("webauthn"), c.withPasskeys)}</fieldset>
${check("phishing_resistant", "true", v.phishing_resistant, c.phishing)}
<button type="submit">${e(c.save)}</button></form>`;
  return consolePage(lang, c.policyTitle, body, "/admin/policy");
}

export function auditPage(
  lang: Lang,
  v: {
    entries: Array<{
      seq: number;
      at: string;
      action: string;
      outcome: string;
      actor_type: string;
      actor_id: string | null;
      member_id: string | null;
      reason: string | null;
      ip: string | null;
      details: Record<string, unknown>;
    }>;
    verify: { ok: boolean; entries: number; first_bad?: { seq: number; problem: string } };
    filters: Partial<
      Record<
        "member_id" | "actor_id" | "action" | "request_id" | "ip" | "since" | "until",
        string | undefined
      >
    >;
    olderHref: string | null;
    /** The filter was not valid: nothing is listed (an unfiltered list would pass for filtered). */
    invalidFilter?: boolean;
  },
): string {
  const c = C[lang];
  const f = v.filters;
  const chain = v.verify.ok
    ? `<div class="ok" role="status">${e(c.chainOk(v.verify.entries))}</div>`
    : `<div class="error" role="alert">${e(c.chainBad(v.verify.first_bad?.seq ?? 0, v.verify.first_bad?.problem ?? ""))}</div>`;
  const body = `${chain}${v.invalidFilter ? `<div class="error" role="alert">${e(c.invalid)}</div>` : ""}
<form method="get" action="/admin/audit" class="filters">${(
    [
      ["member_id", c.memberId],
      ["actor_id", c.actorId],
      ["action", c.action],
      ["request_id", c.requestId],
      ["ip", c.ipAddress],
      ["since", c.since],
      ["until", c.until],
    ] as const
  )
    .map(
      ([name, label]) =>
        `<div><label for="${name}">${e(label)}</label><input type="text" id="${name}" name="${name}" value="${e(f[name] ?? "")}"></div>`,
    )
    .join("")}<button type="submit" class="secondary">${e(c.filter)}</button></form>
<table><tr><th>#</th><th>${e(c.when)} <span class="muted">${e(zoneName(lang))}</span></th><th>${e(c.action)}</th><th>${e(c.result)}</th><th>${e(c.who)}</th><th>${e(c.memberId)}</th><th>${e(c.details)}</th></tr>${v.entries
    .map(
      (x) =>
        `<tr><td>${x.seq}</td><td class="nowrap">${e(localTime(lang, x.at, { seconds: true, zone: false }))}</td><td class="action">${e(named(ACTION_LABEL, lang, x.action))}<br><code class="small muted">${e(x.action)}</code></td><td class="nowrap">${e(named(OUTCOME_LABEL, lang, x.outcome))}</td><td>${e(x.actor_type)} ${x.actor_id ? shortId(x.actor_id) : ""}<br><span class="muted">${e(x.ip ?? "")}</span></td><td>${x.member_id ? `<a href="/admin/members/${e(x.member_id)}">${shortId(x.member_id)}</a>` : ""}</td><td>${x.reason ? `<strong>${e(x.reason)}</strong> ` : ""}<code class="small">${e(JSON.stringify(x.details))}</code></td></tr>`,
    )
    .join("")}</table>
${v.olderHref ? `<p><a href="${e(v.olderHref)}">${e(c.older)} →</a></p>` : ""}`;
  return consolePage(lang, c.audit, body, "/admin/audit");
}

export function alertsPage(lang: Lang, alerts: AlertView[]): string {
  const c = C[lang];
  return consolePage(lang, c.alerts, alertsTable(lang, alerts), "/admin/alerts");
}
