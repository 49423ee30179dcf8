"use strict";
// Shared helpers of the dashboard pages: REST calls, DOM building, formatting, polling, plot defaults.
// Plain browser JavaScript on purpose: no build step, nothing fetched from outside the service.

const VP = (() => {
  const FINAL = new Set(["done", "failed", "cancelled"]);
  const POLL_MS = 2000;

  class ApiError extends Error {
    constructor(status, detail, body = null) {
      super(typeof detail === "string" ? detail : `HTTP ${status}`);
      this.status = status;
      this.detail = detail;
      this.body = body; // the whole JSON answer: some carry more than `detail` (a submit's `errors` list)
    }
  }

  // A service started with VITPRUNE_TOKEN answers 401 to writes without it: ask once, keep it in this browser.
  const TOKEN_KEY = "vitprune-token";

  function authHeaders() {
    const token = localStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  /** fetch() a JSON endpoint; a non-2xx answer throws ApiError carrying FastAPI's `detail`. */
  async function api(path, options = {}, askedForToken = false) {
    const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 && !askedForToken) {
      const token = window.prompt("This vitprune service needs its API token (VITPRUNE_TOKEN):");
      if (token) {
        localStorage.setItem(TOKEN_KEY, token.trim());
        return api(path, options, true);
      }
    }
    const text = await response.text();
    let body = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      // not JSON (a proxy's error page): keep the text as the message
    }
    if (!response.ok) {
      throw new ApiError(response.status, body && body.detail !== undefined ? body.detail : text, body);
    }
    return body;
  }

  /** Builds an element; children are nodes or strings (always inserted as text, never as HTML). */
  function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069). One in a name, such as
  // U+202E (right-to-left override), would reorder the text after it: the rest of a table row or plot label.
  const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g;

  /** A user-given name as plain text: without bidi controls, isolated (FSI…PDI) so right-to-left script
   * in it stays inside it. For text that cannot hold an element: plot labels, the window title. */
  function plainName(text) {
    return `\u2068${String(text ?? "").replace(BIDI_CONTROLS, "")}\u2069`;
  }

  /** A user-given name as an element: bidi controls stripped, and a <bdi> (direction from its own
   * text) so a right-to-left name never reorders what stands beside it. Every page shows names with it. */
  function name(text, attrs = {}) {
    return h("bdi", attrs, String(text ?? "").replace(BIDI_CONTROLS, ""));
  }

  /** Escapes text for plotly hover labels, which accept a subset of HTML. */
  function esc(text) {
    return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const fmt = {
    pct: (x, digits = 1) => (isNum(x) ? `${x.toFixed(digits)}%` : "—"),
    // Latencies span 0.1 ms (FPGA, tiny models) to seconds: keep about three significant digits.
    ms: (x) => (isNum(x) ? `${x.toFixed(x < 1 ? 3 : x < 10 ? 2 : 1)} ms` : "—"),
    params: (n) => (isNum(n) ? (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : `${(n / 1e3).toFixed(1)} k`) : "—"),
    num: (x, digits = 3) => (isNum(x) ? String(Number(x.toFixed(digits))) : "—"),
    duration(seconds) {
      if (!isNum(seconds)) return "—";
      const s = Math.max(0, Math.round(seconds));
      if (s < 60) return `${s} s`;
      if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
      return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    },
    /** The API's timestamps are UTC; SQLite returns them without a zone. */
    date(iso) {
      if (!iso) return null;
      return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
    },
    ago(iso) {
      const date = fmt.date(iso);
      if (!date) return "—";
      const s = (Date.now() - date.getTime()) / 1000;
      if (s < 45) return "just now";
      if (s < 3600) return `${Math.round(s / 60)} min ago`;
      if (s < 86400) return `${Math.round(s / 3600)} h ago`;
      return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
    },
  };

  /**
   * A job's best accuracy within its budget, leading with validation top-1 (the Pareto models', on images
   * the search never saw) where the API gives it, else the search's calibration top-1, named as such:
   * {value, images: "validation" | "calibration", calib, val}. The two differ by points: neither goes unnamed.
   */
  function bestUnderBudget(job) {
    const progress = job.progress || {};
    const val = job.best_val_accuracy ?? progress.best_val_accuracy;
    const calib = progress.best_calib_accuracy ?? progress.best_accuracy;
    return isNum(val)
      ? { value: val, images: "validation", calib, val }
      : { value: calib, images: "calibration", calib, val: null };
  }

  /**
   * Where a figure was measured, in words: "on the validation images val (500)". `set` is a job's
   * val_images / calib_images ({name, images}) when the API gives it; `which` names the kind either way.
   */
  function measuredOn(which, set) {
    const count = set && isNum(set.images) ? set.images.toLocaleString() : null;
    if (!set || !set.name) return count ? `on ${count} ${which} images` : `on the ${which} images`;
    return `on the ${which} images ${plainName(set.name)}${count ? ` (${count})` : ""}`;
  }

  /** What the job's model is, for display: the API's model_label (e.g. the demo's small ViT), else its timm name. */
  const modelLabel = (job) => job.model_label || job.model;

  function statusBadge(status) {
    return h("span", { class: `badge status-${status}` }, status);
  }

  function progressBar(done, total, status) {
    const share = total > 0 ? Math.min(1, done / total) : 0;
    return h(
      "div",
      { class: `progress status-${status}`, title: `${done} of ${total} trials` },
      h("div", { class: "bar", style: `width: ${(100 * share).toFixed(1)}%` }),
    );
  }

  /**
   * Patch tokens each block's MLP and the later blocks run on, starting from `start` tokens. Each token
   * op's count rule comes from the server's registry (`TOKEN_RULES`, kind -> [rule, field]): "ratio"
   * keeps ceil(x·N) of the N tokens that reach it (the same float arithmetic as the server), "pairs"
   * removes min(x, N/2) of them, "per_image" keeps a number per image, so counts from there on are
   * unknown (`n` null, `bound` the most they can be). The package token exists from the first block
   * that really drops tokens by ratio. Without `start` (null: the dense structure is not known yet),
   * `n` is the share of the patch tokens kept.
   */
  function tokenCounts(config, start) {
    let n = start ?? 1;
    let pkg = false;
    let perImage = false;
    return config.blocks.map((block, index) => {
      const op = block.tokens || { kind: "none" };
      const [rule, field] = window.TOKEN_RULES[op.kind] || [];
      if (rule === "per_image") perImage = true;
      else if (rule === "ratio" && !perImage) {
        const kept = start == null ? op[field] * n : Math.max(1, Math.ceil(op[field] * n));
        if (config.package_token && (kept < n || pkg)) pkg = true;
        n = kept;
      } else if (rule === "pairs" && !perImage) {
        // At most half of the tokens pair up; without `start` the share is approximate (196 patches).
        n = start == null ? n * (1 - Math.min(op[field] / 196, 0.5)) : n - Math.min(op[field], Math.floor(n / 2));
      }
      return { index, op, n: perImage ? null : n, bound: n, pkg: !perImage && pkg };
    });
  }

  /** Runs `step` now and every POLL_MS while it returns true; one request at a time, never overlapping. */
  function poll(step) {
    let stopped = false;
    const tick = async () => {
      let again = false;
      try {
        again = await step();
        clearBanner();
      } catch (error) {
        showBanner(error.message || String(error));
        again = !(error instanceof ApiError && error.status === 404);
      }
      if (again && !stopped) setTimeout(tick, POLL_MS);
    };
    tick();
    return () => {
      stopped = true;
    };
  }

  function showBanner(message, kind = "error") {
    const banner = document.getElementById("banner");
    banner.className = `banner ${kind}`;
    banner.textContent = message;
    banner.hidden = false;
  }

  function clearBanner() {
    document.getElementById("banner").hidden = true;
  }

  /** Plot defaults shared by every chart, so they look like one family. */
  function layout(extra = {}) {
    return {
      margin: { l: 56, r: 16, t: 16, b: 48 },
      font: { family: getComputedStyle(document.body).fontFamily, size: 12, color: "#374151" },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
      hovermode: "closest",
      hoverlabel: { bgcolor: "#111827", bordercolor: "#111827", font: { color: "#f9fafb", size: 12 } },
      legend: { orientation: "h", y: -0.18, x: 0 },
      uirevision: "keep", // live refreshes keep the user's zoom and hidden traces
      ...extra,
    };
  }

  const axis = (title, extra = {}) => ({
    title: { text: title },
    gridcolor: "#eef0f3",
    zerolinecolor: "#e5e7eb",
    linecolor: "#d1d5db",
    ...extra,
  });

  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
  const COLORS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4b5563"];

  const download = (modelId, format) => `/api/models/${modelId}/download?format=${format}`;

  return {
    FINAL, ApiError, api, authHeaders, h, name, plainName, esc, fmt, bestUnderBudget, measuredOn, modelLabel, statusBadge, progressBar, tokenCounts, poll,
    showBanner, clearBanner, layout, axis, PLOT_CONFIG, COLORS, download,
  };
})();
