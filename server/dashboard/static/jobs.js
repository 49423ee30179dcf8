"use strict";
// Jobs list: live status and progress (refreshed while any job is unfinished), selection for comparing.

(() => {
  const { api, h, name, fmt, bestUnderBudget, measuredOn, statusBadge, progressBar, poll, FINAL } = VP;
  const body = document.querySelector("#jobs tbody");
  const compare = document.getElementById("compare");
  const selectAll = document.getElementById("select-all");
  const selected = new Set();

  function budget(job) {
    if (job.budget_ms != null) return fmt.ms(job.budget_ms);
    const ratio = job.spec && job.spec.budget_ratio;
    return ratio != null ? `${ratio}× dense` : fmt.ms(job.spec && job.spec.budget_ms);
  }

  /** The best accuracy within budget, named by the images it was measured on (validation where known). */
  function best(job) {
    const { value, images, calib } = bestUnderBudget(job);
    if (!Number.isFinite(value)) return "—";
    const title = images === "validation"
      ? `validation top-1 of the best Pareto model within the budget, ${measuredOn("validation", job.val_images)}`
        + ` (the search's calibration top-1: ${fmt.pct(calib)})`
      : `calibration top-1 of the best trial within the budget, ${measuredOn("calibration", job.calib_images)}:`
        + " the images the search scores on (validation top-1 comes with the Pareto models)";
    return h("span", { title, dataset: { images } }, fmt.pct(value), h("span", { class: "muted small" }, images === "validation" ? " val" : " calib"));
  }

  /** Trials done; for a job still preparing (the demo model being trained), its preparation stage by stage. */
  function progressCell(job) {
    const prep = job.status === "preparing" ? job.preparation : null;
    if (prep) {
      return h(
        "td",
        { class: "progress-col", dataset: { preparing: "" } },
        progressBar(prep.done, prep.total, job.status),
        h("span", { class: "progress-label", style: "white-space: normal" }, `${prep.stage} · ${prep.done}/${prep.total}`),
      );
    }
    const { done, total, feasible } = job.progress;
    return h(
      "td",
      { class: "progress-col" },
      progressBar(done, total, job.status),
      h("span", { class: "progress-label" }, `${done}/${total}`, feasible ? h("span", { class: "muted" }, ` · ${feasible} feasible`) : null),
    );
  }

  function row(job) {
    const box = h("input", {
      type: "checkbox",
      value: job.id,
      "aria-label": `select job ${job.id}`,
      checked: selected.has(job.id),
      onchange: (event) => {
        if (event.target.checked) selected.add(job.id);
        else selected.delete(job.id);
        updateSelection();
      },
    });
    return h(
      "tr",
      { dataset: { jobId: job.id } },
      h("td", { class: "narrow" }, box),
      h("td", {}, h("a", { href: `/jobs/${job.id}`, class: "strong" }, name(job.name)), h("span", { class: "muted id" }, ` #${job.id}`)),
      h("td", {}, statusBadge(job.status)),
      progressCell(job),
      h("td", { class: "num best" }, best(job)),
      h("td", { class: "num" }, budget(job)),
      h("td", { class: "mono small", title: `timm model ${job.model}` }, job.model_label ?? job.model),
      h("td", {}, job.device),
      h("td", { title: fmt.date(job.created_at)?.toLocaleString() ?? "" }, fmt.ago(job.created_at)),
    );
  }

  function updateSelection() {
    compare.disabled = selected.size < 1;
    compare.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
    const boxes = body.querySelectorAll("input[type=checkbox]");
    selectAll.checked = boxes.length > 0 && selected.size === boxes.length;
  }

  selectAll.addEventListener("change", () => {
    body.querySelectorAll("input[type=checkbox]").forEach((box) => {
      box.checked = selectAll.checked;
      if (box.checked) selected.add(Number(box.value));
      else selected.delete(Number(box.value));
    });
    updateSelection();
  });

  compare.addEventListener("click", () => {
    const ids = [...selected].sort((a, b) => a - b);
    window.location.href = `/compare?jobs=${ids.join(",")}`;
  });

  poll(async () => {
    const jobs = await api("/api/jobs?limit=200");
    if (!jobs.length) {
      const link = h("a", { href: "/submit" }, "Queue the first one");
      body.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No jobs yet. ", link, ".")));
    } else {
      body.replaceChildren(...jobs.map(row));
    }
    updateSelection();
    return jobs.some((job) => !FINAL.has(job.status));
  });
})();
