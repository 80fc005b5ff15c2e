// The dashboard's link to the API: GraphQL over HTTP (queries, mutations) and over
// WebSocket (subscriptions, through graphql-ws), with the session's tokens.
//
// Tokens live in sessionStorage only (gone with the tab; never localStorage), and nothing
// else is stored. The access token is refreshed shortly before it expires and once more
// when the API says UNAUTHENTICATED. Refresh tokens rotate and a reused one revokes its
// whole family, so one refresh at a time may be in flight: callers share its promise.

import { createClient } from "./graphql-ws.js";

const KEY = "crewgraph.dashboard.tokens";
const EARLY_MS = 60_000; // refresh this long before the access token expires

export class ApiError extends Error {
  constructor(message, code, details) {
    super(message);
    this.code = code || "ERROR";
    this.details = details || null;
  }
}

function load() {
  try {
    const raw = sessionStorage.getItem(KEY);
    const parsed = raw ? JSON.parse(raw) : null;
    return parsed && parsed.accessToken && parsed.refreshToken ? parsed : null;
  } catch {
    return null;
  }
}

function save(tokens) {
  if (tokens) sessionStorage.setItem(KEY, JSON.stringify(tokens));
  else sessionStorage.removeItem(KEY);
}

function fromPayload(p) {
  return {
    accessToken: p.accessToken,
    refreshToken: p.refreshToken,
    expiresAt: Date.now() + p.expiresIn * 1000,
  };
}

function firstError(body) {
  const e = body.errors[0];
  const ext = e.extensions || {};
  return new ApiError(e.message, ext.code, ext);
}

const AUTH_FIELDS = "accessToken refreshToken expiresIn";

export class Api {
  constructor({ onSignedOut } = {}) {
    this.tokens = load();
    this.refreshing = null;
    this.ws = null;
    this.onSignedOut = onSignedOut || (() => {});
  }

  get signedIn() {
    return this.tokens !== null;
  }

  // One GraphQL request over HTTP; resolves to `data` or throws an ApiError.
  async request(query, variables = {}, { auth = true, retried = false } = {}) {
    const headers = { "content-type": "application/json", accept: "application/json" };
    if (auth) headers.authorization = `Bearer ${await this.accessToken()}`;
    let resp;
    try {
      resp = await fetch("/graphql", {
        method: "POST",
        headers,
        body: JSON.stringify({ query, variables }),
        credentials: "same-origin",
      });
    } catch {
      throw new ApiError("The server cannot be reached.", "NETWORK");
    }
    let body;
    try {
      body = await resp.json();
    } catch {
      throw new ApiError(`The server answered ${resp.status}.`, "BAD_RESPONSE");
    }
    if (body.errors && body.errors.length) {
      const err = firstError(body);
      if (auth && !retried && err.code === "UNAUTHENTICATED" && this.tokens) {
        await this.refresh(true);
        return this.request(query, variables, { auth, retried: true });
      }
      throw err;
    }
    return body.data;
  }

  async login(email, password, tenantSlug) {
    const input = { email, password };
    if (tenantSlug) input.tenantSlug = tenantSlug;
    const data = await this.request(
      `mutation DashboardLogin($input: LoginInput!) { login(input: $input) { ${AUTH_FIELDS} } }`,
      { input },
      { auth: false },
    );
    this.tokens = fromPayload(data.login);
    save(this.tokens);
  }

  async logout() {
    const tokens = this.tokens;
    this.forget();
    if (!tokens) return;
    try {
      await this.request(
        "mutation DashboardLogout($t: String!) { logout(refreshToken: $t) }",
        { t: tokens.refreshToken },
        { auth: false },
      );
    } catch {
      // Signed out locally either way; the refresh token expires on its own.
    }
  }

  forget() {
    this.tokens = null;
    save(null);
    if (this.ws) {
      this.ws.dispose();
      this.ws = null;
    }
  }

  async accessToken() {
    if (!this.tokens) throw new ApiError("Signed out.", "UNAUTHENTICATED");
    if (Date.now() > this.tokens.expiresAt - EARLY_MS) await this.refresh(false);
    return this.tokens.accessToken;
  }

  refresh(force) {
    if (!this.refreshing) {
      this.refreshing = this.doRefresh(force).finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async doRefresh(force) {
    // Another tab of the same session may have refreshed meanwhile.
    const stored = load();
    if (stored && stored.refreshToken !== this.tokens?.refreshToken) {
      this.tokens = stored;
      if (!force && Date.now() < stored.expiresAt - EARLY_MS) return;
    }
    if (!this.tokens) throw new ApiError("Signed out.", "UNAUTHENTICATED");
    try {
      const data = await this.request(
        `mutation DashboardRefresh($t: String!) { refreshToken(refreshToken: $t) { ${AUTH_FIELDS} } }`,
        { t: this.tokens.refreshToken },
        { auth: false },
      );
      this.tokens = fromPayload(data.refreshToken);
      save(this.tokens);
    } catch (err) {
      if (err.code === "NETWORK") throw err;
      this.forget();
      this.onSignedOut("Your session ended; sign in again.");
      throw err;
    }
  }

  // The shared WebSocket; connects on the first subscription, reconnects with a fresh token.
  socket() {
    if (this.ws) return this.ws;
    let rejected = false;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.ws = createClient({
      url: `${scheme}//${location.host}/graphql`,
      lazy: true,
      retryAttempts: 20,
      connectionParams: async () => {
        if (rejected) {
          rejected = false;
          await this.refresh(true);
        }
        return { authorization: `Bearer ${await this.accessToken()}` };
      },
      on: {
        closed: (event) => {
          // 4403: the server refused or revoked this token; the retry presents a new one.
          if (event && event.code === 4403) rejected = true;
        },
      },
    });
    return this.ws;
  }

  // Calls `onData(payload.data)` per event; returns a function that unsubscribes.
  subscribe(query, variables, { onData, onError, onComplete }) {
    const dispose = this.socket().subscribe(
      { query, variables },
      {
        next: (payload) => {
          if (payload.errors && payload.errors.length) onError?.(firstError(payload));
          else onData(payload.data);
        },
        error: (err) => {
          const e = Array.isArray(err)
            ? new ApiError(err[0].message, err[0].extensions?.code)
            : new ApiError("The live connection was lost.", "NETWORK");
          onError?.(e);
        },
        complete: () => onComplete?.(),
      },
    );
    return dispose;
  }
}
