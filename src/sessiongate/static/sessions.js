// sessiongate sessions page: sign-in times in the reader's own locale and time zone.
// Without JavaScript the page shows them in ISO 8601 (UTC).
(function () {
  "use strict";
  var format;
  try {
    format = new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeStyle: "short"});
  } catch (e) {
    return;
  }
  var times = document.querySelectorAll("time[data-local]");
  for (var i = 0; i < times.length; i++) {
    var iso = times[i].getAttribute("datetime");
    var when = new Date(iso);
    if (!isNaN(when.getTime())) {
      times[i].title = iso;
      times[i].textContent = format.format(when);
    }
  }
})();
