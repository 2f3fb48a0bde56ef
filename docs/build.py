"""Fill the generated tables of the README and the pages under docs/ from benchmarks/results/*.json.

A page marks each generated table with a pair of comments::

    <!-- generated: shield -->
    ...the table, rewritten by this script...
    <!-- end generated -->

and :data:`TABLES` maps each name to a function of the results that returns the table's
markdown. Nothing between the markers is written by hand: change a results file, run

    python docs/build.py           # rewrite the pages in place
    python docs/build.py --check   # exit 1 and name the pages that disagree with the results

and ``tests/test_docs.py`` fails while a committed page and the results disagree.

>>> table(["a", "b"], [[1, "x"]])
'| a | b |\\n| --- | --- |\\n| 1 | x |'
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
AGENTS = ROOT / "src" / "mesaguard" / "agents"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)
DETECTORS = ("threshold", "envelope", "cusum", "meanshift")
JOINT = "threshold+envelope+cusum+meanshift"


@cache
def results(name: str) -> Any:
    """The parsed ``benchmarks/results/<name>.json``."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def f(x: float | None, spec: str = ".3f") -> str:
    """``x`` formatted by ``spec``; ``-`` for a missing value."""
    return "-" if x is None else format(x, spec)


def ci(low: float, high: float, spec: str = ".3f") -> str:
    return f"[{low:{spec}}, {high:{spec}}]"


def n(x: float | None) -> str:
    """Episodes (a count or a mean): one decimal below 10, thousands separated above; ``-`` when missing."""
    if x is None:
        return "-"
    return f"{x:,.1f}" if x < 10 else f"{x:,.0f}"


# --- scenarios -----------------------------------------------------------------------------------------------------

POLICIES = {"agent": "shipped agent", "aligned": "scripted aligned", "misaligned": "scripted misaligned"}


def scenarios() -> str:
    rows_by_scenario = dict(results("scenarios")["rows"])
    rows_by_scenario["driving"] = results("driving_table")["rows"]
    rows = []
    for scenario, policies in rows_by_scenario.items():
        for policy, label in POLICIES.items():
            cells = []
            for variant, r in policies[policy].items():
                score = f(r["mean_score"], "+.1f" if scenario == "cheetah" else "+.3f")
                cell = f"{score} / {r['catastrophe_rate']:.3f}"
                cells.append(cell if variant in ("train", "deploy") else f"{variant} {cell}")
            rows.append([scenario, label, *cells, *[""] * (3 - len(cells))])
    return table(["scenario", "policy", "train", "deploy", "other"], rows)


def scenario_speed() -> str:
    rows = [[r["scenario"], r["size"], r["plain"], f"{r['scenario_steps_per_s']:,.0f}",
             f"{r['plain_steps_per_s']:,.0f}", f"{r['ratio']:.1f}x"] for r in results("scenario_speed")["results"]]
    return table(["scenario", "grid size", "plain MiniGrid env", "scenario steps/s", "plain steps/s", "ratio"], rows)


def agents() -> str:
    rows = []
    bench = ROOT / "benchmarks" / "agents"  # agents only a benchmark deploys
    for path in [*sorted([*AGENTS.glob("*.json"), *AGENTS.glob("impact/*.json")]), *sorted(bench.glob("*.json"))]:
        meta = json.loads(path.read_text())["metadata"]
        name = path.relative_to(AGENTS if path.is_relative_to(AGENTS) else ROOT).with_suffix("").as_posix()
        rows.append([f"`{name}`", f"{meta['timesteps']:,}", f"{meta['train_seconds']:,.0f}", f"`{meta['command']}`"])
    return table(["agent", "PPO steps", "training seconds (one core)", "command (reproduces the weights)"], rows)


# --- the guard -----------------------------------------------------------------------------------------------------


def guard_overhead() -> str:
    envs = results("guard_overhead")["single_env"]
    header = ["per step"]
    for env in envs:
        header += [f"{env['env']} (bare step {env['bare_step_us']:.0f} us): overhead", "x RES overhead"]
    rows = []
    for variant in envs[0]["variants"]:
        row = [variant]
        for env in envs:
            v = env["variants"][variant]
            ratio = "-" if v["ratio_to_res"] is None else f"{v['ratio_to_res']:.1f}"  # RES within the noise
            # the share of the env's own step (not for the noise floor's second bare instance)
            shown = "share_of_step" in v and not variant.startswith("bare")
            share = f" ({v['share_of_step']:.0%})" if shown else ""
            row += [f"{v['overhead_us']:.2f} us{share}", ratio]
        rows.append(row)
    return table(header, rows)


def guard_verdict() -> str:
    """Issue 12's single-env target on CartPole, from the recorded run."""
    one = next(e for e in results("guard_overhead")["single_env"] if e["env"] == "CartPole-v1")["variants"]
    alone, ratio = (one[f"guard: default set{v}"]["ratio_to_res"] for v in ("", " + deployment monitor"))
    return (f"on CartPole-v1 the default set adds {alone:.1f}x RES's overhead alone and {ratio:.1f}x with a "
            f"monitor: the target is {'met' if ratio <= 3 else '**not met**'} in the recorded run.")


