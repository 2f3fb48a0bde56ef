"""Render the first frame of every scenario variant to docs/scenarios/ (the images of docs/scenarios.md).

Run: ``SDL_VIDEODRIVER=offscreen .venv/bin/python docs/render_scenarios.py [NAME ...]``
(no names: every scenario).
"""

import sys
from pathlib import Path

import numpy as np
import pygame

from mesaguard.scenarios import SCENARIOS

OUT = Path(__file__).parent / "scenarios"


def main(names: list[str]) -> None:
    OUT.mkdir(exist_ok=True)
    for s in SCENARIOS.values():
        if names and s.name not in names:
            continue
        frames = []
        for variant in s.variants:
            env = s.make(variant, render_mode="rgb_array")
            env.reset(seed=20_000)
            frames.append(env.render())
            env.close()
        height = max(f.shape[0] for f in frames)
        padded = [np.pad(f, ((0, height - f.shape[0]), (0, 8), (0, 0)), constant_values=255) for f in frames]
        strip = np.concatenate(padded, axis=1)
        pygame.image.save(pygame.surfarray.make_surface(strip.swapaxes(0, 1)), OUT / f"{s.name}.png")
        print(OUT / f"{s.name}.png", "variants:", ", ".join(s.variants))


if __name__ == "__main__":
    main(sys.argv[1:])
