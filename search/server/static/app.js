// The agents' search page: ask /search, show ranked answers (matched words marked, long answers folded),
// copy an answer, send a verdict to /feedback. Everything from the index is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ANSWER_FIELDS = ["answer", "답변", "reply", "response"];
const HIDDEN_FIELDS = ["group"];
const LONG_ANSWER = 400; // characters shown before "more"
const CONTEXT = 100; // characters shown either side of the matching window of a long entry
const BANDS = { good: "Good match", possible: "Possible match", below: "Below the cut" };
const state = { cut: null, cutShown: "", cutSource: null, precision: null, feedback: "open", question: "", answers: new Map() };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function showStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

// text with the matched words in <mark> and the matching window (span) in one <span class="window">;
// ranges count code points, as the server does
function marked(tag, className, text, ranges, span) {
  const node = element(tag, className);
  const chars = Array.from(String(text));
  const word = new Uint8Array(chars.length);
  for (const [start, end] of ranges || []) word.fill(1, start, end);
  const parts = span ? [[0, span[0], node], [span[0], span[1], element("span", "window")], [span[1], chars.length, node]]
                     : [[0, chars.length, node]];
  for (const [from, to, into] of parts) {
    let i = from;
    while (i < to) {
      let j = i;
      while (j < to && word[j] === word[i]) j++;
      const piece = chars.slice(i, j).join("");
      into.append(word[i] ? element("mark", "word", piece) : document.createTextNode(piece));
      i = j;
    }
    if (into !== node) {
      into.title = "the part of this entry that matched best";
      node.append(into);
    }
  }
  return node;
}

// a long entry: the matching window with some context, and a button for the whole text
function excerpt(text, ranges, span) {
  const chars = Array.from(String(text));
  if (chars.length <= LONG_ANSWER) return marked("span", "matched", text, ranges, span);
  const [from, to] = span ? [Math.max(0, span[0] - CONTEXT), Math.min(chars.length, span[1] + CONTEXT)] : [0, LONG_ANSWER];
  const shifted = (ranges || []).filter(([a, b]) => b > from && a < to).map(([a, b]) => [Math.max(a, from) - from, Math.min(b, to) - from]);
  const short = marked("span", "matched", chars.slice(from, to).join(""), shifted, span && [span[0] - from, span[1] - from]);
  if (from > 0) short.prepend("… ");
  if (to < chars.length) short.append(" …");
  const whole = marked("span", "matched", text, ranges, span);
  whole.hidden = true;
  const more = element("button", "more", "whole entry");
  more.type = "button";
  more.setAttribute("aria-expanded", "false");
  more.addEventListener("click", () => {
    whole.hidden = !whole.hidden;
    short.hidden = !whole.hidden;
    more.textContent = whole.hidden ? "whole entry" : "less";
    more.setAttribute("aria-expanded", String(!whole.hidden));
  });
  const node = element("span", "excerpt");
  node.append(short, whole, " ", more);
  return node;
}

function answerBlock(text, ranges) {
  const block = element("div", "answer-block");
  const answer = marked("p", "answer", text, ranges);
  block.append(answer);
  if (Array.from(text).length > LONG_ANSWER) {
    answer.classList.add("collapsed");
    const more = element("button", "more", "more");
    more.type = "button";
    more.setAttribute("aria-expanded", "false");
    more.addEventListener("click", () => {
      const open = answer.classList.toggle("collapsed") === false;
      more.textContent = open ? "less" : "more";
      more.setAttribute("aria-expanded", String(open));
    });
    block.append(more);
  }
  return block;
}

function badge(hit, cut) {
  const label = hit.band ? BANDS[hit.band] + " · " + hit.score.toFixed(3) : "score " + hit.score.toFixed(3);
  const node = element("span", "score" + (hit.band ? " band-" + hit.band : ""), label);
  node.dataset.score = String(hit.score);
  let why = "score " + hit.score.toFixed(4);
  if (cut !== null && cut !== undefined) {
    why += " · " + (state.cutSource && state.cutSource.startsWith("calibrated") ? "calibrated cut " : "cut ") + cut.toFixed(4)
      + (state.cutSource ? " (" + state.cutSource + ")" : "");
    if (state.precision !== null) why += " (past the cut, " + Math.round(state.precision * 100) + "% of answers were right on the calibration examples)";
  } else {
    why += " · no cut";
  }
  node.title = why;
  return node;
}

