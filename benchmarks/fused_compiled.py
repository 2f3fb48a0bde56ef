"""The floor of ``fused_floor.py`` with its arithmetic compiled: a timing reference, not mesaguard.

:class:`FusedCompiled` is a Python ``gymnasium.Wrapper`` whose ``step`` calls the env, then one C function
(``fused_compiled.c``) that does ``fused_floor.FusedFloor``'s per-step work, in the same order and in the
same floating point, and returns the report for ``info["mesaguard"]``, built in C. So it is what a guard whose step
were compiled could cost at least, with the wrapper itself still Python (as ``GuardedEnv`` is a
``gymnasium.Wrapper``): ``guard_overhead.py`` times it beside the guard, after checking that its statistics equal
``GuardedEnv``'s step for step.

:func:`build` compiles the C file with the machine's C compiler (``cc``, ``-O2 -ffp-contract=off``: no fused
multiply-adds, so every result is bit for bit Python's) into a temporary folder, removed once the module is
loaded, once per process; it returns ``None``, and the benchmark leaves the row out, where no compiler or no Python
headers are found.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
from fused_floor import parameters

from mesaguard.calibration import Calibration

__all__ = ["FusedCompiled", "build"]

SOURCE = Path(__file__).with_name("fused_compiled.c")


@cache
def build() -> ModuleType | None:
    """The compiled module, or None where this machine cannot build it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if compiler is None or not (Path(include) / "Python.h").exists():
        return None
    out = Path(tempfile.mkdtemp(prefix="fused_compiled_")) / f"fused_compiled_c{sysconfig.get_config_var('EXT_SUFFIX')}"
    command = [compiler, "-O2", "-ffp-contract=off", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    spec = importlib.util.spec_from_file_location("fused_compiled_c", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shutil.rmtree(out.parent, ignore_errors=True)  # loaded: the process keeps its mapping, no file is left behind
    return module


class FusedCompiled(gym.Wrapper):
    """The default set and a monitor's per-step part, compiled (see the module docstring)."""

    def __init__(self, env: gym.Env, calibration: Calibration) -> None:
        super().__init__(env)
        c = build()
        if c is None:
            raise RuntimeError("no C compiler or Python headers on this machine")
        p = parameters(calibration)  # as the floor reads them
        rows = [p["m_chol"][b, :b].tolist() for b in range(p["m_T"])]
        self._step, self._reset = c.step, c.reset
        self._kernel = c.make(
            p["c_mean"], p["c_std"], p["c_slack"], p["c_rho"], p["c_gain"], p["c_block"],
            p["m_block"], p["m_mu"], p["m_y"], p["m_norm"], p["m_diag"], rows,
            tuple(p["thresholds"]), tuple(p["standard"]),
        )

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._reset(self._kernel)
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["mesaguard"] = self._step(self._kernel, float(reward))
        return obs, reward, terminated, truncated, info
