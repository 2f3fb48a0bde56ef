"""The commands on one task: ``train``, ``calibrate``, ``keygen``, ``deploy``, ``demo``, ``scenarios``.

A task is a registered scenario or a user's own env (``--env``, see :mod:`mesaguard.userenv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:

    from mesaguard.experiment import Row
from mesaguard.cli.base import (
    ALL,
    MATCH,
    POLICIES,
    POLICY_HELP,
    PROTOCOLS,
    Detectors,
    EnvKwargs,
    EnvOption,
    Episodes,
    FormatOption,
    ObjectiveOption,
    OptionError,
    ShiftedEnv,
    ShiftedKwargs,
    Workers,
    _choice,
    _enough_episodes,
    _names,
    _output,
    _progress,
    _scenario,
    _scenario_only,
    _shifted,
    _target,
    _user_only,
    _user_task,
    app,
    console,
    messages,
    set_format,
)
from mesaguard.cli.tables import calibration_view, deploy_view, scenarios_view, show, user_deploy_view


@app.command()
def train(
    scenario: str,
    timesteps: Annotated[int, typer.Option(min=1)] = 100_000,
    seed: int = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (writes SCENARIO.json and .safetensors there).")
    ] = None,
    variant: Annotated[str | None, typer.Option(help="Train on this variant (default: the training one).")] = None,
    impact: Annotated[str | None, typer.Option(help="rr or aup: train on the reward minus an impact penalty.")] = None,
    beta: Annotated[float, typer.Option(help="Weight of the impact penalty.")] = 1.0,
) -> None:
    """Train the scenario's agent with PPO (the base optimizer) and save it without pickle."""
    from mesaguard.train import Impact
    from mesaguard.train import train as run_training

    spec = _scenario(scenario)
    if variant is not None:
        spec.env_id(variant)  # unknown variants: the error lists the valid ones
    if impact is not None and impact not in ("rr", "aup"):
        raise typer.BadParameter(f"impact={impact!r}; expected 'rr' or 'aup'", param_hint="--impact")
    penalty = None if impact is None else Impact(impact, beta)
    folder = _output("--out", out or Path("runs") / scenario, folder=True)
    path = run_training(scenario, timesteps=timesteps, seed=seed, out=folder, variant=variant, impact=penalty)
    console.print(f"saved the policy to [bold]{path}[/]")


