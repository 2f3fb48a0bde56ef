"""The deployment monitor: evidence added up across the episodes of a deployment.

A per-episode detector (:mod:`mesaguard.detectors`) can only use what one episode
shows: a small persistent deterioration passes its threshold a few percent of the
time. :class:`DeploymentMonitor` adds the evidence of many episodes up, with a
guarantee at the level of the deployment. Three modes (``mode=``), one guarantee each,
all holding while the agent is as good as in calibration (:mod:`~.modes` states them):
``"anytime"``, ``P(ever a false alarm) <= alpha``, however long the deployment runs;
``"fixed"`` (``horizon=h``), the same over ``h`` episodes, with more power;
``"change"`` (``arl=c``), an average run length to a false alarm of at least ``c``
episodes, with a delay that does not grow with the time already spent in distribution.

Each episode gets one statistic: the largest standardized statistic over the episode
of the detectors chosen (``detectors=``; by default every calibrated detector, the
joint maximum the per-episode guard thresholds; one detector gives its own, e.g.
``["meanshift"]`` the episode's UDT statistic, ``["rank"]`` its score's rank), see
:meth:`Calibration.joint_maxima`. The calibration file holds it for ``n`` held-out
in-distribution episodes: the reference bag. Where the guard stops or takes over
episodes at its own alarm, an episode is ranked by its key instead (:mod:`~.stops`):
stopped episodes are evidence. One concept per module, in the order
the evidence flows:

- :mod:`~.pvalues`: sequential conformal p-values, exactly i.i.d. uniform in
  distribution (:func:`sequential_pvalues`);
- :mod:`~.evidence`: normal-score bets mixed over :data:`SHIFTS`, as a test
  martingale (wealth) or a mixture Shiryaev-Roberts e-detector;
- :mod:`~.modes`: the modes, their guarantees and thresholds (:func:`check_mode`,
  :func:`log_threshold`, :func:`horizon_threshold`);
- :mod:`~.offline`: the monitor's offline twins over recorded episodes
  (:func:`log_wealth_path`, :func:`first_deployment_alarm`, :func:`replay`);
- :mod:`~.stops`: the key each episode is ranked by, which makes episodes stopped by
  the per-episode alarm evidence (:data:`CROSSED`, :func:`reference_keys`);
- :mod:`~.statistic`: the statistic ranked, step by step (the joint standardized
  statistic, and whether the per-episode alarm fires), in arrays or plain floats;
- :mod:`~.episodes`: which episode runs in which env, and which await their bet, in
  start order;
- :mod:`~.ledger`: the reference bag, the bets placed on finished episodes and the
  evidence they prove, with lower bounds from the episodes still running;
- :mod:`~.online`: :class:`DeploymentMonitor`, episodes as they run, mid-episode
  alarms, vector envs, stopped and censored episodes;
- :mod:`~.errors`: :class:`MonitorError`.

Episode numbers: deployment episodes are numbered **1, 2, 3, ...** in the order they
start, from the monitor's creation (a vector env's episodes started by one reset in
ascending env index). :attr:`DeploymentMonitor.alarm_episode`, ``replay(...).episode``
and ``first_deployment_alarm(...)[0]`` all give the number of the episode whose
evidence raised the alarm, the detecting one counted (tests hold the three equal); its
step inside that episode is 1-based as well.
"""

from __future__ import annotations

# Every name monitor.py had; SIMULATIONS and episode_statistics (``as``: re-exported) stay outside __all__, as then.
from mesaguard.monitor.errors import MonitorError
from mesaguard.monitor.evidence import SHIFTS
from mesaguard.monitor.modes import MODES, check_mode, horizon_threshold, log_threshold
from mesaguard.monitor.modes import SIMULATIONS as SIMULATIONS
from mesaguard.monitor.offline import DeploymentAlarm, first_deployment_alarm, log_wealth_path, replay
from mesaguard.monitor.offline import episode_statistics as episode_statistics
from mesaguard.monitor.online import DeploymentMonitor
from mesaguard.monitor.pvalues import sequential_pvalues
from mesaguard.monitor.stops import CROSSED, key_traces, reference_keys

__all__ = [
    "CROSSED",
    "MODES",
    "SHIFTS",
    "DeploymentAlarm",
    "DeploymentMonitor",
    "MonitorError",
    "check_mode",
    "first_deployment_alarm",
    "horizon_threshold",
    "key_traces",
    "log_threshold",
    "log_wealth_path",
    "reference_keys",
    "replay",
    "sequential_pvalues",
]
