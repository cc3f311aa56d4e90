import client from "prom-client";
import type { AuditInput } from "../audit/log.js";
import type { HashQueue } from "../passwords/queue.js";
import type { Decision } from "../throttle/engine.js";

/**
 * Prometheus metrics (prom-client), one registry per service instance.
 *
 * Every label has a bounded set of values — methods, outcomes, decisions, reasons, grant types,
 * principal kinds, alert kinds, route patterns — and never a login ID, an IP address, a member
 * id or a client id: a label value outside its known set becomes `other`. The counts come from
 * where the events already are: the audit log (sign-ins, PII reads, alerts), the login-anomaly
 * engine (every decision), the hashing queue, the OIDC provider's events and the HTTP layer.
 */
const SIGN_IN_METHODS = new Set(["password", "totp", "webauthn", "recovery_code", "passkey"]);
const GRANT_TYPES = new Set(["authorization_code", "refresh_token", "client_credentials"]);
const PRINCIPALS = new Set(["admin", "client", "member", "system", "operator", "anonymous"]);
const WORD = /^[a-z][a-z0-9_]{0,47}$/;
const HTTP_METHODS = new Set(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]);

const bounded = (value: unknown, known: Set<string> | RegExp): string => {
  if (typeof value !== "string") return "other";
  return (known instanceof Set ? known.has(value) : known.test(value)) ? value : "other";
};

export class Metrics {
  readonly registry = new client.Registry();
  readonly #signIns: client.Counter<"method" | "outcome">;
  readonly #throttle: client.Counter<"kind" | "decision" | "reason">;
  readonly #hashWait: client.Histogram;
  readonly #hashRefused: client.Counter;
  readonly #grants: client.Counter<"grant_type" | "result">;
  readonly #pii: client.Counter<"principal">;
  readonly #alerts: client.Counter<"kind">;
  readonly #http: client.Histogram<"method" | "route" | "status">;

  constructor(opts: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (opts.processMetrics !== false) client.collectDefaultMetrics({ register: this.registry });
    this.#signIns = new client.Counter({
      name: "sekisho_sign_in_attempts_total",
      help: "Credential checks that reached verification, by method and outcome",
      labelNames: ["method", "outcome"],
      registers,
    });
    this.#throttle = new client.Counter({
      name: "sekisho_throttle_decisions_total",
      help: "Login-anomaly engine decisions, by kind of attempt, decision and reason (allow: reason none)",
      labelNames: ["kind", "decision", "reason"],
      registers,
    });
    this.#hashWait = new client.Histogram({
      name: "sekisho_hash_queue_wait_seconds",
      help: "Time an argon2 job waited for a hashing slot",
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.#hashRefused = new client.Counter({
      name: "sekisho_hash_queue_refused_total",
      help: "Argon2 jobs refused because the queue was full (answered 503 server_busy)",
      registers,
    });
    this.#grants = new client.Counter({
      name: "sekisho_oidc_grants_total",
      help: "OIDC token endpoint grants, by grant type and result (issued or refused)",
      labelNames: ["grant_type", "result"],
      registers,
    });
    this.#pii = new client.Counter({
      name: "sekisho_pii_decryptions_total",
      help: "Profile fields decrypted, by the kind of principal that read them",
      labelNames: ["principal"],
      registers,
    });
    this.#alerts = new client.Counter({
      name: "sekisho_alerts_raised_total",
      help: "Security alerts raised, by kind",
      labelNames: ["kind"],
      registers,
    });
    this.#http = new client.Histogram({
      name: "sekisho_http_request_duration_seconds",
      help: "HTTP request latency, by method, route pattern and status class",
      labelNames: ["method", "route", "status"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
  }

  /** Count from the audit log, the throttle and the hashing queue. */
  attach(deps: {
    audit: { observer: ((entry: AuditInput) => void) | null };
    guard: { observer: ((kind: string, decision: Decision) => void) | null };
    queue: HashQueue;
  }): void {
    deps.audit.observer = (e) => this.#fromAudit(e);
    // One labelled child per (kind, decision, reason), made once: every attempt passes here.
    const children = new Map<string, client.Counter.Internal>();
    const count = (kind: string, decision: string, reason: string) => {
      const labels = {
        kind: bounded(kind, WORD),
        decision: bounded(decision, WORD),
        reason: bounded(reason, WORD),
      };
      const key = `${labels.kind} ${labels.decision} ${labels.reason}`;
      let child = children.get(key);
      if (!child) {
        child = this.#throttle.labels(labels);
        children.set(key, child);
      }
      child.inc();
    };
    deps.guard.observer = (kind, d) => {
      if (d.reasons.length === 0) return count(kind, d.action, "none");
      for (const reason of new Set(d.reasons)) count(kind, d.action, reason);
    };
    deps.queue.observer = {
      waited: (seconds) => this.#hashWait.observe(seconds),
      refused: () => this.#hashRefused.inc(),
    };
    const queue = deps.queue;
    new client.Gauge({
      name: "sekisho_hash_queue_depth",
      help: "Argon2 jobs waiting for a hashing slot",
      registers: [this.registry],
      collect() {
        this.set(queue.depth);
      },
    });
    new client.Gauge({
      name: "sekisho_hash_queue_in_flight",
      help: "Argon2 jobs running",
      registers: [this.registry],
      collect() {
        this.set(queue.inFlight);
      },
    });
  }

  #fromAudit(e: AuditInput): void {
    const outcome = e.outcome === "success" ? "success" : e.outcome === "failure" ? "failure" : null;
    switch (e.action) {
      case "login.password":
        if (outcome) this.#signIns.inc({ method: "password", outcome });
        break;
      case "login.second_factor":
        if (outcome) this.#signIns.inc({ method: bounded(e.details?.method, SIGN_IN_METHODS), outcome });
        break;
      case "login.passkey":
        if (outcome) this.#signIns.inc({ method: "passkey", outcome });
        break;
      case "pii.read": {
        const fields = e.details?.fields;
        const n = Array.isArray(fields) ? fields.length : 0;
        if (n > 0) this.#pii.inc({ principal: bounded(e.actorType, PRINCIPALS) }, n);
        break;
      }
      case "alert.raised":
        this.#alerts.inc({ kind: bounded(e.reason, WORD) });
        break;
    }
  }

  grant(grantType: unknown, result: "issued" | "refused"): void {
    this.#grants.inc({ grant_type: bounded(grantType, GRANT_TYPES), result });
  }

  // One labelled child per (method, route, status class), made once: observing then skips
  // prom-client's label validation and hashing, on every request's path.
  readonly #httpChildren = new Map<string, client.Histogram.Internal<"method" | "route" | "status">>();

  http(method: string, route: string, status: number, seconds: number): void {
    const m = bounded(method, HTTP_METHODS);
    const cls = `${Math.floor(status / 100)}xx`;
    const key = `${m} ${cls} ${route}`;
    let child = this.#httpChildren.get(key);
    if (!child) {
      child = this.#http.labels({ method: m, route, status: cls });
      this.#httpChildren.set(key, child);
    }
    child.observe(seconds);
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
