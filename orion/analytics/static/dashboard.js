// The Orion analytics dashboard: four charts from GET /v1/analytics/timeseries (events by
// type, campaigns fired, emails queued and held, unique leads), drawn with uPlot, each
// with a table of its series' totals, and the experiments report (GET
// /v1/analytics/experiments) as a table per experience, a row per arm. What it shows is
// also left in window.orionDashboard ({ready, error, tenant, charts: {NAME: {series, x,
// y, totals}}, experiments: {error, tables: {EXPERIENCE: [[cell, ...], ...]}}}), which
// the browser test reads.
"use strict";

(function () {
  const STEP_MS = { minute: 60000, hour: 3600000, day: 86400000 };
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"];
  const MOST_SERIES = 8; // more groups than this are summed into "other"
  const state = window.orionDashboard = { ready: false, error: null, tenant: null, charts: {},
                                          experiments: { error: null, tables: {} } };
  const EXPERIMENT_COLUMNS = ["arm", "leads", "impressions", "conversions", "rate", "lift", "95% interval"];
  const plots = {};

  const params = new URLSearchParams(window.location.search);
  const form = document.getElementById("controls");
  const field = (id) => document.getElementById(id);
  field("key").value = params.get("key") || sessionStorage.getItem("orionAnalyticsKey") || "";
  field("from").value = params.get("from") || "now-1h";
  field("to").value = params.get("to") || "now";
  field("granularity").value = params.get("granularity") || "minute";

  function status(text, isError) {
    const line = field("status");
    line.textContent = text;
    line.className = isError ? "error" : "";
  }

  async function timeseries(metric, by) {
    const query = new URLSearchParams({ metric: metric, granularity: field("granularity").value,
                                        from: field("from").value, to: field("to").value });
    if (by) query.set("by", by);
    const response = await fetch("/v1/analytics/timeseries?" + query.toString(),
                                 { headers: { "Authorization": "Bearer " + field("key").value } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || body.error || ("HTTP " + response.status));
    return body;
  }

  // The bucket starts of the answer's range, in ms: the x axis, every bucket present.
  function axis(answer) {
    const step = STEP_MS[answer.granularity];
    const from = Date.parse(answer.from), to = Date.parse(answer.to);
    const times = [];
    for (let t = Math.ceil(from / step) * step; t < to; t += step) times.push(t);
    return times;
  }

  // Answer rows -> one series per group (the `by` dimension, or the metric alone), zeros filled in.
  function pivot(answer, x, label) {
    const index = new Map(x.map((t, i) => [t, i]));
    const groups = new Map();
    for (const row of answer.rows) {
      const name = label ? label : (answer.by.map((dim) => row[dim] || "-").join(" / ") || answer.metric);
      if (!groups.has(name)) groups.set(name, new Array(x.length).fill(0));
      const i = index.get(Date.parse(row.time));
      if (i !== undefined) groups.get(name)[i] += row[answer.metric];
    }
    return groups;
  }

  function keepLargest(groups) {
    const ranked = [...groups.entries()].map(([name, ys]) => [name, ys, ys.reduce((a, b) => a + b, 0)])
      .sort((a, b) => b[2] - a[2] || (a[0] < b[0] ? -1 : 1));
    if (ranked.length <= MOST_SERIES) return ranked;
    const kept = ranked.slice(0, MOST_SERIES - 1);
    const rest = ranked.slice(MOST_SERIES - 1);
    const other = rest[0][1].map((_, i) => rest.reduce((sum, [, ys]) => sum + ys[i], 0));
    kept.push(["other", other, other.reduce((a, b) => a + b, 0)]);
    return kept;
  }

  function draw(name, x, ranked) {
    const section = field(name);
    const series = ranked.map(([label]) => label);
    const y = ranked.map(([, ys]) => ys);
    const totals = Object.fromEntries(ranked.map(([label, , total]) => [label, total]));
    state.charts[name] = { series: series, x: x, y: y, totals: totals };
    const holder = section.querySelector(".plot");
    if (plots[name]) plots[name].destroy();
    holder.textContent = "";
    const options = {
      width: Math.max(480, holder.clientWidth || 560), height: 240,
      series: [{}].concat(series.map((label, i) => ({ label: label, stroke: COLORS[i % COLORS.length], width: 1.5 }))),
      axes: [{}, { size: 60 }],
      scales: { x: { time: true } },
    };
    plots[name] = new uPlot(options, [x.map((t) => t / 1000)].concat(y), holder);
    const table = section.querySelector(".totals");
    table.textContent = "";
    for (const [label, , total] of ranked) {
      const row = table.insertRow();
      row.dataset.series = label;
      row.insertCell().textContent = label;
      const cell = row.insertCell();
      cell.className = "value";
      cell.textContent = String(total);
    }
    if (!ranked.length) table.insertRow().insertCell().textContent = "nothing in this range";
  }

  // A share as the report command prints it: 12.5%, or +12.5% for a change; null: n/a.
  function percent(value, signed) {
    if (value === null || value === undefined) return "n/a";
    const text = (value * 100).toFixed(1) + "%";
    return signed && value >= 0 ? "+" + text : text;
  }

  function armCells(row) {
    const count = (n) => n.toLocaleString("en-US");
    let lift, interval;
    if (row.control) {
      lift = "control";
      interval = "";
    } else {
      lift = percent(row.lift, true);
      interval = row.lift_low === null || row.lift_low === undefined ? "n/a"
        : percent(row.lift_low, true) + " .. " + percent(row.lift_high, true);
    }
    return [row.arm, count(row.leads), count(row.impressions), count(row.conversions), percent(row.rate, false),
            lift, interval];
  }

  function drawExperiments(report) {
    const holder = field("experiments").querySelector(".reports");
    holder.textContent = "";
    state.experiments.tables = {};
    for (const found of report.experiences) {
      const table = document.createElement("table");
      table.className = "experiment";
      table.dataset.experience = found.experience;
      const caption = table.createCaption();
      caption.textContent = found.experience + " ";
      const goal = document.createElement("span");
      goal.className = "goal";
      goal.textContent = "(placement " + found.placement + "; goal: " + (found.goal || "none, impressions only") +
        "; first impression: " + (found.first_impression || "none yet") + ")";
      caption.appendChild(goal);
      const head = table.createTHead().insertRow();
      for (const name of EXPERIMENT_COLUMNS) {
        const cell = document.createElement("th");
        cell.textContent = name;
        head.appendChild(cell);
      }
      const body = table.createTBody();
      const rows = found.arms.map(armCells);
      found.arms.forEach((arm, i) => {
        const line = body.insertRow();
        line.dataset.arm = arm.arm;
        if (arm.control) line.className = "control";
        for (const text of rows[i]) line.insertCell().textContent = text;
      });
      state.experiments.tables[found.experience] = rows;
      holder.appendChild(table);
    }
    if (!report.experiences.length) {
      const none = document.createElement("p");
      none.textContent = "No experiences in this tenant's rules.";
      holder.appendChild(none);
    }
  }

  // Its own errors stay in its panel: the charts do not depend on it.
  async function showExperiments() {
    const holder = field("experiments").querySelector(".reports");
    state.experiments.error = null;
    try {
      const query = new URLSearchParams();
      for (const name of ["goal", "days"]) if (params.get(name)) query.set(name, params.get(name));
      const response = await fetch("/v1/analytics/experiments?" + query.toString(),
                                   { headers: { "Authorization": "Bearer " + field("key").value } });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || body.error || ("HTTP " + response.status));
      drawExperiments(body);
    } catch (err) {
      state.experiments.error = String(err.message || err);
      state.experiments.tables = {};
      holder.textContent = "";
      const line = document.createElement("p");
      line.className = "error";
      line.textContent = state.experiments.error;
      holder.appendChild(line);
    }
  }

  async function refresh() {
    state.ready = false;
    state.error = null;
    if (!field("key").value) {
      status("Enter an API key of this tenant (orion collect keys add).", true);
      state.error = "no key";
      return;
    }
    sessionStorage.setItem("orionAnalyticsKey", field("key").value);
    status("loading ...");
    const experiments = showExperiments();
    try {
      const [events, fired, queued, held, leads] = await Promise.all([
        timeseries("events", "type"), timeseries("qualified", "campaign"),
        timeseries("emails_queued"), timeseries("emails_held"), timeseries("unique_leads"),
      ]);
      const x = axis(events);
      for (const unit of document.querySelectorAll(".unit")) unit.textContent = events.granularity;
      field("tenant").textContent = "· " + events.tenant;
      state.tenant = events.tenant;
      draw("events", x, keepLargest(pivot(events, x)));
      draw("fired", x, keepLargest(pivot(fired, x)));
      const emails = new Map([...pivot(queued, x, "queued"), ...pivot(held, x, "held")]);
      for (const name of ["queued", "held"]) if (!emails.has(name)) emails.set(name, new Array(x.length).fill(0));
      draw("emails", x, [...emails.entries()].map(([name, ys]) => [name, ys, ys.reduce((a, b) => a + b, 0)]));
      // A lead active in two buckets is one lead in each: the buckets' figures do not add
      // up to the range's, so the table shows the most in one bucket.
      const perBucket = pivot(leads, x, "unique leads").get("unique leads") || new Array(x.length).fill(0);
      draw("leads", x, [["unique leads", perBucket, Math.max(0, ...perBucket)]]);
      field("leads").querySelector(".note").textContent =
        "Table: the most in one " + leads.granularity + ". " + (leads.note || "");
      status(events.from + " to " + events.to + ", by " + events.granularity);
      await experiments;
      state.ready = true;
    } catch (err) {
      state.error = String(err.message || err);
      status(state.error, true);
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  refresh();
})();