def guard_episode_split() -> str:
    """The default set with a monitor on long and short episodes of the do-nothing env: per step and per episode."""
    r = results("guard_overhead")["breakdown_null_env"]["episode_length"]
    (long, short), (g_long, g_short), (r_long, r_short) = r["lengths"], r["guard_with_monitor_us"], r["res_us"]
    return (f"On the do-nothing env, the default set with a monitor adds {g_long:.2f} us a step on {long}-step "
            f"episodes and {g_short:.2f} us on {short}-step ones (RES {r_long:.2f} and {r_short:.2f}): "
            f"{r['guard_per_episode_us']:.1f} us per episode (the resets, the monitor's bet and its evidence "
            f"refreshes; RES {r['res_per_episode_us']:.1f}), the rest per step. The part per episode is a "
            f"difference of two medians, scaled up twentyfold: it varies between runs by about half its size.")


def guard_vector() -> str:
    v = results("guard_overhead")["vector"]
    rows = [[name, f"{r['step_us']:.1f}", f"{r['env_steps_per_s']:.2g}", f"{r['slowdown_vs_numpy']:.1f}x"]
            for name, r in v["variants"].items()]
    return table([f"{v['n_envs']:,} envs", "us per vector step", "env-steps per second", "vs NumPy"], rows)


def calibration_files() -> str:
    r = results("calibration_files")
    rows = [[name, f"{row['json_bytes'] / 1e6:.2f}", f"{row['sidecar_bytes'] / 1e6:.2f}", f"{row['total_mb']:.2f}",
             f"{row['load_s'] * 1e3:.1f}"] for name, row in r["rows"].items()]
    return table([f"T = {r['config']['steps']:,}", "JSON MB", "sidecar MB", "total MB", "load ms"], rows)


def cusum_delay() -> str:
    rows = [[f"{r['h']:g}", f"{r['arl']:,.0f} +- {r['arl_se']:,.0f}", f"{r['arl_siegmund']:,.0f}",
             f"{r['delay_worst']:.1f}", f"{r['lorden_bound']:.1f}", f"{r['ratio_worst']:.2f}"]
            for r in results("detection_delay")["cusum_vs_lorden"]]
    return table(["threshold h", "ARL (simulated)", "ARL (Siegmund)", "worst-case delay", "log(ARL)/KL",
                  "ratio (target <= 1.3)"], rows)


def detector_delay() -> str:
    dets = results("detection_delay")["matched_false_alarm_rate"]["detectors"]
    rows = [[name, f"{r['detection_rate']:.1%}", f"{r['false_alarm_before_change']:.1%}", f"{r['missed']:.1%}",
             f"{r['mean_delay']:.1f} / {r['median_delay']:g}", f"{r['false_alarm_rate_clean']:.3f}"]
            for name, r in dets.items()]
    return table(["detector", "detected after the change", "false alarm before it", "missed", "mean / median delay",
                  "false alarms, change-free"], rows)


def false_alarms() -> str:
    rates = results("false_alarms")["rates"]
    sets = list(dict.fromkeys(r["detectors"] for r in rates))
    rows = []
    for alpha in dict.fromkeys(r["alpha"] for r in rates):
        these = {r["detectors"]: r for r in rates if r["alpha"] == alpha}
        first = next(iter(these.values()))
        beta = f"{first['beta_mean']:.3f} {ci(*first['beta_90'])}"
        rows.append([f"{alpha:.2f}", *(f"{these[s]['realized']:.3f}" for s in sets), beta])
    labels = ["all four" if s == JOINT else s for s in sets]
    return table(["alpha", *labels, "Beta law of the realized rate: mean [90%]"], rows)


# --- the deployment monitor ----------------------------------------------------------------------------------------


def deployment_null() -> str:
    d = results("deployment")
    rows = []
    for det, by_alpha in d["null"].items():
        for alpha, modes in by_alpha.items():
            cells = [f"{m['rate']:.3f} {ci(m['low'], m['high'])}" for m in (modes["anytime"], modes["fixed"])]
            rows.append([det, f"{float(alpha):.2f}", *cells])
    return table(["detector", "alpha", "anytime mode", f"fixed horizon h = {d['config']['horizon']:,}"], rows)


def _detected(r: dict[str, Any]) -> str:
    median = f" ({n(r['median_episodes'])})" if r.get("median_episodes") is not None else ""
    return f"{n(r['mean_episodes'])}{median}; {r['detected']}/{r['deployments']}"


def deployment_gaussian() -> str:
    d = results("deployment")
    rows = []
    for key, modes in d["gaussian"].items():
        reference, shift = key.split("/")
        oracle = d["shifts"][shift]
        rows.append([f"{int(reference):,}", f"{shift} sd",
                     f"{oracle['oracle_power_0.8']:.0f} / {oracle['oracle_power_0.5']:.0f}",
                     _detected(modes["anytime"]), _detected(modes["fixed"])])
    return table(["reference episodes", "drop", "oracle 0.8 / 0.5", "anytime: mean (median); detected",
                  f"fixed h = {d['config']['horizon']:,}: mean (median); detected within h"], rows)


