// webgrpo task runtime. Written from scratch; implements the MiniWoB++ core.js protocol
// (WOB_* globals, startEpisode/startEpisodeReal/endEpisode, getUtterance, seeded Math.random,
// core.EPISODE_MAX_TIME) so one harness drives these tasks and the original suite alike.
(function () {
  'use strict';

  // --- seeded randomness: Math.seedrandom(seed) replaces Math.random ---------------------------
  function hashSeed(text) {
    // FNV-1a style mixing into four 32-bit words for sfc32.
    let h1 = 0x811c9dc5, h2 = 0x01000193, h3 = 0x9e3779b9, h4 = 0x85ebca6b;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
      h3 = Math.imul(h3 ^ c, 0xcc9e2d51);
      h4 = Math.imul(h4 ^ c, 0x1b873593);
    }
    return [h1 >>> 0, h2 >>> 0, h3 >>> 0, h4 >>> 0];
  }
  function sfc32(a, b, c, d) {
    return function () {
      a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
      let t = (a + b) | 0;
      a = b ^ (b >>> 9);
      b = (c + (c << 3)) | 0;
      c = (c << 21) | (c >>> 11);
      d = (d + 1) | 0;
      t = (t + d) | 0;
      c = (c + t) | 0;
      return (t >>> 0) / 4294967296;
    };
  }
  Math.seedrandom = function (seed) {
    const text = seed === undefined || seed === null ? String(Date.now()) : String(seed);
    const s = hashSeed(text);
    const next = sfc32(s[0], s[1], s[2], s[3]);
    for (let i = 0; i < 15; i++) next(); // warm up: early outputs of sfc32 are correlated with the seed
    Math.random = next;
    return text;
  };

  // --- globals a harness reads --------------------------------------------------------------
  window.WOB_REWARD_GLOBAL = 0;
  window.WOB_RAW_REWARD_GLOBAL = 0;
  window.WOB_REWARD_REASON = null;
  window.WOB_DONE_GLOBAL = false;
  window.WOB_EPISODE_ID = 0;
  window.WOB_TASK_READY = true;

  const core = {};
  window.core = core;
  core.EPISODE_MAX_TIME = 10000; // ms
  core.ept0 = 0;
  core.timer = null;
  core.rewardHistory = [];

  core.randi = function (min, max) { return Math.floor(Math.random() * (max - min)) + min; };
  core.randf = function (min, max) { return Math.random() * (max - min) + min; };
  core.sample = function (items) { return items[core.randi(0, items.length)]; };
  core.shuffle = function (items) {
    for (let i = items.length - 1; i > 0; i--) {
      const j = core.randi(0, i + 1);
      const tmp = items[i]; items[i] = items[j]; items[j] = tmp;
    }
    return items;
  };
  /** n distinct items, in random order. */
  core.sampleDistinct = function (items, n) { return core.shuffle(items.slice()).slice(0, n); };

  core.WORDS = ('apple river stone cloud tiger maple orange silver window garden candle rocket ' +
    'pencil forest planet castle dragon mirror harbor island jungle lemon marble needle ' +
    'ocean pepper quartz rabbit saddle ticket violin walnut yellow zebra anchor bamboo ' +
    'copper desert engine falcon ginger hammer iceberg jacket kettle ladder magnet nickel').split(' ');
  core.FIRST_NAMES = 'alice bruno carla dmitri elena farid greta hiro ines jonas kira liam mona'.split(' ');

  /** Small DOM helper for task pages: el('button', {id: 'x'}, 'text'). */
  core.el = function (tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) for (const key of Object.keys(attrs)) node.setAttribute(key, attrs[key]);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };

  core.getUtterance = function () {
    const query = document.getElementById('query');
    return query ? query.textContent.replace(/\s+/g, ' ').trim() : '';
  };

  // --- human display: reward read-out and the START cover -------------------------------------
  core.createDisplay = function () {
    if (!document.getElementById('reward-display')) {
      const display = core.el('div', { id: 'reward-display' });
      display.appendChild(core.el('div', { class: 'info', id: 'reward-last' }, 'Last reward: -'));
      display.appendChild(core.el('div', { class: 'info', id: 'reward-avg' }, 'Last 10 average: -'));
      document.body.appendChild(display);
    }
    if (!document.getElementById('sync-task-cover')) {
      const cover = core.el('div', { id: 'sync-task-cover' }, 'START');
      cover.addEventListener('click', function () { core.startEpisodeReal(); });
      const wrap = document.getElementById('wrap') || document.body;
      wrap.appendChild(cover);
    }
  };
  function updateDisplay(reward) {
    core.rewardHistory.push(reward);
    if (core.rewardHistory.length > 10) core.rewardHistory.shift();
    const last = document.getElementById('reward-last');
    const avg = document.getElementById('reward-avg');
    if (last) last.textContent = 'Last reward: ' + reward.toFixed(2);
    if (avg) {
      const mean = core.rewardHistory.reduce(function (a, b) { return a + b; }, 0) / core.rewardHistory.length;
      avg.textContent = 'Last 10 average: ' + mean.toFixed(2);
    }
  }
  function showCover(visible) {
    const cover = document.getElementById('sync-task-cover');
    if (cover) cover.style.display = visible ? 'block' : 'none';
  }

  // --- episode lifecycle ----------------------------------------------------------------------
  core.startEpisode = function () {
    core.createDisplay();
    showCover(true);
  };

  core.startEpisodeReal = function () {
    if (core.timer !== null) clearTimeout(core.timer);
    window.WOB_REWARD_GLOBAL = 0;
    window.WOB_RAW_REWARD_GLOBAL = 0;
    window.WOB_REWARD_REASON = null;
    window.WOB_DONE_GLOBAL = false;
    window.WOB_EPISODE_ID += 1;
    showCover(false);
    if (typeof window.genProblem !== 'function') throw new Error('task page defines no genProblem()');
    window.genProblem();
    core.ept0 = Date.now();
    const episodeId = window.WOB_EPISODE_ID;
    core.timer = setTimeout(function () {
      if (window.WOB_EPISODE_ID === episodeId) core.endEpisode(-1, false, 'timed out');
    }, core.EPISODE_MAX_TIME);
  };

  /** Only the first call of an episode counts. */
  core.endEpisode = function (reward, timeProportional, reason) {
    if (window.WOB_DONE_GLOBAL) return;
    const raw = Number(reward);
    let shaped = raw;
    if (timeProportional && raw > 0) {
      const elapsed = Date.now() - core.ept0;
      shaped = raw * Math.max(0, 1 - elapsed / core.EPISODE_MAX_TIME);
    }
    window.WOB_RAW_REWARD_GLOBAL = raw;
    window.WOB_REWARD_GLOBAL = shaped;
    window.WOB_REWARD_REASON = reason === undefined ? null : reason;
    window.WOB_DONE_GLOBAL = true;
    if (core.timer !== null) { clearTimeout(core.timer); core.timer = null; }
    updateDisplay(shaped);
    showCover(true);
  };
})();
