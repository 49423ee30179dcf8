"use strict";
// Model page: metrics, the pruned structure per block (tokens, heads, MLP width), config and downloads.

(() => {
  const { api, h, esc, fmt, layout, axis, PLOT_CONFIG, download, summarise, patchTokens, tokenCounts } = VP;
  const modelId = Number(document.getElementById("model").dataset.modelId);

  function metricCard(label, value, sub, extra = {}) {
    return h("div", { class: `metric ${extra.class || ""}`, title: extra.title }, h("div", { class: "label" }, label),
      h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
  }

  function metrics(model, job) {
    const val = (model.metrics && model.metrics.val) || {};
    const fidelity = val.fidelity || {};
    const agreement = val.agreement ?? fidelity.agreement;
    const kl = val.kl ?? fidelity.kl;
    const mismatch = model.metrics && model.metrics.latency_mismatch;
    const budget = job && job.budget_ms;
    const dense = job && job.dense_ms;
    const against = [
      budget ? `${((100 * model.predicted_ms) / budget).toFixed(0)}% of budget` : null,
      dense ? `${(dense / model.predicted_ms).toFixed(2)}× faster than dense` : null,
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
    const copy = h("button", { type: "button", class: "button tiny", onclick: () => navigator.clipboard?.writeText(model.sha256) }, "copy");
    document.getElementById("metrics").replaceChildren(
      metricCard("Validation top-1", fmt.pct(model.val_top1), val.n_images ? `on ${val.n_images} held-out images` : null, { class: "primary" }),
      metricCard("Validation top-5", fmt.pct(val.top5)),
      metricCard("Agreement with dense", fmt.pct(agreement), kl != null ? `KL ${fmt.num(kl, 4)}` : null, { title: "top-1 agreement with the dense model" }),
      metricCard("Calibration top-1", fmt.pct(model.calib_accuracy), "what the search optimised"),
      metricCard("Predicted latency", fmt.ms(model.predicted_ms), against || null),
      measured,
      metricCard("Parameters", fmt.params(model.params), model.params.toLocaleString()),
      metricCard("GFLOPs", fmt.num(model.gflops, 3), "per image"),
      metricCard("SHA-256 of model.safetensors", h("code", { class: "hash" }, model.sha256), copy, { class: "wide" }),
    );
  }

  /** Three small bar charts: tokens kept, heads and MLP width per block. */
  function structure(model, job) {
    const config = model.config;
    const blocks = config.blocks.map((_, i) => `${i}`);
    const tokens = job ? patchTokens(job.model, job.spec.model_kwargs || {}) : null;
    const rows = tokenCounts(config, tokens ? tokens.count : null);
    const unit = tokens ? "patch tokens" : "share of patch tokens";
    const describe = (r) => {
      const op = { topk: `top-k keep ${r.op.keep_ratio}`, threshold: `threshold ${r.op.threshold}` }[r.op.kind] || "no reduction";
      const count = r.n == null ? "a count per image" : tokens ? `${r.n} patch tokens` : `${fmt.pct(100 * r.n)} of the patch tokens`;
      return `<b>block ${r.index}</b> · ${esc(op)}<br>${count}${r.pkg ? " + package token" : ""}`;
    };
    const bar = (name, values, color, hover, extra = {}) => ({
      type: "bar", name, x: blocks, y: values, marker: { color }, hovertext: hover,
      hovertemplate: "%{hovertext}<extra></extra>", ...extra,
    });
    const tokenHover = rows.map(describe);
    const tokenData = [
      bar(unit, rows.map((r) => r.n), "#2563eb", tokenHover),
      // The package token is one token; on a share axis it has no height, but its hover still says so.
      bar("package token", rows.map((r) => (r.pkg && tokens ? 1 : null)), "#f59e0b", tokenHover),
      bar("per image (threshold)", rows.map((r) => (r.n == null ? r.bound : null)), null, tokenHover, {
        marker: { color: "#e5e7eb", pattern: { shape: "/", fgcolor: "#9ca3af" } },
        text: rows.map((r) => (r.n == null ? "per image" : "")),
        textposition: "inside",
        textangle: 0,
        insidetextanchor: "middle",
        insidetextfont: { size: 10, color: "#374151" },
      }),
    ].filter((t) => t.y.some((v) => v != null));
    const small = (title, ytitle, values, extra = {}) => layout({
      title: { text: title, x: 0, xanchor: "left", font: { size: 13 } },
      margin: { l: 52, r: 8, t: 36, b: 40 },
      xaxis: axis("block", { type: "category" }),
      // Whole units (heads, a few tokens) get whole-number ticks.
      yaxis: axis(ytitle, { rangemode: "tozero", ...(Math.max(...values.filter(Number.isFinite)) <= 12 ? { dtick: 1 } : {}) }),
      barmode: "stack",
      bargap: 0.25,
      showlegend: false,
      ...extra,
    });
    const heads = config.blocks.map((b) => b.heads);
    const mlp = config.blocks.map((b) => b.mlp_hidden);
    const tokenLayout = small("Tokens kept", unit, rows.map((r) => r.bound + (r.pkg ? 1 : 0)), {
      showlegend: tokenData.length > 1,
      legend: { orientation: "h", y: -0.3, x: 0 },
      ...(tokens ? {} : { yaxis: axis(unit, { rangemode: "tozero", tickformat: ".0%" }) }),
    });
    Plotly.react("plot-tokens", tokenData, tokenLayout, PLOT_CONFIG);
    const headHover = heads.map((n, i) => `<b>block ${i}</b><br>${n} attention heads`);
    const mlpHover = mlp.map((n, i) => `<b>block ${i}</b><br>${n} MLP hidden channels`);
    Plotly.react("plot-heads", [bar("heads", heads, "#7c3aed", headHover)], small("Attention heads", "heads", heads), PLOT_CONFIG);
    Plotly.react("plot-mlp", [bar("MLP width", mlp, "#059669", mlpHover)], small("MLP width", "hidden channels", mlp), PLOT_CONFIG);

    const hint = tokens
      ? `Tokens counted from ${tokens.count} patch tokens (${tokens.height}×${tokens.width} image, ${tokens.patch}-pixel patches); class tokens not counted.`
      : "The model name does not give the patch-token count, so the token chart shows the share kept.";
    document.getElementById("structure-hint").textContent = `${summarise(config)}. ${hint}`;
  }

  function header(model, job) {
    const jobName = job ? job.name : `job ${model.job_id}`;
    document.title = `Trial ${model.trial} · ${jobName} · vitprune`;
    document.getElementById("crumbs").replaceChildren(
      h("a", { href: "/" }, "Jobs"), " › ", h("a", { href: `/jobs/${model.job_id}` }, jobName), ` › trial ${model.trial}`,
    );
    document.getElementById("model-title").textContent = `Pruned model · trial ${model.trial}`;
    document.getElementById("model-subtitle").replaceChildren(
      job ? h("span", { class: "mono" }, job.model) : "", job ? ` on ${job.device} · batch ${job.spec.batch ?? 1} · ` : "",
      `model ${model.id}, saved ${fmt.ago(model.created_at)}`,
    );
    document.querySelectorAll("#downloads a[data-format]").forEach((link) => {
      link.href = download(model.id, link.dataset.format);
    });
  }

  (async () => {
    try {
      const model = await api(`/api/models/${modelId}`);
      // The job gives the names, device, budget and image size; the page still works without it.
      const job = await api(`/api/jobs/${model.job_id}`).catch(() => null);
      header(model, job);
      metrics(model, job);
      structure(model, job);
      document.getElementById("config-json").textContent = JSON.stringify(model.config, null, 2);
    } catch (error) {
      VP.showBanner(error.message || String(error));
    }
  })();
})();
