// The recipe editor (ui/templates/recipe_edit.html): CodeMirror on the YAML text,
// checked as you type by relay's own loader (POST /recipes/check), a live preview of
// what a received event would become (POST /recipes/preview), a field picker that
// inserts an event value's JMESPath at the cursor, and saving without leaving the page.
// Everything shown from the server is either escaped HTML it rendered or text set
// with textContent: event data is never turned into markup here.
(function () {
  "use strict";

  var root = document.getElementById("recipe-editor");
  if (!root || typeof CodeMirror === "undefined") return;

  var DELAY = 300;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var name = root.dataset.name;
  var state = JSON.parse(document.getElementById("recipe-state").textContent);
  var forEach = state.for_each_known ? state.for_each : null;
  var eventsSource = root.dataset.source || "";
  var problemsBox = document.getElementById("recipe-problems");
  var problemList = document.getElementById("problem-list");
  var select = document.getElementById("event-select");
  var sourceLabel = document.getElementById("event-source");
  var paste = document.getElementById("paste-payload");
  var pasteType = document.getElementById("paste-type");
  var previewBox = document.getElementById("preview");
  var picker = document.getElementById("picker");
  var form = document.getElementById("recipe-form");
  var stampInput = document.getElementById("recipe-stamp");
  var saveStatus = document.getElementById("save-status");
  var saveButton = document.getElementById("save");

  // --- talking to relay -------------------------------------------------------------

  function answer(response) {
    return response.text().then(function (text) {
      var data;
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = {error: text || "relay answered " + response.status + ". Reload the page and try again."};
      }
      data.status = response.status;
      return data;
    });
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body)
    }).then(answer);
  }

  function get(url) {
    return fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}).then(answer);
  }

  function failed() {
    return {error: "relay could not be reached. Check that it is running, then try again."};
  }

  // --- problems: the list above the editor and CodeMirror's lint markers --------------

  function showProblems(data) {
    problemList.textContent = "";
    var problems = data.problems || [];
    if (!data.problems && (data.error || data.message)) {
      problems = [{severity: "error", text: data.error || data.message}];
    }
    problems.forEach(function (p) {
      var li = document.createElement("li");
      li.className = p.severity || "error";
      if (p.line) li.dataset.line = p.line;
      li.textContent = p.text;
      if (p.secret) {
        li.appendChild(document.createTextNode(" — "));
        var link = document.createElement("a");
        link.href = "/secrets";
        link.textContent = "set " + p.secret + " on the Secrets page";
        li.appendChild(link);
      }
      problemList.appendChild(li);
    });
    (data.notes || []).forEach(function (note) {
      var li = document.createElement("li");
      li.className = "note";
      li.textContent = note;
      problemList.appendChild(li);
    });
    problemsBox.hidden = problemList.children.length === 0;
  }

  function annotations(cm, problems) {
    return (problems || []).filter(function (p) { return p.line; }).map(function (p) {
      var line = Math.max(0, Math.min(cm.lineCount() - 1, p.line - 1));
      return {
        from: CodeMirror.Pos(line, 0), to: CodeMirror.Pos(line, cm.getLine(line).length),
        message: p.message, severity: p.severity
      };
    });
  }

  function check(text, done, options, cm) {
    post(root.dataset.checkUrl, {name: name, text: text}).catch(failed).then(function (data) {
      showProblems(data);
      if (data.for_each_known) forEach = data.for_each;
      if (data.source && data.source !== eventsSource) refreshEvents(data.source);
      done(annotations(cm, data.problems));
    });
  }

  // --- the editor -----------------------------------------------------------------------

  var cm = CodeMirror.fromTextArea(document.getElementById("recipe-text"), {
    mode: "yaml", lineNumbers: true, indentUnit: 2, tabSize: 2, viewportMargin: Infinity,
    gutters: ["CodeMirror-lint-markers"],
    lint: {getAnnotations: check, async: true, delay: DELAY},
    extraKeys: {
      // YAML forbids tabs: indent with spaces.
      "Tab": function (editor) { editor.replaceSelection("  "); },
      "Ctrl-S": function () { form.requestSubmit(); },
      "Cmd-S": function () { form.requestSubmit(); }
    }
  });

  // --- the preview ----------------------------------------------------------------------

  var previewTimer = null;
  var previewSeq = 0;

  function schedulePreview() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(runPreview, DELAY);
  }

  function showText(box, text, className) {
    box.textContent = "";
    var p = document.createElement("p");
    p.className = className || "muted";
    p.textContent = text;
    box.appendChild(p);
  }

  function runPreview() {
    var body = {name: name, text: cm.getValue()};
    var pasted = paste.value.trim();
    if (pasted) {
      body.payload = pasted;
      body.type = pasteType.value.trim();
    } else if (select.value) {
      body.event_id = Number(select.value);
    } else {
      showText(previewBox, "When this source has received an event, pick it above to see what this " +
        "recipe would send. You can also paste a payload.");
      previewBox.dataset.outcome = "none";
      return;
    }
    var seq = ++previewSeq;
    previewBox.classList.add("busy");
    post(root.dataset.previewUrl, body).catch(failed).then(function (data) {
      if (seq !== previewSeq) return;  // a newer preview is on its way
      previewBox.classList.remove("busy");
      if (typeof data.html === "string") {
        previewBox.innerHTML = data.html;  // rendered and escaped by relay's templates
      } else {
        showText(previewBox, data.error || data.message || "The preview failed. Reload the page.", "error");
      }
      previewBox.dataset.outcome = data.outcome || "error";
    });
  }

  // --- the sample event and the field picker ----------------------------------------------

  var eventSeq = 0;

  function refreshEvents(source) {
    eventsSource = source;
    if (sourceLabel) sourceLabel.textContent = source;
    get(root.dataset.eventsUrl + "?source=" + encodeURIComponent(source)).catch(failed).then(function (data) {
      if (data.source !== eventsSource) return;
      select.textContent = "";
      (data.events || []).forEach(function (e) {
        var option = document.createElement("option");
        option.value = e.id;
        option.textContent = e.label;
        select.appendChild(option);
      });
      if (!select.options.length) {
        var none = document.createElement("option");
        none.value = "";
        none.textContent = "No events received yet from " + source;
        select.appendChild(none);
      }
      loadEvent();
      schedulePreview();
    });
  }

  function loadEvent() {
    var seq = ++eventSeq;
    var pasted = paste.value.trim();
    if (pasted) {
      var parsed;
      try {
        parsed = JSON.parse(pasted);
      } catch (e) {
        showText(picker, "The pasted text is not valid JSON yet.", "muted small");
        return;
      }
      showTree(parsed);
      return;
    }
    if (!select.value) {
      showText(picker, "Pick an event to see its fields.", "muted small");
      return;
    }
    get(root.dataset.eventsUrl + "/" + encodeURIComponent(select.value)).catch(failed).then(function (data) {
      if (seq !== eventSeq) return;
      if (data.payload === undefined || data.payload === null) {
        showText(picker, data.error || "This event has no fields to show.", "muted small");
      } else {
        showTree(data.payload);
      }
    });
  }

  var MAX_CHILDREN = 200;

  function isContainer(value) {
    return value !== null && typeof value === "object";
  }

  function showTree(payload) {
    picker.textContent = "";
    var tree = document.createElement("ul");
    tree.className = "tree";
    if (isContainer(payload)) {
      addChildren(tree, payload, []);
    } else {
      var li = document.createElement("li");
      li.appendChild(pickButton(JSON.stringify(payload), []));
      tree.appendChild(li);
    }
    picker.appendChild(tree);
  }

  function keyLabel(key) {
    var span = document.createElement("span");
    span.className = "key";
    span.textContent = typeof key === "number" ? "[" + key + "]" : key;
    return span;
  }

  function pickButton(label, path) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "pick";
    button.textContent = label.length > 80 ? label.slice(0, 77) + "…" : label;
    button.dataset.path = JSON.stringify(path);
    button.title = "Insert " + pathFor(path);
    return button;
  }

  function addChildren(list, value, path) {
    var keys = Array.isArray(value) ? value.map(function (_, i) { return i; }) : Object.keys(value);
    keys.slice(0, MAX_CHILDREN).forEach(function (key) {
      var child = value[key];
      var childPath = path.concat([key]);
      var li = document.createElement("li");
      if (isContainer(child)) {
        var details = document.createElement("details");
        details.open = path.length < 2;
        var summary = document.createElement("summary");
        summary.appendChild(keyLabel(key));
        var size = Array.isArray(child) ? child.length + " items" : Object.keys(child).length + " fields";
        summary.appendChild(pickButton(Array.isArray(child) ? "[" + size + "]" : "{" + size + "}", childPath));
        details.appendChild(summary);
        var ul = document.createElement("ul");
        addChildren(ul, child, childPath);
        details.appendChild(ul);
        li.appendChild(details);
      } else {
        li.appendChild(keyLabel(key));
        li.appendChild(pickButton(JSON.stringify(child), childPath));
      }
      list.appendChild(li);
    });
    if (keys.length > MAX_CHILDREN) {
      var more = document.createElement("li");
      more.className = "muted small";
      more.textContent = "… and " + (keys.length - MAX_CHILDREN) + " more";
      list.appendChild(more);
    }
  }

  // --- JMESPath for a clicked value ----------------------------------------------------

  var IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

  function jmespath(path) {
    var out = "";
    path.forEach(function (part) {
      if (typeof part === "number") {
        out += "[" + part + "]";
      } else {
        // A key that is not a plain name is a JMESPath "quoted identifier" (JSON string syntax).
        out += (out ? "." : "") + (IDENTIFIER.test(part) ? part : JSON.stringify(part));
      }
    });
    return out;
  }

  // The list for_each walks, as a path, when it is a plain one ("tickets",
  // "data.registrants", optionally with [*], [] or a filter [?...] after it).
  var SEGMENT = /([A-Za-z_][A-Za-z0-9_]*)|"((?:[^"\\]|\\.)*)"/g;
  var SIMPLE = /^\s*((?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*")(?:\s*\.\s*(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*"))*)\s*(\[\*\]|\[\]|\[\?.*\])?\s*$/;

  function forEachPath() {
    var found = forEach && SIMPLE.exec(forEach);
    if (!found) return null;
    var parts = [];
    var m;
    SEGMENT.lastIndex = 0;
    while ((m = SEGMENT.exec(found[1])) !== null) {
      parts.push(m[1] !== undefined ? m[1] : JSON.parse('"' + m[2] + '"'));
    }
    if (parts[0] === "_event") parts.shift();
    return parts;
  }

  // Inside for_each, a recipe's fields see the item's keys (plus _item, _index) and the
  // whole event as _event: a value inside an item gets the path within the item,
  // anything else the full path under _event.
  function pathFor(path) {
    if (!forEach) return path.length ? jmespath(path) : "@";
    var each = forEachPath();
    if (each && path.length > each.length && typeof path[each.length] === "number" &&
        each.every(function (part, i) { return path[i] === part; })) {
      var rest = path.slice(each.length + 1);
      return rest.length ? jmespath(rest) : "_item";
    }
    var full = jmespath(path);
    return "_event" + (full && full.charAt(0) !== "[" ? "." : "") + full;
  }

  // How to write the path where the cursor is: as it is inside a Jinja tag, escaped
  // inside a quoted YAML string, single-quoted where YAML would misread it.
  function asTyped(text) {
    var cursor = cm.getCursor("from");
    var before = cm.getLine(cursor.line).slice(0, cursor.ch);
    if (before.lastIndexOf("{{") > before.lastIndexOf("}}")) return text;
    var doubles = (before.match(/"/g) || []).length;
    var singles = (before.match(/'/g) || []).length;
    if (doubles % 2 === 1) return text.replace(/\\/g, "\\\\").replace(/"/g, '\\"');
    if (singles % 2 === 1) return text.replace(/'/g, "''");
    if (/^["'[{&*!|>%@`]/.test(text) || /: | #/.test(text)) return "'" + text.replace(/'/g, "''") + "'";
    return text;
  }

  picker.addEventListener("click", function (event) {
    var button = event.target.closest("button.pick");
    if (!button) return;
    event.preventDefault();  // a button in a summary must not fold its branch
    cm.replaceSelection(asTyped(pathFor(JSON.parse(button.dataset.path))));
    cm.focus();
  });

  // --- saving ------------------------------------------------------------------------

  function showStatus(className, text) {
    saveStatus.className = className;
    saveStatus.textContent = text;
    saveStatus.hidden = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    cm.save();
    saveButton.disabled = true;
    fetch(form.action, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({text: cm.getValue(), stamp: stampInput.value})
    }).then(answer).catch(failed).then(function (data) {
      saveButton.disabled = false;
      showStatus(data.ok ? "flash" : "notice error", data.message || data.error || "Not saved.");
      if (data.problems) showProblems(data);
      if (data.ok) {
        stampInput.value = data.stamp;
        var note = document.getElementById("new-note");
        if (note) note.hidden = true;
        document.getElementById("heading-kind").textContent = "Recipe";
        // A new recipe now exists: reloading the page shows the saved file.
        if (location.search) history.replaceState(null, "", location.pathname);
      }
    });
  });

  // --- wiring ----------------------------------------------------------------------------

  cm.on("changes", function () {
    saveStatus.hidden = true;
    schedulePreview();
  });
  select.addEventListener("change", function () {
    loadEvent();
    schedulePreview();
  });
  paste.addEventListener("input", function () {
    loadEvent();
    schedulePreview();
  });
  pasteType.addEventListener("input", schedulePreview);

  loadEvent();
  runPreview();
})();
