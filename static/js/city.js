// Draws the city map's flows as a Sankey diagram (Chart.js with chartjs-chart-sankey, both
// vendored): givers on the left, receivers on the right, one band per dataset and receiving
// department, as wide as its granted fields, coloured by how fresh the copy is.
(function () {
  var canvas = document.getElementById("city-flows");
  if (!canvas) return;
  var COLOURS = { fresh: "#2e7d32", behind: "#ef6c00", late: "#ad1457", failing: "#c62828", granted: "#90a4ae" };
  fetch(canvas.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (r) { return r.json(); })
    .then(function (map) {
      var names = {};
      map.departments.forEach(function (d) { names[d.code] = d.name; });
      var labels = {};
      var data = map.flows.map(function (f) {
        // Two columns: a department that gives and receives appears on both sides.
        var from = "give:" + f.giver, to = "take:" + f.receiver;
        labels[from] = (names[f.giver] || f.giver) + " ▸";
        labels[to] = "▸ " + (names[f.receiver] || f.receiver);
        return { from: from, to: to, flow: Math.max(1, f.granted_fields.length), state: f.state, dataset: f.dataset };
      });
      var colour = function (c) { return COLOURS[c.dataset.data[c.dataIndex].state]; };
      new Chart(canvas, {
        type: "sankey",
        data: { datasets: [{ label: "Flows", data: data, labels: labels, colorFrom: colour, colorTo: colour,
                             colorMode: "from", size: "max" }] },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          plugins: { tooltip: { callbacks: { label: function (c) {
            var d = c.dataset.data[c.dataIndex];
            return d.dataset + ": " + labels[d.from] + " " + labels[d.to] + " (" + d.flow + " fields, " + d.state + ")";
          } } } }
        }
      });
      canvas.dataset.drawn = String(data.length);
    });
})();
