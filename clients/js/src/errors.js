// Errors: the one error class the client throws or reports, and how an HTTP
// error response becomes one.

/** An error from the server (`code` as in docs/API.md) or from the client itself. */
export class HeraldError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.name = 'HeraldError';
    this.code = code;
    this.status = status;
  }
}

/** A HeraldError from a non-2xx response: the server's JSON error body, else
 * the status. */
export async function errorFromResponse(res) {
  let code = 'http_' + res.status;
  let message = res.statusText || code;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not our JSON error body (a proxy's page, say): keep the status.
  }
  return new HeraldError(code, message, res.status);
}