function renderHit(hit, result, miss) {
  const item = element("li", "hit" + (miss ? " miss" : ""));
  item.dataset.key = hit.key;
  item.tabIndex = 0;
  const marks = hit.highlights || {};
  const head = element("div", "hit-head");
  head.append(element("span", "rank", "#" + hit.rank), badge(hit, result.cut),
              excerpt(hit.text, marks.text, hit.span));
  item.append(head);
  const fields = Object.assign({}, hit.fields || {});
  const answerName = ANSWER_FIELDS.find((name) => name in fields);
  const answerText = answerName ? String(fields[answerName]) : hit.text;
  state.answers.set(item, answerText);
  if (answerName) {
    item.append(answerBlock(answerText, marks[answerName]));
    delete fields[answerName];
  }
  const tools = element("div", "tools");
  const copy = element("button", "copy", "Copy answer");
  copy.type = "button";
  copy.addEventListener("click", () => copyAnswer(item));
  tools.append(copy, ...feedbackButtons(hit, result, miss));
  item.append(tools);
  if ((hit.variant_texts || []).length) {
    const variants = element("details", "variants");
    variants.append(element("summary", "", "Also asked as (" + hit.variant_texts.length + ")"));
    const list = element("ul");
    for (const variant of hit.variant_texts) list.append(element("li", "", variant.text));
    variants.append(list);
    item.append(variants);
  }
  const list = element("dl", "fields");
  list.append(element("dt", "", "key"), element("dd", "", hit.key));
  for (const [name, value] of Object.entries(fields)) {
    if (!HIDDEN_FIELDS.includes(name)) list.append(element("dt", "", name), element("dd", "", value === null ? "" : value));
  }
  item.append(list);
  return item;
}

function feedbackButtons(hit, result, miss) {
  if (state.feedback === "off") return [];
  const choices = [["up", "✓ Good", "A good answer"], ["down", "✗ Wrong", "A wrong answer"]];
  if (hit.rank > 1 || miss) choices.push(["right", "This one was right", "The right answer, though it was not first"]);
  return choices.map(([verdict, label, title]) => {
    const button = element("button", "verdict verdict-" + verdict, label);
    button.type = "button";
    button.title = title;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => sendVerdict(hit, result, verdict, button));
    return button;
  });
}

async function sendVerdict(hit, result, verdict, button) {
  const headers = { "Content-Type": "application/json" };
  if ($("api-key").value) headers["X-API-Key"] = $("api-key").value;
  const body = { question: result.question, key: hit.key, verdict: verdict, rank: hit.rank, score: hit.score };
  if (result.query_id) body.query_id = result.query_id;
  try {
    const response = await fetch("/feedback", { method: "POST", headers: headers, body: JSON.stringify(body) });
    if (response.status === 401) {
      $("key-row").hidden = false;
      showStatus("This server needs its API key to take feedback: enter it above, then click again.", "error");
      return;
    }
    const data = await response.json();
    if (!response.ok) {
      showStatus("Feedback not recorded: " + (data.error || response.status), "error");
      return;
    }
    button.setAttribute("aria-pressed", "true");
    button.classList.add("sent");
    showStatus("Thanks: feedback recorded for " + hit.key + ".");
  } catch (error) {
    showStatus("Feedback not recorded: the server did not answer (" + error.message + ")", "error");
  }
}

async function copyAnswer(item) {
  const text = state.answers.get(item) || "";
  try {
    await navigator.clipboard.writeText(text);
  } catch (error) { // no clipboard API (plain http off loopback): the old way
    const scratch = element("textarea", "offscreen", text);
    document.body.append(scratch);
    scratch.select();
    document.execCommand("copy");
    scratch.remove();
  }
  const button = item.querySelector("button.copy");
  button.textContent = "Copied ✓";
  setTimeout(() => { button.textContent = "Copy answer"; }, 2000);
  showStatus("Answer " + item.dataset.key + " copied.");
}

function minScore(body) {
  const raw = $("min-score").value.trim();
  if (state.cut !== null && raw === state.cutShown) return; // untouched: the index's exact calibrated cut
  body.min_score = raw === "" ? null : Number(raw); // empty: no cut at all
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  $("results").replaceChildren();
  $("closest-list").replaceChildren();
  $("closest").hidden = true;
  state.answers.clear();
  if (!question) {
    showStatus("Type the customer's question first.", "error");
    return;
  }
  const body = { question: question, k: Number($("k").value), highlight: true };
  if ($("mode").value) body.mode = $("mode").value;
  minScore(body);
  const filters = {};
  for (const select of document.querySelectorAll("#filters select")) if (select.value) filters[select.name] = select.value;
  if (Object.keys(filters).length) body.filters = filters;
  showStatus("Searching…");
  try {
    const response = await fetch("/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) {
      showStatus("Error: " + (data.error || response.status), "error");
      return;
    }
    show(data.results[0]);
  } catch (error) {
    showStatus("Error: the server did not answer (" + error.message + ")", "error");
  }
}

