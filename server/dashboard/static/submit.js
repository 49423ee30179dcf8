"use strict";
// Submit page: builds a JobSpec from the form, checks every field, POSTs it, and shows every error next to
// its field at once: the form's own checks (bounds read from the schema, window.FORM_RULES) for what the
// browser can know, then the API's answer (which lists every path problem) for what only the server knows.

(() => {
  const { api, h, ApiError } = VP;
  const RULES = window.FORM_RULES;
  const form = document.getElementById("job-form");
  const status = document.getElementById("submit-status");
  const button = document.getElementById("submit");
  const device = document.getElementById("f-device");
  // API field names that the form shows under another field.
  const FIELD_OF = { budget_ms: "budget", budget_ratio: "budget", models: "fine_tune_models", steps: "fine_tune_steps" };
  // Whole-spec checks name no field in `loc`; their messages say which one they are about.
  const FIELD_OF_MESSAGE = [
    [/^no weights/, "weights"],
    [/budget/, "budget"],
    [/token_blocks/, "token_blocks"],
    [/train names training images/, "train"],
  ];
  const HOW = {
    model: "give a timm model name, e.g. deit_tiny_patch16_224",
    weights: "give the dense model's weights: upload a .safetensors/.pth file, or a path on the server",
    device: "choose the device whose latency prices every trial",
    budget: "give a budget: milliseconds, or a share of the dense model's latency such as 0.7",
    calib: "give the calibration images: upload a zip of an ImageFolder, or a folder on the server",
  };

  const value = (name) => form.elements[name].value.trim();
  const checked = (name) => form.elements[name].checked;

  /** Reads the form; every problem found goes to `problems` ({field, message}), none stops the others. */
  function readForm() {
    const problems = [];
    const problem = (field, message) => {
      problems.push({ field, message });
      return undefined;
    };

    function bounds(rule) {
      const parts = [];
      if (rule.ge !== undefined) parts.push(`at least ${rule.ge}`);
      if (rule.gt !== undefined) parts.push(`more than ${rule.gt}`);
      if (rule.le !== undefined) parts.push(`at most ${rule.le}`);
      if (rule.lt !== undefined) parts.push(`less than ${rule.lt}`);
      return `${rule.integer ? "a whole number" : "a number"}${parts.length ? ` ${parts.join(" and ")}` : ""}`;
    }

    /** A number field's value (undefined when empty: the default), checked against the schema's bounds. */
    function number(field, rule = field) {
      const input = form.elements[field];
      const text = value(field);
      if (input.validity && input.validity.badInput) return problem(field, "not a number; type digits, e.g. 8");
      if (text === "") return HOW[field] ? problem(field, HOW[field]) : undefined;
      const n = Number(text);
      const r = RULES.numbers[rule];
      const wrong = !Number.isFinite(n) || (r.integer && !Number.isInteger(n))
        || (r.ge !== undefined && n < r.ge) || (r.gt !== undefined && n <= r.gt)
        || (r.le !== undefined && n > r.le) || (r.lt !== undefined && n >= r.lt);
      return wrong ? problem(field, `give ${bounds(r)}`) : n;
    }

    /** An upload ref or an absolute server path; the server checks that it exists and is allowed. */
    function path(field) {
      const text = value(field);
      if (text === "") return HOW[field] ? problem(field, HOW[field]) : undefined;
      if (!text.startsWith("upload:") && !text.startsWith("/")) {
        return problem(field, "give an upload ref (upload:…, filled in by Upload) or an absolute path on the server");
      }
      return text;
    }

    function onGrid(field, n, step, example) {
      if (n !== undefined && Math.abs(Math.round(n / step) * step - n) > 1e-9) {
        problem(field, `give a multiple of ${step}, e.g. ${example}`);
      }
      return n;
    }

    const name = value("name");
    if (name.length > RULES.name_max) problem("name", `at most ${RULES.name_max} characters`);
    if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) problem("name", "one line of text, without control characters");

    let kwargs = {};
    if (value("model_kwargs")) {
      try {
        kwargs = JSON.parse(value("model_kwargs"));
        const plain = (v) => ["number", "string", "boolean"].includes(typeof v);
        if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs) || !Object.values(kwargs).every(plain)) {
          kwargs = problem("model_kwargs", 'give a JSON object of options to numbers, text or true/false, e.g. {"num_classes": 10}');
        }
      } catch (error) {
        kwargs = problem("model_kwargs", `not JSON: ${error.message}`);
      }
    }

    const blockTexts = value("token_blocks").split(/[\s,]+/).filter(Boolean);
    const blocks = blockTexts.map((s) => (/^\d+$/.test(s) ? Number(s) : s));
    if (blocks.some((b) => typeof b !== "number") || blocks.some((b, i) => i && b <= blocks[i - 1])) {
      problem("token_blocks", "give distinct block indices (0, 1, …) in increasing order, e.g. 3, 6, 9");
    }

    const budgetKey = value("budget_kind") === "ms" ? "budget_ms" : "budget_ratio";
    const margin = value("budget_margin"); // a choice of the select, never typed: none, "auto" or a share
    const tuned = number("fine_tune_models");
    const steps = number("fine_tune_steps");
    const spec = {
      model: value("model") || problem("model", HOW.model),
      weights: path("weights"),
      model_kwargs: kwargs,
      device: device.value || problem("device", HOW.device),
      batch: number("batch"),
      [budgetKey]: number("budget", budgetKey),
      budget_margin: margin === "" ? undefined : margin === "auto" ? "auto" : Number(margin),
      calib: path("calib"),
      val: path("val"),
      holdout: number("holdout"),
      class_map: path("class_map"),
      calib_images: number("calib_images"),
      val_images: number("val_images"),
      trials: number("trials"),
      cheap_first: number("cheap_first"),
      sampler: value("sampler"),
      objective: value("objective"),
      seed: number("seed"),
      recover: checked("recover"),
      onnx: checked("onnx"),
      fine_tune: tuned === undefined ? undefined : { models: tuned, steps },
      train: path("train"),
      space: {
        tokens: value("tokens") || undefined, // the service picks the op measured best on the device
        token_blocks: blocks,
        keep_min: onGrid("keep_min", number("keep_min"), RULES.keep_step, 0.4),
        heads: checked("heads"),
        mlp: checked("mlp"),
        group: number("group"),
        package_token: value("package_token"),
        merge_max: onGrid("merge_max", number("merge_max"), RULES.merge_step, 24),
        merge_group: number("merge_group"),
        precisions: value("precisions").split(","),
        keep_float: number("keep_float"),
      },
    };
    // JSON.stringify drops the undefined (defaulted) fields.
    return { body: { spec, name: name || null }, problems };
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

  /** One {field, message} per problem the API's answer names; field null for those no field holds. */
  function serverProblems(error) {
    if (!(error instanceof ApiError)) return [{ field: null, message: error.message || String(error) }];
    const body = error.body && typeof error.body === "object" ? error.body : {};
    // A refusal lists every problem in `errors` (a submit's 400, the API's 422); FastAPI's own 422 in `detail`.
    const items = Array.isArray(body.errors) ? body.errors : Array.isArray(error.detail) ? error.detail : null;
    if (items) {
      return items.map((item) => {
        const loc = Array.isArray(item.loc) ? item.loc : item.field ? String(item.field).split(".") : [];
        const own = loc[loc.length - 1];
        // A path error names its field first ("weights: ... does not exist"); beside the field it need not.
        let message = String(item.msg ?? item.message ?? "").replace(/^Value error, /, "");
        if (typeof own === "string" && message.startsWith(`${own}: `)) message = message.slice(own.length + 2);
        const field = fieldFor(loc) || guessField(message);
        const where = loc.filter((p) => p !== "body").join(".");
        return { field, message: field || !where ? message : `${where}: ${message}` };
      });
    }
    const text = typeof error.detail === "string" ? error.detail : error.message;
    return text.split("\n").filter(Boolean).map((line) => {
      // Path errors name their field first: "weights: ... does not exist on the server".
      const match = /^([a-z_.]+): ([\s\S]*)$/.exec(line);
      const field = match && fieldFor(match[1].split("."));
      return field ? { field, message: match[2] } : { field: guessField(line), message: line };
    });
  }

  function showFieldError(field, message) {
    const slot = document.getElementById(`err-${field}`);
    slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
    slot.closest(".field")?.classList.add("invalid");
    const folded = slot.closest("details");
    if (folded) folded.open = true; // an error under "More options" must not stay out of sight
  }

  /** Puts every problem next to its field, the rest in the banner, and says how many fields need a fix. */
  function showProblems(problems) {
    const loose = [];
    for (const { field, message } of problems) {
      if (field && document.getElementById(`err-${field}`)) showFieldError(field, message);
      else loose.push(message);
    }
    if (loose.length) VP.showBanner(loose.join("\n"));
    const marked = [...form.querySelectorAll(".field-error")].filter((slot) => slot.textContent).length;
    status.textContent = marked ? `${marked} field${marked > 1 ? "s need" : " needs"} a fix (marked in red).` : "";
    const first = form.querySelector(".field.invalid") || document.getElementById("banner");
    first.scrollIntoView({ block: "center", behavior: "smooth" });
  }

  // A field the user edits loses its error: what is left marked still needs a fix.
  form.addEventListener("input", (event) => {
    const field = event.target.closest(".field");
    if (!field || !field.classList.contains("invalid")) return;
    field.classList.remove("invalid");
    field.querySelector(".field-error").textContent = "";
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const { body, problems } = readForm();
    if (problems.length) {
      showProblems(problems);
      return;
    }
    button.disabled = true;
    status.textContent = "Checking the model, files, device and budget…";
    try {
      const job = await api("/api/jobs", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      status.textContent = `Queued job ${job.id}.`;
      window.location.href = `/jobs/${job.id}`;
    } catch (error) {
      status.textContent = "";
      showProblems(serverProblems(error));
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
          ? `${found.description} · ${found.coverage}${found.basis ? ` · rests on: ${found.basis}` : ""}`
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