def deployment_pendulum() -> str:
    d = results("deployment")
    rows = []
    for shift, s in d["shifts"].items():
        b = s["bonferroni"]["anytime"]
        rows.append([f"{shift} sd", f"{s['oracle_power_0.8']:.0f} / {s['oracle_power_0.5']:.0f}",
                     f"{n(b['mean_episodes'])}; {b['detected']}/{b['deployments']}",
                     *(_detected(s[det]["anytime"]) for det in ("threshold", "cusum", "meanshift"))])
    return table(["drop", "oracle 0.8 / 0.5", "per-episode test, Bonferroni alpha/(j(j+1))", "threshold", "cusum",
                  "meanshift"], rows)


def _alarmed(m: dict[str, Any]) -> str:
    a = m["alarmed"]
    if a["k"] == 0:
        return f"never in {m['limit']:,}"
    return f"{a['rate']:.3f} in {m['limit']:,}; {n(m['mean_episodes'])}"


def deployment_cheetah() -> str:
    configs = results("deployment_cheetah")["configs"]
    variants = ("train", "deploy-cost", "deploy-dynamics")
    rows = []
    for name, c in configs.items():
        rows.append(["all four, jointly" if name == JOINT else name,
                     " / ".join(f"{c[v]['per_episode']['rate']:.3f}" for v in variants),
                     *(_alarmed(c[v]["anytime"]) for v in variants), *(_alarmed(c[v]["fixed"]) for v in variants)])
    return table(["detectors", "per episode: " + " / ".join(variants),
                  *(f"anytime: {v}" for v in variants), *(f"fixed: {v}" for v in variants)], rows)


def cheetah_scores() -> str:
    rows = [[v, f"{s['mean']:+.1f}", f"{s['sd']:.1f}", f"{s['shift_sd']:+.2f}"]
            for v, s in results("deployment_cheetah")["scores"].items()]
    return table(["variant", "mean base objective", "sd", "shift from train, in train sd"], rows)


# --- preventive safeguards -----------------------------------------------------------------------------------------

def safeguard_cost() -> str:
    """Steps per second as a share of the unguarded agent's, per scenario and safeguard, in the benchmark's order
    (the oracles labelled, as the bench labels them)."""
    from mesaguard.bench.config import is_oracle

    d = {k: v for k, v in results("safeguard_cost").items() if k != "machine"}
    names = list(dict.fromkeys(s for r in d.values() for s in r["ratio"] if s != "none"))
    rows = [[scenario, f"{r['steps_per_s']['none']:,.0f}", *(f(r["ratio"].get(s), ".2f") for s in names)]
            for scenario, r in d.items()]
    return table(["scenario", "unguarded steps/s", *(f"{s} (oracle)" if is_oracle(s) else s for s in names)], rows)


def scope() -> str:
    d = results("scope")
    rows = []
    for scenario in d["config"]["scenarios"]:
        for s in d[scenario]["scopes"]:
            ind = s["in_distribution"]
            for variant, r in s["shifted"].items():
                rows.append([f"{scenario} / {variant}", f"{s['method']}, {s['aggregate']}",
                             f"{ind['rate']:.3f} {ci(*ind['beta_90'])}",
                             f"{r['detection_rate']:.3f}", f"{r['mean_alarm_step']:.2f}",
                             f"{r['prevented']}/{r['catastrophe_episodes']}",
                             f"{s['update_us']['scalar_hit']:.0f} / {s['update_us']['scalar_miss']:,.0f}"])
    return table(["scenario / variant", "scope", "false alarms [Beta law, 90%]", "episodes detected", "mean alarm step",
                  "catastrophes prevented", "us per state, seen / new"], rows)


def scope_continuous() -> str:
    r = results("scope")["continuous"]
    rows = [[name, f"{us:.2f}", f"{r['ratio_to_bare'][name]:.2f}"] for name, us in r["step_us"].items()]
    return table([f"{r['env']}: one env.step", "µs", "x the bare step"], rows)


def _catastrophes(variant: dict[str, Any], shields: Sequence[str], sep: str) -> str:
    return sep.join(f"{variant[k]['catastrophes_per_1000_episodes']:.0f}" for k in shields)


def shield() -> str:
    d = results("shield")["scenarios"]
    rows = []
    for scenario, s in d.items():
        if scenario == "cheetah":
            continue
        dep, ref = s["variants"]["deploy"], s["variants"][s["reference_variant"]]
        rows.append([scenario, _catastrophes(dep, ("none", "H=1", "H=3"), " / "),
                     f"{dep['none']['score']:+.2f} / {dep['H=1']['score']:+.2f}",
                     f"{dep['H=1']['replaced_per_1000_steps']:.0f}", f"{ref['H=1']['score_kept']:.3f}",
                     " / ".join(f"{dep[k]['steps_per_s_ratio_to_none']:.2f}" for k in ("H=1", "H=3"))])
    return table(["scenario", "catastrophes per 1,000 deploy episodes, none / H=1 / H=3",
                  "deploy base objective, none / H=1", "replaced per 1,000 steps (H=1)",
                  "score kept on the reference variant (H=1)", "steps/s vs unshielded, H=1 / H=3"], rows)


