// Sortable and filterable tables, without any library: this page must work from file://.
// A table with data-rows holds only its first rows; functions.js (loaded on first use,
// as a script, which file:// allows) has them all, and the table is then drawn from it.
(function () {
  var LIMIT = 200;
  var data = null, waiting = [];
  function withData(then) {
    if (data) { then(); return; }
    waiting.push(then);
    if (waiting.length > 1 || typeof BPFCOV_DATA_FILE === "undefined") { return; }
    var script = document.createElement("script");
    script.src = BPFCOV_DATA_FILE;
    script.onerror = function () {
      document.querySelectorAll("[data-shown]").forEach(function (p) {
        p.textContent = BPFCOV_DATA_FILE + " could not be loaded: only the rows listed can be filtered.";
      });
    };
    document.head.appendChild(script);
  }
  window.bpfcovFunctions = function (d) {
    data = d;
    data.col = {};
    d.columns.forEach(function (name, i) { data.col[name] = i; });
    waiting.splice(0).forEach(function (then) { then(); });
  };
  function number(n) { return Number(n).toLocaleString("en-US"); }
  function value(row, key) {  // a row's value as its column shows it
    var file = row[data.col.file];
    if (key === "source") { return file < 0 ? "" : data.files[file] + ":" + row[data.col.line]; }
    if (key === "href") { return file < 0 ? "" : data.pages[file] + "#" + row[data.col.anchor]; }
    if (key === "object") { return data.objects[row[data.col.object]]; }
    if (key === "watched") { return data.watched[row[data.col.object]]; }
    if (key === "class") { return data.classes[row[data.col["class"]]]; }
    return row[data.col[key]];
  }
  function cell(row, key) {
    var td = document.createElement("td");
    var v = value(row, key);
    if (key === "display") {
      td.className = "name";
      td.title = row[data.col.mangled] || v;
      td.textContent = v;
      var note = row[data.col.note];
      if (note) { var span = document.createElement("span"); span.className = "inl"; span.textContent = " " + note; td.appendChild(span); }
    } else if (key === "size" || key === "count" || key === "retained") {
      td.className = "num";
      td.textContent = key === "retained" && !value(row, "class") ? "" : number(v);
    } else if (key === "class") {
      if (v) { var badge = document.createElement("span"); badge.className = "status " + v; badge.textContent = v; td.appendChild(badge); }
    } else if (key === "source") {
      var href = value(row, "href");
      if (href) { var a = document.createElement("a"); a.href = href; a.textContent = v; td.appendChild(a); } else { td.textContent = v; }
    } else {
      td.className = "name";
      td.textContent = v;
    }
    return td;
  }
  function draw(table) {
    var keys = Array.prototype.map.call(table.tHead.rows[0].cells, function (th) { return th.dataset.key; });
    var q = (table.dataset.query || "").toLowerCase();
    var rows = data[table.dataset.rows].filter(function (r) {
      if (!q) { return true; }
      var text = [r[data.col.display], r[data.col.mangled], r[data.col.note], value(r, "source"), value(r, "object")];
      return text.join(" ").toLowerCase().indexOf(q) !== -1;
    });
    var key = table.dataset.key;
    if (key) {
      var dir = table.dataset.dir === "asc" ? 1 : -1, numeric = typeof value(rows[0] || [], key) === "number";
      rows.sort(function (a, b) {
        var x = value(a, key), y = value(b, key);
        return dir * (numeric ? x - y : String(x).localeCompare(String(y)));
      });
    }
    var body = document.createElement("tbody");
    rows.slice(0, LIMIT).forEach(function (r) {
      var tr = document.createElement("tr");
      tr.id = r[data.col.anchor];
      keys.forEach(function (k) { tr.appendChild(cell(r, k)); });
      body.appendChild(tr);
    });
    table.replaceChild(body, table.tBodies[0]);
    var shown = document.querySelector('[data-shown="' + table.id + '"]');
    if (shown) {
      shown.textContent = number(rows.length) + " of " + number(data[table.dataset.rows].length) + " match" +
        (rows.length > LIMIT ? "; the first " + number(LIMIT) + " are listed." : ".");
    }
  }
  document.querySelectorAll("table[data-sortable]").forEach(function (table) {
    table.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () {
        var dir = th.dataset.dir === "asc" ? "desc" : "asc";
        th.dataset.dir = dir;
        if (table.dataset.rows) {
          table.dataset.key = th.dataset.key;
          table.dataset.dir = dir;
          withData(function () { draw(table); });
          return;
        }
        var body = table.tBodies[0], index = th.cellIndex, sign = dir === "asc" ? 1 : -1;
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[index].dataset.value || a.cells[index].textContent;
          var y = b.cells[index].dataset.value || b.cells[index].textContent;
          return sign * (th.dataset.sort === "num" ? parseFloat(x) - parseFloat(y) : x.localeCompare(y));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var table = document.getElementById(input.dataset.filter);
    input.addEventListener("input", function () {
      if (table.dataset.rows) {
        table.dataset.query = input.value;
        withData(function () { draw(table); });
        return;
      }
      var q = input.value.toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        r.style.display = r.textContent.toLowerCase().indexOf(q) === -1 ? "none" : "";
      });
    });
  });
  // A link to a function whose row is not listed: find it in functions.js and list it.
  // A link to a source line (#L120): marked 119 line heights below the first.
  function follow() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (!id || document.getElementById(id)) { return; }
    var line = /^L(\d+)$/.exec(id), code = document.querySelector("div.src pre.code");
    if (line && code) {  // lines have no element each: mark the line's place, one line height apart
      var mark = code.querySelector(".target") || document.createElement("div");
      mark.className = "target";
      mark.style.top = (4 + 18 * (Number(line[1]) - 1)) + "px";
      code.appendChild(mark);
      mark.scrollIntoView({block: "center"});
      return;
    }
    document.querySelectorAll("table[data-rows]").forEach(function (table) {
      withData(function () {
        var row = data[table.dataset.rows].filter(function (r) { return r[data.col.anchor] === id; })[0];
        if (!row) { return; }
        var input = document.querySelector('input[data-filter="' + table.id + '"]');
        table.dataset.query = input.value = row[data.col.display];
        draw(table);
        document.getElementById(id).scrollIntoView();
      });
    });
  }
  window.addEventListener("hashchange", follow);
  follow();
}());
