// Draws each <canvas data-src> from its JSON endpoint with the vendored Chart.js.
(function () {
  var COLOURS = { public: "#2e7d32", internal: "#1565c0", confidential: "#ef6c00", personal: "#c62828",
                  allowed: "#2e7d32", denied: "#c62828", failed: "#ef6c00" };
  var PALETTE = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#c62828", "#00838f", "#5d4037"];
  function colour(label, i) { return COLOURS[label] || PALETTE[i % PALETTE.length]; }
  function draw(canvas) {
    fetch(canvas.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (json) {
        var part = canvas.dataset.part ? json[canvas.dataset.part] : json;
        var kind = canvas.dataset.kind || "bar";
        var datasets = part.datasets
          ? part.datasets.map(function (d, i) {
              return { label: d.label, data: d.data, backgroundColor: colour(d.label, i), borderColor: colour(d.label, i) };
            })
          : [{ label: canvas.getAttribute("aria-label"), data: part.data,
               backgroundColor: part.labels.map(function (l, i) { return colour(l, i); }) }];
        new Chart(canvas, {
          type: kind, data: { labels: part.labels, datasets: datasets },
          options: { animation: false, responsive: true, maintainAspectRatio: false,
                     plugins: { legend: { display: kind === "doughnut" || !!part.datasets } },
                     scales: kind === "doughnut" ? {} : {
                       x: { stacked: !!canvas.dataset.stacked },
                       y: { stacked: !!canvas.dataset.stacked, beginAtZero: true, ticks: { precision: 0 } } } }
        });
        canvas.dataset.drawn = "1";
      });
  }
  document.querySelectorAll("canvas[data-src]").forEach(draw);
})();