def _prevention_row(scenario: str, name: str, d: dict[str, Any], free: dict[str, Any], best: str | None) -> list[str]:
    s = d["summary"]
    label = f"{name} (oracle)" if d["oracle"] else name
    if name == best:
        label = f"**{label}**"
    judged = free["summary"]["catastrophes_per_1000"] > 0
    harm = (f"{free['summary']['catastrophes_per_1000']:.0f} -> {s['catastrophes_per_1000']:.0f}" if judged
            else f"{free['summary']['deploy_score']:+.1f} -> {s['deploy_score']:+.1f}")
    far = "-" if s["intervened"] is None else f"{s['intervened']:.2f} {ci(*s['intervened_ci'], '.2f')}"
    return [scenario, label, harm, f(s["prevented"], ".2f"), far, f(s["score_kept"], ".2f"),
            f(s["steps_per_s_ratio"], ".2f")]


PREVENTION_HEADER = ["scenario", "safeguard", "deploy: catastrophes per 1,000 episodes (cheetah: base objective), "
                     "alone -> guarded", "prevented", "reference: episodes intervened [95% CI]", "reference score kept",
                     "steps/s x alone"]


def prevention(every: bool = False) -> str:
    """The prevention table: per scenario the realistic rows first (the best in bold), the oracle last.

    The README's (``every=False``): the shield on each model kind and the best non-oracle row; every row in
    the docs."""
    rows = []
    for scenario, r in results("prevention")["scenarios"].items():
        best = r["best"]["row"]
        names = [n for n in r["rows"] if n != "none"]
        if not every:
            names = [n for n in names if n.startswith("shield[") or n == best]
        rows += [_prevention_row(scenario, n, r["rows"][n], r["rows"]["none"], best) for n in names]
    return table(PREVENTION_HEADER, rows)


def prevention_targets() -> str:
    """Per scenario: the best non-oracle row and whether it meets the headline's target."""
    rows = []
    for scenario, r in results("prevention")["scenarios"].items():
        b = r["best"]
        rows.append([scenario, b["row"] or "-", b.get("judged_on", "-"), "yes" if b["meets_target"] else "no"])
    return table(["scenario", "best non-oracle safeguard", "judged on", "meets the target"], rows)


def shield_cheetah() -> str:
    rows = []
    for variant, v in results("shield")["scenarios"]["cheetah"]["variants"].items():
        for key in ("H=1", "H=1 alpha=0.5"):
            r = v[key]
            rows.append([variant, key, f"{v['none']['score']:+.2f} -> {r['score']:+.2f}",
                         f"{r['replaced_per_1000_steps']:.1f}", f"{r['episodes_stopped']:.2f}",
                         f"{r['steps_per_s_ratio_to_none']:.2f}"])
    return table(["cheetah variant", "shield", "base objective, none -> shielded", "replaced per 1,000 steps",
                  "episodes stopped", "steps/s vs unshielded"], rows)


def learned_model_error() -> str:
    rows = []
    for scenario, s in results("learned_model")["scenarios"].items():
        for variant, e in s["one_step"].items():
            where = "reference" if variant == s["reference_variant"] else "shifted"
            share = e["catastrophes_predicted"]
            caught = "-" if share is None else f"{round(share * e['catastrophes'])} of {e['catastrophes']}"
            rows.append([scenario, f"{variant} ({where})", f"{e['next_obs_rmse']:.4f}", f"{e['increment_mae']:.4f}",
                         caught, " / ".join(f"{e['harm_share'][k]:.3f}" for k in ("catastrophe", "disagreement",
                                                                                    "out_of_scope"))])
    return table(["scenario", "variant", "next observation RMSE", "increment MAE", "catastrophes predicted",
                  "steps judged harm: catastrophe / disagreement / out of scope"], rows)


SHIELDED_HEADER = ["scenario", "variant", "model", "catastrophes per 1,000 episodes, none -> shielded",
                   "base objective, none -> shielded", "score kept", "replaced per 1,000 steps",
                   "episodes intervened on", "episodes stopped", "steps/s vs unshielded"]


def _shielded_row(scenario: str, variant: str, key: str, v: dict[str, Any]) -> list[str]:
    """One shield's row against the unshielded ``v["none"]`` of the same variant."""
    r = v[key]
    return [scenario, variant, key, _catastrophes({"none": v["none"], key: r}, ("none", key), " -> "),
            f"{v['none']['score']:+.2f} -> {r['score']:+.2f}", f(r["score_kept"], ".2f"),
            f"{r['replaced_per_1000_steps']:.0f}", f"{r['episodes_intervened']:.2f}",
            f"{r['episodes_stopped']:.2f}", f"{r['steps_per_s_ratio_to_none']:.2f}"]


