"""The page ``nmt serve`` shows at ``/``: type a sentence, see its translation and its attention heatmap.

Self-contained (no CDN, no external font or script): the server may run where nothing outside is
reachable. It talks to the same ``POST /translate`` as any client.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nmt serve</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; } h1 small { color: #777; font-weight: normal; }
  textarea { width: 100%; font-size: 1rem; padding: .4rem; box-sizing: border-box; }
  .row { display: flex; gap: 1rem; align-items: center; margin: .6rem 0; flex-wrap: wrap; }
  input[type=number] { width: 4.5rem; }
  button { font-size: 1rem; padding: .3rem 1.2rem; }
  #output { font-size: 1.15rem; min-height: 1.5rem; padding: .5rem; background: #f4f6f8; border-radius: 4px; }
  #score { color: #666; font-size: .9rem; }
  #error { color: #b00020; white-space: pre-wrap; }
  #attention table { border-collapse: collapse; font-size: .8rem; margin-top: .5rem; }
  #attention td, #attention th { padding: 2px 4px; text-align: center; }
</style>
</head>
<body>
<h1>nmt serve <small id="run"></small></h1>
<label for="source">Source sentence</label>
<textarea id="source" rows="3" placeholder="Type a sentence, then Translate (Ctrl+Enter)"></textarea>
<div class="row">
  <label>beam <input id="beam" type="number" min="1" max="100" value="5"></label>
  <label>alpha <input id="alpha" type="number" min="0" max="10" step="0.1" value="0.6"></label>
  <button id="translate" type="button">Translate</button>
  <span id="status"></span>
</div>
<div id="output" aria-live="polite"></div>
<div id="score"></div>
<div id="error"></div>

<!-- Attention heatmap of the best hypothesis, drawn by drawAttention() below from /translate's
     "attention" ([target piece][source piece] weights), "target_pieces" and "source_pieces";
     hidden when there is nothing to draw (an empty sentence, an error). -->
<section id="attention" hidden></section>

<script>
"use strict";
const $ = (id) => document.getElementById(id);

fetch("/health").then((r) => r.json()).then((h) => { $("run").textContent = "run " + h.run + " on " + h.device; })
  .catch(() => {});

function drawAttention(hyp, sourcePieces) {
  const box = $("attention");
  box.replaceChildren();
  box.hidden = true;
  if (!hyp || !Array.isArray(hyp.attention) || hyp.attention.length === 0) return;
  const src = sourcePieces || [], tgt = hyp.target_pieces || [];
  const table = document.createElement("table");
  table.setAttribute("aria-label", "attention weights: target pieces down, source pieces across");
  const head = table.insertRow();
  head.appendChild(document.createElement("th"));
  hyp.attention[0].forEach((_, j) => { const th = document.createElement("th"); th.textContent = src[j] ?? ""; head.appendChild(th); });
  hyp.attention.forEach((weights, i) => {
    const row = table.insertRow();
    const th = document.createElement("th"); th.textContent = tgt[i] ?? ""; row.appendChild(th);
    weights.forEach((w) => {
      const cell = row.insertCell();
      cell.title = w.toFixed(3);
      cell.style.background = "rgba(25, 90, 200, " + Math.min(1, Math.max(0, w)) + ")";
      cell.textContent = "\\u00a0\\u00a0";
    });
  });
  box.appendChild(table);
  box.hidden = false;
}

async function translate() {
  const source = $("source").value;
  $("error").textContent = ""; $("status").textContent = "translating…";
  try {
    const response = await fetch("/translate", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sentences: [source], beam: Number($("beam").value), alpha: Number($("alpha").value),
                            attention: true}),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
    const best = data.translations[0];
    $("output").textContent = best.translation;
    $("score").textContent = best.score === null ? "" : "score " + best.score.toFixed(4) + (best.cut ? " (input cut)" : "");
    drawAttention(best.hypotheses[0], best.source_pieces);
  } catch (err) {
    $("output").textContent = ""; $("score").textContent = ""; drawAttention(null);
    $("error").textContent = String(err.message || err);
  } finally {
    $("status").textContent = "";
  }
}

$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate(); });
</script>
</body>
</html>
"""