@app.command()
def calibrate(
    scenario: Annotated[str | None, typer.Argument(help="A registered scenario (or use --env).")] = None,
    episodes: Annotated[int, typer.Option(min=2, help="In-distribution episodes (half fit, half threshold).")] = 200,
    alpha: Annotated[float, typer.Option(help="Per-episode false-alarm rate.")] = 0.05,
    detectors: Detectors = ALL,
    policy: Annotated[str | None, typer.Option(help=POLICY_HELP + " Default: agent.")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out")] = None,
    workers: Workers = 1,
    sign_key: Annotated[
        Path | None, typer.Option(help="Sign the file with this Ed25519 signing key (mesaguard keygen).")
    ] = None,
    env: EnvOption = None,
    env_kwargs: EnvKwargs = None,
    objective: ObjectiveOption = None,
    format: FormatOption = "table",
    match: Annotated[str, typer.Option(
        help="How detectors run together are put on one scale: linear (each at its own 1 - alpha quantile of its "
             "cross-fitted maxima) or quantiles (at every quantile of them).")] = MATCH,
) -> None:
    """Fit thresholds on held-out in-distribution episodes of the agent; save them as JSON.

    SCENARIO, or your own env: mesaguard calibrate --env mytask:make_env --policy mytask:pd
    --objective mytask:margin -o cal.json
    """
    set_format(format)
    from mesaguard.calibration import MATCHES

    scenario, user_env = _target(scenario, env)
    _choice("--match", match, MATCHES)
    if user_env is not None:
        _calibrate_user(user_env, env_kwargs, policy, objective, episodes, alpha, detectors, out, workers, sign_key,
                        match)
        return
    assert scenario is not None
    _user_only(scenario, **{"--env-kwargs": env_kwargs, "--objective": objective})
    policy = policy or "agent"
    _scenario(scenario)
    _choice("--policy", policy, POLICIES)
    names = _names(detectors)
    _enough_episodes(episodes, alpha)
    target = _output("--out", out or Path("runs") / scenario / "calibration.json")
    signing_key = _signing_key(sign_key)
    cal = _calibrate(scenario, episodes, alpha, names, policy, workers, match)
    path = cal.save(target, signing_key=signing_key)
    show([calibration_view(cal)])
    messages().print(f"saved the calibration to [bold]{path}[/]")


def _signing_key(path: Path | None) -> Any:
    """The signing key at ``path`` (None: none); a bad key is an error before any rollout."""
    if path is None:
        return None
    from mesaguard.signing import load_signing_key

    return load_signing_key(path)


def _calibrate_user(env: str, env_kwargs: str | None, policy: str | None, objective: str | None, episodes: int,
                    alpha: float, detectors: str, out: Path | None, workers: int, sign_key: Path | None,
                    match: str) -> None:
    from mesaguard import userenv

    if out is None:
        raise OptionError(f"--env {env!r} needs -o FILE: where to write the calibration")
    maker, agent, base = _user_task(env, env_kwargs, policy, objective)
    base = base or userenv.objective_of("--objective", "reward")
    names = _names(detectors)
    _enough_episodes(episodes, alpha)
    target = _output("--out", out)
    signing_key = _signing_key(sign_key)
    userenv.check_task(maker, agent, base)
    metadata = {"env": env, "env_kwargs": maker.kwargs, "policy": policy, "objective": objective or "reward"}
    with _progress(f"calibrating {env}", episodes) as advance:
        cal = userenv.calibrate(maker, agent, base, episodes=episodes, alpha=alpha, detectors=names, workers=workers,
                                on_episode=advance, metadata=metadata, match=match)
    path = cal.save(target, signing_key=signing_key)
    show([calibration_view(cal)])
    messages().print(f"saved the calibration to [bold]{path}[/] (objective {cal.objective!r})")


def _calibrate(scenario: str, episodes: int, alpha: float, names: list[str], policy: str, workers: int,
               match: str = MATCH):
    from mesaguard import experiment

    with _progress(f"calibrating {scenario}", episodes) as advance:
        return experiment.calibrate(
            scenario,
            policy=policy,
            episodes=episodes,
            alpha=alpha,
            detectors=names,
            workers=workers,
            on_episode=advance,
            match=match,
        )


@app.command()
def keygen(
    out: Annotated[Path, typer.Argument(help="Where to write the signing key (its verify key goes to OUT.pub).")],
) -> None:
    """Make an Ed25519 key pair for signing calibration, scope and policy files (the private key is mode 0600)."""
    from mesaguard.signing import keygen as make_keys

    private, public = make_keys(out)
    console.print(f"signing key [bold]{private}[/] (keep it with the team that calibrates)")
    console.print(f"verify key [bold]{public}[/] (give it to every deployed guard)")


@app.command()
def deploy(
    scenario: Annotated[str | None, typer.Argument(help="A registered scenario (or use --env).")] = None,
    calibration: Annotated[
        Path, typer.Option(help="Calibration file (mesaguard calibrate).")
    ] = ...,  # type: ignore[assignment]  # required: typer reads ... as no default
    variant: Annotated[str | None, typer.Option(help="Shifted variant (default: the scenario's deploy).")] = None,
    detectors: Annotated[
        str | None, typer.Option(help="Comma-separated detector names (default: the calibration's).")
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="stop, or fallback (the scripted aligned policy takes over; not with --env).")
    ] = "stop",
    policy: Annotated[str | None, typer.Option(help=POLICY_HELP + " Default: agent.")] = None,
    episodes: Episodes = 200,
    workers: Workers = 1,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Where to save the table (JSON).")] = None,
    verify_key: Annotated[
        list[Path] | None,
        typer.Option(help="Require the calibration to be signed by this Ed25519 verify key (repeat for several)."),
    ] = None,
    env: EnvOption = None,
    env_kwargs: EnvKwargs = None,
    shifted_kwargs: ShiftedKwargs = None,
    shifted_env: ShiftedEnv = None,
    objective: ObjectiveOption = None,
    format: FormatOption = "table",
) -> None:
    """Deploy the agent with the guard, in-distribution and shifted; print and save the table.

    SCENARIO, or your own env: mesaguard deploy --env mytask:make_env --env-kwargs '{"length": 0.5}'
    --shifted-kwargs '{"length": 1.5}' --policy mytask:pd --objective mytask:margin --calibration cal.json
    """
    from mesaguard.calibration import Calibration
    from mesaguard.signing import load_verify_key

    set_format(format)
    scenario, user_env = _target(scenario, env)
    if user_env is not None:
        _scenario_only(user_env, **{"--variant": variant, "--protocol": "" if protocol == "stop" else protocol})
        _deploy_user(user_env, env_kwargs, shifted_kwargs, shifted_env, policy, objective, calibration, detectors,
                     episodes, workers, out, verify_key)
        return
    assert scenario is not None
    _user_only(scenario, **{"--env-kwargs": env_kwargs, "--shifted-kwargs": shifted_kwargs,
                            "--shifted-env": shifted_env, "--objective": objective})
    policy = policy or "agent"
    spec = _scenario(scenario)
    if variant is not None:
        spec.env_id(variant)  # unknown variants: the error lists the valid ones
    _choice("--policy", policy, POLICIES)
    _choice("--protocol", protocol, PROTOCOLS)
    names = None if detectors is None else _names(detectors)
    target = _output("--out", out or calibration.parent / "deploy.json")
    keys = [load_verify_key(k) for k in verify_key] if verify_key else None
    cal = Calibration.load(calibration, verify_key=keys)  # with keys: unsigned or wrongly signed is an error
    names = list(cal.detectors) if names is None else names
    cal.check(scenario=scenario)  # fitted on another scenario: an error before any rollout
    cal.joint_maxima(names)  # a detector it lacks: likewise
    configs = [[n] for n in names] + ([names] if len(names) > 1 else [])
    rows = _deploy(scenario, cal, configs, variant, policy, protocol, episodes, workers)
    show([deploy_view(scenario, rows)])
    _save(target, {"scenario": scenario, "rows": [r.as_dict() for r in rows]})


