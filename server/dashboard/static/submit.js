"use strict";
// Submit page: builds a JobSpec from the form, POSTs it, and shows the API's errors next to their fields.
// The server is the one validator (the form is `novalidate`): its messages are the ones the CLI shows too.

(() => {
  const { api, h, ApiError } = VP;
  const form = document.getElementById("job-form");
  const status = document.getElementById("submit-status");
  const button = document.getElementById("submit");
  const device = document.getElementById("f-device");
  // API field names that the form shows under another field.
  const FIELD_OF = { budget_ms: "budget", budget_ratio: "budget" };
  // Whole-spec checks name no field in `loc`; their messages say which one they are about.
  const FIELD_OF_MESSAGE = [
    [/^no weights/, "weights"],
    [/budget/, "budget"],
  ];

  const value = (name) => form.elements[name].value.trim();
  const checked = (name) => form.elements[name].checked;

  /** A number input's value; empty means "use the default" (omitted), anything else goes as typed. */
  function number(name) {
    const text = value(name);
    if (text === "") return undefined;
    const parsed = Number(text);
    return Number.isFinite(parsed) ? parsed : text;
  }

  class FormError extends Error {
    constructor(field, message) {
      super(message);
      this.field = field;
    }
  }

  function buildBody() {
    let kwargs = {};
    if (value("model_kwargs")) {
      try {
        kwargs = JSON.parse(value("model_kwargs"));
      } catch (error) {
        throw new FormError("model_kwargs", `not JSON: ${error.message}`);
      }
    }
    const budget = number("budget");
    if (budget === undefined) throw new FormError("budget", "give a budget: milliseconds, or a share of dense latency");
    const blocks = value("token_blocks").split(/[\s,]+/).filter(Boolean).map((s) => (Number.isInteger(Number(s)) ? Number(s) : s));
    const spec = {
      // Empty required fields are left out, so the API answers "Field required" next to them.
      model: value("model") || undefined,
      weights: value("weights") || undefined,
      model_kwargs: kwargs,
      device: device.value || undefined,
      batch: number("batch"),
      [value("budget_kind") === "ms" ? "budget_ms" : "budget_ratio"]: budget,
      calib: value("calib") || undefined,
      val: value("val") || undefined,
      holdout: number("holdout"),
      class_map: value("class_map") || undefined,
      calib_images: number("calib_images"),
      val_images: number("val_images"),
      trials: number("trials"),
      cheap_first: number("cheap_first"),
      sampler: value("sampler"),
      seed: number("seed"),
      recover: checked("recover"),
      onnx: checked("onnx"),
      space: {
        tokens: value("tokens"),
        token_blocks: blocks,
        keep_min: number("keep_min"),
        heads: checked("heads"),
        mlp: checked("mlp"),
        group: number("group"),
        package_token: value("package_token"),
        merge_max: number("merge_max"),
        merge_group: number("merge_group"),
      },
    };
    return { spec, name: value("name") || null }; // JSON.stringify drops the undefined (defaulted) fields
  }

  function clearErrors() {
    form.querySelectorAll(".field-error").forEach((node) => {
      node.textContent = "";
    });
    form.querySelectorAll(".field.invalid").forEach((node) => node.classList.remove("invalid"));
    VP.clearBanner();
  }

  /** The form field an error's `loc` points at: the innermost name that is a field here. */
  function fieldFor(loc) {
    for (const part of [...loc].reverse()) {
      if (typeof part !== "string") continue;
      const name = FIELD_OF[part] || part;
      if (document.getElementById(`err-${name}`)) return name;
    }
    return null;
  }

  function guessField(message) {
    const found = FIELD_OF_MESSAGE.find(([pattern]) => pattern.test(message));
    return found ? found[1] : null;
  }

  function showFieldError(field, message) {
    const slot = document.getElementById(`err-${field}`);
    slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
    slot.closest(".field")?.classList.add("invalid");
  }

  /** Puts each error next to its field; the rest in the banner. Returns whether any went to a field. */
  function showErrors(error) {
    const loose = [];
    if (error instanceof ApiError && error.status === 422 && Array.isArray(error.detail)) {
      for (const item of error.detail) {
        const message = String(item.msg || "").replace(/^Value error, /, "");
        const loc = item.loc || [];
        const field = fieldFor(loc) || (loc[loc.length - 1] === "spec" ? guessField(message) : null);
        if (field) showFieldError(field, message);
        else loose.push(`${(item.loc || []).filter((p) => p !== "body").join(".")}: ${message}`);
      }
    } else if (error instanceof ApiError && error.status === 400 && typeof error.detail === "string") {
      // Path errors name their field first: "weights: ... does not exist on the server".
      const match = /^([a-z_]+): ([\s\S]*)$/.exec(error.detail);
      const field = match && fieldFor([match[1]]);
      const guessed = field ? null : guessField(error.detail);
      if (field) showFieldError(field, match[2]);
      else if (guessed) showFieldError(guessed, error.detail);
      else loose.push(error.detail);
    } else if (error instanceof FormError) {
      showFieldError(error.field, error.message);
    } else {
      loose.push(error.message || String(error));
    }
    if (loose.length) VP.showBanner(loose.join("\n"));
    const first = form.querySelector(".field.invalid") || document.getElementById("banner");
    first.scrollIntoView({ block: "center", behavior: "smooth" });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    button.disabled = true;
    status.textContent = "Checking the model, files, device and budget…";
    try {
      const job = await api("/api/jobs", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(buildBody()),
      });
      status.textContent = `Queued job ${job.id}.`;
      window.location.href = `/jobs/${job.id}`;
    } catch (error) {
      status.textContent = "";
      showErrors(error);
    } finally {
      button.disabled = false;
    }
  });

  async function loadDevices() {
    try {
      const devices = await api("/api/devices");
      const options = devices.map((d) => h(
        "option",
        { value: d.name, disabled: !d.available, title: d.description },
        `${d.name}${d.alias ? ` (${d.alias})` : ""} · ${d.kind}${d.available ? "" : " · unavailable"}`,
      ));
      device.replaceChildren(h("option", { value: "" }, "Choose a device…"), ...options);
      const describe = () => {
        const found = devices.find((d) => d.name === device.value);
        document.querySelector('[data-field="device"] .hint').textContent = found
          ? `${found.description} · ${found.coverage}`
          : "whose latency table prices every trial";
      };
      device.addEventListener("change", describe);
    } catch (error) {
      device.replaceChildren(h("option", { value: "" }, "could not load devices"));
      VP.showBanner(`devices: ${error.message}`);
    }
  }

  /** Uploads stream the raw file (XMLHttpRequest, for progress); the returned ref fills the field. */
  function upload(input) {
    const file = input.files[0];
    if (!file) return;
    const target = document.getElementById(input.dataset.target);
    const note = document.querySelector(`[data-status-for="${input.dataset.target}"]`);
    // The API accepts plain names only; keep the extension, replace anything else.
    const filename = file.name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[^A-Za-z0-9]+/, "").slice(-128) || "upload";
    const request = new XMLHttpRequest();
    request.open("PUT", `/api/uploads/${input.dataset.upload}?filename=${encodeURIComponent(filename)}`);
    for (const [name, value] of Object.entries(VP.authHeaders())) request.setRequestHeader(name, value);
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) note.textContent = `Uploading ${file.name}: ${Math.round((100 * e.loaded) / e.total)}%`;
    };
    request.onload = () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch (_) {
        // an error page that is not JSON
      }
      if (request.status === 201 && body) {
        target.value = body.ref;
        const counts = body.images != null ? ` · ${body.classes} classes, ${body.images} images` : "";
        note.className = "upload-status ok";
        note.textContent = `Uploaded ${file.name} (${(body.size / 1e6).toFixed(1)} MB)${counts} · sha256 ${body.sha256.slice(0, 12)}…`;
      } else {
        note.className = "upload-status error";
        note.textContent = `Upload failed: ${(body && body.detail) || request.statusText || request.status}`;
      }
      input.value = "";
    };
    request.onerror = () => {
      note.className = "upload-status error";
      note.textContent = "Upload failed: the connection was lost";
    };
    note.className = "upload-status";
    note.textContent = `Uploading ${file.name}…`;
    request.send(file);
  }

  form.querySelectorAll("input[type=file][data-upload]").forEach((input) => {
    input.addEventListener("change", () => upload(input));
  });
  loadDevices();
})();
