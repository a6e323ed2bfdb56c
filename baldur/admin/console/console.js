// Baldur's Web Console: one static module, no build step, no third-party code.
// Every value from the server reaches the page through textContent or a DOM property, never as markup:
// breaker and limit names are chosen by the application, audit reasons by whoever wrote them.

const KEY_STORAGE = "baldur.admin.key";
const POLL_MS = 1500;
const RETRY_UNREACHABLE_MS = 3000;
const ROLE_RANK = { viewer: 1, operator: 2, admin: 3 };
const STATE_LABEL = { closed: "closed", half_open: "half-open", open: "open" };
const STATE_SYMBOL = { closed: "\u25CF", half_open: "\u25D0", open: "\u25B2" };
const ACTIONS = {
  open: { title: "Force open", verb: "forced open", expiry: true,
    explain: "Every call is refused at once until the force is lifted or expires." },
  close: { title: "Force closed", verb: "forced closed", expiry: true,
    explain: "Every call goes through, whatever its failures, until the force is lifted or expires." },
  reset: { title: "Reset", verb: "reset", expiry: false,
    explain: "Lifts any forced state, clears the counts and closes the breaker: it follows its own rule again." },
  client: { title: "Reset a client", verb: "reset for the client", expiry: false,
    explain: "Gives one client its full quota back under this limit." },
};

// The script lives at <root>/console/console.js, so the API's root is one level up: this holds when the
// admin is mounted under a prefix (/_baldur/) as well as at the root of the standalone server.
const ROOT = new URL("../", import.meta.url);

const $ = (id) => document.getElementById(id);

// "key": log in with an admin key (baldur admin, a Flask mount). "session": the site that serves the page
// authenticates (a Django mount: the user's session and groups), and a change carries its CSRF token.
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
const SESSION_AUTH = meta("baldur-auth") === "session";
const CSRF_TOKEN = meta("baldur-csrf");

const state = {
  key: null,
  role: null,
  keyId: null,
  pollTimer: null,
  generation: 0, // bumped at log in and log out: answers to an older session's requests are dropped
  clockSkewMs: 0, // server clock minus ours, from the Date header (whole seconds)
  loginBlockedUntil: 0,
  dialog: null,
};

class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status; // 0: the server could not be reached
    this.retryAfter = retryAfter;
  }
}

// ---- talking to the API ------------------------------------------------------------------------

async function api(path, { method = "GET", body, key = state.key } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: SESSION_AUTH ? "same-origin" : "omit",
    redirect: "error" };
  if (!SESSION_AUTH) {
    headers.Authorization = `Bearer ${key}`;
  } else if (method !== "GET" && CSRF_TOKEN) {
    headers["X-CSRFToken"] = CSRF_TOKEN;
  }
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, ROOT), init);
  } catch {
    throw new ApiError(0, `The admin server at ${ROOT.host} cannot be reached. Is it running? Retrying\u2026`);
  }
  noteServerClock(response);
  if (!response.ok) {
    throw await problemError(response);
  }
  try {
    return await response.json();
  } catch {
    throw new ApiError(response.status, `The server answered ${path} with something that is not JSON.`);
  }
}

async function problemError(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not JSON (a proxy's error page, say): the status line alone speaks
  }
  const detail = typeof problem.detail === "string" ? problem.detail : "";
  const status = response.status;
  if (status === 401) {
    return new ApiError(401, "The key was not accepted (401 Unauthorized). Check it and log in again.");
  }
  if (status === 403) {
    return new ApiError(403, `Not allowed (403 Forbidden)${state.role ? ` for the ${state.role} role` : ""}.`
      + (detail ? ` ${detail}` : ""));
  }
  if (status === 429) {
    const seconds = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    const retryAfter = Number.isFinite(seconds) && seconds >= 0 ? seconds : 60;
    return new ApiError(429, `Too many failed attempts from this address (429): try again in ${retryAfter} s.`,
      retryAfter);
  }
  const title = typeof problem.title === "string" ? problem.title : response.statusText || "Error";
  const field = typeof problem.field === "string" ? ` (field: ${problem.field})` : "";
  return new ApiError(status, `${title} (${status})${detail ? `: ${detail}` : ""}${field}`);
}

function noteServerClock(response) {
  const date = Date.parse(response.headers.get("Date") ?? "");
  if (Number.isFinite(date)) {
    // The header is truncated to the second: half a second is the better guess of the server's time.
    state.clockSkewMs = date + 500 - Date.now();
  }
}

