/**
 * The API error model. `code` is a stable snake_case value from the contract, `status` the HTTP
 * status, `description` the text sent to the client, `detail` an internal note that is logged and
 * never sent. Anything that is not an ApiError becomes `500 server_error`.
 */
export class ApiError extends Error {
  readonly code: string;
  readonly status: number;
  readonly description: string;
  readonly detail: string | undefined;
  readonly extra: Record<string, unknown> | undefined;
  readonly headers: Record<string, string> | undefined;

  constructor(
    status: number,
    code: string,
    description: string,
    opts: {
      detail?: string;
      extra?: Record<string, unknown>;
      headers?: Record<string, string>;
      cause?: unknown;
    } = {},
  ) {
    // A 4xx is an expected answer, not a fault: no stack trace (capturing one through express's
    // stack was a measurable share of answering a flood of refused sign-ins). 5xx keep theirs.
    const limit = Error.stackTraceLimit;
    if (status < 500) Error.stackTraceLimit = 0;
    try {
      super(`${code}: ${description}`, { cause: opts.cause });
    } finally {
      Error.stackTraceLimit = limit;
    }
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.description = description;
    this.detail = opts.detail;
    this.extra = opts.extra;
    this.headers = opts.headers;
  }

  toJSON(): Record<string, unknown> {
    return { error: this.code, error_description: this.description, ...this.extra };
  }
}

export const invalidRequest = (description: string, extra?: Record<string, unknown>) =>
  new ApiError(400, "invalid_request", description, extra ? { extra } : {});

/** Thrown when the vault cannot decrypt a value: a bug or tampering, never an empty value. */
export class DecryptionError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = "DecryptionError";
  }
}

/** Bad input to a command (the CLI prints the message alone, without a stack, and exits 1). */
export class InputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InputError";
  }
}

/** Thrown at boot when configuration or keys are unusable; main prints it and exits 1. */
export class StartupError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = "StartupError";
  }
}
