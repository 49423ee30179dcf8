"use strict";
// Job page: header with live progress, the accuracy/latency plot of every trial and the Pareto models,
// the table of Pareto models with downloads and the table of every trial (trials.js). Refreshes every 2 s
// until the job is final.

(() => {
  const { api, h, name, plainName, esc, fmt, bestUnderBudget, measuredOn, statusBadge, poll, FINAL, layout, axis, PLOT_CONFIG, download } = VP;
  const root = document.getElementById("job");
  const jobId = Number(root.dataset.jobId);
  const plot = document.getElementById("front");
  const modelsBody = document.querySelector("#models tbody");
  const cancel = document.getElementById("cancel");
  let modelsShown = []; // the last Pareto answer's models, for a header redrawn after a cancel
  let modelByTrial = new Map(); // trial number -> its searched Pareto model's id, so clicking either point opens it
  const fineTuned = (m) => m.variant === "fine-tuned";
  const quantised = (m) => m.precision && m.precision !== "fp32";
  let plotted = false;
  const trialTable = new TrialTable(document.getElementById("trials-card"), { modelOf: (n) => modelByTrial.get(n) });

  /**
   * The best accuracies within budget, each named by its images: validation top-1 first (the API's, else the
   * best saved Pareto model's, all of which are within budget), then the search's calibration top-1.
   */
  function bestStats(job, models) {
    const { images, calib, val: apiVal } = bestUnderBudget(job);
    const scored = models.filter((m) => Number.isFinite(m.val_top1));
    const top = scored.reduce((a, m) => (a && a.val_top1 >= m.val_top1 ? a : m), null);
    const val = images === "validation" ? apiVal : top && top.val_top1;
    // The job's image sets where the API names them, else the count the best model was validated on.
    const counted = top && top.metrics && top.metrics.val && top.metrics.val.n_images;
    const valSet = job.val_images || (counted ? { images: counted } : null);
    const stats = [];
    if (Number.isFinite(val)) {
      stats.push(["Best val top-1", fmt.pct(val), `top-1 of the best Pareto model within the budget, ${measuredOn("validation", valSet)}: images the search never saw`, "validation"]);
    }
    stats.push(["Best calib top-1", fmt.pct(calib), `top-1 of the best trial within the budget, ${measuredOn("calibration", job.calib_images)}: the images the search scores`, "calibration"]);
    return stats;
  }

  /** The budget the search keeps, and the safety margin below the budget asked for, if any. */
  function budgetStat(job) {
    const latency = (job.notes && job.notes.latency) || {};
    if (!(latency.margin > 0)) return ["Budget", fmt.ms(job.budget_ms)];
    return ["Budget", `${fmt.ms(latency.requested_budget_ms)} − ${fmt.pct(100 * latency.margin)}`,
      `the search keeps a ${fmt.pct(100 * latency.margin)} safety margin: it searches under ${fmt.ms(job.budget_ms)}`];
  }

  /** What the job's latencies rest on: the table's checked error, fitted timings, or specifications only. */
  function latencyStat(job) {
    const trust = job.notes && job.notes.latency && job.notes.latency.trust;
    if (!trust) return [];
    return [["Latency", trust.split(":")[0], trust]];
  }

  /** Where the trials are scored (the compute device, not the target) and in which number format. */
  function scoringStat(job) {
    const scoring = job.notes && job.notes.scoring;
    if (!scoring) return [];
    const autocast = scoring.dtype && scoring.dtype !== "float32" ? `, ${scoring.dtype} autocast` : "";
    return [["Scored on", scoring.compute.split(" ")[0], `trials scored on ${scoring.compute}${autocast}`]];
  }

  /** Token ops that cannot pay on the job's device: their best uniform config is priced at or over dense. */
  function unpaidOps(job) {
    const payoff = (job.notes && job.notes.token_payoff) || {};
    return Object.entries(payoff)
      .filter(([, ratio]) => ratio >= 1)
      .map(([op, ratio]) => `${op} does not pay on ${job.device}: its best uniform config is priced at ${ratio.toFixed(2)}× dense`);
  }

  function header(job, models) {
    document.title = `${plainName(job.name)} · vitprune`;
    document.getElementById("job-name").replaceChildren(name(job.name));
    document.getElementById("job-status").replaceChildren(statusBadge(job.status));
    const spec = job.spec || {};
    const budget = spec.budget_ratio != null ? `${spec.budget_ratio}× dense` : fmt.ms(spec.budget_ms);
    document.getElementById("job-subtitle").replaceChildren(
      h("span", { class: "mono", title: `timm model ${job.model}` }, job.model_label ?? job.model),
      ` on ${job.device} · batch ${spec.batch ?? 1} · budget ${budget} · ${spec.sampler ?? ""} sampler` +
        ` · ranked by calibration ${job.objective_label}`,
    );

    const { done, total, feasible, eta_s: eta } = job.progress;
    // A job still preparing (the demo model being trained) shows that stage's progress instead of its trials'.
    const prep = job.status === "preparing" ? job.preparation : null;
    const [barDone, barTotal] = prep ? [prep.done, prep.total] : [done, total];
    const share = barTotal > 0 ? Math.min(1, barDone / barTotal) : 0;
    const bar = document.getElementById("progress-bar");
    bar.style.width = `${(100 * share).toFixed(1)}%`;
    bar.parentElement.className = `progress big status-${job.status}`;
    const phase = job.status === "materialising" ? " · validating and saving the Pareto models" : "";
    document.getElementById("progress-text").textContent = prep
      ? `${prep.stage} · ${prep.done} / ${prep.total}, then ${total} trials`
      : `${done} / ${total} trials${phase}`;

    const stats = [
      ...bestStats(job, models),
      ["Feasible", `${feasible}`, "trials within the budget"],
      budgetStat(job),
      ...latencyStat(job),
      ...scoringStat(job),
      ["Dense", fmt.ms(job.dense_ms), "predicted latency of the unpruned model"],
      ["ETA", FINAL.has(job.status) ? "—" : fmt.duration(eta)],
      ["Created", fmt.ago(job.created_at)],
    ];
    document.getElementById("job-stats").replaceChildren(
      ...stats.map(([label, value, title, images]) => h("div", { title, dataset: { images } }, h("dt", {}, label), h("dd", {}, value))),
    );

    const error = document.getElementById("job-error");
    error.hidden = !job.error;
    error.textContent = job.error ? `${job.status === "failed" ? "Failed" : "Note"}: ${job.error}` : "";
    const unpaid = unpaidOps(job);
    const notes = document.getElementById("job-notes");
    notes.hidden = unpaid.length === 0;
    notes.textContent = unpaid.join("\n");
    cancel.hidden = !["preparing", "queued", "running"].includes(job.status);
  }

  /** The dense model, once the job has validated it: drawn as a point (before that, its latency as a line). */
  const denseScored = (dense) => (dense && dense.val && dense.val.top1 != null ? dense : null);

  /** `objective`: what the search ranks trials by, in words (each trial's score). */
  function traces(trials, models, dense, objective) {
    const complete = trials.filter((t) => t.state === "complete" && t.latency_ms != null);
    const evaluated = complete.filter((t) => t.evaluated);
    // Over-budget trials are never scored: a rug along the bottom (own axis) keeps them out of the accuracy range.
    const skipped = complete.filter((t) => !t.evaluated);
    const trialText = (t) =>
      `<b>trial ${t.number}</b>${t.feasible === false ? " · over budget" : ""}<br>` +
      `calib top-1 ${fmt.pct(t.accuracy)} · ${fmt.ms(t.latency_ms)}<br>` +
      `${esc(objective)} ${fmt.pct(t.score, 2)} (ranked by)<br>${esc(t.summary ?? "")}`;
    const overBudget = (m) => Boolean(m.metrics && m.metrics.over_budget);
    const paretoText = (m) =>
      `<b>${fineTuned(m) ? "fine-tuned model" : "Pareto model"} · trial ${m.trial}</b><br>` +
      `val top-1 ${fmt.pct(m.val_top1)} · ${fmt.ms(m.predicted_ms)}` +
      (fineTuned(m) ? `<br>before fine-tuning: val top-1 ${fmt.pct(beforeTop1(m))}` : "") +
      (overBudget(m) ? `<br><b>⚠ over the budget when timed: ${fmt.ms(m.measured_ms)}</b>` : "") +
      `<br>${esc(m.summary)}<br><i>click to open</i>`;
    const searched = models.filter((m) => !fineTuned(m));
    const tuned = models.filter(fineTuned);
    // Models that ran over the budget when timed on their own device are drawn red, with an x.
    const modelTrace = (uid, title, shown, color, symbol) => ({
      uid,
      name: title,
      type: "scatter",
      mode: uid === "pareto" ? "lines+markers" : "markers",
      line: { color: "rgba(37, 99, 235, 0.45)", width: 1.5 },
      x: shown.map((m) => m.predicted_ms),
      y: shown.map((m) => m.val_top1 ?? m.calib_accuracy),
      customdata: shown.map((m) => m.id),
      text: shown.map(paretoText),
      hovertemplate: "%{text}<extra></extra>",
      marker: {
        size: uid === "pareto" ? 11 : 14,
        color: shown.map((m) => (overBudget(m) ? "#dc2626" : color)),
        // Quantised models are diamonds on the same front as the float ones.
        symbol: shown.map((m) => (overBudget(m) ? "circle-x" : quantised(m) && symbol === "circle" ? "diamond" : symbol)),
        line: { color: "#ffffff", width: 1.5 },
      },
    });
    const denseText = (d) =>
      `<b>dense model</b><br>val top-1 ${fmt.pct(d.val.top1)} · ${fmt.ms(d.predicted_ms)}<br>` +
      `${fmt.params(d.params)} params · ${fmt.num(d.gflops, 3)} GFLOPs`;
    const denseTrace = dense && {
      uid: "dense",
      name: "dense model (validation top-1)",
      type: "scatter",
      mode: "markers",
      x: [dense.predicted_ms],
      y: [dense.val.top1],
      text: [denseText(dense)],
      hovertemplate: "%{text}<extra></extra>",
      marker: { size: 13, symbol: "diamond", color: "#111827", line: { color: "#ffffff", width: 1.5 } },
    };
    return [
      {
        uid: "trials",
        name: `evaluated trials (${evaluated.length})`,
        type: "scatter",
        mode: "markers",
        x: evaluated.map((t) => t.latency_ms),
        y: evaluated.map((t) => t.accuracy),
        customdata: evaluated.map((t) => t.number),
        text: evaluated.map(trialText),
        hovertemplate: "%{text}<extra></extra>",
        marker: {
          size: 7,
          color: evaluated.map((t) => (t.feasible === false ? "#9ca3af" : "#cbd5e1")),
          symbol: evaluated.map((t) => (t.feasible === false ? "x-thin-open" : "circle")),
          line: { width: evaluated.map((t) => (t.feasible === false ? 1.5 : 0.5)), color: "#94a3b8" },
        },
      },
      {
        uid: "skipped",
        name: `over budget, not scored (${skipped.length})`,
        type: "scatter",
        mode: "markers",
        x: skipped.map((t) => t.latency_ms),
        y: skipped.map(() => 0.03),
        yaxis: "y2",
        customdata: skipped.map((t) => t.number),
        text: skipped.map((t) => `<b>trial ${t.number}</b> · over budget, not scored<br>${fmt.ms(t.latency_ms)}<br>${esc(t.summary ?? "")}`),
        hovertemplate: "%{text}<extra></extra>",
        marker: { size: 7, color: "#9ca3af", symbol: "x-thin-open", line: { width: 1.5, color: "#9ca3af" } },
      },
      modelTrace("pareto", `Pareto models (${searched.length}, validation top-1${searched.some(quantised) ? "; diamonds quantised" : ""})`, searched, "#2563eb", "circle"),
      tuned.length && modelTrace("fine-tuned", `fine-tuned models (${tuned.length}, validation top-1)`, tuned, "#059669", "star"),
      denseTrace,
    ].filter(Boolean);
  }

  function markers(job, dense) {
    // The budget (and, until the dense model is a point, its latency) as vertical lines.
    const vline = (name, x, color, dash, label) => ({
      shape: { type: "line", name, xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, line: { color, dash, width: 1.5 } },
      note: { x, xref: "x", yref: "paper", y: 1, yanchor: "bottom", text: label, showarrow: false, font: { color, size: 11 } },
    });
    const lines = [];
    const latency = (job.notes && job.notes.latency) || {};
    if (latency.margin > 0 && latency.requested_budget_ms != null) {
      // With a safety margin the search keeps below the budget asked for: both lines.
      lines.push(vline("budget", latency.requested_budget_ms, "#dc2626", "dash", `budget ${fmt.ms(latency.requested_budget_ms)}`));
      if (job.budget_ms != null) lines.push(vline("searched", job.budget_ms, "#f59e0b", "dot", `searched under ${fmt.ms(job.budget_ms)}`));
    } else if (job.budget_ms != null) {
      lines.push(vline("budget", job.budget_ms, "#dc2626", "dash", `budget ${fmt.ms(job.budget_ms)}`));
    }
    if (!dense && job.dense_ms != null) lines.push(vline("dense", job.dense_ms, "#6b7280", "dot", `dense ${fmt.ms(job.dense_ms)}`));
    return { shapes: lines.map((l) => l.shape), annotations: lines.map((l) => l.note) };
  }

  function draw(job, trials, pareto) {
    const dense = denseScored(pareto.dense);
    const data = traces(trials, pareto.models, dense, job.objective_label);
    const { shapes, annotations } = markers(job, dense);
    const chart = layout({
      margin: { l: 56, r: 16, t: 28, b: 48 },
      xaxis: axis("predicted latency (ms)"),
      yaxis: axis("top-1 (%)"),
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      shapes,
      annotations,
      legend: { orientation: "h", y: -0.16, x: 0 },
    });
    if (!data.some((t) => t.x.length) && !shapes.length) {
      chart.annotations = [{ text: "No finished trials yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { size: 14, color: "#9ca3af" } }];
    }
    Plotly.react(plot, data, chart, PLOT_CONFIG);
    if (!plotted) {
      plotted = true;
      plot.on("plotly_click", (event) => {
        const point = event.points && event.points[0];
        if (!point) return;
        const uid = point.data.uid;
        const id = uid === "pareto" || uid === "fine-tuned" ? point.customdata : modelByTrial.get(point.customdata);
        if (id != null) window.location.href = `/models/${id}`;
      });
    }
  }

  /** A fine-tuned model's validation top-1 before training (its source's, on the same images). */
  const beforeTop1 = (m) => {
    const before = m.metrics && m.metrics.before_fine_tune && m.metrics.before_fine_tune.val;
    return before ? before.top1 : null;
  };
  const delta = (m) => {
    const before = beforeTop1(m);
    if (!Number.isFinite(before) || !Number.isFinite(m.val_top1)) return "—";
    const change = m.val_top1 - before;
    return `${change >= 0 ? "+" : "−"}${fmt.num(Math.abs(change), 1)}`;
  };
  /** How a model was fine-tuned, in words, for its badge's tooltip. */
  const fineTuneText = (m) => {
    const run = (m.metrics && m.metrics.fine_tune) || {};
    const images = run.train_images ? ` on ${run.train_images} images` : "";
    return `trained ${run.steps ?? "?"} steps${images} towards the dense model; before: val top-1 ${fmt.pct(beforeTop1(m))}`;
  };

  function modelRow(model) {
    const val = (model.metrics && model.metrics.val) || {};
    const mismatch = model.metrics && model.metrics.latency_mismatch;
    const over = model.metrics && model.metrics.over_budget;
    const why = [over ? "ran over the budget when timed" : "", mismatch ? "measured and predicted differ by more than 10%" : ""];
    const measured = model.measured_ms == null
      ? "—"
      : h("span", { class: over || mismatch ? "flag" : "", title: why.filter(Boolean).join("; ") },
        fmt.ms(model.measured_ms), over ? " ⚠ over budget" : mismatch ? " ⚠" : "");
    const formats = [["bundle", "zip"], ["safetensors", "weights"], ["config", "config"], ["onnx", "onnx"]];
    return h(
      "tr",
      {},
      h("td", {}, h("a", { href: `/models/${model.id}`, class: "strong" }, `trial ${model.trial}`),
        fineTuned(model) ? h("span", { class: "badge variant", title: fineTuneText(model) }, "fine-tuned") : "",
        quantised(model) ? h("span", { class: "badge variant", title: "quantised after pruning; priced in int8" }, model.precision) : ""),
      h("td", { class: "num strong", title: fineTuned(model) ? `before fine-tuning: ${fmt.pct(beforeTop1(model))}` : "" },
        fmt.pct(model.val_top1), fineTuned(model) ? h("span", { class: "muted small" }, ` (${delta(model)})`) : ""),
      h("td", { class: "num" }, fmt.pct(val.top5)),
      h("td", { class: "num" }, fmt.pct(val.agreement ?? (val.fidelity && val.fidelity.agreement))),
      h("td", { class: "num" }, fmt.pct(model.calib_accuracy)),
      h("td", { class: "num" }, fmt.ms(model.predicted_ms)),
      h("td", { class: "num" }, measured),
      h("td", { class: "num" }, fmt.params(model.params)),
      h("td", { class: "num" }, fmt.num(model.gflops, 3)),
      h("td", { class: "small" }, model.summary),
      h("td", { class: "downloads" }, ...formats.map(([format, label]) =>
        h("a", { class: "button tiny", href: download(model.id, format), download: true, dataset: { format } }, label))),
    );
  }

  function table(job, models) {
    if (models.length) {
      modelsBody.replaceChildren(...models.map(modelRow));
      return;
    }
    const why = {
      done: "The search found no model within the budget.",
      failed: "The job failed before its Pareto models were saved.",
      cancelled: "The job was cancelled before its Pareto models were saved.",
    }[job.status] || "Pareto models are validated and saved when the search finishes.";
    modelsBody.replaceChildren(h("tr", {}, h("td", { colspan: 11, class: "empty" }, why)));
  }

  cancel.addEventListener("click", async () => {
    if (!window.confirm(`Cancel job ${jobId}? Its worker stops within a trial or two.`)) return;
    cancel.disabled = true;
    try {
      header(await api(`/api/jobs/${jobId}/cancel`, { method: "POST" }), modelsShown);
    } catch (error) {
      VP.showBanner(error.message);
    } finally {
      cancel.disabled = false;
    }
  });

  poll(async () => {
    const [job, trials, pareto] = await Promise.all([
      api(`/api/jobs/${jobId}`),
      api(`/api/jobs/${jobId}/trials`),
      api(`/api/jobs/${jobId}/pareto`),
    ]);
    modelByTrial = new Map(pareto.models.filter((m) => !fineTuned(m)).map((m) => [m.trial, m.id]));
    modelsShown = pareto.models;
    header(job, pareto.models);
    draw(job, trials, pareto);
    table(job, pareto.models);
    trialTable.update(trials, pareto.models.length);
    return !FINAL.has(job.status);
  });
})();