const serverNow = () => (Date.now() + state.clockSkewMs) / 1000;
const pathPart = (name) => encodeURIComponent(name);

// ---- small DOM helpers ---------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Keeps one child per key, updating in place, so a list refreshed every second and a half keeps
// focus, scroll position and a button being pressed.
function syncKeyed(container, items, keyOf, create, update) {
  const existing = new Map();
  for (const node of container.children) existing.set(node.dataset.key, node);
  let previous = null;
  for (const item of items) {
    const key = keyOf(item);
    let node = existing.get(key);
    if (node) {
      existing.delete(key);
    } else {
      node = create(item);
      node.dataset.key = key;
    }
    update(node, item);
    const expected = previous ? previous.nextElementSibling : container.firstElementChild;
    if (expected !== node) container.insertBefore(node, expected);
    previous = node;
  }
  for (const node of existing.values()) node.remove();
}

function showBanner(id, message) {
  const banner = $(id);
  banner.textContent = message ?? "";
  banner.hidden = !message;
}

const showError = (message) => showBanner("error", message);
const showNotice = (message) => showBanner("notice", message);

// ---- formatting ----------------------------------------------------------------------------------

function formatDuration(totalSeconds) {
  const s = Math.max(0, Math.ceil(totalSeconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const formatTime = (epoch) => new Date(epoch * 1000).toLocaleTimeString();
const formatDateTime = (epoch) => new Date(epoch * 1000).toLocaleString();

function formatRate(rate) {
  return typeof rate === "number" ? `${(rate * 100).toFixed(rate > 0 && rate < 0.1 ? 1 : 0)} %` : "\u2014";
}

// ---- breakers ------------------------------------------------------------------------------------

function createBreakerCard(breaker) {
  const card = el("li", "breaker");
  const head = el("div", "breaker-head");
  const name = el("h3", "breaker-name", breaker.name);
  const badge = el("span", "badge");
  const symbol = el("span", "badge-symbol");
  symbol.setAttribute("aria-hidden", "true");
  const label = el("span", "badge-label");
  badge.append(symbol, label);
  head.append(name, badge);

  const stats = el("dl", "stats");
  const stat = (title) => {
    const wrapper = el("div", "stat");
    const value = el("dd");
    wrapper.append(el("dt", "", title), value);
    stats.append(wrapper);
    return { wrapper, value };
  };
  const rate = stat("Failure rate");
  const calls = stat("Calls");
  const failures = stat("Failures");
  const openedAt = stat("Opened at");
  const timeLeft = stat("Time left open");

  const forced = el("p", "forced");
  const actions = el("div", "actions");
  const buttons = {};
  for (const action of ["open", "close", "reset"]) {
    const button = el("button", `action action-${action}`, `${ACTIONS[action].title}\u2026`);
    button.type = "button";
    button.addEventListener("click", () => openDialog(action, card.dataset.key));
    buttons[action] = button;
    actions.append(button);
  }
  const history = el("details", "transitions");
  const summary = el("summary", "", "Recent transitions");
  const transitions = el("ol", "transition-list");
  history.append(summary, transitions);
  history.addEventListener("toggle", () => {
    if (history.open) loadTransitions(card);
  });
  card.append(head, stats, forced, history, actions);
  card.parts = { label, symbol, rate, calls, failures, openedAt, timeLeft, forced, buttons, history, transitions };
  return card;
}

async function loadTransitions(card) {
  const generation = state.generation;
  const list = card.parts.transitions;
  try {
    const detail = await api(`api/v1/breakers/${pathPart(card.dataset.key)}`);
    if (generation !== state.generation) return;
    const items = detail.transitions.map((transition) => {
      const item = el("li");
      item.append(
        el("time", "", formatTime(transition.at)),
        document.createTextNode(` ${STATE_LABEL[transition.from] ?? transition.from} \u2192 `
          + `${STATE_LABEL[transition.to] ?? transition.to}`),
        el("span", "cause", transition.cause ? ` (${transition.cause})` : ""),
      );
      return item;
    });
    list.replaceChildren(...(items.length ? items : [el("li", "empty", "No transitions yet.")]));
  } catch (error) {
    if (generation !== state.generation) return;
    list.replaceChildren(el("li", "empty", error instanceof ApiError ? error.message : String(error)));
  }
}

function updateBreakerCard(card, breaker) {
  const parts = card.parts;
  const stateName = STATE_LABEL[breaker.state] ? breaker.state : "closed";
  card.className = `breaker state-${stateName.replace("_", "-")}`;
  card.dataset.state = stateName;
  parts.label.textContent = STATE_LABEL[breaker.state] ?? String(breaker.state);
  parts.symbol.textContent = STATE_SYMBOL[stateName];
  parts.rate.value.textContent = formatRate(breaker.failure_rate);
  parts.calls.value.textContent = String(breaker.calls ?? 0);
  parts.failures.value.textContent = String(breaker.failures ?? 0);
  parts.openedAt.wrapper.hidden = breaker.opened_at == null;
  parts.openedAt.value.textContent = breaker.opened_at == null ? "" : formatTime(breaker.opened_at);

  // Time left open: the forced state's expiry when forced open, else the breaker's own open period.
  const forced = breaker.forced;
  const until = forced ? (forced.state === "open" ? forced.until : null) : breaker.open_until;
  const showLeft = breaker.state === "open" && until != null;
  parts.timeLeft.wrapper.hidden = !showLeft;
  parts.timeLeft.value.dataset.until = showLeft ? String(until) : "";

  parts.forced.hidden = !forced;
  // Rebuilt only when it changed, so that its text can be selected and copied between polls.
  const forcedSignature = JSON.stringify(forced);
  if (forced && parts.forcedSignature !== forcedSignature) {
    parts.forced.replaceChildren();
    const expiry = forced.until == null ? "until changed" : `until ${formatTime(forced.until)}`;
    parts.forced.append(
      el("strong", "", `Forced ${forced.state === "open" ? "open" : "closed"}`),
      document.createTextNode(` by ${forced.by ?? "?"} at ${formatTime(forced.at)}, ${expiry}. `),
      el("span", "forced-reason", `Reason: ${forced.reason}`),
    );
  }
  parts.forcedSignature = forcedSignature;
  const mayAct = ROLE_RANK[state.role] >= ROLE_RANK.operator;
  for (const button of Object.values(parts.buttons)) {
    button.disabled = !mayAct;
    button.title = mayAct ? "" : "Needs an operator or admin key";
  }
}

function renderBreakers(breakers) {
  syncKeyed($("breakers"), breakers, (b) => b.name, createBreakerCard, updateBreakerCard);
  for (const card of $("breakers").children) {
    if (card.parts.history.open) loadTransitions(card);
  }
  $("breakers-empty").hidden = breakers.length > 0;
  tickCountdowns();
}

function tickCountdowns() {
  const now = serverNow();
  for (const value of document.querySelectorAll("#breakers dd[data-until]")) {
    const until = Number.parseFloat(value.dataset.until);
    if (!Number.isFinite(until)) continue;
    value.textContent = until > now ? formatDuration(until - now) : "half-open is due";
  }
}

// ---- limits --------------------------------------------------------------------------------------

function cell(row, label) {
  const td = el("td");
  td.dataset.label = label;
  row.append(td);
  return td;
}

function createLimitRow() {
  const row = el("tr");
  const name = cell(row, "Name");
  const rate = cell(row, "Rate limit");
  const concurrency = cell(row, "Max concurrency");
  const inFlight = cell(row, "In flight");
  const actions = cell(row, "Actions");
  const reset = el("button", "action", "Reset a client\u2026");
  reset.type = "button";
  reset.addEventListener("click", () => openDialog("client", row.dataset.key));
  actions.append(reset);
  row.parts = { name, rate, concurrency, inFlight, reset };
  return row;
}

function updateLimitRow(row, limit) {
  const parts = row.parts;
  parts.name.textContent = limit.name;
  parts.rate.textContent = limit.rate_limit ?? "\u2014";
  parts.concurrency.textContent = limit.max_concurrency == null ? "\u2014" : String(limit.max_concurrency);
  parts.inFlight.textContent = String(limit.in_flight ?? 0);
  const mayAct = ROLE_RANK[state.role] >= ROLE_RANK.operator;
  parts.reset.hidden = limit.rate_limit == null;
  parts.reset.disabled = !mayAct;
  parts.reset.title = mayAct ? "" : "Needs an operator or admin key";
}

function renderLimits(limits) {
  syncKeyed($("limits"), limits, (l) => l.name, createLimitRow, updateLimitRow);
  $("limits-empty").hidden = limits.length > 0;
  $("limits-table").hidden = limits.length === 0;
}

// ---- audit ---------------------------------------------------------------------------------------

function renderAudit(entries) {
  const rows = entries.map((entry) => {
    const row = el("tr");
    cell(row, "Time").textContent = formatDateTime(entry.at);
    cell(row, "Key").textContent = entry.key_id;
    cell(row, "Action").textContent = entry.action;
    cell(row, "Target").textContent = entry.target;
    cell(row, "Reason").textContent = entry.reason ?? "";
    cell(row, "Expiry").textContent = entry.for_seconds == null ? "\u2014" : formatDuration(entry.for_seconds);
    return row;
  });
  $("audit").replaceChildren(...rows);
  $("audit-empty").hidden = entries.length > 0;
  $("audit-table").hidden = entries.length === 0;
}

// ---- polling -------------------------------------------------------------------------------------

async function refresh() {
  const generation = state.generation;
  const isAdmin = state.role === "admin";
  try {
    const [breakers, limits, audit] = await Promise.all([
      api("api/v1/breakers"),
      api("api/v1/limits"),
      isAdmin ? api("api/v1/audit?limit=50") : null,
    ]);
    if (generation !== state.generation) return;
    renderBreakers(breakers.breakers);
    renderLimits(limits.limits);
    if (audit) renderAudit(audit.entries);
    $("dashboard").classList.remove("stale");
    $("updated").textContent = `Live \u00B7 updated ${new Date().toLocaleTimeString()}`;
    showError(null);
    schedule(POLL_MS);
  } catch (error) {
    if (generation !== state.generation) return;
    handlePollError(error);
  }
}

function handlePollError(error) {
  if (error instanceof ApiError && error.status === 401) {
    logOut("Your key is no longer accepted (401): log in again.");
    return;
  }
  $("dashboard").classList.add("stale");
  $("updated").textContent = "Not live: showing the last answer";
  showError(error instanceof ApiError ? error.message : `The console could not show the server's answer: ${error}`);
  const delay = error instanceof ApiError && error.retryAfter != null ? error.retryAfter * 1000 : RETRY_UNREACHABLE_MS;
  schedule(delay);
}

function schedule(delayMs) {
  clearTimeout(state.pollTimer);
  state.pollTimer = setTimeout(() => {
    // A hidden tab does not poll; it catches up as soon as it is shown again.
    if (document.hidden) {
      document.addEventListener("visibilitychange", refresh, { once: true });
    } else {
      refresh();
    }
  }, delayMs);
}

// ---- log in, log out -----------------------------------------------------------------------------

function startSession(key, whoami) {
  state.generation += 1;
  state.key = key;
  state.role = whoami.role;
  state.keyId = whoami.key_id;
  $("who").textContent = `${whoami.key_id} \u00B7 ${whoami.role}`;
  $("session").hidden = false;
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("readonly-note").hidden = ROLE_RANK[whoami.role] >= ROLE_RANK.operator;
  $("audit-section").hidden = whoami.role !== "admin";
  showError(null);
  refresh();
}

function logOut(message) {
  state.generation += 1;
  clearTimeout(state.pollTimer);
  if (SESSION_AUTH) { // the site's session ended: only the site can log in again
    $("dashboard").hidden = true;
    $("session").hidden = true;
    showError("This site no longer knows you (401): log in to it again, then reload this page.");
    return;
  }
  sessionStorage.removeItem(KEY_STORAGE);
  Object.assign(state, { key: null, role: null, keyId: null });
  if ($("action-dialog").open) $("action-dialog").close();
  for (const id of ["breakers", "limits", "audit"]) $(id).replaceChildren();
  $("session").hidden = true;
  $("dashboard").hidden = true;
  $("dashboard").classList.remove("stale");
  $("audit-section").hidden = true;
  $("login").hidden = false;
  showError(message ?? null);
  showNotice(message ? null : "Logged out: this tab no longer holds the key.");
  $("login-key").focus();
}

async function onLogin(event) {
  event.preventDefault();
  const input = $("login-key");
  const key = input.value.trim();
  if (!key) return;
  showError(null);
  showNotice(null);
  $("login-submit").disabled = true;
  try {
    const whoami = await api("api/v1/whoami", { key });
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    startSession(key, whoami);
    $("login-submit").disabled = false;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showError(error.status === 401 ? "That key was not accepted (401). Check it and try again." : error.message);
    if (error.status === 429) {
      blockLogin(error.retryAfter);
    } else {
      $("login-submit").disabled = false;
    }
  }
}

// After a 429 the button waits out Retry-After, counting down, rather than earning another refusal.
function blockLogin(seconds) {
  state.loginBlockedUntil = Date.now() + seconds * 1000;
  const button = $("login-submit");
  const tick = () => {
    const left = Math.ceil((state.loginBlockedUntil - Date.now()) / 1000);
    if (left <= 0) {
      button.disabled = false;
      button.textContent = "Log in";
      return;
    }
    button.disabled = true;
    button.textContent = `Wait ${left} s`;
    setTimeout(tick, 1000);
  };
  tick();
}

async function resumeSession() {
  if (SESSION_AUTH) {
    resumeSiteSession();
    return;
  }
  if (state.key) return; // logged in meanwhile, by hand
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (!key) {
    logOutQuietly();
    return;
  }
  try {
    const whoami = await api("api/v1/whoami", { key });
    if (!state.key) startSession(key, whoami);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status === 401) {
      logOut("The saved key is no longer accepted (401): log in again.");
    } else {
      // Keep the key: the server may only be restarting. Show the login form with the reason.
      logOutQuietly();
      showError(error.message);
      setTimeout(resumeSession, error.retryAfter != null ? error.retryAfter * 1000 : RETRY_UNREACHABLE_MS);
    }
  }
}

// A Django mount: the site's own session says who this is; there is no key to type and no log out here.
async function resumeSiteSession() {
  $("logout").hidden = true;
  try {
    const whoami = await api("api/v1/whoami");
    startSession(null, whoami);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    $("session").hidden = true;
    $("dashboard").hidden = true;
    showError(error.status === 401 ? "Log in to this site first, as a user in one of the groups baldur_viewer, "
      + "baldur_operator or baldur_admin (or as a superuser), then reload this page." : error.message);
    if (error.status === 0 || error.status >= 500) setTimeout(resumeSiteSession, RETRY_UNREACHABLE_MS);
  }
}

function logOutQuietly() {
  $("login").hidden = false;
  $("dashboard").hidden = true;
  $("session").hidden = true;
}

// ---- operator actions ----------------------------------------------------------------------------

function openDialog(action, target) {
  const spec = ACTIONS[action];
  state.dialog = { action, target };
  $("action-title").textContent = `${spec.title}: ${target}`;
  $("action-explain").textContent = spec.explain;
  $("action-expiry-row").hidden = !spec.expiry;
  $("action-client-row").hidden = action !== "client";
  $("action-client").required = action === "client";
  $("action-client").value = "";
  $("action-expiry").value = "";
  $("action-reason").value = "";
  $("action-submit").textContent = spec.title;
  $("action-submit").disabled = false;
  $("action-submit").className = `action-${action}`;
  showBanner("action-error", null);
  $("action-dialog").showModal();
  (action === "client" ? $("action-client") : $("action-reason")).focus();
}

async function onAction(event) {
  event.preventDefault();
  const { action, target } = state.dialog;
  const spec = ACTIONS[action];
  const reason = $("action-reason").value.trim();
  if (!reason) {
    showBanner("action-error", "A reason is required: it goes into the audit log.");
    return;
  }
  const body = { reason };
  let path;
  if (action === "client") {
    const client = $("action-client").value.trim();
    if (!client) {
      showBanner("action-error", "Name the client whose quota to reset.");
      return;
    }
    path = `api/v1/limits/${pathPart(target)}/clients/${pathPart(client)}/reset`;
  } else {
    path = `api/v1/breakers/${pathPart(target)}/${action}`;
    const seconds = $("action-expiry").value;
    if (spec.expiry && seconds) body.for_seconds = Number(seconds);
  }
  $("action-submit").disabled = true;
  try {
    await api(path, { method: "POST", body });
    $("action-dialog").close();
    showNotice(`\u201C${target}\u201D ${spec.verb}.`);
    refresh();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    $("action-submit").disabled = false;
    if (error.status === 401) {
      logOut("Your key is no longer accepted (401): log in again.");
      return;
    }
    showBanner("action-error", error.message);
  }
}

// ---- wiring --------------------------------------------------------------------------------------

$("login-form").addEventListener("submit", onLogin);
$("logout").addEventListener("click", () => logOut());
$("action-form").addEventListener("submit", onAction);
$("action-cancel").addEventListener("click", () => $("action-dialog").close());
setInterval(tickCountdowns, 1000);
resumeSession();