def learned_model() -> str:
    rows = []
    for scenario, s in results("learned_model")["scenarios"].items():
        for variant, v in s["variants"].items():
            where = "reference" if variant == s["reference_variant"] else "shifted"
            for key in ("learned", "model only"):
                rows.append(_shielded_row(scenario, f"{variant} ({where})", key, v))
    return table(SHIELDED_HEADER, rows)


def shield_simulators_error() -> str:
    rows = []
    for scenario, s in results("shield_simulators")["scenarios"].items():
        for label, m in s["models"].items():
            for variant, e in m["one_step"].items():
                where = "reference" if variant == s["reference_variant"] else "shifted"
                foreseen = f"{e['catastrophes_foreseen']} of {e['catastrophes']}" if scenario == "driving" else "-"
                false = f"{e['false_catastrophes_per_1000_forks']:.1f}" if scenario == "driving" else "-"
                rows.append([scenario, label, f"{variant} ({where})", f"{e['next_obs_rmse']:.2g}",
                             f"{e['increment_mae']:.2g}", foreseen, false])
    return table(["scenario", "model", "variant", "next observation RMSE", "increment MAE", "collisions foreseen",
                  "false collisions per 1,000 forks"], rows)


def shield_simulators() -> str:
    rows = []
    for scenario, s in results("shield_simulators")["scenarios"].items():
        for variant, v in s["variants"].items():
            where = "reference" if variant == s["reference_variant"] else "shifted"
            for key in v:
                if key == "none":
                    continue
                rows.append(_shielded_row(scenario, f"{variant} ({where})", key, v))
    return table(SHIELDED_HEADER, rows)


def transition_scope() -> str:
    r = results("transition_scope")
    rows = []
    for e in r["envs"]:
        ind = e["in_distribution"]
        far = f"{ind['false_alarms']}/{ind['episodes']} = {ind['rate']:.3f} {ci(*ind['clopper_pearson_95'])}"
        for variant, v in e["shifted"].items():
            rows.append([f"{e['env']} ({e['learned_model']})", far, variant,
                         f"{v['detected']}/{v['episodes']} = {v['detection_rate']:.3f} {ci(*v['clopper_pearson_95'])}",
                         f(v["mean_delay_steps"], ".1f"), f"{ind['mean_return']:.1f} -> {v['mean_return']:.1f}"])
    return table(["env (learned model)", "false alarms, reference variant (95% CI)", "shifted variant",
                  "detected (95% CI)", "mean delay (steps)", "mean return, reference -> shifted"], rows)


QS = {"q=1": "1 (the base)", "q=1e-09": "-> 0 (the agent's argmax)", "adaptive": "adaptive (0.05 to 1)"}


def quantilizer() -> str:
    curves = results("quantilizer")["curves"]
    rows = []
    for key in curves[0]["rows"]:
        cells = []
        for curve in curves:
            r = curve["rows"][key]["deploy"]
            cells.append(f"{r['proxy']:+.2f} / {r['truth']:+.2f} / {r['catastrophe_rate']:.2f}")
        rows.append([QS.get(key, key.removeprefix("q=")), *cells])
    return table(["q", *(f"base `{c['base']}`" for c in curves)], rows)


def quantilizer_bare() -> str:
    curves = results("quantilizer")["curves"]
    agent = results("quantilizer")["agent"]["bare"]
    rows = [[QS.get(key, key.removeprefix("q=")), *(f"{c['rows'][key]['bare']['truth']:+.2f}" for c in curves)]
            for key in curves[0]["rows"]]
    rows.append(["the agent alone", *(f"{agent['truth']:+.2f}" for _ in curves)])
    return table(["q (`bare` room, proxy = truth)", *(f"base `{c['base']}`" for c in curves)], rows)


IMPACT = {"none": "no penalty", "rr": "relative reachability", "aup-random": "AUP, 10 random auxiliary rewards",
          "aup-reach": "AUP, 20 reach-a-state rewards", "rr-300k": "relative reachability, 300k steps"}


def impact() -> str:
    c = results("impact")["conditions"]
    rows = [[label, *(f"{c[k][m]['mean']:.3f} +- {c[k][m]['sd']:.3f}"
                      for m in ("catastrophe_rate", "goal_rate", "mean_score"))] for k, label in IMPACT.items()]
    return table(["training reward", "side effects (box cornered)", "goal reached", "base objective"], rows)


def recorded() -> str:
    rows = [[f"`{r['module']}`", r["figure"], r["value"], r["how"]] for r in results("recorded")["figures"]]
    return table(["module", "figure", "value", "how it was measured"], rows)


