// Sekisho hosted pages: set up the ALTCHA widget (proof-of-work when the sign-in throttle asks
// for one). Served as a file (CSP script-src 'self'); the SHA-256 solver runs in a same-origin
// worker file, not a blob: URL, so the strict CSP holds.
/* global $altcha */
(() => {
  const alt = globalThis.$altcha;
  if (!alt) return;
  alt.algorithms.set("SHA-256", () => new Worker("/assets/altcha-sha-worker.js"));
  alt.i18n.set("ja", {
    ariaLinkLabel: "ALTCHA（公式サイト）",
    cancel: "キャンセル",
    enterCode: "コードを入力",
    enterCodeAria: "聞こえたコードを入力してください。スペースキーで音声を再生します。",
    enterCodeFromImage: "続けるには、下の画像のコードを入力してください。",
    error: "確認に失敗しました。しばらくしてから再度お試しください。",
    expired: "確認の有効期限が切れました。もう一度お試しください。",
    footer: "ALTCHA による確認",
    getAudioChallenge: "音声で確認する",
    label: "自動確認（ロボットではありません）",
    loading: "読み込み中…",
    reload: "再読み込み",
    verify: "確認",
    verificationRequired: "確認が必要です",
    verified: "確認しました",
    verifying: "確認中…",
    waitAlert: "確認中です。しばらくお待ちください。",
  });
  // Start solving now that the solver is registered (the widget has no auto="onload": it would
  // start before this file runs).
  for (const widget of document.querySelectorAll("altcha-widget")) widget.verify?.();
})();
