"""The soak run (`soak.py`) for 60 s in the default suite: no wrong admission, flat gate RSS.

The full 10-minute run is `python tests/reliability/soak.py --duration 600` (see the README).
"""

from __future__ import annotations

import soak

DURATION = 60.0


def test_soak_60s_admits_nothing_wrongly_and_keeps_rss_flat(tmp_path):
    summary = soak.run(soak.SoakConfig(duration=DURATION), workdir=tmp_path)
    print("\n" + summary.report())
    assert summary.gate_alive_at_end, summary.report()
    assert summary.requests > 1000, summary.report()
    assert summary.probes_after_window > 0, summary.report()  # the checker had work to do
    assert summary.kills["gate_revoke"] > 0, summary.report()
    assert summary.kills["kratos_revoke"] > 0, summary.report()
    assert summary.wrongly_admitted == 0, summary.report()
    assert summary.rss_end <= soak.SoakConfig().rss_limit * summary.rss_warmup, summary.report()
    assert summary.ok, summary.report()
