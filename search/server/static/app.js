// The agents' search page: ask /search, show ranked answers with their scores and stored fields.
// Everything from the index is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ANSWER_FIELDS = ["answer", "답변", "reply", "response"];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function showStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

function renderHit(hit) {
  const item = element("li", "hit");
  item.dataset.key = hit.key;
  const head = element("div", "hit-head");
  head.append(element("span", "rank", "#" + hit.rank), element("span", "score", hit.score.toFixed(3)),
              element("span", "matched", hit.text));
  item.append(head);
  const fields = Object.assign({}, hit.fields || {});
  const answerName = ANSWER_FIELDS.find((name) => name in fields);
  if (answerName) {
    item.append(element("p", "answer", fields[answerName]));
    delete fields[answerName];
  }
  const list = element("dl", "fields");
  list.append(element("dt", "", "key"), element("dd", "", hit.key));
  for (const [name, value] of Object.entries(fields)) {
    list.append(element("dt", "", name), element("dd", "", value === null ? "" : value));
  }
  item.append(list);
  return item;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  const results = $("results");
  results.replaceChildren();
  if (!question) {
    showStatus("Type the customer's question first.", "error");
    return;
  }
  const body = { question: question, k: Number($("k").value) };
  if ($("mode").value) body.mode = $("mode").value;
  if ($("min-score").value !== "") body.min_score = Number($("min-score").value);
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
    const hits = data.results[0].hits;
    if (hits.length === 0) {
      showStatus("No good answer: no entry is close enough to this question. · 알맞은 답변이 없습니다.", "no-answer");
      return;
    }
    showStatus(hits.length + " answer" + (hits.length === 1 ? "" : "s") + ", best first.");
    results.replaceChildren(...hits.map(renderHit));
  } catch (error) {
    showStatus("Error: the server did not answer (" + error.message + ")", "error");
  }
}

async function loadInfo() {
  try {
    const info = await (await fetch("/info")).json();
    const tuned = (info.settings && info.settings.search) || {};
    if (tuned.min_score !== undefined && tuned.min_score !== null) $("min-score").value = tuned.min_score;
    $("index-info").textContent = info.documents + " entries · model " + info.model + (tuned.mode ? " · tuned " + tuned.mode : "");
  } catch (error) {
    $("index-info").textContent = "";
  }
}

$("ask-form").addEventListener("submit", ask);
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("ask-form").requestSubmit();
  }
});
loadInfo();
