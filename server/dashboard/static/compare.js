"use strict";
// Compare page: the Pareto fronts of several jobs on one plot (?jobs=1,2,...), one trace per job, with each
// job's dense model (◆) and budget (dashed line) in its colour and in the legend.

(() => {
  const { api, h, name, plainName, esc, fmt, modelLabel, statusBadge, layout, axis, PLOT_CONFIG, COLORS, ApiError } = VP;
  const plot = document.getElementById("compare-plot");
  const picker = document.getElementById("job-picker");
  const notice = document.getElementById("ignored");
  const tableBody = document.querySelector("#compare-table tbody");
  const fronts = new Map(); // job id -> {job, pareto}, fetched once per page
  const asked = parseIds(new URLSearchParams(window.location.search).get("jobs"));
  const missing = new Set(); // ids asked for that name no job
  let selected = asked.ids;
  let jobs = [];

  /** The job ids of `?jobs=`, and the entries that are not one (kept to say so: never dropped silently). */
  function parseIds(text) {
    const ids = [];
    const ignored = [];
    for (const part of (text || "").split(",").map((s) => s.trim()).filter(Boolean)) {
      const n = /^\d+$/.test(part) ? Number(part) : NaN;
      if (Number.isSafeInteger(n) && n > 0) {
        if (!ids.includes(n)) ids.push(n);
      } else {
        ignored.push(part);
      }
    }
    return { ids, ignored };
  }

  /** Says which of the asked-for ids the page left out, and why. */
  function showIgnored() {
    const lines = [];
    if (asked.ignored.length) {
      // What the address holds is anyone's text: each entry shortened and isolated (a <bdi>) like a name.
      const parts = asked.ignored.flatMap((part, i) => [
        i ? ", " : "", "“", name(part.length > 24 ? `${part.slice(0, 24)}…` : part), "”",
      ]);
      lines.push(["Ignored ", ...parts, " in ?jobs=: job ids are whole numbers from 1, as in ?jobs=1,2."]);
    }
    if (missing.size) {
      const ids = [...missing].sort((a, b) => a - b);
      lines.push([`Ignored ${ids.map((i) => `#${i}`).join(", ")}: no such job${ids.length > 1 ? "s" : ""} (deleted, or a mistyped id).`]);
    }
    notice.replaceChildren(...lines.map((line) => h("div", {}, ...line)));
    notice.hidden = !lines.length;
  }

  const axisMode = () => document.querySelector("input[name=axis]:checked").value;
  const color = (index) => COLORS[index % COLORS.length];
  const label = (job) => `#${job.id} ${plainName(job.name)} · ${job.device}`;

  /** A job's front, fetched once; null for an id that names no job (the notice lists it). */
  async function front(id) {
    if (!fronts.has(id)) {
      try {
        const [job, pareto] = await Promise.all([api(`/api/jobs/${id}`), api(`/api/jobs/${id}/pareto`)]);
        fronts.set(id, { job, pareto });
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 404)) throw error;
        missing.add(id);
        fronts.set(id, null);
      }
    }
    return fronts.get(id);
  }

  /** A job's dense model as a diamond in its front's legend group, once the job has validated it. */
  function denseTrace(job, dense, i, x) {
    const top1 = dense && dense.val && dense.val.top1;
    if (top1 == null) return [];
    return [{
      uid: `dense-${job.id}`,
      name: `#${job.id} dense model`,
      legendgroup: `job-${job.id}`,
      legendrank: 1000 + 3 * i + 1,
      type: "scatter",
      mode: "markers",
      marker: { size: 12, symbol: "diamond", color: color(i), line: { color: "#ffffff", width: 1 } },
      x: [x(dense.predicted_ms, job)],
      y: [top1],
      text: [`<b>${esc(label(job))}</b><br>dense model · val top-1 ${fmt.pct(top1)} · ${fmt.ms(dense.predicted_ms)}`],
      hovertemplate: "%{text}<extra></extra>",
    }];
  }

  function draw(entries) {
    const ratio = axisMode() === "ratio";
    const x = (ms, job) => (ratio ? (job.dense_ms ? ms / job.dense_ms : null) : ms);
    // Each job's front as its search found it; fine-tuned models (trained further) are on the job's own page.
    const searched = (pareto) => pareto.models.filter((m) => m.variant !== "fine-tuned");
    const data = entries.flatMap(({ job, pareto }, i) => [{
      uid: `job-${job.id}`,
      name: label(job),
      legendgroup: `job-${job.id}`,
      legendrank: 1000 + 3 * i,
      type: "scatter",
      mode: "lines+markers",
      line: { shape: "hv", color: color(i), width: 1.5 },
      marker: { size: 9, color: color(i), line: { color: "#ffffff", width: 1 } },
      x: searched(pareto).map((m) => x(m.predicted_ms, job)),
      y: searched(pareto).map((m) => m.val_top1 ?? m.calib_accuracy),
      customdata: searched(pareto).map((m) => m.id),
      text: searched(pareto).map((m) =>
        `<b>${esc(label(job))}</b><br>trial ${m.trial} · val top-1 ${fmt.pct(m.val_top1)} · ${fmt.ms(m.predicted_ms)}` +
        `<br>${esc(m.summary)}`),
      hovertemplate: "%{text}<extra></extra>",
    }, ...denseTrace(job, pareto.dense, i, x)]);
    const shapes = entries
      .map(({ job }, i) => ({ job, i, at: x(job.budget_ms, job) }))
      .filter(({ at }) => at != null)
      .map(({ job, i, at }) => ({
        type: "line", name: `#${job.id} budget ${ratio ? `${fmt.num(at, 3)}× dense` : fmt.ms(job.budget_ms)}`,
        xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
        line: { color: color(i), dash: "dash", width: 1 },
        // In the legend beside its job (one click there hides the job's front, dense model and budget).
        showlegend: true, legendgroup: `job-${job.id}`, legendrank: 1000 + 3 * i + 2,
      }));
    const chart = layout({
      xaxis: axis(ratio ? "predicted latency / dense latency" : "predicted latency (ms)"),
      yaxis: axis("validation top-1 (%)"),
      shapes,
      showlegend: true,
      legend: { orientation: "h", y: -0.16, x: 0, traceorder: "grouped" },
    });
    if (!entries.length) {
      chart.annotations = [{ text: "Pick jobs on the left", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { size: 14, color: "#9ca3af" } }];
    }
    Plotly.react(plot, data, chart, PLOT_CONFIG);
    if (!plot.dataset.clickable) {
      plot.dataset.clickable = "1";
      plot.on("plotly_click", (event) => {
        const point = event.points && event.points[0];
        if (point && point.customdata != null) window.location.href = `/models/${point.customdata}`;
      });
    }
  }

  function table(entries) {
    tableBody.replaceChildren(...entries.map(({ job, pareto }, i) => {
      const best = Math.max(...pareto.models.map((m) => m.val_top1 ?? -Infinity));
      return h(
        "tr",
        {},
        h("td", {}, h("span", { class: "swatch", style: `background: ${color(i)}` }),
          h("a", { href: `/jobs/${job.id}`, class: "strong" }, name(job.name)), h("span", { class: "muted id" }, ` #${job.id}`), " ", statusBadge(job.status)),
        h("td", { class: "mono small", title: `timm model ${job.model}` }, modelLabel(job)),
        h("td", {}, job.device),
        h("td", { class: "num" }, fmt.ms(job.budget_ms)),
        h("td", { class: "num" }, fmt.ms(job.dense_ms)),
        h("td", { class: "num" }, `${pareto.models.length}`),
        h("td", { class: "num strong" }, fmt.pct(Number.isFinite(best) ? best : null)),
      );
    }));
  }

  function renderPicker() {
    if (!jobs.length) {
      picker.replaceChildren(h("p", { class: "muted" }, "No jobs yet."));
      return;
    }
    picker.replaceChildren(...jobs.map((job) => h(
      "label",
      { class: "pick" },
      h("input", { type: "checkbox", value: job.id, checked: selected.includes(job.id), onchange: onPick }),
      h("span", {}, name(job.name, { class: "strong" }), h("span", { class: "muted" }, ` #${job.id} · ${job.model_label ?? job.model} on ${job.device}`)),
      statusBadge(job.status),
    )));
  }

  function onPick(event) {
    const id = Number(event.target.value);
    selected = event.target.checked ? [...selected, id].sort((a, b) => a - b) : selected.filter((s) => s !== id);
    const query = selected.length ? `?jobs=${selected.join(",")}` : "";
    window.history.replaceState(null, "", `/compare${query}`);
    refresh();
  }

  async function refresh() {
    try {
      const entries = (await Promise.all(selected.map(front))).filter(Boolean);
      draw(entries);
      table(entries);
      showIgnored();
      VP.clearBanner();
    } catch (error) {
      VP.showBanner(error.message || String(error));
    }
  }

  document.querySelectorAll("input[name=axis]").forEach((radio) => radio.addEventListener("change", refresh));

  (async () => {
    try {
      jobs = await api("/api/jobs?limit=200");
    } catch (error) {
      VP.showBanner(error.message || String(error));
    }
    renderPicker();
    await refresh();
  })();
})();
