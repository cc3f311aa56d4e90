// Sekisho hosted pages: passkey ceremonies. Served as a file (CSP `script-src 'self'`, no inline
// script). Talks only to Sekisho's own JSON API; what to do is read from data-* attributes:
//   [data-passkey-login]     passwordless sign-in button (and browser autofill on the page's
//                            `autocomplete="username webauthn"` input); data-next: where to go after
//   [data-passkey-mfa]       passkey as the second step; data-mfa-token (absent: step-up by cookie)
//   [data-passkey-register]  add a passkey from the account page; the name from #passkey_name
//   [data-passkey-reset]     passkey as the second step of a password reset; data-reset-token
//   [data-passkey-only]      anything else that makes sense only with the passkey script (the
//                            "or" above the passkey button, the passkey name field): shown here
// Every one of them comes `hidden` (without JavaScript it could do nothing) and is shown here
// when the browser can use passkeys.
// Messages come from data-msg-* attributes of the element marked [data-passkey-messages].
/* global SimpleWebAuthnBrowser */
(() => {
  const { startAuthentication, startRegistration, browserSupportsWebAuthn, browserSupportsWebAuthnAutofill } =
    window.SimpleWebAuthnBrowser;
  const messages = document.querySelector("[data-passkey-messages]");
  const errorBox = document.querySelector("[data-passkey-error]");

  function say(kind) {
    if (!errorBox) return;
    errorBox.textContent = messages?.getAttribute(`data-msg-${kind}`) || kind;
    errorBox.hidden = false;
  }

  async function api(path, body) {
    const res = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    return { ok: res.ok, status: res.status, data };
  }

  function failed(err) {
    // The member closing the dialog is not an error worth shouting about.
    if (err && (err.name === "NotAllowedError" || err.name === "AbortError")) return say("cancelled");
    say("failed");
  }

  async function signIn(token, next, autofill, passwordless) {
    // On a login page (no token) ask for a passwordless ceremony explicitly: the member may be
    // switching accounts in a browser that still has a session. The second-step and step-up
    // buttons carry a token or rely on the session cookie.
    const body = token ? { mfa_token: token } : passwordless ? { passwordless: true } : {};
    const opts = await api("/api/v1/login/webauthn/options", body);
    if (!opts.ok) return say("failed");
    const response = await startAuthentication({ optionsJSON: opts.data, useBrowserAutofill: autofill });
    const done = await api("/api/v1/login/webauthn", token ? { mfa_token: token, response } : { response });
    if (!done.ok) return say(done.status === 429 ? "throttled" : "failed");
    window.location.assign(next || "/account");
  }

  // The passkey buttons come hidden (without JavaScript they could do nothing): shown here when
  // the browser can use them.
  for (const button of document.querySelectorAll("[data-passkey-login], [data-passkey-mfa]")) {
    if (!browserSupportsWebAuthn()) continue;
    button.hidden = false;
    button.addEventListener("click", () => {
      const token = button.getAttribute("data-mfa-token");
      const passwordless = button.hasAttribute("data-passkey-login");
      signIn(token, button.getAttribute("data-next"), false, passwordless).catch(failed);
    });
  }

  if (browserSupportsWebAuthn()) {
    for (const el of document.querySelectorAll("[data-passkey-only]")) el.hidden = false;
  }

  for (const button of document.querySelectorAll("[data-passkey-reset]")) {
    if (!browserSupportsWebAuthn()) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        const token = button.getAttribute("data-reset-token");
        const opts = await api("/api/v1/recovery/password/webauthn/options", { token });
        if (!opts.ok) return say("failed");
        const response = await startAuthentication({ optionsJSON: opts.data });
        const done = await api("/api/v1/recovery/password/webauthn", { token, response });
        if (!done.ok) return say(done.status === 429 ? "throttled" : "failed");
        // The proof goes on by form post (never in a URL) to the new-password page.
        const next = document.querySelector("[data-reset-continue]");
        next.querySelector('input[name="reset_proof"]').value = done.data.reset_proof;
        next.submit();
      } catch (err) {
        failed(err);
      }
    });
  }

  const loginButton = document.querySelector("[data-passkey-login]");
  if (loginButton && document.querySelector('input[autocomplete~="webauthn"]')) {
    browserSupportsWebAuthnAutofill().then((supported) => {
      if (!supported) return;
      // Conditional UI: passkeys offered in the login ID field's autofill; quietly ignored if unused.
      signIn(null, loginButton.getAttribute("data-next"), true, true).catch((err) => {
        if (err && err.name !== "AbortError" && err.name !== "NotAllowedError") failed(err);
      });
    });
  }

  const register = document.querySelector("[data-passkey-register]");
  if (register) {
    register.hidden = !browserSupportsWebAuthn();
    register.addEventListener("click", async () => {
      try {
        const opts = await api("/api/v1/me/passkeys/options");
        if (opts.status === 401) {
          // Adding a factor wants a recent sign-in: to the sign-in page, as the account page's
          // own forms do, rather than a message with no way forward; back to the passkeys after.
          window.location.assign(
            `/account/login?reauth=1&lang=${document.documentElement.lang || "ja"}&then=passkeys`,
          );
          return;
        }
        if (!opts.ok) return say("failed");
        const response = await startRegistration({ optionsJSON: opts.data });
        const nameInput = document.getElementById("passkey_name");
        const name = nameInput?.value.trim() || undefined;
        const done = await api("/api/v1/me/passkeys", name ? { response, name } : { response });
        if (!done.ok) return say(done.status === 409 ? "exists" : "failed");
        const codes = done.data?.recovery_codes;
        const box = document.querySelector("[data-recovery-codes]");
        if (Array.isArray(codes) && box) {
          // First factor: its recovery codes, shown once, before anything else happens.
          const list = box.querySelector("ol");
          for (const code of codes) {
            const li = document.createElement("li");
            const c = document.createElement("code");
            c.textContent = code;
            li.appendChild(c);
            list.appendChild(li);
          }
          box.hidden = false;
          register.hidden = true;
          box.scrollIntoView();
          return;
        }
        window.location.assign("/account?notice=passkey");
      } catch (err) {
        failed(err);
      }
    });
  }
})();