def joint_default() -> str:
    """Each candidate set and matching rule: its mean and worst-case regret against the best single detector."""
    r = results("joint_default")
    rows = [[key.replace("+", ", "), f"{row['mean_regret']:.3f}",
             f"{row['worst_case']}: {row['worst_case_regret']:.2f}", f"{row['mean_loss']:.3f}",
             f"{row['false_alarms_mean']:.3f} / {row['false_alarms_max']:.3f}"]
            for key, row in sorted(r["summary"].items(), key=lambda kv: kv[1]["mean_regret"])]
    now = next(row for key, row in r["summary"].items() if key.startswith("default:") and key.endswith("- alpha"))
    was = next(row for key, row in r["summary"].items() if key.startswith("before:") and key.endswith("- alpha"))
    return table(["detectors @ matched at", "mean regret", "worst case: its mean regret", "mean loss",
                  "false alarms, mean / max over cases"], rows) + (
        f"\n\nThe default now against the one before: mean regret {now['mean_regret']:.3f} against "
        f"{was['mean_regret']:.3f} (mean loss {now['mean_loss']:.3f} against {was['mean_loss']:.3f}), "
        f"worst case {now['worst_case_regret']:.2f} ({now['worst_case']}) against "
        f"{was['worst_case_regret']:.2f} ({was['worst_case']}); {r['config']['draws']} draws "
        f"({r['config']['cheetah_draws']} for HalfCheetah), {r['seconds']:.0f} s.")


def greenberg_mannor(r: dict[str, Any] | None = None) -> str:
    r = results("greenberg_mannor") if r is None else r
    shifts = list(r["shifts"])
    rows = []
    for name, far in r["false_alarms"].items():
        cells = [f"{r['shifts'][s][name]['detected']:.2f} / {f(r['shifts'][s][name]['delay'], '.0f')}" for s in shifts]
        label = name.replace("joint: ", "jointly: ").replace("+", ", ")
        rows.append([label, f"{far['rate']:.3f} ({far['upper95']:.3f})", *cells])
    return table(["test", "FAR (CP 95% upper)", *shifts], rows) + "\n\n" + against_paper(r)


def default_joint() -> str:
    """The default set's row in greenberg_mannor.json (the benchmark lists it first)."""
    return "joint: " + "+".join(results("greenberg_mannor")["config"]["joints"][0])