function activeFilters() {
  const set = [];
  for (const select of document.querySelectorAll("#filters select")) {
    select.parentElement.classList.toggle("active", Boolean(select.value));
    if (select.value) set.push(select.name + " = " + select.value);
  }
  return set;
}

function show(result) {
  const hits = result.hits;
  const filters = activeFilters();
  const filtered = filters.length ? " Filter on: " + filters.join(", ") + "." : "";
  if (hits.length === 0 && result.reason === "filter_matched_nothing") {
    showStatus("No answer with this filter: " + result.why + "." + filtered + " · 필터에 맞는 항목이 없습니다.", "no-answer");
    return;
  }
  if (hits.length === 0) {
    showStatus("No good answer: no entry is close enough to this question." + filtered + " · 알맞은 답변이 없습니다.", "no-answer");
    if (result.closest) {
      $("closest-list").append(renderHit(result.closest, result, true));
      $("closest-cut").textContent = result.cut === null ? "" : "(below the cut " + result.cut.toFixed(3) + ")";
      $("closest").hidden = false;
    }
    return;
  }
  const cut = result.cut === null || result.cut === undefined ? "" : " Answers below the cut " + result.cut.toFixed(3) + " are hidden.";
  showStatus(hits.length + " answer" + (hits.length === 1 ? "" : "s") + ", best first." + cut + filtered);
  $("results").replaceChildren(...hits.map((hit) => renderHit(hit, result, false)));
}

async function loadInfo() {
  try {
    const info = await (await fetch("/info")).json();
    const tuned = (info.settings && info.settings.search) || {};
    if (typeof tuned.min_score === "number") {
      state.cut = tuned.min_score;
      state.cutShown = String(Number(tuned.min_score.toFixed(3)));
      $("min-score").value = state.cutShown;
      state.cutSource = (info.cut && info.cut.source) || null;
      $("min-score").title = "The index's cut is " + tuned.min_score.toFixed(4) + (state.cutSource ? " (" + state.cutSource + ")" : "")
        + ". Empty: no cut at all.";
    }
    if (tuned.calibration && typeof tuned.calibration.precision === "number") state.precision = tuned.calibration.precision;
    state.feedback = (info.server && info.server.feedback) || "off";
    const calibrated = state.cutSource && state.cutSource.startsWith("calibrated");
    $("index-info").textContent = info.documents + " entries · model " + info.model
      + (tuned.mode ? (info.tuned ? " · tuned " : " · ") + tuned.mode : "")
      + (state.cut !== null ? (calibrated ? " · calibrated cut " : " · cut ") + state.cut.toFixed(3)
        + (state.cutSource && !calibrated ? " (" + state.cutSource + ")" : "") : "");
  } catch (error) {
    $("index-info").textContent = "";
  }
}

async function loadFilters() {
  try {
    const fields = (await (await fetch("/fields")).json()).fields || {};
    for (const [name, values] of Object.entries(fields)) {
      const select = element("select");
      select.name = name;
      select.id = "filter-" + name;
      for (const value of ["", ...values]) {
        const option = element("option", "", value || "any");
        option.value = value;
        select.append(option);
      }
      const label = element("label", "", name + " ");
      select.addEventListener("change", activeFilters);
      label.append(select);
      $("filters").append(label);
    }
  } catch (error) { /* no filters: the page still searches */ }
}

function move(step) {
  const hits = Array.from(document.querySelectorAll("li.hit"));
  const at = hits.indexOf(document.activeElement);
  if (at + step < 0) $("question").focus();
  else if (hits[at + step]) hits[at + step].focus();
}

document.addEventListener("keydown", (event) => {
  const here = document.activeElement;
  if (here === $("question")) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    } else if (event.key === "ArrowDown" && here.selectionStart === here.value.length) {
      const first = document.querySelector("li.hit");
      if (first) { event.preventDefault(); first.focus(); }
    }
    return;
  }
  if (!here || !here.classList || !here.classList.contains("hit") || event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = { ArrowDown: () => move(1), j: () => move(1), ArrowUp: () => move(-1), k: () => move(-1),
                    c: () => copyAnswer(here), "/": () => $("question").focus(), Escape: () => $("question").focus() };
  if (actions[event.key]) {
    event.preventDefault();
    actions[event.key]();
  }
});
$("ask-form").addEventListener("submit", ask);
loadInfo();
loadFilters();
