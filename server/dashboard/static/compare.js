"use strict";
// Compare page: the Pareto fronts of several jobs on one plot (?jobs=1,2,...), one trace per job.

(() => {
  const { api, h, esc, fmt, statusBadge, layout, axis, PLOT_CONFIG, COLORS } = VP;
  const plot = document.getElementById("compare-plot");
  const picker = document.getElementById("job-picker");
  const tableBody = document.querySelector("#compare-table tbody");
  const fronts = new Map(); // job id -> {job, pareto}, fetched once per page
  let selected = parseIds(new URLSearchParams(window.location.search).get("jobs"));
  let jobs = [];

  function parseIds(text) {
    const ids = (text || "").split(",").map((s) => Number(s.trim())).filter((n) => Number.isInteger(n) && n > 0);
    return [...new Set(ids)];
  }

  const axisMode = () => document.querySelector("input[name=axis]:checked").value;
  const color = (index) => COLORS[index % COLORS.length];
  const label = (job) => `#${job.id} ${job.name} · ${job.device}`;

  async function front(id) {
    if (!fronts.has(id)) {
      const [job, pareto] = await Promise.all([api(`/api/jobs/${id}`), api(`/api/jobs/${id}/pareto`)]);
      fronts.set(id, { job, pareto });
    }
    return fronts.get(id);
  }

  /** A job's dense model as a diamond in its front's legend group, once the job has validated it. */
  function denseTrace(job, dense, i, x) {
    const top1 = dense && dense.val && dense.val.top1;
    if (top1 == null) return [];
    return [{
      uid: `dense-${job.id}`,
      name: `${label(job)} · dense`,
      legendgroup: `job-${job.id}`,
      showlegend: false,
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
    const data = entries.flatMap(({ job, pareto }, i) => [{
      uid: `job-${job.id}`,
      name: label(job),
      legendgroup: `job-${job.id}`,
      type: "scatter",
      mode: "lines+markers",
      line: { shape: "hv", color: color(i), width: 1.5 },
      marker: { size: 9, color: color(i), line: { color: "#ffffff", width: 1 } },
      x: pareto.models.map((m) => x(m.predicted_ms, job)),
      y: pareto.models.map((m) => m.val_top1 ?? m.calib_accuracy),
      customdata: pareto.models.map((m) => m.id),
      text: pareto.models.map((m) =>
        `<b>${esc(label(job))}</b><br>trial ${m.trial} · val top-1 ${fmt.pct(m.val_top1)} · ${fmt.ms(m.predicted_ms)}` +
        `<br>${esc(m.summary)}`),
      hovertemplate: "%{text}<extra></extra>",
    }, ...denseTrace(job, pareto.dense, i, x)]);
    const shapes = entries
      .map(({ job }, i) => ({ job, i, at: x(job.budget_ms, job) }))
      .filter(({ at }) => at != null)
      .map(({ job, i, at }) => ({
        type: "line", name: `budget-${job.id}`, xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
        line: { color: color(i), dash: "dash", width: 1 },
      }));
    const chart = layout({
      xaxis: axis(ratio ? "predicted latency / dense latency" : "predicted latency (ms)"),
      yaxis: axis("validation top-1 (%)"),
      shapes,
      showlegend: true,
      legend: { orientation: "h", y: -0.16, x: 0 },
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
          h("a", { href: `/jobs/${job.id}`, class: "strong" }, job.name), h("span", { class: "muted id" }, ` #${job.id}`), " ", statusBadge(job.status)),
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
      h("span", {}, h("span", { class: "strong" }, job.name), h("span", { class: "muted" }, ` #${job.id} · ${job.device}`)),
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
      const entries = await Promise.all(selected.map(front));
      draw(entries);
      table(entries);
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