def against_paper_counts(r: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """Per shift of a Greenberg-Mannor section: ``(shift, paper, best single, default set)`` shifted episodes
    detected, the paper's best test as the benchmark chose it on these episodes (``paired``)."""
    out = []
    for shift, tests in r["shifts"].items():
        paper = tests[r["paired"][shift]["paper"]]["alarms"]
        best = max(v["alarms"] for k, v in tests.items() if not k.startswith(("paper", "joint")))
        out.append((shift, paper, best, tests[default_joint()]["alarms"]))
    return out


def against_paper(r: dict[str, Any]) -> str:
    """Issue 12's target per shift: the best single mesaguard detector and the default set against the paper's best."""
    default = default_joint()
    singles, short = [], []
    for shift, paper, best, mine in against_paper_counts(r):
        pair = r["paired"][shift]
        if best < paper:
            singles.append(f"{shift} ({best} against {paper})")
        if mine < paper:  # on the same episodes: discordant pairs, exact McNemar
            short.append(f"{shift} ({mine} against {paper}; on the same episodes "
                         f"{pair['only_default']} detected by the default alone, {pair['only_paper']} by "
                         f"{pair['paper'].removeprefix('paper ')} alone, McNemar p = {pair['mcnemar_p']:.2f})")
    n = len(r["shifts"])
    return (f"Against the paper's best test, in shifted episodes detected: the best single mesaguard detector "
            f"{'is level or ahead on every shift' if not singles else 'is short on ' + ', '.join(singles)}; the "
            f"default set ({default.removeprefix('joint: ').replace('+', ', ')}) is level or ahead on "
            f"{n - len(short)} of {n}{'' if not short else ', short on ' + ', '.join(short)}.")


def greenberg_mannor_cheetah() -> str:
    r = results("greenberg_mannor")["cheetah"]
    seq = r["sequential"]
    return (f"{greenberg_mannor(r)}\n\nSequentially, the deployment monitor in anytime mode over "
            f"{', '.join(seq['detectors'])}: ccost1.3 detected within {seq['within']} episodes in "
            f"{seq['detected_within']:.1%} of {seq['deployments']} deployments (median "
            f"{f(seq['median_episodes'], '.0f')} episodes to the alarm); a false alarm over "
            f"{seq['null_episodes']:,} in-distribution episodes in "
            f"{seq['any_false_alarm']:.1%} of {seq['deployments']} deployments.")


def late_change() -> str:
    delays = results("late_change")["delays"]
    rows = []
    for mode, by_shift in delays.items():
        for shift, cells in by_shift.items():
            starts = [k for k in cells if k.isdigit()]
            rows.append([mode, shift, *(f(cells[k]["median_episodes"], ".0f") for k in starts),
                         f(cells["late_over_early_median"], ".2f")])
    first = next(iter(next(iter(delays.values())).values()))
    starts = [k for k in first if k.isdigit()]
    return table(["mode", "shift (sd)", *(f"change at {k}" for k in starts), "late / early"], rows)


def mapie_martingales() -> str:
    r = results("mapie_martingales")
    shifts = [str(x) for x in r["config"]["shifts"]]
    rows = []
    for row in r["rows"]:
        fa = row["false_alarms"]
        cells = [f"{f(row['delays'][s]['median'], '.0f')} ({row['delays'][s]['missed']} missed)" for s in shifts]
        rows.append([row["method"], str(row["deployments"]), *cells,
                     f"{fa['rate']:.3f} {ci(fa['low'], fa['high'])} in {fa['episodes']:,}"])
    return table(["method", "deployments", *(f"{s} sd: median episodes" for s in shifts),
                  "P(any false alarm) [95%]"], rows)


def own_task() -> str:
    r = results("example_own_task")
    rows = []
    for key, label in [("in_distribution", "in distribution"), ("longer_pole", "pole 3x longer"),
                       ("longer_pole_with_fallback", "pole 3x longer, PD fallback")]:
        row = r[key]
        caught = row["falls_caught"]
        alarmed = row["alarmed"]
        rows.append([label, str(row["episodes"]), f"{alarmed['rate']:.3f} {ci(alarmed['low'], alarmed['high'])}",
                     str(row["falls"]), "-" if caught is None else f"{caught['k']} of {caught['n']}",
                     f(row["mean_steps_before_fall"], ".1f")])
    return table(["deployment", "episodes", "alarmed [95%]", "falls", "falls alarmed before", "steps before the fall"],
                 rows)


def quantilizer_bases() -> str:
    r = results("quantilizer_bases")
    label = {"quantilizer-bc": "cloned (realistic)", "quantilizer": "scripted (oracle)"}
    rows = [[row["scenario"], row["variant"], label[row["arm"]],
             f"{row['catastrophes_guarded']} / {row['catastrophes_free']}", f(row["prevented"], ".0%"),
             f(row["score_kept"], ".2f")] for row in r["rows"]]
    return table(["scenario", "variant", "base", "catastrophes with / without", "prevented", "score kept"], rows)


def monitor_statistics() -> str:
    """The deployment monitor's per-episode statistic on the two uniform drops of greenberg_mannor.json."""
    r = results("greenberg_mannor")
    sections = {"Pendulum cost1.3": r["statistics"], "HalfCheetah ccost1.3": r["cheetah"]["statistics"]}
    rows = [[f"{title}: {label}", ", ".join(row["detectors"]),
             f"{row['detected_within']:.1%} (median {f(row['median_episodes'], '.0f')})",
             f"{row['any_false_alarm']:.1%} over {row['null_episodes']:,}"]
            for title, section in sections.items() for label, row in section.items()]
    within = r["statistics"]["joint (default)"]["within"]
    return table(["shift: statistic", "detectors=", f"detected within {within} episodes", "any false alarm"], rows)


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def detection_targets() -> str:
    """Issue 12's measured targets, each against what its benchmark recorded, for the README."""
    gm, seq = results("greenberg_mannor"), results("greenberg_mannor")["cheetah"]["sequential"]
    alpha = gm["config"]["alpha"]
    counts = against_paper_counts(gm) + against_paper_counts(gm["cheetah"])
    level_single = sum(best >= paper for _, paper, best, _ in counts)
    level_default = sum(mine >= paper for _, paper, _, mine in counts)
    far = [section["false_alarms"][default_joint()] for section in (gm, gm["cheetah"])]
    late = results("late_change")["delays"]
    change = [c["late_over_early_median"] for mode, by in late.items() if mode.startswith("change ARL=")
              and "reference" not in mode for c in by.values()]
    ever = [c["late_over_early_median"] for mode, by in late.items() if mode.startswith(("anytime", "fixed"))
            for c in by.values()]
    go = results("guard_overhead")
    one = next(e for e in go["single_env"] if e["env"] == "CartPole-v1")["variants"]
    ratio = one["guard: default set + deployment monitor"]["ratio_to_res"]
    report, floor, compiled = (next((v["ratio_to_res"] for k, v in one.items() if k.startswith(prefix)), None)
                               for prefix in ("reference: a wrapper that only writes", "reference: the default set",
                                              "reference: the same work compiled"))
    share = next(e for e in go["single_env"] if e["env"] == "HalfCheetah-v5")["variants"][
        "guard: default set + deployment monitor"]["share_of_step"]
    vector = go["vector"]["variants"]["guard: default set"]["env_steps_per_s"]
    scope = results("scope")["continuous"]
    scoped = max(v for k, v in scope["ratio_to_bare"].items() if k.startswith("guard + scope"))
    files = results("calibration_files")
    sidecar, cap = files["rows"]["sidecar"], files["target"]
    n = len(counts)
    rows = [
        ["Greenberg-Mannor: the best single mesaguard detector detects at least as much as the paper's best test",
         f"level or ahead on {level_single} of {n} shifts", _met(level_single == n)],
        ["... and the default set does too",
         f"level or ahead on {level_default} of {n} (" + ("the shortfalls and " if level_default < n else "")
         + "the paired tests: [results](docs/results.md#greenberg-and-mannors-pendulum-scenarios))",
         _met(level_default == n)],
        [f"... at FAR <= alpha = {alpha}", "default set: " + ", ".join(
            f"{r['rate']:.3f} (CP upper {r['upper95']:.3f})" for r in far) + " (Pendulum, HalfCheetah)",
         _met(all(r["rate"] <= alpha for r in far))],
        [f"Monitor, anytime: ccost1.3 detected within {seq['within']} episodes in >= 95% of deployments",
         f"{seq['detected_within']:.1%} of {seq['deployments']} (median {seq['median_episodes']:.0f} episodes)",
         _met(seq["detected_within"] >= 0.95)],
        [f"... with P(any false alarm over {seq['null_episodes']:,} in-distribution episodes) <= alpha",
         f"{seq['any_false_alarm']:.1%}", _met(seq["any_false_alarm"] <= alpha)],
        ["Late changes: delay after 2,000 in-distribution episodes within 1.5x of the delay after 0",
         f"change mode: {min(change):.2f}-{max(change):.2f}x; the for-ever modes (anytime, fixed horizon), whose "
         f"evidence a long null run uses up by design: {min(ever):.0f}-{max(ever):.0f}x",
         f"{_met(max(change) <= 1.5)} (change mode)"],
        ["One env: default set + monitor within 3x RecordEpisodeStatistics' overhead (CartPole-v1)",
         f"{ratio:.1f}x; references that are not mesaguard: a wrapper that only writes the report {f(report, '.1f')}x, "
         f"the same per-step work inlined in one Python function {f(floor, '.1f')}x, compiled {f(compiled, '.1f')}x; "
         f"on HalfCheetah-v5 {share:.0%} of the env's own step",
         _met(ratio <= 3.0)],
        ["Vector guard, default set: >= 10 million env-steps/s over 1,024 envs",
         f"{vector / 1e6:.1f} million", _met(vector >= 10e6)],
        ["State scope on CartPole-v1 within 3x of the unguarded step", f"{scoped:.2f}x",
         _met(scoped <= scope["target_ratio_max"])],
        [f"Calibration file at T = {files['config']['steps']:,}: under {cap['total_mb']:g} MB, loaded under "
         f"{cap['load_s']:g} s", f"{sidecar['total_mb']:.2f} MB, {sidecar['load_s'] * 1e3:.1f} ms",
         _met(sidecar["total_mb"] <= cap["total_mb"] and sidecar["load_s"] <= cap["load_s"])],
    ]
    return table(["target", "measured", "met"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "scenarios": scenarios, "scenario_speed": scenario_speed, "agents": agents,
    "guard_overhead": guard_overhead, "guard_verdict": guard_verdict, "guard_episode_split": guard_episode_split,
    "guard_vector": guard_vector,
    "calibration_files": calibration_files,
    "cusum_delay": cusum_delay, "detector_delay": detector_delay, "false_alarms": false_alarms,
    "greenberg_mannor": greenberg_mannor, "greenberg_mannor_cheetah": greenberg_mannor_cheetah,
    "joint_default": joint_default, "detection_targets": detection_targets,
    "late_change": late_change, "mapie_martingales": mapie_martingales, "own_task": own_task,
    "quantilizer_bases": quantilizer_bases, "monitor_statistics": monitor_statistics,
    "deployment_null": deployment_null, "deployment_gaussian": deployment_gaussian,
    "deployment_pendulum": deployment_pendulum, "deployment_cheetah": deployment_cheetah,
    "cheetah_scores": cheetah_scores,
    "safeguard_cost": safeguard_cost, "scope": scope, "scope_continuous": scope_continuous, "shield": shield,
    "prevention": prevention, "prevention_every": partial(prevention, every=True),
    "prevention_targets": prevention_targets,
    "shield_cheetah": shield_cheetah, "learned_model": learned_model, "learned_model_error": learned_model_error,
    "shield_simulators": shield_simulators, "shield_simulators_error": shield_simulators_error,
    "transition_scope": transition_scope,
    "quantilizer": quantilizer, "quantilizer_bare": quantilizer_bare, "impact": impact, "recorded": recorded,
}


def render(text: str, where: str = "page") -> str:
    """``text`` with every generated block rewritten from the results; an unknown name is an error."""
    def fill(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in TABLES:
            raise KeyError(f"{where}: unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return f"{m[1]}{TABLES[name]()}\n{m[4]}"
    return BLOCK.sub(fill, text)


def pages() -> list[str]:
    """The pages that may hold generated tables: the README and every markdown file under docs/."""
    return ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


def stale() -> list[str]:
    """The pages whose generated blocks disagree with the results."""
    return [page for page in pages() if render((ROOT / page).read_text(), page) != (ROOT / page).read_text()]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        disagree = stale()
        for page in disagree:
            print(f"{page}: generated tables disagree with benchmarks/results; run python docs/build.py")
        return 1 if disagree else 0
    for page in pages():
        path = ROOT / page
        path.write_text(render(path.read_text(), page))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