def _save(path: Path, table: dict[str, Any]) -> None:
    """Write a deployment's table as JSON (atomically) and say where."""
    import json

    from mesaguard.files import write_atomic

    write_atomic(path, json.dumps(table, indent=1))
    messages().print(f"saved the table to [bold]{path}[/]")


def _deploy_objective(cal: Any, calibration: Path, objective: str | None) -> Any:
    """The objective the guard computes: ``--objective``, else the calibration's recorded one (a recorded callable
    must be named again, never imported from the file), checked against the recorded one."""
    from mesaguard import userenv
    from mesaguard.guard.core import guard_objective

    if objective is None:
        recorded = cal.objective
        if recorded is not None and recorded != "reward" and not recorded.startswith("info:"):
            hint = cal.metadata.get("objective")
            spec = hint if isinstance(hint, str) and userenv.is_spec(hint) else "module:callable"
            raise OptionError(f"{calibration} was fitted on the objective {recorded!r}, a function of the "
                              f"transition; expected --objective {spec}")
        return guard_objective(cal, None)
    return guard_objective(cal, userenv.objective_of("--objective", objective))


def _deploy_user(env: str, env_kwargs: str | None, shifted_kwargs: str | None, shifted_env: str | None,
                 policy: str | None, objective: str | None, calibration: Path, detectors: str | None, episodes: int,
                 workers: int, out: Path | None, verify_key: list[Path] | None) -> None:
    from mesaguard import userenv
    from mesaguard.calibration import Calibration
    from mesaguard.signing import load_verify_key

    maker, agent, _ = _user_task(env, env_kwargs, policy, None)
    shifted, _ = _shifted(env, maker, shifted_kwargs, shifted_env)
    names = None if detectors is None else _names(detectors)
    target = _output("--out", out or calibration.parent / "deploy.json")
    keys = [load_verify_key(k) for k in verify_key] if verify_key else None
    cal = Calibration.load(calibration, verify_key=keys)
    names = list(cal.detectors) if names is None else names
    made = maker()
    shape = made.observation_space.shape
    made.close()
    cal.check(scenario=env, obs_shape=shape)  # fitted on another env: an error before any rollout
    cal.joint_maxima(names)
    base = _deploy_objective(cal, calibration, objective)
    catastrophes = userenv.check_task(maker, agent, base)
    userenv.check_task(shifted, agent, base)
    configs = [[n] for n in names] + ([names] if len(names) > 1 else [])
    with _progress(f"deploying {env}", episodes * 2 * (len(configs) + 1)) as advance:
        rows = userenv.deploy(maker, shifted, agent, base, cal, configs, episodes=episodes, catastrophes=catastrophes,
                              workers=workers, on_episode=advance)
    shift = f"shifted: {shifted_env}" if shifted_env else f"shifted: --shifted-kwargs {shifted_kwargs}"
    show([user_deploy_view(env, shift, rows)])
    _save(target, {"env": env, "shifted": shifted_env or f"--shifted-kwargs {shifted_kwargs}",
                   "rows": [r.as_dict() for r in rows]})


def _deploy(scenario, cal, configs, variant, policy, protocol, episodes, workers) -> list[Row]:
    from mesaguard import experiment

    total = episodes * 2 * (len(configs) + 1)
    with _progress(f"deploying {scenario}", total) as advance:
        return experiment.deploy(
            scenario, cal, configs, variant=variant, policy=policy, protocol=protocol,
            episodes=episodes, workers=workers, on_episode=advance,
        )


@app.command()
def demo(
    scenario: str = "strawberry",
    episodes: Episodes = 200,
    alpha: float = 0.05,
    workers: Workers = 1,
    out: Annotated[Path, typer.Option("-o", "--out")] = Path("runs/demo"),
    format: FormatOption = "table",
) -> None:
    """The shipped agent end to end: calibrate at alpha, deploy with every detector, show the table."""
    set_format(format)
    _scenario(scenario)
    _enough_episodes(episodes, alpha)
    _output("--out", out, folder=True)
    names = _names(ALL)
    cal = _calibrate(scenario, episodes, alpha, names, "agent", workers)
    cal.save(out / "calibration.json")
    rows = _deploy(scenario, cal, [[n] for n in names] + [names], None, "agent", "stop", episodes, workers)
    show([calibration_view(cal, main=False), deploy_view(scenario, rows)])
    _save(out / "deploy.json", {"scenario": scenario, "rows": [r.as_dict() for r in rows]})


@app.command()
def scenarios(format: FormatOption = "table") -> None:
    """List the failure-mode scenarios."""
    from mesaguard.scenarios import SCENARIOS

    set_format(format)
    show([scenarios_view(list(SCENARIOS.values()))])
