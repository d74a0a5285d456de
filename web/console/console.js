// The faust-otp template console: vanilla JS against the worker's /api, no framework, no build.
//
// Rules this file keeps, so the page stays safe with a strict Content-Security-Policy and with
// templates written by someone else:
// - Text from the API goes into the page with textContent only, never innerHTML. A mail's
//   HTML is shown only inside <iframe sandbox srcdoc>: no script runs there, it has an opaque
//   origin (no access to this page or its storage), and it inherits this page's CSP.
// - The token lives in sessionStorage (this tab, gone when it closes), is sent only as a
//   bearer header to this origin, never in a URL, a cookie or a log line.
// - What the token may do comes from GET /api/whoami; controls for scopes it lacks are
//   hidden. That is for the person's sake only: the API checks every call itself.
"use strict";

(() => {
  const TOKEN_KEY = "faust-otp.console.token";
  const PREVIEW_DELAY_MS = 250;
  const TYPES = ["MAIL", "SMS", "PUSH"];
  const SAMPLE_OTP_KEY = "otpValue";

  const $ = (id) => {
    const node = document.getElementById(id);
    if (!node) throw new Error(`console: no #${id} in index.html`);
    return node;
  };

  const state = {
    token: null,
    who: null, // {name, scopes}
    templates: [], // the list, as GET /api/template answered
    mode: "none", // "none" | "new" | "edit" | "import"
    published: null, // the published template being edited
    etag: null, // the ETag it was read with, sent back in If-Match with every write of it
    draft: null, // its draft, if one is saved
    loaded: "", // the editor's content as loaded, to tell whether it changed
    base: {}, // fields the editor does not show (strategyType, context, ...), kept as they were
    params: [], // [{key, mandatory, sample, extra}]
    samples: new Map(), // param key -> sample value, kept across templates in this tab
    versions: [],
    previewTimer: null,
    previewSeq: 0,
    importDoc: null,
    busy: false,
  };

  // ------------------------------------------------------------------ small DOM helpers

  /** An element with text (never markup) and attributes; children appended in order. */
  function el(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.text !== undefined) node.textContent = String(options.text);
    if (options.className) node.className = options.className;
    for (const [name, value] of Object.entries(options.attrs || {})) {
      if (value !== undefined && value !== null && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function can(scope) {
    const scopes = state.who ? state.who.scopes : [];
    return scopes.includes("admin") || scopes.includes(scope);
  }

  // ------------------------------------------------------------------ the API

  class ApiFailure extends Error {
    constructor(status, body) {
      const error = body && typeof body.error === "string" ? body.error : `HTTP ${status}`;
      super(error);
      this.status = status;
      this.body = body || {};
      this.details = Array.isArray(this.body.details) ? this.body.details : [];
    }

    /** One line for the status bar: the error and each field's message. */
    describe() {
      const parts = this.details.map((d) => `${d.field}: ${d.message}`);
      return parts.length ? `${this.message} (${parts.join("; ")})` : this.message;
    }
  }

  /** The answer's JSON. */
  async function api(method, path, body, readAt) {
    return (await tagged(method, path, body, readAt)).data;
  }

  /**
   * The answer's JSON and ETag, each call its own (a preview may answer meanwhile).
   * `readAt`: the ETag the open template was read with. A write sent with it (If-Match) is
   * refused with 412 if anyone has written the template since, a draft included, rather than
   * overwriting their change.
   */
  async function tagged(method, path, body, readAt) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${state.token}` };
    if (readAt) headers["If-Match"] = readAt;
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiFailure(0, { error: "the service cannot be reached", details: [] });
    }
    const etag = resp.headers.get("ETag");
    const text = resp.status === 204 ? "" : await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        data = { error: `HTTP ${resp.status}: not a JSON answer`, details: [] };
      }
    }
    if (!resp.ok) {
      const failure = new ApiFailure(resp.status, data);
      if (resp.status === 401 && path !== "/api/whoami") {
        signOut("The token is no longer accepted; sign in again.");
      }
      throw failure;
    }
    return { data, etag };
  }

  const q = encodeURIComponent;
  const templatePath = (name, language, suffix = "") =>
    `/api/template/${q(name)}${suffix}?language=${q(language)}`;

  // ------------------------------------------------------------------ status and dialogs

  function setStatus(message, kind = "info") {
    const node = $("status");
    node.textContent = message;
    node.className = `status ${kind}`;
  }

  function fail(err) {
    if (err instanceof ApiFailure) {
      setStatus(err.describe(), "error");
    } else {
      setStatus(String(err && err.message ? err.message : err), "error");
      console.error(err);
    }
  }

  /** Resolves true when the person confirms in the modal dialog. */
  function confirmDialog(text, okLabel, { danger = true } = {}) {
    const dialog = $("confirm-dialog");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    $("confirm-ok").className = danger ? "danger" : "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {
        once: true,
      });
      dialog.returnValue = "cancel";
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  async function busy(action) {
    if (state.busy) return;
    state.busy = true;
    document.body.classList.add("busy");
    try {
      await action();
    } catch (err) {
      fail(err);
    } finally {
      state.busy = false;
      document.body.classList.remove("busy");
      refreshControls();
    }
  }

  // ------------------------------------------------------------------ sign in and out

  async function signIn(token) {
    state.token = token;
    try {
      state.who = await api("GET", "/api/whoami");
    } catch (err) {
      state.token = null;
      state.who = null;
      throw err;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("who-name").textContent = state.who.name;
    $("who-scopes").textContent = state.who.scopes.join(", ");
    show($("who"), true);
    show($("sign-in"), false);
    show($("workspace"), true);
    applyScopes();
    closeEditor();
    await loadList();
  }

  function signOut(message = "") {
    sessionStorage.removeItem(TOKEN_KEY);
    setStatus("");
    state.token = null;
    state.who = null;
    state.templates = [];
    closeEditor();
    $("template-list").replaceChildren();
    show($("who"), false);
    show($("workspace"), false);
    show($("sign-in"), true);
    $("sign-in-error").textContent = message;
    $("token").value = "";
    $("token").focus();
  }

  /** Controls for scopes the token lacks are hidden; fields become read-only without edit. */
  function applyScopes() {
    for (const node of document.querySelectorAll("[data-scope]")) {
      node.classList.toggle("no-scope", !can(node.dataset.scope));
    }
    const editable = can("edit");
    for (const id of ["f-subject", "f-body"]) $(id).readOnly = !editable;
    $("f-type").disabled = !editable;
    $("f-active").disabled = !editable;
    document.body.classList.toggle("read-only", !editable);
  }

  // ------------------------------------------------------------------ the list

  async function loadList() {
    const answer = await api("GET", "/api/template");
    state.templates = answer.items;
    const languages = [...new Set(state.templates.map((t) => t.language))].sort();
    const select = $("filter-language");
    const chosen = select.value;
    select.replaceChildren(el("option", { text: "Any language", attrs: { value: "" } }));
    for (const language of languages) select.append(el("option", { text: language }));
    select.value = languages.includes(chosen) ? chosen : "";
    renderList();
  }

  function filtered() {
    const name = $("filter-name").value.trim().toLowerCase();
    const type = $("filter-type").value;
    const language = $("filter-language").value;
    const status = $("filter-status").value;
    return state.templates
      .filter((t) => !name || t.name.toLowerCase().includes(name))
      .filter((t) => !type || t.type === type)
      .filter((t) => !language || t.language === language)
      .filter(
        (t) =>
          !status ||
          (status === "active" && t.active) ||
          (status === "inactive" && !t.active) ||
          (status === "draft" && t.hasDraft),
      )
      .sort((a, b) => a.name.localeCompare(b.name) || a.language.localeCompare(b.language));
  }

  function renderList() {
    const items = filtered();
    const selected = state.published;
    $("list-count").textContent = `${items.length} of ${state.templates.length} templates`;
    $("template-list").replaceChildren(
      ...items.map((t) => {
        const current =
          selected && selected.name === t.name && selected.language === t.language;
        const button = el(
          "button",
          {
            className: "template-item",
            attrs: {
              type: "button",
              "data-name": t.name,
              "data-language": t.language,
              "aria-current": current ? "true" : null,
            },
          },
          [
            el("span", { className: "name", text: t.name }),
            el("span", { className: "meta" }, [
              el("span", { className: `type type-${t.type}`, text: t.type }),
              el("span", { className: "lang", text: t.language }),
              el("span", { className: "ver", text: `v${t.version}` }),
              t.active ? null : el("span", { className: "tag off", text: "inactive" }),
              t.hasDraft ? el("span", { className: "tag draft", text: "draft" }) : null,
            ]),
          ],
        );
        button.addEventListener("click", () => busy(() => openTemplate(t.name, t.language)));
        return el("li", {}, [button]);
      }),
    );
  }

  // ------------------------------------------------------------------ the editor

  /** What the editor holds, as the API's TemplateInput. */
  function templateInput() {
    const subject = $("f-subject").value;
    return {
      ...state.base,
      name: $("f-name").value.trim(),
      language: $("f-language").value.trim(),
      type: $("f-type").value,
      active: $("f-active").checked,
      subject: subject === "" ? null : subject,
      body: $("f-body").value,
      params: state.params
        .filter((p) => p.key.trim() !== "")
        .map((p) => ({ ...p.extra, key: p.key.trim(), mandatory: p.mandatory })),
    };
  }

  /** The sample data the preview renders with (the server adds its own sample otpValue). */
  function sampleData() {
    const data = {};
    for (const p of state.params) {
      const key = p.key.trim();
      if (key && key !== SAMPLE_OTP_KEY && p.sample !== "") data[key] = typedSample(p);
    }
    return data;
  }

  const PARAM_TYPES = ["STRING", "NUMBER", "BOOLEAN", "OBJECT", "ARRAY"];
  // What a typed mandatory parameter's sample starts as (the server checks the type).
  const TYPED_SAMPLES = { NUMBER: "1", BOOLEAN: "true", OBJECT: "{}", ARRAY: "[]" };

  /** The sample as the parameter's type wants it: a number, a boolean, JSON for an object or
   *  a list (also for an untyped one written as JSON, for ${client.name}). Text that does not
   *  fit is sent as text, and the preview then says why it is refused. */
  function typedSample(param) {
    const text = param.sample;
    const type = param.extra.type;
    if (type === "NUMBER" && text.trim() !== "" && Number.isFinite(Number(text))) {
      return Number(text);
    }
    if (type === "BOOLEAN" && (text === "true" || text === "false")) return text === "true";
    if (type === "OBJECT" || type === "ARRAY" || (!type && /^\s*[[{]/.test(text))) {
      try {
        return JSON.parse(text);
      } catch (err) {
        return text;
      }
    }
    return text;
  }

  const SERVER_FIELDS = [
    "version",
    "createdAt",
    "updatedAt",
    "hasDraft",
    "savedAt",
    "savedBy",
    "baseVersion",
    "changedBy",
    "summary",
    "current",
  ];
  const SHOWN_FIELDS = ["name", "language", "type", "active", "subject", "body", "params"];

  function fillEditor(template) {
    const base = { ...template };
    for (const field of [...SERVER_FIELDS, ...SHOWN_FIELDS]) delete base[field];
    state.base = base;
    $("f-name").value = template.name || "";
    $("f-language").value = template.language || "en";
    $("f-type").value = TYPES.includes(template.type) ? template.type : "MAIL";
    $("f-active").checked = template.active !== false;
    $("f-subject").value = template.subject || "";
    $("f-body").value = template.body || "";
    state.params = (template.params || []).map((param) => {
      const { key, mandatory, ...extra } = param;
      const known = state.samples.get(key);
      // A mandatory parameter gets the server's own trial-render value until one is typed.
      const initial = TYPED_SAMPLES[extra.type] || "sample";
      const sample = known !== undefined ? known : mandatory ? initial : "";
      return { key, mandatory: mandatory === true || mandatory === "true", sample, extra };
    });
    renderParams();
    state.loaded = JSON.stringify(templateInput());
    onTypeChange();
  }

  function isDirty() {
    return state.mode !== "none" && JSON.stringify(templateInput()) !== state.loaded;
  }

  function renderParams() {
    const editable = can("edit");
    const rows = state.params.map((param, index) => {
      const key = el("input", {
        className: "param-key",
        attrs: { "aria-label": "Parameter key", spellcheck: "false", value: param.key },
      });
      key.readOnly = !editable;
      key.addEventListener("input", () => {
        param.key = key.value;
        sample.disabled = key.value.trim() === SAMPLE_OTP_KEY;
        edited();
      });
      const mandatory = el("input", {
        className: "param-mandatory",
        attrs: { type: "checkbox", "aria-label": "Mandatory" },
      });
      mandatory.checked = param.mandatory;
      mandatory.disabled = !editable;
      mandatory.addEventListener("change", () => {
        param.mandatory = mandatory.checked;
        edited();
      });
      const type = el("select", { className: "param-type", attrs: { "aria-label": "Type" } }, [
        el("option", { text: "any", attrs: { value: "" } }),
        ...PARAM_TYPES.map((t) => el("option", { text: t })),
      ]);
      type.value = param.extra.type || "";
      type.disabled = !editable;
      type.addEventListener("change", () => {
        if (type.value) param.extra.type = type.value;
        else delete param.extra.type;
        if (type.value !== "ARRAY") delete param.extra.item;
        edited();
      });
      const isOtp = param.key === SAMPLE_OTP_KEY;
      const sample = el("input", {
        className: "param-sample",
        attrs: {
          "aria-label": `Sample value of ${param.key}`,
          spellcheck: "false",
          placeholder: isOtp ? "(the code)" : "",
          value: isOtp ? "" : param.sample,
        },
      });
      sample.disabled = isOtp;
      sample.addEventListener("input", () => {
        param.sample = sample.value;
        state.samples.set(param.key.trim(), sample.value);
        edited({ contentChanged: false });
      });
      const remove = el("button", {
        className: "quiet remove-param",
        text: "Remove",
        attrs: { type: "button", "data-scope": "edit", "aria-label": `Remove ${param.key}` },
      });
      remove.classList.toggle("no-scope", !editable);
      remove.addEventListener("click", () => {
        state.params.splice(index, 1);
        renderParams();
        edited();
      });
      return el("tr", {}, [
        el("td", {}, [key]),
        el("td", {}, [type]),
        el("td", {}, [mandatory]),
        el("td", {}, [sample]),
        el("td", {}, [remove]),
      ]);
    });
    $("params").replaceChildren(...rows);
  }

  function onTypeChange() {
    const type = $("f-type").value;
    const label = $("subject-label");
    show(label, type !== "SMS");
    label.firstChild.textContent = type === "PUSH" ? "Title " : "Subject ";
    show($("preview-mail"), type === "MAIL");
    show($("preview-text"), type !== "MAIL");
    show($("preview-subject-line"), type !== "SMS");
  }

  /** Called on every keystroke in the editor: warnings now, the preview shortly after. */
  function edited({ contentChanged = true } = {}) {
    if (contentChanged) refreshControls();
    renderWarnings([]);
    schedulePreview();
  }

  // ------------------------------------------------------------------ warnings

  /** The parameter names a template body or subject refers to: ${x}, ${x.y}, {{ x }}. */
  function referencedKeys(text) {
    const keys = new Set();
    for (const m of text.matchAll(/\$\{\s*([A-Za-z][A-Za-z0-9_]*)/g)) keys.add(m[1]);
    for (const m of text.matchAll(/\{\{-?\s*([A-Za-z][A-Za-z0-9_]*)/g)) keys.add(m[1]);
    return keys;
  }

  /** Warnings the editor can tell at once, before the server has seen the template, each
   *  with an id that names what it is about (so the server's word on it is not shown twice). */
  function localWarnings(template) {
    const warnings = [];
    const warn = (id, text) => warnings.push({ id, text });
    const used = referencedKeys(`${template.subject || ""}\n${template.body}`);
    const seen = new Set();
    for (const param of template.params) {
      if (seen.has(param.key)) {
        warn(`twice:${param.key}`, `Parameter '${param.key}' is listed twice.`);
      }
      seen.add(param.key);
      if (!param.mandatory) continue;
      if (!used.has(param.key)) {
        warn(
          `unused:${param.key}`,
          `Mandatory parameter '${param.key}' is not used by the subject or body: ` +
            "the service refuses to save it.",
        );
      }
      const row = state.params.find((p) => p.key.trim() === param.key);
      if (param.key !== SAMPLE_OTP_KEY && row && row.sample === "") {
        warn(
          `nosample:${param.key}`,
          `Mandatory parameter '${param.key}' has no sample value: ` +
            "a send without it is refused, and so is the preview.",
        );
      }
    }
    for (const key of used) {
      if (!seen.has(key) && key !== SAMPLE_OTP_KEY) {
        warn(
          `undeclared:${key}`,
          `'${key}' is used but is not a parameter: it renders empty unless sent.`,
        );
      }
    }
    if (template.type === "MAIL" && !template.subject) {
      warn("subject", "A MAIL template needs a subject.");
    }
    if (!template.body.trim()) warn("body", "The body is empty.");
    return warnings;
  }

  /** The local warning a server detail repeats, if any (see localWarnings' ids). */
  function sameAsLocal(detail) {
    const { field, message } = detail;
    let m;
    if (field === "template.subject" && /required/.test(message)) return "subject";
    if (field === "template.body" && /required/.test(message)) return "body";
    if (field.startsWith("data.") && /mandatory/.test(message)) return `nosample:${field.slice(5)}`;
    if ((m = /mandatory parameter '(\w+)' is not used/.exec(message))) return `unused:${m[1]}`;
    if ((m = /duplicates '(\w+)'/.exec(message))) return `twice:${m[1]}`;
    return null;
  }

  function renderWarnings(serverDetails) {
    const local = localWarnings(templateInput());
    const ids = new Set(local.map((w) => w.id));
    const items = local.map((w) => el("li", { className: "warning", text: w.text }));
    for (const detail of serverDetails) {
      if (ids.has(sameAsLocal(detail))) continue;
      items.push(
        el("li", { className: "warning server", text: `${detail.field}: ${detail.message}` }),
      );
    }
    $("warnings").replaceChildren(...items);
  }

  // ------------------------------------------------------------------ the live preview

  /** "pending" while a keystroke's preview is on its way, then "ready" or "failed". */
  function previewState(value) {
    $("side-pane").dataset.preview = value;
    $("side-pane").classList.toggle("stale", value === "failed");
  }

  function schedulePreview() {
    previewState("pending");
    state.previewSeq++; // an answer already on its way is for older content: drop it
    clearTimeout(state.previewTimer);
    state.previewTimer = setTimeout(() => {
      preview().catch(fail);
    }, PREVIEW_DELAY_MS);
  }

  /** Render what the editor holds right now (saved or not) with POST /api/preview. */
  async function preview() {
    if (state.mode !== "new" && state.mode !== "edit") return;
    previewState("pending");
    const seq = ++state.previewSeq;
    const template = templateInput();
    let rendered;
    try {
      rendered = await api("POST", "/api/preview", { template, data: sampleData() });
    } catch (err) {
      if (seq !== state.previewSeq) return;
      previewState("failed");
      if (!(err instanceof ApiFailure)) throw err;
      $("preview-error").textContent = `Not rendered: ${err.message}`;
      renderWarnings(err.details);
      return;
    }
    if (seq !== state.previewSeq) return; // a newer keystroke's preview is on its way
    $("preview-error").textContent = "";
    $("preview-otp").textContent = rendered.otpValue;
    $("preview-subject").textContent = rendered.subject || "";
    if (rendered.type === "MAIL") {
      // The only place a template's HTML is ever put: a sandboxed iframe (see the top).
      $("preview-mail").srcdoc = rendered.body;
      $("preview-text").textContent = "";
      show($("preview-note"), /<img[^>]+src\s*=\s*["']?\s*(https?:)?\/\//i.test(rendered.body));
    } else {
      $("preview-mail").srcdoc = "";
      $("preview-text").textContent = rendered.text || rendered.body;
      show($("preview-note"), false);
    }
    renderWarnings([]);
    previewState("ready");
  }

  // ------------------------------------------------------------------ opening and closing

  function closeEditor() {
    state.mode = "none";
    state.published = null;
    state.draft = null;
    state.versions = [];
    state.previewSeq++;
    show($("editor"), false);
    show($("side-pane"), false);
    show($("import-panel"), false);
    show($("empty-state"), true);
    $("preview-mail").srcdoc = "";
    $("preview-text").textContent = "";
    renderList();
  }

  async function leaveEditor() {
    if (!isDirty()) return true;
    return confirmDialog("Your changes are not saved. Discard them?", "Discard changes");
  }

  async function openTemplate(name, language) {
    if (!(await leaveEditor())) return;
    // The draft read next may be newer than this tag: a write then gets a 412, never overwrites.
    const { data: published, etag } = await tagged("GET", templatePath(name, language));
    const listed = state.templates.find((t) => t.name === name && t.language === language);
    let draft = null;
    if (listed && listed.hasDraft) {
      try {
        draft = await api("GET", `${templatePath(name, language)}&draft=true`);
      } catch (err) {
        if (!(err instanceof ApiFailure && err.status === 404)) throw err;
      }
    }
    state.mode = "edit";
    state.published = published;
    state.etag = etag;
    state.draft = draft;
    show($("import-panel"), false);
    show($("empty-state"), false);
    show($("editor"), true);
    show($("side-pane"), true);
    fillEditor(draft || published);
    $("f-name").readOnly = true;
    $("f-language").readOnly = true;
    setStatus("");
    refreshControls();
    renderList();
    renderWarnings([]);
    await Promise.all([preview(), loadHistory()]);
  }

  async function reopen(message) {
    const { name, language } = state.published;
    state.loaded = JSON.stringify(templateInput()); // no "discard changes?" on our own reload
    await loadList();
    await openTemplate(name, language);
    setStatus(message, "ok");
  }

  function newTemplate() {
    state.mode = "new";
    state.published = null;
    state.draft = null;
    show($("import-panel"), false);
    show($("empty-state"), false);
    show($("editor"), true);
    show($("side-pane"), true);
    fillEditor({
      name: "",
      language: "en",
      type: "MAIL",
      active: true,
      subject: "Your code",
      body: "<p>Your code is <b th:text='${otpValue}'></b></p>",
      params: [{ key: SAMPLE_OTP_KEY, mandatory: true }],
    });
    state.loaded = "";
    $("f-name").readOnly = false;
    $("f-language").readOnly = false;
    $("history").replaceChildren();
    setStatus("");
    renderList();
    $("f-name").focus();
    edited();
  }

  function refreshControls() {
    const editing = state.mode === "edit";
    const creating = state.mode === "new";
    const dirty = isDirty();
    show($("create"), creating);
    show($("save-draft"), editing);
    show($("publish"), editing);
    show($("discard-draft"), editing && state.draft !== null);
    show($("clone"), editing);
    show($("export-one"), editing);
    show($("delete"), editing);
    $("save-draft").disabled = state.busy || !dirty;
    $("publish").disabled = state.busy || !(dirty || state.draft);
    $("create").disabled = state.busy;

    const title = $("editor-title");
    const badge = $("editor-state");
    if (creating) {
      title.textContent = "New template";
      badge.textContent = "not saved";
    } else if (editing) {
      const p = state.published;
      title.textContent = `${p.name} (${p.language})`;
      badge.textContent = dirty
        ? "unsaved changes"
        : state.draft
          ? `draft on v${p.version}`
          : `published v${p.version}`;
    }
    badge.className = `badge${dirty ? " dirty" : state.draft ? " draft" : ""}`;
    const note = $("draft-note");
    if (editing && state.draft) {
      const d = state.draft;
      note.textContent =
        `Draft saved ${when(d.savedAt)} by ${d.savedBy || "?"}, based on v${d.baseVersion}. ` +
        `Sends keep using the published v${state.published.version} until you publish.`;
      show(note, true);
    } else {
      show(note, false);
    }
  }

  // ------------------------------------------------------------------ actions

  async function create() {
    const template = templateInput();
    const { data: stored, etag } = await tagged("POST", "/api/template", template);
    state.mode = "edit";
    state.published = stored;
    state.etag = etag;
    state.loaded = JSON.stringify(templateInput());
    await reopen(`Created ${stored.name} (${stored.language}), v${stored.version}, live now.`);
  }

  async function saveDraft() {
    const { name, language } = state.published;
    const path = `${templatePath(name, language)}&draft=true`;
    const saved = await tagged("PUT", path, templateInput(), state.etag);
    state.draft = saved.data;
    state.etag = saved.etag;
    state.loaded = JSON.stringify(templateInput());
    await loadList();
    setStatus(`Draft saved. Sends still use v${state.published.version}.`, "ok");
  }

  async function publish() {
    const { name, language } = state.published;
    if (isDirty()) await saveDraft();
    const path = templatePath(name, language, "/publish");
    const stored = await api("POST", path, undefined, state.etag);
    await reopen(`Published v${stored.version}.`);
  }

  async function discardDraft() {
    const { name, language } = state.published;
    const ok = await confirmDialog(
      `Discard the draft of ${name} (${language})? ` +
        `The published v${state.published.version} stays.`,
      "Discard draft",
    );
    if (!ok) return;
    const path = `${templatePath(name, language)}&draft=true`;
    await api("DELETE", path, undefined, state.etag);
    await reopen("Draft discarded.");
  }

  async function restore(version) {
    const { name, language } = state.published;
    const ok = await confirmDialog(
      `Publish the content of v${version} of ${name} (${language}) as a new version?`,
      `Restore v${version}`,
      { danger: false },
    );
    if (!ok) return;
    const path = templatePath(name, language, `/versions/${version}/restore`);
    const stored = await api("POST", path, undefined, state.etag);
    await reopen(`Restored v${version} as v${stored.version}.`);
  }

  async function remove() {
    const { name, language } = state.published;
    const ok = await confirmDialog(
      `Delete ${name} (${language}) with its draft and history? Sends naming it will fail.`,
      "Delete",
    );
    if (!ok) return;
    await api("DELETE", templatePath(name, language), undefined, state.etag);
    state.loaded = JSON.stringify(templateInput());
    closeEditor();
    await loadList();
    setStatus(`Deleted ${name} (${language}).`, "ok");
  }

  async function cloneTemplate() {
    // The clone is made from the published version, so unsaved edits would be lost: ask first.
    if (!(await leaveEditor())) return;
    const { name, language, version } = state.published;
    const dialog = $("clone-dialog");
    $("clone-source").textContent = `${name} (${language}), published v${version}`;
    $("clone-name").value = `${name}-copy`;
    $("clone-language").value = language;
    const ok = await new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {
        once: true,
      });
      dialog.returnValue = "cancel";
      dialog.showModal();
      $("clone-name").select();
    });
    if (!ok) return;
    state.loaded = JSON.stringify(templateInput()); // the edits were let go above
    const target = {};
    const newName = $("clone-name").value.trim();
    const newLanguage = $("clone-language").value.trim();
    if (newName && newName !== name) target.name = newName;
    if (newLanguage && newLanguage !== language) target.language = newLanguage;
    const stored = await api("POST", templatePath(name, language, "/clone"), target);
    await loadList();
    await openTemplate(stored.name, stored.language);
    setStatus(`Cloned into ${stored.name} (${stored.language}).`, "ok");
  }

  // ------------------------------------------------------------------ history

  /** "2026-12-01 16:08 UTC": the API's timestamps are UTC, and so is what the console shows. */
  function when(iso) {
    return typeof iso === "string" && iso.length >= 16
      ? `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC`
      : String(iso || "");
  }

  async function loadHistory() {
    if (!state.published) return;
    const { name, language } = state.published;
    const answer = await api("GET", templatePath(name, language, "/versions"));
    state.versions = answer.items;
    $("history").replaceChildren(
      ...answer.items.map((v) => {
        const restoreButton = el("button", {
          className: "quiet restore",
          text: `Restore v${v.version}`,
          attrs: { type: "button", "data-scope": "edit", "data-version": v.version },
        });
        restoreButton.classList.toggle("no-scope", !can("edit"));
        restoreButton.addEventListener("click", () => busy(() => restore(v.version)));
        return el("li", { attrs: { "data-version": v.version } }, [
          el("div", { className: "history-head" }, [
            el("strong", { text: `v${v.version}` }),
            v.current ? el("span", { className: "tag current", text: "current" }) : null,
            el("time", {
              className: "muted",
              text: when(v.updatedAt),
              attrs: { datetime: v.updatedAt, title: v.updatedAt },
            }),
            el("span", { className: "muted", text: `by ${v.changedBy}` }),
          ]),
          el("div", { className: "summary", text: v.summary || "" }),
          v.current ? null : restoreButton,
        ]);
      }),
    );
  }

  // ------------------------------------------------------------------ export and import

  /** Download an export document: every template, or only the one being edited. */
  async function exportTemplates({ one = false } = {}) {
    let path = "/api/templates/export";
    let prefix = "templates";
    if (one) {
      const { name, language } = state.published;
      path += `?name=${q(name)}&language=${q(language)}`;
      prefix = `${name}-${language}`;
    }
    const doc = await api("GET", path);
    const blob = new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
    const link = el("a", { attrs: { href: url, download: `${prefix}-${stamp}.json` } });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    const count = doc.templates.length;
    setStatus(`Exported ${count} template${count === 1 ? "" : "s"}.`, "ok");
  }

  async function importFile(file) {
    let doc;
    try {
      doc = JSON.parse(await file.text());
    } catch (err) {
      throw new Error(`${file.name} is not JSON: ${err.message}`);
    }
    if (!(await leaveEditor())) return;
    closeEditor();
    state.mode = "import";
    state.importDoc = doc;
    $("import-file-name").textContent = file.name;
    $("import-summary").textContent = "Checking…";
    $("import-results").replaceChildren();
    show($("import-apply"), false);
    show($("empty-state"), false);
    show($("import-panel"), true);
    let answer;
    try {
      answer = await api("POST", "/api/templates/import?dryRun=true", doc);
    } catch (err) {
      if (!(err instanceof ApiFailure) || !err.body.results) throw err;
      answer = err.body;
    }
    renderImport(answer, true);
  }

  function renderImport(answer, dryRun) {
    const counts = answer.counts || {};
    const summary = ["create", "update", "unchanged", "refused"]
      .map((action) => `${counts[action] || 0} ${action}`)
      .join(", ");
    $("import-summary").textContent = dryRun
      ? `Dry run: ${summary}. Nothing is changed until you apply it.`
      : `Imported: ${summary}.`;
    $("import-results").replaceChildren(
      ...(answer.results || []).map((r) =>
        el("tr", { className: `action-${r.action}` }, [
          el("td", { text: r.name }),
          el("td", { text: r.language }),
          el("td", { text: r.action }),
          el("td", {
            text: (r.details || [])
              .map((d) => (typeof d === "string" ? d : `${d.field}: ${d.message}`))
              .join("; "),
          }),
        ]),
      ),
    );
    const refused = (counts.refused || 0) > 0;
    show($("import-apply"), dryRun);
    $("import-apply").disabled = refused || (counts.create || 0) + (counts.update || 0) === 0;
    $("import-cancel").textContent = dryRun ? "Cancel" : "Close";
  }

  async function applyImport() {
    const answer = await api("POST", "/api/templates/import?dryRun=false", state.importDoc);
    renderImport(answer, false);
    state.importDoc = null;
    await loadList();
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("sign-in-error").textContent = "";
      signIn(token)
        .then(() => {
          $("token").value = "";
        })
        .catch((err) => {
          $("sign-in-error").textContent =
            err instanceof ApiFailure && err.status === 401
              ? "That token is not accepted."
              : `Cannot sign in: ${err.message}`;
        });
    });
    $("sign-out").addEventListener("click", () =>
      busy(async () => {
        if (await leaveEditor()) signOut();
      }),
    );
    // Closing or reloading the tab with unsaved changes asks first (the browser's own dialog).
    window.addEventListener("beforeunload", (event) => {
      if (isDirty()) event.preventDefault();
    });
    for (const id of ["filter-name", "filter-type", "filter-language", "filter-status"]) {
      $(id).addEventListener("input", renderList);
    }
    $("new-template").addEventListener("click", () =>
      busy(async () => {
        if (await leaveEditor()) newTemplate();
      }),
    );
    $("export").addEventListener("click", () => busy(() => exportTemplates()));
    $("export-one").addEventListener("click", () => busy(() => exportTemplates({ one: true })));
    $("import-file").addEventListener("change", () => {
      const file = $("import-file").files[0];
      $("import-file").value = "";
      if (file) busy(() => importFile(file));
    });
    $("import-apply").addEventListener("click", () => busy(applyImport));
    $("import-cancel").addEventListener("click", () => closeEditor());

    const editor = $("editor");
    editor.addEventListener("submit", (event) => event.preventDefault());
    for (const id of ["f-name", "f-language", "f-subject", "f-body"]) {
      $(id).addEventListener("input", () => edited());
    }
    $("f-active").addEventListener("change", () => edited());
    $("f-type").addEventListener("change", () => {
      onTypeChange();
      edited();
    });
    $("add-param").addEventListener("click", () => {
      state.params.push({ key: "", mandatory: false, sample: "", extra: {} });
      renderParams();
      const keys = document.querySelectorAll("#params .param-key");
      keys[keys.length - 1].focus();
    });
    $("create").addEventListener("click", () => busy(create));
    $("save-draft").addEventListener("click", () => busy(saveDraft));
    $("publish").addEventListener("click", () => busy(publish));
    $("discard-draft").addEventListener("click", () => busy(discardDraft));
    $("clone").addEventListener("click", () => busy(cloneTemplate));
    $("delete").addEventListener("click", () => busy(remove));
  }

  async function start() {
    wire();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      signOut();
      return;
    }
    try {
      await signIn(token);
    } catch (err) {
      signOut(err instanceof ApiFailure && err.status === 401 ? "Sign in again." : err.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((err) => console.error(err));
  });
})();
