"use strict";
// Model page: metrics, the pruned structure per block (tokens, heads, MLP width), config and downloads.

(() => {
  const { api, h, name, plainName, esc, fmt, layout, axis, PLOT_CONFIG, download, tokenCounts } = VP;
  const modelId = Number(document.getElementById("model").dataset.modelId);

  function metricCard(label, value, sub, extra = {}) {
    return h("div", { class: `metric ${extra.class || ""}`, title: extra.title }, h("div", { class: "label" }, label),
      h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
  }

  function metrics(model, job, dense) {
    const val = (model.metrics && model.metrics.val) || {};
    const fidelity = val.fidelity || {};
    const agreement = val.agreement ?? fidelity.agreement;
    const kl = val.kl ?? fidelity.kl;
    const mismatch = model.metrics && model.metrics.latency_mismatch;
    const budget = job && job.budget_ms;
    const denseMs = job && job.dense_ms;
    const against = [
      budget ? `${((100 * model.predicted_ms) / budget).toFixed(0)}% of budget` : null,
      denseMs ? `${(denseMs / model.predicted_ms).toFixed(2)}× faster than dense` : null,
    ].filter(Boolean).join(" · ");
    const valSub = [
      val.n_images ? `on ${val.n_images} validation images` : "on the validation images",
      dense && dense.val && dense.val.top1 != null ? `dense ${fmt.pct(dense.val.top1)}` : null,
    ].filter(Boolean).join(" · ");
    let measured = metricCard("Measured latency", "—", "not measured on this device");
    if (model.measured_ms != null) {
      const ratio = model.measured_ms / model.predicted_ms;
      measured = metricCard(
        "Measured latency",
        fmt.ms(model.measured_ms),
        mismatch ? `⚠ ${ratio.toFixed(2)}× the prediction (over 10% off)` : `${ratio.toFixed(2)}× the prediction`,
        { class: mismatch ? "warn" : "", title: "median of timed runs on the worker" },
      );
    }
    const before = (model.metrics && model.metrics.before_fine_tune) || null;
    const run = (model.metrics && model.metrics.fine_tune) || {};
    const beforeVal = (before && before.val) || {};
    // A fine-tuned model trained on the calibration images: its card shows the figures before training there.
    const calibCard = before
      ? metricCard("Before fine-tuning", fmt.pct(beforeVal.top1),
        `val top-1 of the searched model · agreement ${fmt.pct(beforeVal.agreement)} · then ${run.steps ?? "?"} steps` +
        (run.train_images ? ` on ${run.train_images} images` : ""), { title: "the same validation images, before training" })
      : metricCard("Calibration top-1", fmt.pct(model.calib_accuracy), "on the calibration images the search scored");
    const copy = h("button", { type: "button", class: "button tiny", onclick: () => navigator.clipboard?.writeText(model.sha256) }, "copy");
    document.getElementById("metrics").replaceChildren(
      metricCard("Validation top-1", fmt.pct(model.val_top1), valSub || null, { class: "primary" }),
      metricCard("Validation top-5", fmt.pct(val.top5)),
      metricCard("Agreement with dense", fmt.pct(agreement), kl != null ? `KL ${fmt.num(kl, 4)}` : null, { title: "top-1 agreement with the dense model" }),
      calibCard,
      metricCard("Predicted latency", fmt.ms(model.predicted_ms), against || null),
      measured,
      metricCard("Parameters", fmt.params(model.params), model.params.toLocaleString()),
      metricCard("GFLOPs", fmt.num(model.gflops, 3), "per image"),
      metricCard("SHA-256 of model.safetensors", h("code", { class: "hash" }, model.sha256), copy, { class: "wide" }),
    );
  }

  /**
   * Three small bar charts per block: patch tokens kept, attention heads and MLP width, each in front of a
   * wide faded bar of the dense model's. Without the dense structure (the job has not recorded it), the
   * token chart shows the share of patch tokens kept and there are no dense bars.
   */
  function structure(model, dense) {
    const config = model.config;
    const blocks = config.blocks.map((_, i) => `${i}`);
    const base = dense && dense.blocks.length === blocks.length ? dense.blocks : null;
    const rows = tokenCounts(config, base ? base[0].tokens_in : null);
    const unit = base ? "patch tokens" : "share of patch tokens";
    const describe = (r) => {
      const op = { topk: `top-k keep ${r.op.keep_ratio}`, threshold: `threshold ${r.op.threshold}`, merge: `merge r=${r.op.r}` }[r.op.kind] || "no reduction";
      const count = r.n == null ? "a count per image"
        : base ? `${r.n} of ${base[r.index].tokens_in} patch tokens` : `${fmt.pct(100 * r.n)} of the patch tokens`;
      return `<b>block ${r.index}</b> · ${esc(op)}<br>${count}${r.pkg ? " + package token" : ""}`;
    };
    const bar = (name, values, color, hover, extra = {}) => ({
      type: "bar", name, x: blocks, y: values, width: 0.5, marker: { color }, hovertext: hover,
      hovertemplate: "%{hovertext}<extra></extra>", ...extra,
    });
    const denseBar = (key, what) => base && bar("dense", base.map((b) => b[key]), "rgba(148, 163, 184, 0.3)",
      base.map((b, i) => `<b>block ${i}</b> · dense model<br>${b[key]} ${what}`), { width: 0.85 });
    const tokenHover = rows.map(describe);
    const tokenData = [
      denseBar("tokens_in", "patch tokens"),
      bar(unit, rows.map((r) => r.n), "#2563eb", tokenHover),
      // The package token is one token on top; on a share axis it has no height, but its hover still says so.
      bar("package token", rows.map((r) => (r.pkg && base ? 1 : null)), "#f59e0b", tokenHover, { base: rows.map((r) => r.n) }),
      bar("per image (threshold)", rows.map((r) => (r.n == null ? r.bound : null)), null, tokenHover, {
        marker: { color: "#e5e7eb", pattern: { shape: "/", fgcolor: "#9ca3af" } },
        text: rows.map((r) => (r.n == null ? "per image" : "")),
        textposition: "inside",
        textangle: 0,
        insidetextanchor: "middle",
        insidetextfont: { size: 10, color: "#374151" },
      }),
    ].filter((t) => t && t.y.some((v) => v != null));
    const small = (title, ytitle, data, extra = {}) => layout({
      title: { text: title, x: 0, xanchor: "left", font: { size: 13 } },
      margin: { l: 52, r: 8, t: 36, b: 40 },
      xaxis: axis("block", { type: "category" }),
      // Whole units (heads, a few tokens) get whole-number ticks.
      yaxis: axis(ytitle, { rangemode: "tozero", ...(Math.max(...data.flatMap((t) => t.y).filter(Number.isFinite)) <= 12 ? { dtick: 1 } : {}) }),
      barmode: "overlay",
      showlegend: false,
      ...extra,
    });
    Plotly.react("plot-tokens", tokenData, small("Tokens kept", unit, tokenData, {
      showlegend: tokenData.length > 1,
      legend: { orientation: "h", y: -0.3, x: 0 },
      ...(base ? {} : { yaxis: axis(unit, { rangemode: "tozero", tickformat: ".0%" }) }),
    }), PLOT_CONFIG);
    const widths = (key, name, what, color) => {
      const values = config.blocks.map((b) => b[key]);
      return [denseBar(key, what), bar(name, values, color, values.map((n, i) => `<b>block ${i}</b><br>${n} ${what}`))].filter(Boolean);
    };
    const heads = widths("heads", "heads", "attention heads", "#7c3aed");
    const mlp = widths("mlp_hidden", "MLP width", "MLP hidden channels", "#059669");
    Plotly.react("plot-heads", heads, small("Attention heads", "heads", heads), PLOT_CONFIG);
    Plotly.react("plot-mlp", mlp, small("MLP width", "hidden channels", mlp), PLOT_CONFIG);

    const prefix = base ? dense.num_prefix_tokens : 0;
    const hint = !base
      ? "The job has not recorded the dense structure, so the token chart shows the share of patch tokens kept."
      : `Faded bars: the dense model. Patch tokens only${prefix ? `; its ${prefix} class/distillation token${prefix > 1 ? "s are" : " is"} not counted` : ""}.`;
    document.getElementById("structure-hint").textContent = `${model.summary}. ${hint}`;
  }

  function header(model, job) {
    const jobName = job ? job.name : `job ${model.job_id}`;
    document.title = `Trial ${model.trial} · ${plainName(jobName)} · vitprune`;
    document.getElementById("crumbs").replaceChildren(
      h("a", { href: "/" }, "Jobs"), " › ", h("a", { href: `/jobs/${model.job_id}` }, name(jobName)), ` › trial ${model.trial}`,
    );
    const what = model.variant === "fine-tuned" ? "Fine-tuned pruned model" : "Pruned model";
    document.getElementById("model-title").textContent = `${what} · trial ${model.trial}`;
    document.getElementById("model-subtitle").replaceChildren(
      job ? h("span", { class: "mono", title: `timm model ${job.model}` }, job.model_label ?? job.model) : "", job ? ` on ${job.device} · batch ${job.spec.batch ?? 1} · ` : "",
      `model ${model.id}, saved ${fmt.ago(model.created_at)}`,
    );
    document.querySelectorAll("#downloads a[data-format]").forEach((link) => {
      link.href = download(model.id, link.dataset.format);
    });
  }

  (async () => {
    try {
      const model = await api(`/api/models/${modelId}`);
      // The job gives the names, device and budget, its Pareto answer the dense model; the page works without them.
      const [job, pareto] = await Promise.all(
        [`/api/jobs/${model.job_id}`, `/api/jobs/${model.job_id}/pareto`].map((path) => api(path).catch(() => null)),
      );
      const dense = pareto && pareto.dense;
      header(model, job);
      metrics(model, job, dense);
      structure(model, dense);
      document.getElementById("config-json").textContent = JSON.stringify(model.config, null, 2);
    } catch (error) {
      VP.showBanner(error.message || String(error));
    }
  })();
})();
