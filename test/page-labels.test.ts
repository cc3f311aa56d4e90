import { describe, expect, it } from "vitest";
import { accountPage, totpEnrolPage } from "../src/http/account-pages.js";
import { auditPage, memberPage } from "../src/http/admin-pages.js";
import { deviceLabel } from "../src/sessions/user-agent.js";

const UA = {
  chromeLinux:
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  safariIphone:
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  edgeWindows:
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
  chromeAndroid:
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
  safariMac:
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
};

describe("device names from User-Agent headers", () => {
  it("names the browser and system a member would recognise", () => {
    expect(deviceLabel(UA.chromeLinux)).toBe("Chrome 131 / Linux");
    expect(deviceLabel(UA.safariIphone)).toBe("Safari 17 / iOS 17 (iPhone)");
    expect(deviceLabel(UA.edgeWindows)).toBe("Microsoft Edge 120 / Windows");
    expect(deviceLabel(UA.chromeAndroid)).toBe("Chrome 124 / Android 14");
  });

  it("does not guess desktop system versions from headers that froze them", () => {
    // Every Mac says 10.15.7 and Windows 11 says NT 10.0: "Catalina" or "Windows 10" would mislead.
    expect(deviceLabel(UA.safariMac)).toBe("Safari 17 / macOS");
    expect(deviceLabel(UA.edgeWindows)).not.toContain("10");
  });

  it("gives nothing for a missing, unrecognised, huge or hostile header", () => {
    for (const ua of [
      null,
      undefined,
      "",
      "   ",
      "curl/8.5.0",
      "<script>alert(1)</script>",
      "(".repeat(100_000),
    ])
      expect(deviceLabel(ua)).toBe("");
  });

  it("the account page shows the name, keeps the raw header to the tooltip, and escapes it", () => {
    const hostile = `${UA.chromeLinux} "><img src=x onerror=alert(1)>`;
    const html = accountPage("ja", {
      loginId: "taro.device",
      email: null,
      emailVerified: false,
      passwordMinLength: 12,
      acr: "urn:sekisho:acr:password",
      totp: false,
      passkeys: [],
      recoveryCodes: 0,
      sessions: [
        {
          id: "s1",
          current: true,
          lastSeenAt: "2026-12-05T00:00:00Z",
          userAgent: hostile,
          ip: "203.0.113.9",
        },
        { id: "s2", current: false, lastSeenAt: "2026-12-05T00:00:00Z", userAgent: null, ip: null },
      ],
      devices: [{ id: "d1", current: false, lastSeenAt: "2026-12-05T00:00:00Z", userAgent: UA.safariIphone }],
      events: [],
    });
    expect(html).toContain(">Chrome 131 / Linux</span>");
    expect(html).toContain(">Safari 17 / iOS 17 (iPhone)</span>");
    expect(html).toContain(">不明な端末</span>");
    expect(html).not.toContain("<img src=x");
    expect(html).toContain("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;");
    // The buttons that end a session or forget a device say which one, by name.
    expect(html).toContain('aria-label="終了: 不明な端末 · ');
    expect(html).toContain('aria-label="削除: Safari 17 / iOS 17 (iPhone) · ');
  });
});

describe("the admin console's member page speaks the admin's language", () => {
  const member = {
    member_id: "m1",
    login_id: "taro.console",
    role: "member",
    status: "active",
    created_at: "2026-12-05T00:00:00Z",
    email_verified: true,
    mfa: { totp: true, passkeys: 0, recovery_codes: 10 },
  };
  const profile = { name: "山田 太郎", postal_code: "100-0001", gender: "male" };

  it("labels profile fields, states, roles and values in Japanese, keeping the field code beside each", () => {
    const html = memberPage("ja", { member, profile });
    expect(html).toContain("有効 / 会員");
    expect(html).toContain('郵便番号 <code class="small muted">postal_code</code>');
    expect(html).toContain("<td>男性</td>");
    expect(html).not.toContain("<td>male</td>");
    expect(html).toContain('<td>認証アプリ <span class="muted">(リカバリーコード: 10)</span></td>');
    const bare = memberPage("ja", {
      member: { ...member, mfa: { totp: false, passkeys: 0, recovery_codes: 0 } },
      profile: null,
    });
    expect(bare).toContain("<td>未設定 <span");
  });

  it("and in English", () => {
    const html = memberPage("en", { member: { ...member, role: "admin", status: "disabled" }, profile });
    expect(html).toContain("Disabled / Administrator");
    expect(html).toContain('Postal code <code class="small muted">postal_code</code>');
    expect(html).toContain("<td>Male</td>");
  });
});

describe("the console's audit page reads as events, not codes", () => {
  it("names each action and outcome in the admin's language, keeps the code beside it, and shortens ids", () => {
    const memberId = "m_KtILihDieBUT3lgWWmpGTQ";
    const html = auditPage("ja", {
      entries: [
        {
          seq: 7,
          at: "2026-12-05T00:00:00Z",
          action: "admin.member_viewed",
          outcome: "success",
          actor_type: "admin",
          actor_id: "m_adminAdminAdminAdmin01",
          member_id: memberId,
          reason: "問い合わせ #4711",
          ip: "127.0.0.1",
          details: {},
        },
        {
          seq: 6,
          at: "2026-12-05T00:00:00Z",
          action: "some.future_action",
          outcome: "failure",
          actor_type: "system",
          actor_id: null,
          member_id: null,
          reason: null,
          ip: null,
          details: {},
        },
      ],
      verify: { ok: true, entries: 7 },
      filters: {},
      olderHref: null,
    });
    expect(html).toContain('会員の個人情報を表示<br><code class="small muted">admin.member_viewed</code>');
    expect(html).toContain(`<td class="nowrap">成功</td>`);
    expect(html).toContain(`<td class="nowrap">失敗</td>`);
    // An action without a name yet still shows, as its code.
    expect(html).toContain(`<td class="action">some.future_action<br>`);
    expect(html).toContain(
      `<a href="/admin/members/${memberId}"><code class="small id" title="${memberId}">m_KtILih…</code></a>`,
    );
  });
});

describe("the authenticator-app set-up page", () => {
  it("offers a way back to the account page without setting it up", () => {
    const html = totpEnrolPage("ja", { qrSvg: "<svg></svg>", secret: "ABCDEFGHIJKLMNOP" });
    expect(html).toContain('<a href="/account?lang=ja">設定せずに戻る</a>');
    expect(html).toContain("ABCD EFGH IJKL MNOP");
  });
});
