// The sembase page: a client of the server's own API, nothing more. Every number it
// shows comes from an API answer (cosine similarities are computed here from the
// vectors /v1/embeddings returns), and every failure shows the API's own message.
'use strict';

(() => {
  const KEY_STORAGE = 'sembase.apiKey';
  const DIGITS = 4; // decimals of a shown score

  const $ = (selector, root = document) => root.querySelector(selector);

  /** Makes an element: el('li', {class: 'hit', dataset: {testid: 'x'}}, child, 'text'). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === 'dataset') Object.assign(node.dataset, value);
      else if (name === 'class') node.className = value;
      else if (name in node) node[name] = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // ---- the API ------------------------------------------------------------------

  /** A failed request, carrying the API's message. */
  class ApiError extends Error {}

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || '';
  }

  /** Calls the API; resolves to the parsed JSON (or text), rejects with an ApiError. */
  async function api(method, path, body, as = 'json') {
    const headers = {};
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError(`Could not reach the server (${e.message}).`);
    }
    const text = await response.text();
    if (!response.ok) {
      let message = '';
      try {
        message = JSON.parse(text).error.message;
      } catch (_) {
        message = text.trim();
      }
      throw new ApiError(message || `The server answered ${response.status} ${response.statusText}.`);
    }
    if (as === 'text') return text;
    try {
      return JSON.parse(text);
    } catch (_) {
      throw new ApiError(`The server's answer to ${path} is not JSON.`);
    }
  }

  // ---- errors and busy state ---------------------------------------------------

  function showError(panel, error) {
    const box = $('[data-testid="error"]', panel);
    box.textContent = error instanceof Error ? error.message : String(error);
    box.hidden = false;
  }

  function clearError(panel) {
    const box = $('[data-testid="error"]', panel);
    box.textContent = '';
    box.hidden = true;
  }

  /** Runs `work` with `button` disabled and the panel's error cleared; shows a failure. */
  async function run(panel, button, work) {
    clearError(panel);
    button.disabled = true;
    panel.setAttribute('aria-busy', 'true');
    try {
      await work();
    } catch (e) {
      showError(panel, e);
    } finally {
      button.disabled = false;
      panel.removeAttribute('aria-busy');
    }
  }

  const score = (x) => x.toFixed(DIGITS);

  // ---- tabs ----------------------------------------------------------------------

  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const loaders = {}; // panel id -> function run when the tab is first shown

  function select(tab, focus = false) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute('aria-controls')).hidden = !on;
    }
    if (focus) tab.focus();
    const id = tab.getAttribute('aria-controls');
    history.replaceState(null, '', `#${tab.id.replace('tab-', '')}`);
    const load = loaders[id];
    if (load) {
      delete loaders[id];
      load();
    }
  }

  for (const tab of tabs) {
    tab.addEventListener('click', () => select(tab));
    tab.addEventListener('keydown', (event) => {
      const i = tabs.indexOf(tab);
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      select(tabs[(to + tabs.length) % tabs.length], true);
    });
  }

  // ---- API key -------------------------------------------------------------------

  const keyInput = $('#api-key');
  keyInput.value = apiKey();
  $('#key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $('#key-status').textContent = key ? 'Key set for this tab.' : 'No key.';
    refreshLists();
  });

  // ---- compare -------------------------------------------------------------------

  const comparePanel = $('#panel-compare');
  const textList = $('#compare-texts');
  const modelA = $('#compare-model');
  const modelB = $('#compare-model-b');
  const compareRun = $('[data-testid="compare-run"]', comparePanel);

  const STARTERS = ['How do I reset my password?', 'I forgot my password and cannot log in.', 'What are your opening hours?'];

  function renumber() {
    const items = [...textList.children];
    items.forEach((item, i) => {
      $('label', item).textContent = `Text ${i + 1}`;
      const remove = $('button', item);
      remove.setAttribute('aria-label', `Remove text ${i + 1}`);
      remove.disabled = items.length <= 2;
    });
  }

  function addText(value = '') {
    const id = `compare-text-${Date.now()}-${textList.children.length}`;
    const input = el('textarea', { id, rows: 2, value, spellcheck: false, dataset: { testid: 'compare-input' } });
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        compareRun.click();
      }
    });
    const remove = el('button', { type: 'button', class: 'remove' }, '×');
    const item = el('li', {}, el('label', { htmlFor: id }), input, remove);
    remove.addEventListener('click', () => {
      const next = item.nextElementSibling || item.previousElementSibling;
      item.remove();
      renumber();
      if (next) $('textarea', next).focus();
    });
    textList.append(item);
    renumber();
    return input;
  }

  STARTERS.slice(0, 2).forEach((text) => addText(text));
  $('#compare-add').addEventListener('click', () => addText().focus());

  async function loadModels() {
    const list = await api('GET', '/v1/models');
    // Rerankers score (query, document) pairs and make no embeddings: they go to search.
    const names = list.data.filter((m) => m.kind !== 'reranker').map((m) => m.id);
    showRerankers(list.data.filter((m) => m.kind === 'reranker').map((m) => m.id));
    const keepA = modelA.value;
    const keepB = modelB.value;
    modelA.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
    modelB.replaceChildren(el('option', { value: '' }, 'none'), ...names.map((n) => el('option', { value: n }, n)));
    if (names.includes(keepA)) modelA.value = keepA;
    if (names.includes(keepB)) modelB.value = keepB;
  }

  function cosine(a, b) {
    let dot = 0;
    let na = 0;
    let nb = 0;
    for (let i = 0; i < a.length; i += 1) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
  }

  /** Embeds and tokenizes the texts with one model; its similarity matrix and token counts. */
  async function measure(model, texts) {
    const [embedded, tokens] = await Promise.all([
      api('POST', '/v1/embeddings', { model, input: texts, encoding_format: 'float' }),
      api('POST', '/tokenize', { model, inputs: texts }),
    ]);
    const vectors = [...embedded.data].sort((x, y) => x.index - y.index).map((d) => d.embedding);
    const matrix = vectors.map((a) => vectors.map((b) => cosine(a, b)));
    return { model: embedded.model, matrix, tokens: tokens.map((ids) => ids.length), usage: embedded.usage };
  }

  function heatTable(result, texts) {
    const head = el('tr', {}, el('th', { scope: 'col' }, el('span', { class: 'sr-only' }, 'Text')));
    texts.forEach((_, j) => head.append(el('th', { scope: 'col' }, String(j + 1))));
    const body = result.matrix.map((row, i) => {
      const tr = el('tr', {}, el('th', { scope: 'row', title: texts[i] }, String(i + 1)));
      row.forEach((value, j) => {
        const cell = el('td', { class: i === j ? 'diagonal' : '' },
          el('span', { dataset: { testid: 'similarity', row: String(i), col: String(j) } }, score(value)));
        // Heat: the stronger the similarity, the more of the accent colour.
        cell.style.setProperty('--heat', `${Math.round(Math.max(0, Math.min(1, value)) * 100)}%`);
        if (value > 0.6) cell.classList.add('hot');
        cell.title = `text ${i + 1} · text ${j + 1}: ${score(value)}`;
        tr.append(cell);
      });
      return tr;
    });
    return el('div', { class: 'scroll' }, el('table', { class: 'heat' },
      el('caption', {}, 'Cosine similarity'),
      el('thead', {}, head), el('tbody', {}, ...body)));
  }

  function legend(result, texts) {
    return el('ol', { class: 'legend' }, ...texts.map((text, i) => el('li', {},
      el('span', { class: 'text' }, text),
      el('span', { class: 'tokens', dataset: { tokens: String(result.tokens[i]) } },
        `${result.tokens[i]} tokens`))));
  }

  compareRun.addEventListener('click', () => run(comparePanel, compareRun, async () => {
    const texts = [...textList.querySelectorAll('textarea')].map((t) => t.value);
    const models = [modelA.value, modelB.value].filter((m, i) => m && (i === 0 || m !== modelA.value));
    if (models.length === 0) throw new ApiError('No model is loaded yet: check the API key, then try again.');
    const results = await Promise.all(models.map((m) => measure(m, texts)));
    const out = $('#compare-results');
    out.replaceChildren(...results.map((r) => el('figure', { class: 'card', dataset: { model: r.model } },
      el('h2', {}, r.model),
      heatTable(r, texts),
      legend(r, texts),
      el('p', { class: 'muted' }, `${r.usage.total_tokens} tokens embedded`))));
    out.classList.toggle('two', results.length > 1);
  }));

  // ---- search --------------------------------------------------------------------

  const searchPanel = $('#panel-search');
  const indexSelect = $('#search-index');
  const rerankSelect = $('#search-rerank');
  const searchRun = $('[data-testid="search-run"]', searchPanel);

  /** Offers the served rerankers (the control stays hidden when there are none). */
  function showRerankers(names) {
    const keep = rerankSelect.value;
    rerankSelect.replaceChildren(el('option', { value: '' }, 'off'), ...names.map((n) => el('option', { value: n }, n)));
    if (names.includes(keep)) rerankSelect.value = keep;
    $('#search-rerank-field').hidden = names.length === 0;
    $('#search-depth-field').hidden = !rerankSelect.value;
  }

  rerankSelect.addEventListener('change', () => {
    $('#search-depth-field').hidden = !rerankSelect.value;
  });

  async function loadIndexes() {
    const list = await api('GET', '/v1/indexes');
    const keep = indexSelect.value;
    indexSelect.replaceChildren(...list.data.map((ix) => el('option', { value: ix.name },
      `${ix.name} (${ix.documents} docs)`)));
    if (list.data.some((ix) => ix.name === keep)) indexSelect.value = keep;
    $('#search-info').textContent = list.data.length ? ''
      : 'No index is loaded: start the server with --index NAME=DIR.';
  }

  function metadataList(metadata) {
    const entries = Object.entries(metadata || {});
    if (!entries.length) return null;
    return el('dl', { class: 'meta' }, ...entries.flatMap(([k, v]) => [
      el('dt', {}, k), el('dd', {}, typeof v === 'string' ? v : JSON.stringify(v))]));
  }

  $('#search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    run(searchPanel, searchRun, async () => {
      const body = {
        index: indexSelect.value,
        query: $('#search-query').value,
        top_k: Number($('#search-top-k').value) || 10,
      };
      if (rerankSelect.value) {
        body.rerank = { model: rerankSelect.value };
        const depth = Number($('#search-rerank-depth').value);
        if (depth) body.rerank.depth = depth;
      }
      const filter = $('#search-filter').value.trim();
      if (filter) {
        try {
          body.filter = JSON.parse(filter);
        } catch (e) {
          throw new ApiError(`The filter is not valid JSON (${e.message}); write it like {"lang": "en"}.`);
        }
      }
      const answer = await api('POST', '/v1/search', body);
      const hits = answer.results[0].hits;
      const out = $('#search-results');
      if (!hits.length) {
        out.replaceChildren(el('p', { class: 'muted' }, 'No document matched.'));
        return;
      }
      out.replaceChildren(el('ol', { class: 'hits' }, ...hits.map((hit, i) => {
        const bar = el('span', { class: 'bar', 'aria-hidden': 'true' });
        bar.style.setProperty('--fill', `${Math.round(Math.max(0, Math.min(1, hit.score)) * 100)}%`);
        return el('li', { class: 'card hit', dataset: { testid: 'search-hit', id: hit.id } },
          el('div', { class: 'hit-head' },
            ...rankBeforeAndAfter(hit, i + 1),
            el('span', { class: 'score' }, score(hit.score)), bar,
            el('code', { class: 'id' }, hit.id)),
          el('p', { class: 'hit-text' }, hit.text),
          metadataList(hit.metadata));
      })));
    });
  });

  /** A reranked hit's place now and in the index's own order, and its score there. */
  function rankBeforeAndAfter(hit, rank) {
    if (hit.retrieval_rank === undefined) return [];
    const moved = hit.retrieval_rank - rank; // > 0: the reranker moved it up
    const direction = moved > 0 ? 'up' : moved < 0 ? 'down' : 'same';
    return [
      el('span', { class: 'rank', title: 'Rank after reranking' }, `#${rank}`),
      el('span', { class: `moved ${direction}`, title: 'Rank by the embedding model, before reranking' },
        'was #', el('span', { dataset: { testid: 'hit-before-rank' } }, String(hit.retrieval_rank)),
        moved ? ` ${moved > 0 ? '▲' : '▼'}${Math.abs(moved)}` : ''),
      el('span', { class: 'retrieval muted', title: 'Cosine similarity from the embedding model' },
        `cosine ${score(hit.retrieval_score)}`),
    ];
  }

  // ---- classify ------------------------------------------------------------------

  const classifyPanel = $('#panel-classify');
  const classifyRun = $('[data-testid="classify-run"]', classifyPanel);
  $('#classify-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      classifyRun.click();
    }
  });

  classifyRun.addEventListener('click', () => run(classifyPanel, classifyRun, async () => {
    const answer = await api('POST', '/v1/classify', { input: $('#classify-input').value });
    const heads = Object.entries(answer.data[0].heads);
    $('#classify-results').replaceChildren(...heads.map(([name, out]) => {
      const ranked = Object.entries(out.probabilities).sort((a, b) => b[1] - a[1]);
      return el('div', { class: 'card', dataset: { head: name } },
        el('h2', {}, name),
        el('p', {}, 'Label: ', el('strong', { dataset: { testid: 'classify-label' } }, out.label)),
        el('ul', { class: 'bars' }, ...ranked.map(([label, p]) => {
          const bar = el('span', { class: 'bar', 'aria-hidden': 'true' });
          bar.style.setProperty('--fill', `${(p * 100).toFixed(1)}%`);
          return el('li', { class: label === out.label ? 'best' : '' },
            el('span', { class: 'label' }, label), bar,
            el('span', { class: 'pct' }, `${(p * 100).toFixed(1)}%`));
        })));
    }));
  }));

  // ---- reports -------------------------------------------------------------------

  const reportsPanel = $('#panel-reports');
  const reportsRefresh = $('#reports-refresh');

  async function openReport(name, button) {
    await run(reportsPanel, button, async () => {
      const html = await api('GET', `/reports/${encodeURIComponent(name)}`, undefined, 'text');
      $('#report-title').textContent = name;
      // Sandboxed (no scripts, its own origin): the report is shown, never run.
      $('#report-frame').srcdoc = html;
      $('#report-view').hidden = false;
      $('#report-close').focus();
    });
  }

  async function loadReports() {
    const list = await api('GET', '/v1/reports');
    const out = $('#reports-list');
    if (!list.enabled) {
      out.replaceChildren(el('li', { class: 'muted' }, 'No reports directory: start the server with --reports DIR.'));
      return;
    }
    if (!list.data.length) {
      out.replaceChildren(el('li', { class: 'muted' }, 'The reports directory has no .html files yet.'));
      return;
    }
    out.replaceChildren(...list.data.map((report) => {
      const open = el('button', { type: 'button', class: 'link', dataset: { report: report.name } }, report.name);
      open.addEventListener('click', () => openReport(report.name, open));
      const when = new Date(report.modified * 1000).toLocaleString();
      return el('li', {}, open, el('span', { class: 'muted' }, ` ${when} · ${Math.ceil(report.bytes / 1024)} KiB`));
    }));
  }

  reportsRefresh.addEventListener('click', () => run(reportsPanel, reportsRefresh, loadReports));
  $('#report-close').addEventListener('click', () => {
    $('#report-view').hidden = true;
    $('#report-frame').srcdoc = '';
  });

  // ---- start ---------------------------------------------------------------------

  function refreshLists() {
    run(comparePanel, compareRun, loadModels);
    if (!loaders['panel-search']) run(searchPanel, searchRun, loadIndexes);
    if (!loaders['panel-reports']) run(reportsPanel, reportsRefresh, loadReports);
  }

  loaders['panel-search'] = () => run(searchPanel, searchRun, loadIndexes);
  loaders['panel-reports'] = () => run(reportsPanel, reportsRefresh, loadReports);
  run(comparePanel, compareRun, loadModels);
  const start = tabs.find((t) => t.id === `tab-${location.hash.slice(1)}`);
  if (start) select(start);
})();
