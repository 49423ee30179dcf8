"use strict";
// The job page's table of every trial, as optuna-dashboard lists them: sortable by any column, filtered by
// state, budget and structure. A search runs thousands of trials, so the table sorts and filters them in
// memory but puts at most `pageSize` rows in the page ("show more" adds the next ones), and a refresh while
// the job runs keeps the reader's sort, filters and rows shown.

const TrialTable = (() => {
  const { h, fmt } = VP;
  const STATES = ["complete", "running", "waiting", "pruned", "fail"];
  // The first click on a column sorts the way a reader looks for: best accuracy first, fastest first.
  const FIRST_DIRECTION = { number: 1, state: 1, accuracy: -1, score: -1, latency_ms: 1, feasible: -1, summary: 1 };

  /** The value a column sorts by; null sorts last in either direction. */
  function key(trial, column) {
    switch (column) {
      case "accuracy":
      case "score":
        return trial.evaluated ? trial[column] : null; // an over-budget trial is never scored
      case "feasible":
        return trial.state === "complete" ? Number(trial.feasible) : null;
      case "state":
        return STATES.indexOf(trial.state);
      case "summary":
        return trial.summary ? trial.summary.toLowerCase() : null;
      default:
        return trial[column] ?? null;
    }
  }

  class Table {
    /**
     * `root` holds the table and its controls (found by their data-role, so a page can hold two);
     * `modelOf(number)` is the id of the trial's saved Pareto model, if any.
     */
    constructor(root, { modelOf = () => null, pageSize = 200 } = {}) {
      const role = (name) => root.querySelector(`[data-role="${name}"]`);
      this.body = role("rows");
      this.stateSelect = role("state");
      this.budgetSelect = role("budget");
      this.text = role("text");
      this.count = role("count");
      this.shown = role("shown");
      this.more = role("more");
      this.headers = [...root.querySelectorAll("th[data-sort]")];
      this.modelOf = modelOf;
      this.pageSize = pageSize;
      this.limit = pageSize;
      this.sort = { column: "number", direction: 1 };
      this.trials = null;
      this.signature = null;

      for (const th of this.headers) {
        th.querySelector("button").addEventListener("click", () => this.sortBy(th.dataset.sort));
      }
      const refilter = () => {
        this.limit = this.pageSize; // a new filter starts from its first rows
        this.render();
      };
      this.stateSelect.addEventListener("change", refilter);
      this.budgetSelect.addEventListener("change", refilter);
      this.text.addEventListener("input", refilter);
      this.more.addEventListener("click", () => {
        this.limit += this.pageSize;
        this.render();
      });
    }

    sortBy(column) {
      const direction = this.sort.column === column ? -this.sort.direction : FIRST_DIRECTION[column] ?? 1;
      this.sort = { column, direction };
      this.render();
    }

    /** New trials from the API. Unchanged ones (the usual refresh of a finished job) leave the DOM alone. */
    update(trials, models = 0) {
      const counts = STATES.map((state) => trials.filter((t) => t.state === state).length);
      const signature = `${trials.length}|${counts.join(",")}|${trials.filter((t) => t.pareto).length}|${models}`;
      this.trials = trials;
      if (signature !== this.signature) {
        this.signature = signature;
        this.updateStateOptions(counts); // rebuilt only on change: an open drop-down would close
        this.render();
      }
    }

    updateStateOptions(counts) {
      const chosen = this.stateSelect.value;
      this.stateSelect.replaceChildren(
        h("option", { value: "" }, `every state (${this.trials.length})`),
        ...STATES.map((state, i) => h("option", { value: state, selected: state === chosen, disabled: !counts[i] && state !== chosen }, `${state} (${counts[i]})`)),
      );
      this.stateSelect.value = chosen;
    }

    filtered() {
      const state = this.stateSelect.value;
      const budget = this.budgetSelect.value;
      const text = this.text.value.trim().toLowerCase();
      return this.trials.filter((t) => (!state || t.state === state)
        && (!budget || (budget === "pareto" ? t.pareto : t.state === "complete" && t.feasible === (budget === "within")))
        && (!text || (t.summary || "").toLowerCase().includes(text)));
    }

    sorted(trials) {
      const { column, direction } = this.sort;
      return trials
        .map((trial) => ({ trial, value: key(trial, column) }))
        .sort((a, b) => {
          if (a.value === b.value) return a.trial.number - b.trial.number;
          if (a.value === null) return 1;
          if (b.value === null) return -1;
          return (a.value < b.value ? -1 : 1) * direction;
        })
        .map(({ trial }) => trial);
    }

    row(t) {
      const model = this.modelOf(t.number);
      const number = model != null
        ? h("a", { href: `/models/${model}`, class: "strong", title: "open its saved Pareto model" }, `${t.number}`)
        : `${t.number}`;
      const star = t.pareto ? h("span", { class: "star", title: "on the Pareto front of the trials so far" }, " ★") : null;
      const complete = t.state === "complete";
      const scored = (text) => (t.evaluated ? text : complete ? h("span", { class: "muted" }, "not scored") : "—");
      const budget = !complete ? "—"
        : t.feasible ? h("span", { class: "ok" }, "within")
          : h("span", { class: "flag" }, "over");
      return h(
        "tr",
        { dataset: { trial: t.number, state: t.state } },
        h("td", { class: "num" }, number, star),
        h("td", {}, h("span", { class: `badge state-${t.state}` }, t.state)),
        h("td", { class: "num" }, scored(fmt.pct(t.accuracy))),
        h("td", { class: "num" }, scored(fmt.pct(t.score, 2))),
        h("td", { class: "num" }, fmt.ms(t.latency_ms)),
        h("td", {}, budget),
        h("td", { class: "small", title: JSON.stringify(t.params) }, t.summary ?? "—"),
      );
    }

    render() {
      if (!this.trials) return;
      for (const th of this.headers) {
        const active = th.dataset.sort === this.sort.column;
        th.setAttribute("aria-sort", active ? (this.sort.direction > 0 ? "ascending" : "descending") : "none");
      }
      const matching = this.sorted(this.filtered());
      const shown = matching.slice(0, this.limit);
      if (shown.length) {
        this.body.replaceChildren(...shown.map((t) => this.row(t)));
      } else {
        const why = this.trials.length ? "No trial matches the filters." : "No trials yet: the search starts when a worker takes the job.";
        this.body.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "empty" }, why)));
      }
      const total = this.trials.length;
      this.count.textContent = matching.length === total ? `${total}` : `${matching.length} of ${total}`;
      this.shown.textContent = matching.length > shown.length
        ? `Showing ${shown.length} of ${matching.length} matching trials.`
        : "";
      this.more.hidden = matching.length <= shown.length;
      this.more.textContent = `Show ${Math.min(this.pageSize, matching.length - shown.length)} more`;
    }
  }

  return Table;
})();
