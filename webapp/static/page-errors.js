/*
 * Show every JavaScript error of the page in its error area instead of only
 * the console: uncaught exceptions, unhandled promise rejections, scripts
 * that fail to load, and whatever the page reports with callwireShowError.
 * Loaded first so it also catches errors in the scripts after it. Nothing is
 * swallowed: the browser still logs each error as usual.
 */
(function () {
  'use strict';
  var pending = [];
  var MAX_SHOWN = 20;

  function render(text) {
    var area = document.getElementById('errors');
    var list = document.getElementById('error-list');
    if (!area || !list) {
      pending.push(text);
      return;
    }
    var item = document.createElement('li');
    var time = new Date().toLocaleTimeString();
    item.textContent = time + ' ' + text;
    list.appendChild(item);
    while (list.children.length > MAX_SHOWN) list.removeChild(list.firstChild);
    area.hidden = false;
  }

  function describe(reason) {
    if (reason && reason.stack && reason.message) return reason.name + ': ' + reason.message;
    if (reason && reason.message) return reason.message;
    return String(reason);
  }

  window.callwireShowError = render;

  window.addEventListener('error', function (event) {
    var target = event.target;
    if (target && target !== window && (target.src || target.href)) {
      render('Failed to load ' + (target.src || target.href));
      return;
    }
    var where = event.filename ? ' (' + event.filename.split('/').pop() + ':' + event.lineno + ')' : '';
    render('JavaScript error: ' + (event.error ? describe(event.error) : event.message) + where);
  }, true);

  window.addEventListener('unhandledrejection', function (event) {
    render('Unhandled promise rejection: ' + describe(event.reason));
  });

  document.addEventListener('DOMContentLoaded', function () {
    var queued = pending;
    pending = [];
    queued.forEach(render);
    var clear = document.getElementById('clear-errors');
    if (clear) {
      clear.addEventListener('click', function () {
        document.getElementById('error-list').textContent = '';
        document.getElementById('errors').hidden = true;
      });
    }
  });
})();
