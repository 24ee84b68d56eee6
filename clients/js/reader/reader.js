// The reader page: opens the story (or stories) named in the form with the storyline client, lists events as they
// arrive, shows the connection state and any gap, and posts events with the same token.
// The fragment pre-fills the form and opens at once: /reader#story=<id>&token=<jwt> (URI-encoded).
import { subscribe, publish } from './storyline.js';

const $ = (id) => document.getElementById(id);
const form = $('open');
let subscription = null;
let count = 0;

function storiesOf(text) {
  const list = text.split(',').map((s) => s.trim()).filter(Boolean);
  return list.length === 1 ? list[0] : list;
}

function storiesOfList() {
  const s = storiesOf($('story').value);
  return Array.isArray(s) ? s : [s];
}

function showStatus({ state, delayMs, reason, error }) {
  const el = $('status');
  el.dataset.state = state;
  let text = state;
  if (state === 'waiting') text = `reconnecting in ${(delayMs / 1000).toFixed(1)} s (${reason})`;
  if (state === 'closed' && error) text = `closed: ${error.message}`;
  el.textContent = text;
}

function showEvent(event) {
  const li = document.createElement('li');
  li.dataset.id = event.id;
  li.dataset.story = event.story;
  li.dataset.type = event.type;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = `${event.story} ${event.id} `;
  const type = document.createElement('span');
  type.className = 'type';
  type.textContent = event.type;
  const data = document.createElement('span');
  data.className = 'data';
  data.textContent = ` ${JSON.stringify(event.data)}`;
  li.append(meta, type, data);
  $('events').append(li);
  $('count').textContent = String(++count);
  li.scrollIntoView({ block: 'nearest' });
}

function showGap(gap) {
  const el = $('gap');
  el.hidden = false;
  el.dataset.story = gap.story;
  el.dataset.requested = gap.requested;
  el.dataset.resumedFrom = gap.resumedFrom;
  el.textContent = `gap in ${gap.story}: events after ${gap.requested} are no longer retained; resumed from ${gap.resumedFrom}`;
}

function open() {
  subscription?.close();
  $('events').replaceChildren();
  $('gap').hidden = true;
  count = 0;
  $('count').textContent = '0';
  subscription = subscribe(storiesOf($('story').value), {
    baseUrl: location.origin,
    token: $('token').value.trim(),
    lastEventId: $('oldest').checked ? storiesOfList().map(() => '0').join(',') : undefined,
    onEvent: showEvent,
    onGap: showGap,
    onStatus: showStatus,
  });
  $('disconnect').disabled = false;
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  open();
});

$('disconnect').addEventListener('click', () => {
  subscription?.close();
  subscription = null;
  $('disconnect').disabled = true;
});

$('post').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('posted');
  out.classList.remove('error');
  let data;
  try {
    data = JSON.parse($('data').value);
  } catch (error) {
    out.classList.add('error');
    out.textContent = `data is not JSON: ${error.message}`;
    return;
  }
  const story = storiesOf($('story').value);
  try {
    const receipt = await publish(Array.isArray(story) ? story[0] : story, { type: $('type').value.trim(), data }, {
      baseUrl: location.origin,
      token: $('token').value.trim(),
    });
    out.textContent = `posted ${receipt.id}${receipt.duplicate ? ' (already stored)' : ''}`;
  } catch (error) {
    out.classList.add('error');
    out.textContent = error.message;
  }
});

// #story=<id>&token=<jwt>[&from=0]; the token is then removed from the address bar (and so from the history).
const params = new URLSearchParams(location.hash.slice(1));
if (params.get('story')) $('story').value = params.get('story');
if (params.get('token')) $('token').value = params.get('token');
if (params.get('from') === '0') $('oldest').checked = true;
if (location.hash) history.replaceState(null, '', location.pathname + location.search);
if (params.get('story') && params.get('token')) open();
